r"""Learning curves of a run, in the manner of DeepSeek-R1's Figures 2 and 3.

    python scripts/plot_metrics.py WORKDIR
    python scripts/plot_metrics.py WORKDIR --compare WORKDIR2 WORKDIR3 \
        --out /tmp/plots --smooth 0.9

Reads WORKDIR/metrics.jsonl (as `r1jax.metrics.MetricWriter` writes it) or,
when there is none, the TensorBoard event files under WORKDIR (read with
tensorboardX's protobuf definitions; the `tensorboard` package is not needed).
Writes one PNG per panel and a combined `curves.png` to --out (default
WORKDIR/plots), and prints the paths written:

  accuracy.png         train/accuracy, eval/pass@1, eval/cons@K, eval/greedy_accuracy
  reward.png           train/reward
  response_length.png  train/response_length_mean, eval/mean_length
  kl.png               train/kl
  format.png           train/format, eval/format_rate
  reflection.png       train/reflection_rate, eval/reflection_rate, eval/recheck_rate

A panel whose keys no run has is skipped. Train curves are lines, eval curves
markers + lines. --compare overlays more runs (one colour per run, legend by
workdir name).

Reading rules: rows are `{"step": int, "time": float, "<name>": value, ...}`;
several rows may share a step. For each metric, when a step comes again later
in the file (a resumed run), the last occurrence wins, and the values that
metric had at later steps from the abandoned run are dropped. Non-finite
values (written as strings such as "nan") leave a gap; other non-numeric
values (sample texts) and malformed lines are skipped.
"""

import argparse
import dataclasses
import json
import math
import os
import pathlib
import re
import struct
import sys
from typing import Iterable, Iterator, Sequence

import matplotlib

matplotlib.use('Agg')
# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
# pylint: enable=g-import-not-at-top,wrong-import-position

Series = tuple[np.ndarray, np.ndarray]  # (steps int64[N], values float64[N])

_SKIP_KEYS = ('step', 'time')


# ----------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------


class _Accumulator:
  """Per metric: step -> value, where a later write of a step wins.

  A write at a step no later than the metric's previous write means the run
  was resumed from an earlier checkpoint: the metric's values at that step and
  after (from the abandoned run) are dropped. A value of None (non-finite)
  takes part in this but is not plotted.
  """

  def __init__(self):
    self._values: dict[str, dict[int, float | None]] = {}
    self._last: dict[str, int] = {}

  def add(self, key: str, step: int, value: float | None) -> None:
    values = self._values.setdefault(key, {})
    if key in self._last and step <= self._last[key]:
      for s in [s for s in values if s >= step]:
        del values[s]
    values[step] = value
    self._last[key] = step

  def series(self) -> dict[str, Series]:
    out = {}
    for key, values in self._values.items():
      points = sorted((s, v) for s, v in values.items() if v is not None)
      if points:
        steps, vals = zip(*points)
        out[key] = (np.asarray(steps, np.int64), np.asarray(vals, np.float64))
    return out


def _number(v) -> tuple[bool, float | None]:
  """(is a metric value, finite value or None) for one JSON value."""
  if isinstance(v, bool):
    return False, None
  if isinstance(v, (int, float)):
    x = float(v)
    return True, (x if math.isfinite(x) else None)
  if isinstance(v, str):
    try:
      x = float(v)
    except ValueError:
      return False, None
    # MetricWriter writes only non-finite values as strings ("nan", "inf").
    return (True, None) if not math.isfinite(x) else (False, None)
  return False, None


def load_metrics(path: str | os.PathLike) -> dict[str, Series]:
  """Metric name -> (steps, values) from a metrics.jsonl file, step-sorted."""
  acc = _Accumulator()
  with open(path, encoding='utf-8') as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        step = int(row['step'])
      except (ValueError, KeyError, TypeError):
        print(f'warning: {path}:{lineno}: skipping a malformed row',
              file=sys.stderr)
        continue
      for key, v in row.items():
        if key in _SKIP_KEYS:
          continue
        is_metric, x = _number(v)
        if is_metric:
          acc.add(key, step, x)
  return acc.series()


