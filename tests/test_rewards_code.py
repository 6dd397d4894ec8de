"""The code reward and its sandbox, including an adversarial suite.

Each attack is written so that, if it got through, the program would print
the expected output and score 1; scoring 0 therefore shows it was contained.
Where it is safe, the same program is first run without the sandbox to show
that the attack really works there (so the test can fail).

Every test runs twice: with the warm worker pool (runs forked from a warm
interpreter, the default) and with a fresh interpreter per run (`pool=False`).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from r1jax.rewards import code_sandbox
from r1jax.rewards import REWARDS

code_reward = REWARDS.get('code')
FAST = dict(timeout_s=1.0, memory_mb=256)


@pytest.fixture(autouse=True, params=['pool', 'cold'])
def sandbox_kind(request, monkeypatch):
  """Runs each test with the warm workers and with fresh interpreters."""
  monkeypatch.setitem(FAST, 'pool', request.param == 'pool')
  return request.param


def _limits(**kw) -> 'code_sandbox.SandboxLimits':
  return code_sandbox.SandboxLimits(pool=FAST['pool'], **kw)


def _score(program: str, expected: str, stdin: str = '', **options) -> float:
  completion = f'Here is my solution.\n```python\n{program}\n```'
  example = {'tests': [{'input': stdin, 'output': expected}]}
  return float(code_reward([completion], [example], **{**FAST, **options})[0])


def _unsandboxed_stdout(program: str) -> str:
  return subprocess.run([sys.executable, '-c', program], capture_output=True,
                        text=True, timeout=10, check=False).stdout


def _sandbox_processes() -> list[int]:
  """Sandboxed runs of this process still alive: processes running
  _sandbox_boot.py below this one, its idle warm workers excepted (sandboxes
  of other processes on the machine, e.g. another test run, are not ours)."""
  workers = set(code_sandbox.worker_pids())
  boot, parent = set(), {}
  for pid in map(int, filter(str.isdigit, os.listdir('/proc'))):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        if b'_sandbox_boot.py' in f.read():
          boot.add(pid)
      with open(f'/proc/{pid}/stat') as f:
        parent[pid] = int(f.read().rsplit(')', 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
      pass

  def ours(pid: int) -> bool:
    for _ in range(64):
      pid = parent.get(pid, 0)
      if pid == os.getpid():
        return True
      if pid <= 1:
        return False
    return False

  return sorted(p for p in boot - workers if ours(p))


# ----------------------------------------------------------------------------
# Ordinary use
# ----------------------------------------------------------------------------


def test_stdin_tests():
  program = 'a, b = map(int, input().split())\nprint(a + b)'
  completion = f'<think>easy</think><answer>```python\n{program}\n```</answer>'
  example = {'tests': [{'input': '1 2\n', 'output': '3\n'},
                       {'input': '10 -4', 'output': '6'}]}
  wrong = {'tests': [{'input': '1 2\n', 'output': '3\n'},
                     {'input': '1 1', 'output': '3'}]}
  r = code_reward([completion] * 2, [example, wrong], **FAST)
  np.testing.assert_array_equal(r, [1, 0])
  r = code_reward([completion] * 2, [example, wrong], mode='fraction', **FAST)
  np.testing.assert_array_equal(r, [1, 0.5])


def test_assert_tests():
  program = 'def add(a, b):\n  return a + b\n'
  tests = 'assert add(1, 2) == 3\nassert add(-1, 1) == 0\n'
  good = f'```python\n{program}```'
  bad = '```python\ndef add(a, b):\n  return a - b\n```'
  r = code_reward([good, bad], [{'tests': tests}, {'tests': [tests]}], **FAST)
  np.testing.assert_array_equal(r, [1, 0])


@pytest.mark.parametrize('escape', [
    'import sys; sys.exit(0)', 'import os; os._exit(0)', 'raise SystemExit',
])
def test_exiting_early_does_not_pass_assert_tests(escape):
  program = f'def add(a, b):\n  return a - b\n{escape}\n'
  r = code_reward([f'```python\n{program}```'],
                  [{'tests': 'assert add(1, 2) == 3'}], **FAST)
  assert r[0] == 0


def test_main_guard_is_skipped_for_assert_tests():
  program = ('def f():\n  return 1\n'
             "if __name__ == '__main__':\n  input()\n")
  r = code_reward([f'```python\n{program}```'], [{'tests': 'assert f() == 1'}],
                  **FAST)
  assert r[0] == 1


def test_extract_code():
  assert code_sandbox.extract_code('```python\na=1\n```\n```python\nb=2\n```') == 'b=2\n'
  assert code_sandbox.extract_code('```cpp\nint x;\n```\n```\nc=3\n```') == 'c=3\n'
  assert code_sandbox.extract_code('print(1)') == 'print(1)'
  assert code_sandbox.extract_code(
      '<think>```python\nx=0\n```</think><answer>print(2)</answer>') == 'print(2)'


def test_outputs_match():
  assert code_sandbox.outputs_match('1 2\n3\n\n', '1 2\n3')
  assert not code_sandbox.outputs_match('1 2 3', '1 2')
  assert not code_sandbox.outputs_match('0.3333333', '0.333333')
  assert code_sandbox.outputs_match('0.3333333', '0.333333', float_tol=1e-6)


def test_normalize_tests():
  t = code_sandbox.normalize_tests(
      [{'input': '1', 'output': '2'}, 'assert True'])
  assert t[0] == code_sandbox.TestCase('1', '2') and t[1].code == 'assert True'
  t = code_sandbox.normalize_tests({'inputs': ['a', 'b'], 'outputs': ['1', '2']})
  assert [c.output for c in t] == ['1', '2']
  assert code_sandbox.normalize_tests(None) == []
  assert code_reward(['print(1)'], [{}], **FAST)[0] == 0


# ----------------------------------------------------------------------------
# Adversarial suite
# ----------------------------------------------------------------------------


def test_infinite_loop_is_killed():
  t0 = time.monotonic()
  assert _score('while True:\n  pass\nprint("done")', 'done') == 0
  assert _score('import time\ntime.sleep(60)\nprint("done")', 'done') == 0
  assert time.monotonic() - t0 < 8


def test_fork_bomb_is_contained():
  t0 = time.monotonic()
  bombs = [
      'import os\nwhile True:\n  os.fork()',
      'import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n    pass',
      'import multiprocessing as mp\nwhile True:\n  mp.Process(target=id).start()',
      'import subprocess, sys\nwhile True:\n  subprocess.Popen([sys.executable])',
      'import os\nos.system("sleep 100 &")\nprint("done")',
      'import os\nos.posix_spawn("/bin/sleep", ["sleep", "100"], {})\nprint("done")',
      'import os\nos.execv("/bin/echo", ["echo", "done"])',
      'import _posixsubprocess\nprint(_posixsubprocess.fork_exec)\nprint("done")',
  ]
  for bomb in bombs:
    assert _score(bomb, 'done') == 0, bomb
  assert time.monotonic() - t0 < 30
  assert not _sandbox_processes()


def test_fork_is_refused_but_would_work_outside():
  program = ('import os\npid = os.fork()\nif pid == 0:\n  os._exit(0)\n'
             'os.waitpid(pid, 0)\nprint("forked")')
  assert _unsandboxed_stdout(program).strip() == 'forked'
  assert _score(program, 'forked') == 0


def test_memory_bomb_is_contained():
  program = 'x = bytearray(2 * 1024**3)\nprint("allocated")'
  assert _score(program, 'allocated', memory_mb=256) == 0
  program = 'x = []\nwhile True:\n  x.append(" " * 10**7)'
  assert _score(program, 'done', memory_mb=256) == 0
  # Within the limit, memory is fine.
  assert _score('x = bytearray(50 * 1024**2)\nprint("ok")', 'ok') == 1


def test_output_flood_is_capped():
  t0 = time.monotonic()
  r = code_sandbox.run_in_sandbox(
      'while True:\n  print("x" * 10000)',
      limits=_limits(timeout_s=5, max_output_bytes=1 << 20))
  assert r.returncode != 0 and len(r.stdout) <= 1 << 20
  assert time.monotonic() - t0 < 5


@pytest.fixture
def local_server():
  """A TCP server on this machine's loopback that answers 'connected'."""
  server = socket.socket()
  server.bind(('127.0.0.1', 0))
  server.listen()
  server.settimeout(10)

  def serve():
    try:
      while True:
        conn, _ = server.accept()
        conn.sendall(b'connected\n')
        conn.close()
    except OSError:
      pass

  threading.Thread(target=serve, daemon=True).start()
  yield server.getsockname()[1]
  server.close()


