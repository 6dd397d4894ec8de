"""Throughput of the math reward on real MATH-500 pairs, with the process pool.

    python scripts/bench_rewards.py --workers=2
    python scripts/bench_rewards.py --data_dir=../shared/data --repeats=3

1000 (completion, gold) pairs: the 500 MATH-500 reference solutions and the
same 500 with the boxed answer perturbed (last digit + 1, or `+1` appended).
Prints, in completions per second (pool start-up excluded, reported apart):
  * `reward`: the `math` reward as training calls it (fast path first, the
    undecided rest through the math-verify pool);
  * `symbolic`: every pair forced through the pool (the prediction re-boxed so
    that neither the fast path nor the worker's string shortcut applies) --
    the cost of math-verify itself.
It also prints the self-check rate (reference solutions scoring 1) and the
perturbed pairs scoring 0.
"""

import argparse
import json
import pathlib
import sys
import time

import numpy as np

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
from r1jax.rewards import math_answer
from r1jax.rewards import math_verify_pool
from r1jax.rewards import REWARDS
# pylint: enable=g-import-not-at-top,wrong-import-position


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir',
                      default=str(_ROOT.parent / 'shared' / 'data'))
  parser.add_argument('--workers', type=int, default=None,
                      help='pool size (default: half the CPUs)')
  parser.add_argument('--timeout_s', type=float, default=5.0)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()

  path = pathlib.Path(args.data_dir) / 'math' / 'math500.jsonl'
  rows = [json.loads(line) for line in path.open()]
  completions = [r['solution'] for r in rows]
  completions += [
      math_answer.replace_last_boxed(
          r['solution'], math_answer.perturb_answer(r['answer']))
      for r in rows]
  examples = [{'answer': r['answer']} for r in rows] * 2
  n = len(completions)

  t0 = time.perf_counter()
  pool = math_verify_pool.get_pool(args.workers, args.timeout_s)
  pool.verify([('\\sqrt{4}', '2')])
  startup = time.perf_counter() - t0
  print(f'pool: {pool.num_workers} workers, start-up {startup:.2f} s, '
        f'timeout {args.timeout_s} s per item')

  fn = REWARDS.get('math')
  best = float('inf')
  for _ in range(args.repeats):
    metrics = {}
    t0 = time.perf_counter()
    r = fn(completions, examples, num_workers=pool.num_workers,
           timeout_s=args.timeout_s, metrics=metrics)
    best = min(best, time.perf_counter() - t0)
  self_rate = r[:500].mean()
  print(f'self-check: {int(r[:500].sum())}/500 reference solutions score 1 '
        f'({100 * self_rate:.1f}%); perturbed scoring 1: '
        f'{int(r[500:].sum())}/500')
  print(f'reward  : {n} completions in {best:.3f} s = {n / best:,.0f} '
        f'completions/s (fast path decided {int(metrics["fast_decided"])}, '
        f'pool {int(metrics["pool_items"])}, timeouts '
        f'{int(metrics["timeouts"])})')

  preds = [math_answer.extract_answer(c) for c in completions]
  pairs = [('\\boxed{' + p + '}', ex['answer'])
           for p, ex in zip(preds, examples)]
  best = float('inf')
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    ok, stats = pool.verify(pairs)
    best = min(best, time.perf_counter() - t0)
  ok = np.asarray(ok)
  print(f'symbolic: {n} pairs in {best:.3f} s = {n / best:,.0f} pairs/s '
        f'(math-verify accepts {int(ok[:500].sum())}/500 references, '
        f'{int(ok[500:].sum())}/500 perturbed; timeouts {stats.timeouts})')
  math_verify_pool.shutdown_pool()


if __name__ == '__main__':
  main()