def _tfrecords(path: pathlib.Path) -> Iterator[bytes]:
  """The records of a TFRecord file (CRCs not checked; a torn tail ends it)."""
  with open(path, 'rb') as f:
    while True:
      header = f.read(12)  # uint64 length, uint32 masked CRC of the length
      if len(header) < 12:
        return
      (length,) = struct.unpack('<Q', header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


def _event_files(root: pathlib.Path) -> list[pathlib.Path]:
  def order(p):
    m = re.search(r'tfevents\.(\d+)', p.name)
    return (int(m.group(1)) if m else 0, str(p))
  return sorted(root.rglob('events.out.tfevents.*'), key=order)


def load_tensorboard(root: str | os.PathLike) -> dict[str, Series]:
  """Metric name -> (steps, values) from the scalar events under `root`."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  acc = _Accumulator()
  for path in _event_files(pathlib.Path(root)):
    for record in _tfrecords(path):
      event = event_pb2.Event()
      try:
        event.ParseFromString(record)
      except Exception:  # pylint: disable=broad-except
        continue
      if not event.HasField('summary'):
        continue
      for value in event.summary.value:
        kind = value.WhichOneof('value')
        if kind == 'simple_value':
          x = float(value.simple_value)
        elif kind == 'tensor' and len(value.tensor.float_val) == 1:
          x = float(value.tensor.float_val[0])
        else:
          continue  # text, histograms, images
        acc.add(value.tag, int(event.step), x if math.isfinite(x) else None)
  return acc.series()


def load_run(workdir: str | os.PathLike) -> dict[str, Series]:
  """A run's metrics: WORKDIR/metrics.jsonl, a .jsonl path, or TB events."""
  workdir = pathlib.Path(workdir)
  if workdir.is_file():
    return load_metrics(workdir)
  if (workdir / 'metrics.jsonl').is_file():
    return load_metrics(workdir / 'metrics.jsonl')
  if workdir.is_dir() and _event_files(workdir):
    return load_tensorboard(workdir)
  raise FileNotFoundError(
      f'{workdir}: no metrics.jsonl and no TensorBoard event files')


# ----------------------------------------------------------------------------
# Panels
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Panel:
  """One plot: train keys (alternatives, first present wins) + eval keys."""
  name: str
  title: str
  ylabel: str
  train: tuple[str, ...]
  eval: tuple[str, ...] = ()  # regular expressions, matched in full


PANELS = (
    Panel('accuracy', 'Accuracy during training', 'accuracy',
          ('train/accuracy',),
          (r'eval/pass@1', r'eval/cons@\d+', r'eval/greedy_accuracy')),
    Panel('reward', 'Reward during training', 'mean reward',
          ('train/reward', 'train/reward/total')),
    Panel('response_length', 'Average response length during training',
          'tokens', ('train/response_length_mean',), (r'eval/mean_length',)),
    Panel('kl', 'KL to the reference policy', 'KL', ('train/kl',)),
    Panel('format', 'Format rate during training', 'rate',
          ('train/format',), (r'eval/format_rate',)),
    Panel('reflection', 'Reflection during training (R1 reflective words; '
          're-checked steps)', 'share of completions',
          ('train/reflection_rate',),
          (r'eval/reflection_rate', r'eval/recheck_rate')),
)

_EVAL_MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X')


def panel_series(panel: Panel, metrics: dict[str, Series]) -> list[str]:
  """The keys of `metrics` that `panel` plots: one train key, then evals."""
  keys = [next((k for k in panel.train if k in metrics), None)]
  keys = [k for k in keys if k is not None]
  for pattern in panel.eval:
    keys += sorted((k for k in metrics if re.fullmatch(pattern, k)),
                   key=_natural)
  return keys


def _natural(key: str):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', key)]


def _ema(values: np.ndarray, weight: float) -> np.ndarray:
  out = np.empty_like(values)
  m = values[0]
  for i, v in enumerate(values):
    m = weight * m + (1.0 - weight) * v
    out[i] = m
  return out


def _draw(ax, panel: Panel, runs: Sequence[tuple[str, dict[str, Series]]],
          smooth: float) -> None:
  compare = len(runs) > 1
  n = 0
  for r, (run_name, metrics) in enumerate(runs):
    num_eval = 0
    for key in panel_series(panel, metrics):
      steps, values = metrics[key]
      color = f'C{r}' if compare else f'C{n}'
      label = f'{run_name}: {key}' if compare else key
      n += 1
      if key.startswith('eval/'):
        marker = _EVAL_MARKERS[num_eval % len(_EVAL_MARKERS)]
        num_eval += 1
        ax.plot(steps, values, marker=marker, markersize=4, linewidth=1.2,
                linestyle='--' if compare else '-', color=color, label=label)
      elif smooth > 0 and len(values) > 1:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, _ema(values, smooth), color=color, linewidth=1.5,
                label=f'{label} (EMA {smooth:g})')
      else:
        ax.plot(steps, values, color=color, linewidth=1.5, label=label)
  ax.set_title(panel.title, fontsize=10)
  ax.set_xlabel('step')
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel(panel.ylabel)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, loc='best')


