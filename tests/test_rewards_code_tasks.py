"""The code reward on code tasks: block extraction, the reasons bad input
scores 0, the format check, MBPP / HumanEval reference solutions through the
reward path against running them directly, and the warm worker pool.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from r1jax.data.builders import raw
from r1jax.rewards import code_sandbox
from r1jax.rewards import REWARDS
from r1jax.rewards import sandbox
from r1jax.rewards import sandbox_pool

code_reward = REWARDS.get('code')
code_format = REWARDS.get('code_format')
FAST = dict(timeout_s=2.0, memory_mb=256)
REPO = pathlib.Path(__file__).resolve().parents[1]


def _fenced(program: str) -> str:
  return f'<think>ok</think> <answer>```python\n{program}\n```</answer>'


# ----------------------------------------------------------------------------
# Extraction and format
# ----------------------------------------------------------------------------


def test_code_block():
  assert code_sandbox.code_block('```python\na=1\n```\n```py\nb=2\n```') == (
      'b=2\n')
  assert code_sandbox.code_block('```cpp\nint x;\n```\n```\nc=3\n```') == (
      'c=3\n')
  assert code_sandbox.code_block('print(1)') is None
  assert code_sandbox.code_block('```cpp\nint x;\n```') is None
  # Only the answer block counts when there is one.
  assert code_sandbox.code_block(
      '<think>```python\nx=0\n```</think><answer>print(2)</answer>') is None
  assert code_sandbox.code_block(_fenced('y = 1')) == 'y = 1\n'
  assert code_sandbox.extract_code('print(1)') == 'print(1)'  # the fallback


def test_the_block_defining_the_entry_point_wins():
  """A usage example after the solution is not taken for the program when
  the record names its entry point (chat models often add one)."""
  usage = ('```python\ndef inc(x):\n  return x + 1\n```\nExample:\n'
           '```python\nprint(inc(1))\n```')
  assert code_sandbox.code_block(usage) == 'print(inc(1))\n'
  assert code_sandbox.code_block(usage, 'inc') == (
      'def inc(x):\n  return x + 1\n')
  assert code_sandbox.code_block(usage, 'other') == 'print(inc(1))\n'
  assert code_sandbox.code_block(usage, 'in') == 'print(inc(1))\n'
  tests = ['assert inc(1) == 2']
  r = code_reward([usage] * 2, [{'tests': tests, 'entry_point': 'inc'},
                                {'tests': tests}], **FAST)
  np.testing.assert_array_equal(r, [1, 0])


def test_no_block_scores_zero_unless_the_text_may_be_the_program():
  example = {'tests': ['assert x == 1']}
  metrics = {}
  r = code_reward(['x = 1', _fenced('x = 1')], [example] * 2, metrics=metrics,
                  **FAST)
  np.testing.assert_array_equal(r, [0, 1])
  assert metrics['fail_no_code_block'] == 1 and metrics['runs'] == 1
  assert code_reward(['x = 1'], [example], require_block=False, **FAST)[0] == 1


def test_code_format_reward():
  completions = [
      _fenced('def f(x):\n  return x'),
      _fenced('def f(x) return x'),  # does not parse
      '<think>a</think><answer>def f(x): return x</answer>',  # no block
      '```python\n' + 'a' + '+a' * 60000 + '\n```',  # too long
      '```python\n' + '(' * 5000 + ')' * 5000 + '\n```',  # nested too deep
      '```python\nprint(1)\n```',  # no tags: still a block that parses
  ]
  metrics = {}
  r = code_format(completions, [{}] * len(completions), metrics=metrics)
  np.testing.assert_array_equal(r, [1, 0, 0, 0, 0, 1])
  assert metrics['errors'] == 0
  assert code_format([completions[3]], [{}], max_chars=10**6)[0] == 0


# ----------------------------------------------------------------------------
# Tests: all-or-nothing, fraction, combined runs, the code prefix
# ----------------------------------------------------------------------------

_ASSERTS = ['assert inc(1) == 2', 'assert inc(5) == 6', 'assert inc(-1) == 0']


def test_all_or_nothing_and_fraction():
  right = _fenced('def inc(x):\n  return x + 1')
  half = _fenced('def inc(x):\n  return abs(x) + 1')  # wrong on -1 only
  example = {'tests': _ASSERTS}
  metrics = {}
  r = code_reward([right, half], [example] * 2, metrics=metrics, **FAST)
  np.testing.assert_array_equal(r, [1, 0])
  assert metrics['runs'] == 2  # the asserts of each completion in one run
  assert metrics['passed'] == 1 and metrics['fail_wrong_answer'] == 1
  metrics = {}
  r = code_reward([right, half], [example] * 2, mode='fraction',
                  metrics=metrics, **FAST)
  np.testing.assert_allclose(r, [1, 2 / 3], rtol=1e-6)
  assert metrics['runs'] == 6  # one run per test
  # Separate runs, stopping at the first failure, give the same scores.
  metrics = {}
  r = code_reward([right, half], [example] * 2, combine=False,
                  metrics=metrics, **FAST)
  np.testing.assert_array_equal(r, [1, 0])
  assert metrics['runs'] == 3 + 3


def test_code_prefix_goes_before_the_program():
  """HumanEval: the prompt (imports, helpers) precedes the completion."""
  prompt = ('from typing import List\n\n\ndef helper(x: int) -> int:\n'
            '    return 2 * x\n\n\ndef double_all(xs: List[int]) -> List[int]:'
            '\n    """Doubles each."""\n')
  completion = _fenced('def double_all(xs: List[int]) -> List[int]:\n'
                       '    return [helper(x) for x in xs]')
  example = {'tests': ['def check(c):\n  assert c([1, 2]) == [2, 4]\n'
                       'check(double_all)'], 'code_prefix': prompt}
  assert code_reward([completion], [example], **FAST)[0] == 1
  assert code_reward([completion], [{'tests': example['tests']}],
                     **FAST)[0] == 0  # List and helper are undefined
  # A completion that keeps the prompt's stub (no body) fails the tests.
  assert code_reward([_fenced('pass')], [example], **FAST)[0] == 0


# ----------------------------------------------------------------------------
# Bad input: 0, with its reason counted; the batch is not held up
# ----------------------------------------------------------------------------


def test_bad_input_scores_zero_with_its_reason():
  cases = {
      'passed': _fenced('def inc(x):\n  return x + 1'),
      'no_code_block': 'def inc(x): return x + 1',
      'syntax_error': _fenced('def inc(x)\n  return x + 1'),
      'timeout': _fenced('def inc(x):\n  while True:\n    pass'),
      'output_limit': _fenced('for _ in range(10**6):\n  print("x" * 10**4)'),
      'memory': _fenced('x = bytearray(2 * 1024**3)'),
      'missing_module': _fenced('import numpy\ndef inc(x):\n  return x + 1'),
      'wrong_answer': _fenced('def inc(x):\n  return x'),
      'runtime_error': _fenced('def inc(x):\n  return x / 0'),
      'exited_early': _fenced('import os\nos._exit(0)'),
  }
  examples = [{'tests': _ASSERTS}] * len(cases)
  # A test program that imports a missing module fails the same way.
  cases['missing_module (tests)'] = cases['passed']
  examples.append({'tests': ['import numpy'] + _ASSERTS})
  metrics = {}
  t0 = time.monotonic()
  r = code_reward(list(cases.values()), examples, metrics=metrics,
                  max_output_bytes=1 << 20, **FAST)
  seconds = time.monotonic() - t0
  np.testing.assert_array_equal(r, [1] + [0] * (len(cases) - 1))
  assert metrics['passed'] == 1 and metrics['errors'] == 0
  expected = {f'fail_{reason}': 0.0 for reason in code_sandbox.REASONS}
  for name in list(cases)[1:]:
    expected[f'fail_{name.split()[0]}'] += 1
  assert {k: metrics[k] for k in expected} == expected
  assert metrics['timeouts'] == 1
  # One time-out of 2 s; the other runs take milliseconds each.
  assert seconds < 15, seconds


def test_failure_reason_from_how_a_run_ended():
  def run(rc, stderr='', timed_out=False, capped=False):
    return sandbox.RunResult(rc, '', stderr, timed_out, 0.0, False, capped)

  reason = code_sandbox.failure_reason
  assert reason(run(None)) == 'sandbox_error'
  assert reason(run(-9, timed_out=True)) == 'timeout'
  assert reason(run(-signal.SIGXCPU)) == 'timeout'
  assert reason(run(1, 'OSError: [Errno 27] File too large', capped=True)) == (
      'output_limit')
  assert reason(run(1, 'Traceback...\n  x\nTabError: bad\n')) == 'syntax_error'
  assert reason(run(1, "ImportError: sandbox: module 'ctypes'")) == (
      'missing_module')
  assert reason(run(1, 'KeyError: 3')) == 'runtime_error'
  assert reason(run(0)) == 'exited_early'
  assert reason(run(0), assert_test=False) == 'wrong_answer'


# ----------------------------------------------------------------------------
# Reference solutions: the reward path passes what running them directly does
# ----------------------------------------------------------------------------

_MBPP_IDS = (11, 12, 13, 17, 341, 367)  # 341: set order (fails, see README)
_HUMANEVAL_IDS = (0, 10, 32, 38, 50)  # helpers in the prompt: 10, 32, 38, 50


def _rows(shared_data, name):
  path = shared_data / 'code' / f'{name}.jsonl'
  if not path.is_file():
    pytest.skip(f'{path} is absent')
  return [json.loads(line) for line in path.open()]


def _direct_pass(program: str) -> bool:
  """The data README's check: one plain `python` per problem, 10 s."""
  try:
    proc = subprocess.run([sys.executable, '-c', program],
                          capture_output=True, timeout=10, check=False)
  except subprocess.TimeoutExpired:
    return False
  return proc.returncode == 0


