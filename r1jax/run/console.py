"""Console output of a run: the compile counter, the progress line, timers."""

import math
import time
from typing import Any, Sequence

import jax


class CompileCounter:
  """Counts XLA backend compilations in this process (every program, jitted
  or eager), through jax.monitoring's compile-duration event."""

  _EVENT = '/jax/core/compile/backend_compile_duration'
  _count = 0
  _installed = False

  @classmethod
  def install(cls) -> None:
    if not cls._installed:
      def listener(event, duration_secs, **kwargs):
        del duration_secs, kwargs
        if event == cls._EVENT:
          cls._count += 1
      jax.monitoring.register_event_duration_secs_listener(listener)
      cls._installed = True

  @classmethod
  def count(cls) -> int:
    return cls._count


def progress_line(step: int, total: int, elapsed_s: float, steps_done: int,
                  metrics: dict[str, Any], keys: Sequence[tuple[str, str]],
                  width: int = 20) -> str:
  """'[#####.....]  12/200  6% ETA 3m20s | reward 0.53 | ...' for the console.

  `steps_done` steps took `elapsed_s` (this process); the ETA extrapolates.
  """
  frac = step / max(total, 1)
  bar = '#' * int(round(frac * width))
  eta = ''
  if steps_done:
    eta = ' ETA ' + format_seconds(elapsed_s / steps_done * (total - step))
  parts = [f'[{bar:<{width}}] {step}/{total} {100 * frac:3.0f}%{eta}']
  for label, key in keys:
    if key in metrics and metrics[key] is not None:
      x = float(metrics[key])
      if not math.isfinite(x):
        parts.append(f'{label} {x}')
      elif abs(x) >= 1000:
        parts.append(f'{label} {x:,.0f}')
      else:
        parts.append(f'{label} {x:.3g}')
  return ' | '.join(parts)


def format_seconds(s: float) -> str:
  s = int(max(s, 0))
  if s >= 3600:
    return f'{s // 3600}h{s % 3600 // 60:02d}m'
  if s >= 60:
    return f'{s // 60}m{s % 60:02d}s'
  return f'{s}s'


class Timer:
  """Accumulates wall time per named phase: `with timer('sample'): ...`."""

  def __init__(self):
    self.totals: dict[str, float] = {}

  def __call__(self, name: str):
    timer = self

    class _Span:
      def __enter__(self):
        self.t0 = time.perf_counter()

      def __exit__(self, *exc):
        timer.totals[name] = (timer.totals.get(name, 0.0) +
                              time.perf_counter() - self.t0)
    return _Span()

  def pop(self) -> dict[str, float]:
    out, self.totals = self.totals, {}
    return out
