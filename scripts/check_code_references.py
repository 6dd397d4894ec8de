"""MBPP and HumanEval reference solutions: through the reward path vs directly.

    python scripts/check_code_references.py --data_dir=../shared/data

Directly: one plain `python -c PROGRAM` per problem (10 s), the program as
the data README builds it (MBPP: code + setup + asserts; HumanEval: prompt +
canonical solution + test + check(entry_point)). Through the reward path:
each record's `solution` as a completion (`<answer>` with a fenced block),
scored by the `code` reward on the record's `tests` and `code_prefix`, in the
sandbox. Prints, per set, the pass counts of both, the problems that fail,
and whether the two agree problem by problem.
"""

import argparse
import concurrent.futures
import json
import pathlib
import subprocess
import sys
import time

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

# pylint: disable=g-import-not-at-top,wrong-import-position
from r1jax.data.builders import raw
from r1jax.rewards import REWARDS
# pylint: enable=g-import-not-at-top,wrong-import-position


def direct_pass(program: str, timeout_s: float) -> bool:
  try:
    proc = subprocess.run([sys.executable, '-c', program], capture_output=True,
                          timeout=timeout_s, check=False)
  except subprocess.TimeoutExpired:
    return False
  return proc.returncode == 0


def load(data_dir: pathlib.Path, name: str):
  """(ids, direct programs, reward records) of a whole set, in file order."""
  path = data_dir / 'code' / f'{name}.jsonl'
  rows = [json.loads(line) for line in path.open()]
  if name == 'mbpp':
    programs = [r['code'] + '\n' + r['test_setup_code'] + '\n'
                + '\n'.join(r['test_list']) for r in rows]
    by_line = {}
    for split in raw.MBPP_SPLITS:
      by_line.update(dict(raw.mbpp_records(path, split)))
  else:
    programs = [r['prompt'] + r['canonical_solution'] + '\n' + r['test']
                + '\n' + f'check({r["entry_point"]})' for r in rows]
    by_line = dict(raw.humaneval_records(path))
  records = [by_line[i + 1] for i in range(len(rows))]
  return [r['id'] for r in records], programs, records


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data_dir',
                      default=str(_ROOT.parent / 'shared' / 'data'))
  parser.add_argument('--sets', default='mbpp,humaneval')
  parser.add_argument('--timeout_s', type=float, default=10.0)
  parser.add_argument('--workers', type=int, default=2)
  args = parser.parse_args(argv)
  for name in [s.strip() for s in args.sets.split(',') if s.strip()]:
    ids, programs, records = load(pathlib.Path(args.data_dir), name)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
      direct = list(pool.map(lambda p: direct_pass(p, args.timeout_s),
                             programs))
    t_direct = time.perf_counter() - t0
    completions = [f'<think>reference</think> <answer>```python\n'
                   f'{r["solution"]}\n```</answer>' for r in records]
    metrics = {}
    t0 = time.perf_counter()
    reward = REWARDS.get('code')(completions, records, metrics=metrics,
                                 timeout_s=args.timeout_s,
                                 max_workers=args.workers)
    t_reward = time.perf_counter() - t0
    via = [bool(x) for x in reward]
    fail_d = [i for i, ok in zip(ids, direct) if not ok]
    fail_r = [i for i, ok in zip(ids, via) if not ok]
    reasons = {k[5:]: int(v) for k, v in metrics.items()
               if k.startswith('fail_') and v}
    print(f'{name}: directly {sum(direct)}/{len(ids)} pass ({t_direct:.1f} s,'
          f' failing: {", ".join(fail_d) or "none"}); reward path '
          f'{sum(via)}/{len(ids)} ({t_reward:.1f} s, failing: '
          f'{", ".join(fail_r) or "none"}; reasons {reasons or "-"}); '
          + ('the same problems pass' if direct == via else
             'DIFFERENT problems pass'))


if __name__ == '__main__':
  main()
