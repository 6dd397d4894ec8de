"""Code reward: run a completion's Python program against tests in a sandbox.

The program is the last ```python fenced block of the completion (inside the
`<answer>` block when there is one), else the whole answer/completion text.
Tests come from the example's `tests` field: a list whose items are either
`{"input": stdin, "output": expected stdout}` or a string of assert-style test
code (run after the program, in the same module), or a single such string;
APPS-style `{"inputs": [...], "outputs": [...]}` is accepted too.

Each test runs in a fresh `python -I -S _sandbox_boot.py` process:
  * its own session / process group, killed as a whole (SIGKILL) after
    `timeout_s` of wall-clock time and always after the run;
  * an explicit minimal environment (no variable of the caller is inherited);
  * a private temporary working directory, deleted afterwards; stdin and
    stdout are files there (so output size is capped by RLIMIT_FSIZE, and a
    flood of output cannot fill the caller's memory);
  * rlimits: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE,
    RLIMIT_NPROC, no core dumps;
  * when running as root (CI), new network and mount namespaces: no network
    interface, and every filesystem but the working directory read-only;
  * an audit hook refusing process creation, signals to other processes,
    sockets, ctypes, raising rlimits, writes outside the working directory and
    reads of other processes' /proc entries (see `_sandbox_boot.py`).

Honest limits. The program runs as the caller's user (root on CI). The audit
hook and the patched modules live inside the program's own interpreter: they
stop accidents and the ordinary ways to misbehave (what an RL policy stumbles
on), not an attacker who targets this bootstrap -- e.g. by walking frames to
the hook's closure or to the token that proves assert tests finished. As root,
writes and network are also stopped by the kernel (read-only mounts, empty
network namespace), but other processes' /proc entries (the caller's
environment) are guarded by the hook alone. Without root the namespaces are
skipped, so the hook is the only guard, and RLIMIT_NPROC counts all the
caller's processes and threads (root ignores it; hence the hook against fork
bombs). Reading files the user may read is allowed. Threads are allowed
(bounded by RLIMIT_AS and the timeout). The program sees only the standard
library (`-I -S`). For untrusted code at scale, add a container or
gVisor/nsjail around the trainer's reward workers.
"""

import concurrent.futures
import dataclasses
import marshal
import math
import os
import pathlib
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

import numpy as np

from r1jax.rewards import math_answer
from r1jax.rewards.registry import check_batch
from r1jax.rewards.registry import REWARDS
from r1jax.rewards.registry import score_each

_BOOT = pathlib.Path(__file__).with_name('_sandbox_boot.py')
# The fenced blocks `fenced_blocks` finds, as a regex (its reference
# semantics: `findall` with it backtracks over the info line and rescans the
# rest of the text, quadratic on adversarial text).
_FENCE_RE = re.compile(r'```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```', re.DOTALL)
_FENCE_LANG_RE = re.compile(r'[ \t]*([A-Za-z0-9_+-]*)')


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
  """Resource limits for one sandboxed run."""

  timeout_s: float = 4.0  # wall clock; RLIMIT_CPU is ceil(timeout_s)
  memory_mb: int = 1024  # RLIMIT_AS
  max_output_bytes: int = 16 << 20  # RLIMIT_FSIZE: any file, stdout included
  open_files: int = 64  # RLIMIT_NOFILE
  processes: int = 512  # RLIMIT_NPROC (per user; not enforced for root)
  isolate: bool = True  # network + read-only mount namespaces when root
  audit_hook: bool = True  # turn off only to test the other layers


@dataclasses.dataclass
class RunResult:
  """What one sandboxed run did."""

  returncode: int | None  # negative: killed by that signal
  stdout: str
  stderr: str
  timed_out: bool
  seconds: float
  token_ok: bool = False  # assert tests ran to the end


def _clean_env(workdir: str) -> dict[str, str]:
  # Explicit, minimal: nothing of the caller's environment (tokens, keys).
  return {
      'PATH': '/usr/local/bin:/usr/bin:/bin',
      'HOME': workdir,
      'TMPDIR': workdir,
      'LANG': 'C.UTF-8',
      'LC_ALL': 'C.UTF-8',
      'OMP_NUM_THREADS': '1',
  }


