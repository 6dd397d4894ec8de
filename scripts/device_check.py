r"""A ready accelerator check: the GRPO step of a Qwen2.5-0.5B-sized model,
full fine-tuning then LoRA, aimed at under 5 minutes on one GPU.

    python scripts/device_check.py            # a GPU / TPU: two processes
    python scripts/device_check.py --tiny     # CPU, seconds (the test's run)

Each mode is scripts/bench_accelerator.py (random weights, no download) at
the Qwen2.5-0.5B shape: 64 prompts x 8 samples of 128 + 512 tokens, 4
mini-batches x 16 micro-batches, 1 warm-up and 1 timed step; LoRA is rank 16
on all seven projections over a bfloat16 base. Each prints its memory
estimate first, then its figures; at the end one table of both: sampler
tokens/s, update MFU, tokens/s/device and peak memory against r1jax.memory's
estimate.

On an accelerator each mode runs in a fresh process: its peak memory is its
own (a process cannot reset the device's peak), the parent never touches the
device (on a GPU JAX takes 75% of its memory at start-up), and a mode that
runs past --timeout_s is stopped while the other still runs. --tiny (CPU
devices keep no memory statistics, so there is nothing to separate) runs
both in this process. Other flags go to bench_accelerator.py as they are,
e.g. --new_tokens 256 or --remat.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Callable

SCRIPTS = pathlib.Path(__file__).resolve().parent
BENCH = SCRIPTS / 'bench_accelerator.py'
MODES = (('full fine-tuning', ()), ('LoRA r=16', ('--lora', '16')))
# Per mode: two fit in 5 minutes with the parent's own start-up.
TIMEOUT_S = 140
# The timed part: compiling the sampler, the reference pass and the update
# takes most of a mode; one timed step after one warm-up is the figure.
STEP_ARGS = ('--warmup', '1', '--steps', '1')


def _in_process(bench_args: list[str]) -> dict:
  if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
  import bench_accelerator  # pylint: disable=g-import-not-at-top
  return bench_accelerator.main(bench_args)


def _in_subprocess(bench_args: list[str], timeout_s: float,
                   run: Callable = subprocess.run) -> dict:
  """bench_accelerator.py in a fresh interpreter (its output goes straight
  to ours); its summary, or {'error': why}."""
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / 'summary.json'
    cmd = [sys.executable, str(BENCH), *bench_args, '--json', str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(SCRIPTS.parent), os.environ.get('PYTHONPATH')) if p))
    try:
      proc = run(cmd, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
      return {'error': f'stopped after {timeout_s:.0f} s (--timeout_s)'}
    if proc.returncode != 0:
      return {'error': f'exit status {proc.returncode} (its output is above)'}
    return json.loads(out.read_text())


def _pct(x: float | None) -> str:
  return 'n/a' if x is None else f'{100 * x:.1f}%'


def _bytes(n: float | None) -> str:
  if n is None:
    return 'n/a'
  return f'{n / 2**30:.2f} GiB' if n >= 2**30 / 10 else f'{n / 2**20:.1f} MiB'


def table(results: list[tuple[str, dict, float]]) -> str:
  """The two modes side by side (a failed mode: its reason)."""
  lines = ['| mode | sampler tokens/s | update MFU (data sheet; measured '
           'matmul peak) | tokens/s/device | peak memory | estimate | '
           'estimate / peak | wall |', '|' + '---|' * 8]
  for mode, r, wall in results:
    if 'error' in r:
      lines.append(f'| {mode} | {r["error"]} |' + ' |' * 5 + f' {wall:.0f} s |')
      continue
    ratio = (f'{r["estimate_bytes"] / r["peak_bytes"]:.2f}'
             if r.get('peak_bytes') else 'n/a')
    lines.append(
        f'| {mode} | {r["sampler_tokens_per_s"]:.0f} | '
        f'{_pct(r["update_mfu"])}; {_pct(r["update_mfu_measured_peak"])} | '
        f'{r["tokens_per_s_per_device"]:.0f} | {_bytes(r["peak_bytes"])} | '
        f'{_bytes(r["estimate_bytes"])} | {ratio} | {wall:.0f} s |')
  return '\n'.join(lines)


def main(argv=None, run: Callable = subprocess.run) -> list[tuple[str, dict,
                                                                 float]]:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--tiny', action='store_true',
                 help='bench_accelerator.py --tiny, both modes in this '
                 'process (CPU)')
  p.add_argument('--timeout_s', type=float, default=TIMEOUT_S,
                 help='per mode, in its own process')
  args, bench_extra = p.parse_known_args(argv)
  t_start = time.perf_counter()
  results = []
  for mode, mode_args in MODES:
    print(f'=== device check: {mode} ===', flush=True)
    bench_args = [*STEP_ARGS, *mode_args, *bench_extra] + (
        ['--tiny'] if args.tiny else [])
    t0 = time.perf_counter()
    if args.tiny:
      r = _in_process(bench_args)
    else:
      r = _in_subprocess(bench_args, args.timeout_s, run)
    results.append((mode, r, time.perf_counter() - t0))
  ok = [r for _, r, _ in results if 'error' not in r]
  where = (f'{ok[0]["devices"]} x {ok[0]["device_kind"]}' if ok else
           'no mode finished')
  print(f'=== device check: {where}, {time.perf_counter() - t_start:.0f} s '
        f'in all (bench_accelerator.py{" --tiny" if args.tiny else ""}) ===')
  print(table(results))
  return results


if __name__ == '__main__':
  sys.exit(0 if all('error' not in r for _, r, _ in main()) else 1)