def test_reference_solutions_pass_as_when_run_directly(shared_data):
  mbpp_rows = {r['task_id']: r for r in _rows(shared_data, 'mbpp')}
  he_rows = _rows(shared_data, 'humaneval')
  direct, records = [], []
  for i in _MBPP_IDS:
    r = mbpp_rows[i]
    direct.append(_direct_pass(r['code'] + '\n' + r['test_setup_code'] + '\n'
                               + '\n'.join(r['test_list'])))
  split = lambda i: next(s for s, (lo, hi) in raw.MBPP_SPLITS.items()
                         if lo <= i <= hi)
  for i in _MBPP_IDS:
    path = shared_data / 'code/mbpp.jsonl'
    records.append(next(rec for _, rec in raw.mbpp_records(path, split(i))
                        if rec['id'] == f'mbpp/{i}'))
  humaneval = dict(raw.humaneval_records(shared_data / 'code/humaneval.jsonl'))
  for i in _HUMANEVAL_IDS:
    r = he_rows[i]
    direct.append(_direct_pass(r['prompt'] + r['canonical_solution'] + '\n'
                               + r['test'] + '\n'
                               + f'check({r["entry_point"]})'))
    records.append(humaneval[i + 1])  # keyed by line number
  completions = [_fenced(rec['solution']) for rec in records]
  reward = code_reward(completions, records, timeout_s=10.0)
  assert reward.tolist() == [float(d) for d in direct]
  assert sum(direct) == len(direct) - 1  # all but MBPP 341