def test_network_is_blocked(local_server):
  program = ('import socket\n'
             f's = socket.create_connection(("127.0.0.1", {local_server}), timeout=2)\n'
             'print(s.recv(100).decode().strip())')
  assert _unsandboxed_stdout(program).strip() == 'connected'
  assert _score(program, 'connected') == 0
  raw = ('import _socket\n'
         f's = _socket.socket()\ns.connect(("127.0.0.1", {local_server}))\n'
         'print(s.recv(100).decode().strip())')
  assert _score(raw, 'connected') == 0


def test_writing_outside_the_working_directory_fails(tmp_path):
  target = tmp_path / 'escaped.txt'
  programs = [
      f'open({str(target)!r}, "w").write("x")\nprint("wrote")',
      f'import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n'
      'os.write(fd, b"x")\nprint("wrote")',
      f'import os\nos.symlink({str(target)!r}, "link")\n'
      'open("link", "w").write("x")\nprint("wrote")',
      f'open("a", "w").write("x")\nimport os\nos.rename("a", {str(target)!r})\n'
      'print("wrote")',
      f'import shutil\nopen("a", "w").write("x")\n'
      f'shutil.copy("a", {str(target)!r})\nprint("wrote")',
      f'import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\n'
      'os.close(os.open("escaped.txt", os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n'
      'print("wrote")',
  ]
  assert _unsandboxed_stdout(programs[0]).strip() == 'wrote'
  target.unlink()
  for program in programs:
    assert _score(program, 'wrote') == 0, program
    assert not target.exists(), program
  # Inside its own directory a program may write.
  assert _score('open("f", "w").write("7")\nprint(open("f").read())', '7') == 1