def _wait_and_kill_group(proc: subprocess.Popen, timeout_s: float) -> bool:
  """Waits up to `timeout_s`, then SIGKILLs the whole process group.

  The group is killed before the leader is reaped, so its id cannot have been
  reused by an unrelated process. Returns whether the timeout was hit.
  """
  deadline = time.monotonic() + timeout_s
  timed_out = False
  try:
    pidfd = os.pidfd_open(proc.pid)
  except (AttributeError, OSError):
    pidfd = None
  try:
    while True:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        timed_out = True
        break
      if pidfd is not None:
        # poll, not select: a busy trainer may hold fds above FD_SETSIZE.
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if poller.poll(remaining * 1000):
          break
      else:
        info = os.waitid(os.P_PID, proc.pid,
                         os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is not None:
          break
        time.sleep(min(0.005, remaining))
  finally:
    if pidfd is not None:
      os.close(pidfd)
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      pass
    proc.wait()
  return timed_out


def _read_capped(path: pathlib.Path, limit: int) -> str:
  try:
    with open(path, 'rb') as f:
      return f.read(limit).decode('utf-8', errors='replace')
  except OSError:
    return ''


def run_in_sandbox(
    program: str,
    stdin: str = '',
    *,
    test_code: str | None = None,
    limits: SandboxLimits = SandboxLimits(),
) -> RunResult:
  """Runs `program` (then `test_code`, if given) in a fresh sandboxed process.

  Never raises for anything the program does; the result says how it ended.
  """
  workdir = tempfile.mkdtemp(prefix='r1jax_sandbox_')
  root = pathlib.Path(workdir)
  t0 = time.monotonic()
  token = secrets.token_hex(16) if test_code is not None else ''
  read_fd = write_fd = None
  try:
    (root / 'main.py').write_text(program, encoding='utf-8')
    (root / 'stdin.txt').write_text(stdin, encoding='utf-8')
    cfg: dict[str, Any] = {
        'root': workdir,
        'program': str(root / 'main.py'),
        'isolate': limits.isolate,
        'audit': limits.audit_hook,
        'limits': {
            'memory_bytes': int(limits.memory_mb) << 20,
            'cpu_seconds': max(1, math.ceil(limits.timeout_s)),
            'file_bytes': int(limits.max_output_bytes),
            'open_files': int(limits.open_files),
            'processes': int(limits.processes),
        },
    }
    if test_code is not None:
      (root / 'tests.py').write_text(test_code, encoding='utf-8')
      cfg['test_code'] = str(root / 'tests.py')
      read_fd, write_fd = os.pipe()
      os.write(write_fd, token.encode())
      os.close(write_fd)
      write_fd = None
      cfg['token_fd'] = read_fd
    with open(root / 'stdin.txt', 'rb') as fin, \
        open(root / 'stdout.txt', 'wb') as fout, \
        open(root / 'stderr.txt', 'wb') as ferr:
      proc = subprocess.Popen(
          [sys.executable, '-I', '-S', str(_BOOT), marshal.dumps(cfg).hex()],
          stdin=fin, stdout=fout, stderr=ferr,
          cwd=workdir,
          env=_clean_env(workdir),
          start_new_session=True,
          close_fds=True,
          pass_fds=(read_fd,) if read_fd is not None else (),
      )
      if read_fd is not None:
        os.close(read_fd)
        read_fd = None
      timed_out = _wait_and_kill_group(proc, limits.timeout_s)
    stdout = _read_capped(root / 'stdout.txt', limits.max_output_bytes)
    stderr = _read_capped(root / 'stderr.txt', 1 << 16)
    token_ok = False
    if test_code is not None:
      tail = stdout.rstrip('\n').rsplit('\n', 1)[-1]
      token_ok = tail == token
    return RunResult(proc.returncode, stdout, stderr, timed_out,
                     time.monotonic() - t0, token_ok)
  except OSError as e:  # e.g. no space for the temp dir: a failed run
    return RunResult(None, '', f'sandbox error: {e}', False,
                     time.monotonic() - t0)
  finally:
    for fd in (read_fd, write_fd):
      if fd is not None:
        os.close(fd)
    shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------
# Tests and comparison
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TestCase:
  """Either stdin/expected-stdout, or assert-style code (`code`)."""

  input: str = ''
  output: str | None = None
  code: str | None = None


def normalize_tests(tests: Any) -> list[TestCase]:
  """Reads the `tests` field (see module docstring) into `TestCase`s."""
  if tests is None:
    return []
  if isinstance(tests, str):
    return [TestCase(code=tests)]
  if isinstance(tests, Mapping):
    if 'inputs' in tests and 'outputs' in tests:
      return [TestCase(str(i), str(o))
              for i, o in zip(tests['inputs'], tests['outputs'])]
    tests = [tests]
  cases = []
  for t in tests:
    if isinstance(t, str):
      cases.append(TestCase(code=t))
    elif isinstance(t, Mapping):
      cases.append(TestCase(str(t.get('input', '')), str(t['output'])))
    else:
      raise ValueError(f'Unsupported test case {t!r}')
  return cases


def outputs_match(
    actual: str, expected: str, float_tol: float | None = None
) -> bool:
  """Whitespace-insensitive comparison of stdout with the expected output.

  Tokens must match one to one; with `float_tol`, numeric tokens may differ by
  that much (absolute or relative).
  """
  a, e = actual.split(), expected.split()
  if a == e:
    return True
  if float_tol is None or len(a) != len(e):
    return False
  for x, y in zip(a, e):
    if x == y:
      continue
    try:
      fx, fy = float(x), float(y)
    except ValueError:
      return False
    if not abs(fx - fy) <= float_tol * max(1.0, abs(fy)):
      return False
  return True


def fenced_blocks(text: str) -> list[tuple[str, str]]:
  """`(language, body)` of each ``` fenced block, like `_FENCE_RE.findall`.

  A block opens at ```, its info line runs to the first newline (the language
  is its leading word), and its body to the next ```. Linear in `len(text)`:
  when a block has no newline or no closing fence, no later block can have
  one, so the scan stops.
  """
  blocks: list[tuple[str, str]] = []
  pos = 0
  while True:
    start = text.find('```', pos)
    if start < 0:
      break
    newline = text.find('\n', start + 3)
    if newline < 0:
      break
    end = text.find('```', newline + 1)
    if end < 0:
      break
    lang = _FENCE_LANG_RE.match(text, start + 3, newline).group(1)
    blocks.append((lang, text[newline + 1:end]))
    pos = end + 3
  return blocks


def extract_code(completion: str) -> str:
  """The program in a completion: last ```python block, else the text.

  When there is an `<answer>` block, only its text is looked at (code in the
  chain of thought is a draft). Fences labelled with another language are
  skipped; an unlabelled fence is used when no python fence exists.
  """
  text = math_answer.answer_block(completion)
  if text is None:
    text = completion
  blocks = fenced_blocks(text)
  python = [b for lang, b in blocks
            if lang.lower() in ('python', 'py', 'python3')]
  if python:
    return python[-1]
  plain = [b for lang, b in blocks if not lang]
  if plain:
    return plain[-1]
  return text


def run_tests(
    program: str,
    tests: Sequence[TestCase],
    limits: SandboxLimits = SandboxLimits(),
    *,
    stop_at_first_failure: bool = True,
    float_tol: float | None = None,
) -> tuple[int, list[RunResult]]:
  """Runs each test in its own sandbox; returns (number passed, results)."""
  passed, results = 0, []
  for t in tests:
    if t.code is not None:
      r = run_in_sandbox(program, t.input, test_code=t.code, limits=limits)
      ok = r.returncode == 0 and not r.timed_out and r.token_ok
    else:
      r = run_in_sandbox(program, t.input, limits=limits)
      ok = (r.returncode == 0 and not r.timed_out
            and outputs_match(r.stdout, t.output, float_tol))
    results.append(r)
    passed += ok
    if not ok and stop_at_first_failure:
      break
  return passed, results


def default_max_workers() -> int:
  return max(1, min(8, os.cpu_count() or 1))


@REWARDS.register('code', inputs=('metrics',))
def code_reward(
    completions: Sequence[str],
    examples: Sequence[Mapping[str, Any]],
    *,
    mode: str = 'all',
    timeout_s: float = 4.0,
    memory_mb: int = 1024,
    max_output_bytes: int = 16 << 20,
    max_workers: int | None = None,
    float_tol: float | None = None,
    tests_key: str = 'tests',
    metrics: dict[str, float] | None = None,
) -> np.ndarray:
  """Scores programs by their tests, each test in a fresh sandbox.

  Options:
    mode: 'all' -> 1.0 when every test passes (stops at the first failure),
      'fraction' -> the fraction of tests passed.
    timeout_s, memory_mb, max_output_bytes: per-test limits (`SandboxLimits`).
    max_workers: completions checked in parallel (threads that wait on
      processes; default min(8, CPUs)).
    float_tol: tolerance for numeric output tokens (default exact tokens).
    tests_key: the example field with the tests.
    metrics: filled with `timeouts`, `runs`, `no_tests` and `errors`
      (completions that could not be run, e.g. a malformed `tests` field or a
      program that cannot be written out; they score 0).
  A completion whose example has no tests scores 0.
  """
  check_batch(completions, examples)
  if mode not in ('all', 'fraction'):
    raise ValueError(
        f"code reward mode must be 'all' or 'fraction', not {mode!r}")
  limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb,
                         max_output_bytes=max_output_bytes)

  def score(i: int) -> tuple[float, int, int] | Exception:
    try:
      tests = normalize_tests(examples[i].get(tests_key))
      if not tests:
        return 0.0, 0, 0
      passed, results = run_tests(
          extract_code(completions[i]), tests, limits,
          stop_at_first_failure=(mode == 'all'), float_tol=float_tol)
      value = passed / len(tests) if mode == 'fraction' else float(
          passed == len(tests))
      return value, len(results), sum(r.timed_out for r in results)
    except Exception as e:  # pylint: disable=broad-except
      return e  # scored 0 and counted by `score_each` below

  workers = max_workers or default_max_workers()
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    scored = list(pool.map(score, range(len(completions))))
  ok = [s for s in scored if not isinstance(s, Exception)]

  def value(i: int) -> float:
    if isinstance(scored[i], Exception):
      raise scored[i]
    return scored[i][0]

  out = score_each(value, len(completions), reward='code', metrics=metrics)
  if metrics is not None:
    metrics['runs'] = float(sum(s[1] for s in ok))
    metrics['timeouts'] = float(sum(s[2] for s in ok))
    metrics['no_tests'] = float(sum(s[1] == 0 for s in ok))
  return out
