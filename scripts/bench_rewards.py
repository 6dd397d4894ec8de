"""Throughput of the math and code rewards on real data.

    python scripts/bench_rewards.py --workers=2
    python scripts/bench_rewards.py --data_dir=../shared/data --repeats=3
    python scripts/bench_rewards.py --rewards=code --code_completions=256

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

The code reward (`--rewards=code`) runs MBPP train-split programs (task_id
601+, the reference solutions) with their three assert tests: half of the
completions are the references, half the same programs with the entry point
replaced by a stub that fails the first assert, as a GRPO group mixes right
and wrong answers. Prints `code: N completions/s` for the sandbox as the
reward uses it (runs forked from warm workers; their start-up excluded,
reported apart) and, with `--code_cold`, the original path (a fresh
interpreter per test) on the same completions, plus the pass counts of both
(they must agree) and the time of 128 completions (a GRPO step's batch).
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
from r1jax.data.builders import raw
from r1jax.rewards import code_sandbox
from r1jax.rewards import math_answer
from r1jax.rewards import math_verify_pool
from r1jax.rewards import REWARDS
from r1jax.rewards import sandbox_pool
# pylint: enable=g-import-not-at-top,wrong-import-position


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir',
                      default=str(_ROOT.parent / 'shared' / 'data'))
  parser.add_argument('--rewards', default='math,code',
                      help='comma-separated: math, code')
  parser.add_argument('--workers', type=int, default=None,
                      help='math-verify pool size (default: half the CPUs); '
                      'code: completions checked in parallel (default '
                      'min(8, CPUs))')
  parser.add_argument('--timeout_s', type=float, default=5.0)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--code_completions', type=int, default=256)
  parser.add_argument('--code_cold', action=argparse.BooleanOptionalAction,
                      default=True, help='also time the original path (a '
                      'fresh interpreter per test)')
  args = parser.parse_args(argv)
  rewards = [r.strip() for r in args.rewards.split(',') if r.strip()]
  if 'math' in rewards:
    bench_math(args)
  if 'code' in rewards:
    bench_code(args)


def bench_math(args) -> None:
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


def mbpp_completions(data_dir: str, n: int) -> tuple[list[str], list[dict]]:
  """n completions of MBPP train tasks (601+): references, then the same
  programs with the entry point stubbed out (wrong at the first assert)."""
  path = pathlib.Path(data_dir) / 'code' / 'mbpp.jsonl'
  records = [r for _, r in raw.mbpp_records(path, 'train')]
  half = [records[i % len(records)] for i in range(n - n // 2)]
  wrong = half[:n // 2]
  fence = lambda code: (f'<think>x</think> <answer>```python\n{code}\n```'
                        '</answer>')
  completions = [fence(r['solution']) for r in half]
  completions += [fence(f"{r['solution']}\n\n{r['entry_point']} = "
                        'lambda *args, **kwargs: None') for r in wrong]
  return completions, half + wrong


def _time_code(completions, examples, repeats, **options):
  fn = REWARDS.get('code')
  best, out, metrics = float('inf'), None, {}
  for _ in range(repeats):
    metrics = {}
    t0 = time.perf_counter()
    out = fn(completions, examples, metrics=metrics, **options)
    best = min(best, time.perf_counter() - t0)
  return best, out, metrics


def bench_code(args) -> None:
  completions, examples = mbpp_completions(args.data_dir,
                                           args.code_completions)
  n = len(completions)
  workers = args.workers or code_sandbox.default_max_workers()
  options = dict(max_workers=workers, timeout_s=args.timeout_s)
  t0 = time.perf_counter()
  sandbox_pool.get_pool(True).warm(workers)
  print(f'code sandbox: {workers} warm workers started in '
        f'{time.perf_counter() - t0:.2f} s; {n} MBPP train completions '
        f'({n - n // 2} reference solutions, {n // 2} stubbed), 3 asserts each')
  best, r, metrics = _time_code(completions, examples, args.repeats, **options)
  print(f'code: {n / best:,.1f} completions/s ({n} in {best:.3f} s; '
        f'{int(r.sum())} pass, {int(metrics["runs"])} runs, timeouts '
        f'{int(metrics["timeouts"])})')
  k = min(128, n)
  sub = slice(0, k // 2), slice(n - n // 2, n - n // 2 + k - k // 2)
  part = [c for s in sub for c in completions[s]]
  part_ex = [e for s in sub for e in examples[s]]
  best128, _, _ = _time_code(part, part_ex, args.repeats, **options)
  print(f'code: {k} completions (one GRPO step of 128) in '
        f'{best128:.3f} s')
  if args.code_cold:
    cold, rc, mc = _time_code(completions, examples, 1, pool=False,
                              combine=False, **options)
    print(f'code (before: a fresh interpreter per test): {n / cold:,.1f} '
          f'completions/s ({n} in {cold:.3f} s; {int(rc.sum())} pass, '
          f'{int(mc["runs"])} runs); warm workers {cold / best:.1f}x faster')
    if not np.array_equal(r, rc):
      print(f'  scores differ on {int((r != rc).sum())} completions')
  sandbox_pool.shutdown_pools()


if __name__ == '__main__':
  main()