# ----------------------------------------------------------------------------
# The warm worker pool
# ----------------------------------------------------------------------------


def _run(program: str, **kw) -> sandbox.RunResult:
  return sandbox.run_in_sandbox(program,
                                limits=sandbox.SandboxLimits(timeout_s=2, **kw))


def test_workers_are_reused_and_runs_leave_nothing_behind():
  pool = sandbox_pool.get_pool(True)
  assert _run('open("left", "w").write("x")\nprint("wrote")').stdout == (
      'wrote\n')
  started = pool.started
  seen = {_run('import os\nprint(sorted(os.listdir(".")))').stdout
          for _ in range(4)}
  assert seen == {"['stderr.txt', 'stdin.txt', 'stdout.txt']\n"}
  assert pool.started == started  # no new worker for sequential runs
  # Each run draws fresh random numbers (the workers' state is not shared).
  draws = {_run('import random\nprint(random.random())').stdout
           for _ in range(3)}
  assert len(draws) == 3


def test_a_dead_worker_is_replaced():
  _run('pass')
  for pid in sandbox_pool.worker_pids():
    os.kill(pid, signal.SIGKILL)
  r = _run('print("still here")')
  assert r.stdout == 'still here\n'


def test_a_stalled_worker_is_killed_and_replaced(monkeypatch):
  """A worker that stops answering is killed after the guard time; a run it
  had not begun goes to a new worker, one it had begun scores 0 (a sandbox
  error). Either way the caller waits at most the guard past the limit."""
  monkeypatch.setattr(sandbox, 'GUARD_S', 1.0)
  example = [{'tests': ['assert x == 1']}]
  _run('pass')
  stalled = sandbox_pool.worker_pids()
  for pid in stalled:
    os.kill(pid, signal.SIGSTOP)
  t0 = time.monotonic()
  metrics = {}
  r = code_reward([_fenced('x = 1')], example, metrics=metrics,
                  timeout_s=1.0, max_workers=1)
  assert time.monotonic() - t0 < 8
  assert r[0] == 1 and metrics['fail_sandbox_error'] == 0
  assert not set(stalled) & set(sandbox_pool.worker_pids())

  def stop_soon():
    time.sleep(0.5)
    for pid in sandbox_pool.worker_pids():
      os.kill(pid, signal.SIGSTOP)

  threading.Thread(target=stop_soon).start()
  t0 = time.monotonic()
  metrics = {}
  r = code_reward([_fenced('import time\ntime.sleep(1.0)\nx = 1')], example,
                  metrics=metrics, timeout_s=1.5, max_workers=1)
  assert time.monotonic() - t0 < 8
  assert r[0] == 0 and metrics['fail_sandbox_error'] == 1
  assert _run('print(1)').stdout == '1\n'