def plot_runs(runs: Sequence[tuple[str, dict[str, Series]]],
              out_dir: str | os.PathLike, *, smooth: float = 0.0,
              dpi: int = 120) -> list[pathlib.Path]:
  """Writes <panel>.png for each panel with data, then curves.png."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  panels = [p for p in PANELS
            if any(panel_series(p, metrics) for _, metrics in runs)]
  written = []
  for panel in panels:
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    _draw(ax, panel, runs, smooth)
    fig.tight_layout()
    path = out_dir / f'{panel.name}.png'
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    written.append(path)
  if panels:
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 3.6 * nrows),
                             squeeze=False)
    for ax, panel in zip(axes.flat, panels):
      _draw(ax, panel, runs, smooth)
    for ax in list(axes.flat)[len(panels):]:
      ax.set_visible(False)
    fig.suptitle(', '.join(name for name, _ in runs), fontsize=11)
    fig.tight_layout()
    path = out_dir / 'curves.png'
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    written.append(path)
  return written


def _run_names(workdirs: Iterable[str]) -> list[str]:
  """Legend names: the workdir's name, made unique with its parents."""
  paths = [pathlib.Path(w).resolve() for w in workdirs]
  names = [p.name if p.name != 'metrics.jsonl' else p.parent.name
           for p in paths]
  if len(set(names)) < len(names):
    names = [str(p.relative_to(p.parents[1])) if len(p.parents) > 1 else str(p)
             for p in paths]
  if len(set(names)) < len(names):
    names = [f'{n} [{i}]' for i, n in enumerate(names)]
  return names


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdir', help='run directory holding metrics.jsonl '
                      '(or TensorBoard events), or a metrics .jsonl file')
  parser.add_argument('--compare', nargs='+', default=[], metavar='WORKDIR',
                      help='more runs to overlay')
  parser.add_argument('--out', default=None,
                      help='output directory (default WORKDIR/plots)')
  parser.add_argument('--smooth', type=float, default=0.0,
                      help='EMA weight in [0, 1) for train curves (0: raw)')
  parser.add_argument('--dpi', type=int, default=120)
  args = parser.parse_args(argv)
  if not 0.0 <= args.smooth < 1.0:
    parser.error(f'--smooth={args.smooth}: must be in [0, 1)')

  workdirs = [args.workdir] + list(args.compare)
  runs = []
  for name, workdir in zip(_run_names(workdirs), workdirs):
    try:
      runs.append((name, load_run(workdir)))
    except FileNotFoundError as e:
      parser.error(str(e))
  if args.out is not None:
    out = pathlib.Path(args.out)
  else:
    first = pathlib.Path(args.workdir)
    out = (first.parent if first.is_file() else first) / 'plots'
  written = plot_runs(runs, out, smooth=args.smooth, dpi=args.dpi)
  if not written:
    keys = sorted({k for _, m in runs for k in m})
    print(f'error: none of the plotted metrics are present; the runs have: '
          f'{", ".join(keys) or "(nothing)"}', file=sys.stderr)
    return 1
  for path in written:
    print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