_ENV_PROBE = r"""
import json, os, subprocess, sys
from r1jax.rewards import REWARDS
program, secret, pool = sys.argv[1], sys.argv[2], sys.argv[3] == 'pool'
outside = subprocess.run([sys.executable, '-c', program], capture_output=True,
                         text=True, check=False).stdout.strip()
score = REWARDS.get('code')(
    ['```python\n' + program + '\n```'],
    [{'tests': [{'input': '', 'output': secret}]}], timeout_s=2.0,
    pool=pool)[0]
print(json.dumps({'outside': outside, 'score': float(score)}))
"""


@pytest.mark.parametrize('program', [
    'import os\nprint(os.environ.get("R1JAX_TEST_SECRET"))',
    # The parent's environment as the kernel shows it, not via os.environ.
    'import os\n'
    'env = open(f"/proc/{os.getppid()}/environ", "rb").read().split(b"\\0")\n'
    'print([v for v in env if v.startswith(b"R1JAX_TEST_SECRET=")][0][18:]'
    '.decode())',
], ids=['os.environ', 'proc-environ'])
def test_parent_environment_is_not_visible(program, sandbox_kind):
  """A parent started with a secret in its environment runs the sandbox."""
  secret = 'r1jax-test-secret-4f1c'
  root = pathlib.Path(__file__).resolve().parents[1]
  env = {**os.environ, 'R1JAX_TEST_SECRET': secret,
         'PYTHONPATH': str(root)}
  out = subprocess.run(
      [sys.executable, '-c', _ENV_PROBE, program, secret, sandbox_kind],
      env=env,
      capture_output=True, text=True, timeout=60, check=True).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert result['outside'] == secret  # the attack works without the sandbox
  assert result['score'] == 0


def test_signals_to_other_processes_are_refused():
  program = 'import os\nos.kill(os.getppid(), 0)\nprint("signalled")'
  assert _unsandboxed_stdout(program).strip() == 'signalled'
  assert _score(program, 'signalled') == 0


def test_escape_hatches_are_closed():
  for program in (
      'import ctypes\nprint("done")',
      'import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\nprint("done")',
      'import sys\ndel sys.modules["posix"]\nimport posix\nprint("done")',
  ):
    assert _score(program, 'done') == 0, program


def test_adversarial_batch_cannot_hang_the_caller():
  attacks = [
      'while True: pass',
      'import os\nwhile True: os.fork()',
      'x = " " * (8 * 1024**3)',
      'import threading, time\nwhile True:\n'
      '  threading.Thread(target=time.sleep, args=(100,)).start()',
      'import sys\nsys.setrecursionlimit(10**8)\nf = lambda n: f(n + 1)\nf(0)',
      'print("x" * 10**9)',
  ]
  completions = [f'```python\n{a}\n```' for a in attacks]
  examples = [{'tests': [{'input': '', 'output': 'never'}]}] * len(attacks)
  t0 = time.monotonic()
  metrics = {}
  r = code_reward(completions, examples, metrics=metrics, **FAST)
  np.testing.assert_array_equal(r, 0)
  assert time.monotonic() - t0 < 20
  assert metrics['runs'] == len(attacks)
  assert not _sandbox_processes()


@pytest.mark.skipif(os.geteuid() != 0, reason='namespaces need root')
def test_kernel_layers_hold_without_the_audit_hook(tmp_path, local_server):
  """As root, the mount and network namespaces stop writes and connections
  even with the audit hook off (if the kernel allows unshare here)."""
  limits = _limits(timeout_s=2, audit_hook=False)
  probe = code_sandbox.run_in_sandbox(
      'open("/proc/self/mountinfo").read()\nprint("ok")', limits=limits)
  assert probe.stdout.strip() == 'ok'
  target = tmp_path / 'escaped.txt'
  r = code_sandbox.run_in_sandbox(
      f'open({str(target)!r}, "w").write("x")', limits=limits)
  if 'Read-only file system' not in r.stderr:
    pytest.skip(f'mount namespace unavailable here: {r.stderr[-200:]}')
  assert not target.exists()
  r = code_sandbox.run_in_sandbox(
      'import socket\n'
      f'socket.create_connection(("127.0.0.1", {local_server}), timeout=2)\n'
      'print("connected")', limits=limits)
  assert 'connected' not in r.stdout
  local = code_sandbox.run_in_sandbox(
      'open("ok", "w").write("1")\nprint(open("ok").read())', limits=limits)
  assert local.stdout.strip() == '1'