def test_workers_exit_with_their_parent(tmp_path):
  """A SIGKILLed caller cannot stop its workers: they exit by themselves
  within seconds, and a later pool removes the empty directories they leave."""
  script = textwrap.dedent("""
      import os, signal
      from r1jax.rewards import sandbox, sandbox_pool
      sandbox.run_in_sandbox('pass')
      print(os.getpid(), sandbox_pool.worker_pids()[0], flush=True)
      os.kill(os.getpid(), signal.SIGKILL)  # no clean shutdown
  """)
  proc = subprocess.run([sys.executable, '-c', script], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  caller, pid = map(int, proc.stdout.split()[-2:])
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      break
    time.sleep(0.1)
  else:
    os.kill(pid, signal.SIGKILL)
    pytest.fail(f'worker {pid} outlived its parent')
  tmp = pathlib.Path(sandbox_pool.tempfile.gettempdir())
  left = list(tmp.glob(f'{sandbox_pool.DIR_PREFIX}{caller}_*'))
  assert len(left) == 1 and not any(left[0].iterdir())
  sandbox_pool.sweep_orphaned_dirs()
  assert not left[0].exists()


def test_the_sweep_removes_only_empty_dirs_of_dead_processes(tmp_path):
  gone = subprocess.Popen([sys.executable, '-c', 'pass'])
  gone.wait()
  prefix = sandbox_pool.DIR_PREFIX
  empty_dead = tmp_path / f'{prefix}{gone.pid}_a'
  full_dead = tmp_path / f'{prefix}{gone.pid}_b'
  empty_alive = tmp_path / f'{prefix}{os.getpid()}_c'
  other = tmp_path / 'r1jax_sandbox_cold'
  for d in (empty_dead, full_dead, empty_alive, other):
    d.mkdir()
  (full_dead / 'f').write_text('x')
  assert sandbox_pool.sweep_orphaned_dirs(str(tmp_path)) == 1
  assert not empty_dead.exists()
  assert full_dead.exists() and empty_alive.exists() and other.exists()


def test_many_completions_in_parallel():
  programs = [f'def inc(x):\n  return x + {1 if i % 3 else 2}'
              for i in range(48)]
  metrics = {}
  r = code_reward([_fenced(p) for p in programs], [{'tests': _ASSERTS}] * 48,
                  metrics=metrics, max_workers=4, **FAST)
  np.testing.assert_array_equal(r, [0 if i % 3 == 0 else 1 for i in range(48)])
  assert metrics['runs'] == 48 and metrics['errors'] == 0
