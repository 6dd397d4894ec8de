"""The code sandbox: run an untrusted Python program (and its tests) safely.

    result = run_in_sandbox(program, stdin, test_code=None,
                            limits=SandboxLimits(timeout_s=4.0))

Each run is a process forked from a warm worker (`sandbox_pool`; with
`pool=False`, a fresh `python -I -S _sandbox_boot.py` process) with:
  * its own session / process group, killed as a whole (SIGKILL) after
    `timeout_s` of wall-clock time and always after the run;
  * an explicit minimal environment (no variable of the caller is inherited);
  * a private working directory, emptied afterwards; stdin and
    stdout are files there (so output size is capped by RLIMIT_FSIZE, and a
    flood of output cannot fill the caller's memory);
  * rlimits: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE,
    RLIMIT_NPROC, no core dumps;
  * when running as root (CI), new network and mount namespaces: no network
    interface, and every filesystem but the working directory read-only
    (a worker's runs share its namespaces, one run at a time);
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
library (`-I -S`). A warm worker's runs are forks of it, one after the
other: they share its namespaces, its hash seed (so one worker iterates a set
of strings in the same order every run) and a copy of its memory (which holds
no secret: it starts with the minimal environment and only ever holds the
current run's request); what a run leaves in the directory is removed before
the next (a worker that cannot empty it retires). For untrusted code at
scale, add a container or gVisor/nsjail around the trainer's reward workers.
"""

import dataclasses
import marshal
import math
import os
import pathlib
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from r1jax.rewards import sandbox_pool
from r1jax.rewards.sandbox_pool import worker_pids

_BOOT = pathlib.Path(__file__).with_name('_sandbox_boot.py')
# How long past its time limit a run may go without an answer from its warm
# worker before the worker is taken for dead (killed and replaced).
GUARD_S = 30.0


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
  pool: bool = True  # fork from a warm worker; False: a fresh interpreter


@dataclasses.dataclass
class RunResult:
  """What one sandboxed run did."""

  returncode: int | None  # negative: killed by that signal
  stdout: str
  stderr: str
  timed_out: bool
  seconds: float
  token_ok: bool = False  # assert tests ran to the end
  output_capped: bool = False  # stdout reached max_output_bytes


_clean_env = sandbox_pool.clean_env
_STDERR_TAIL = 1 << 16
_STDOUT_TAIL = 4096  # what the token check of assert tests reads


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


def _read_capped(path: pathlib.Path, limit: int, tail: bool = False) -> str:
  try:
    with open(path, 'rb') as f:
      if tail:
        f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
      return f.read(limit).decode('utf-8', errors='replace')
  except OSError:
    return ''


def _token_ok(stdout: str, token: str) -> bool:
  return stdout.rstrip('\n').rsplit('\n', 1)[-1] == token


def run_in_sandbox(
    program: str,
    stdin: str = '',
    *,
    test_code: str | None = None,
    limits: SandboxLimits = SandboxLimits(),
) -> RunResult:
  """Runs `program` (then `test_code`, if given) in a sandboxed process:
  forked from a warm worker (`sandbox_pool`), or with `limits.pool=False` a
  fresh interpreter. For assert tests (`test_code`), `stdout` holds only the
  tail of the output (where the token is); `stderr` is its last 64 KiB.

  Never raises for anything the program does; the result says how it ended.
  """
  if limits.pool:
    return _run_pooled(program, stdin, test_code, limits)
  return _run_cold(program, stdin, test_code, limits)


def _run_pooled(program: str, stdin: str, test_code: str | None,
                limits: SandboxLimits) -> RunResult:
  token = secrets.token_hex(16) if test_code is not None else ''
  request = {
      # Encoded here: text that is no valid UTF-8 (a lone surrogate) fails
      # the caller's scoring, as writing it to a file did.
      'program': program.encode('utf-8'),
      'test_code': None if test_code is None else test_code.encode('utf-8'),
      'stdin': stdin.encode('utf-8'),
      'token': token.encode(),
      'audit': limits.audit_hook,
      'limits': _rlimits(limits),
      'timeout_s': float(limits.timeout_s),
      'stdout_tail': _STDOUT_TAIL if test_code is not None else 0,
      'max_output': int(limits.max_output_bytes),
  }
  t0 = time.monotonic()
  try:
    reply = sandbox_pool.get_pool(limits.isolate).run(
        request, guard_s=limits.timeout_s + GUARD_S)
  except (sandbox_pool.WorkerError, OSError) as e:
    return RunResult(None, '', f'sandbox error: {e}', False,
                     time.monotonic() - t0)
  stdout = reply['stdout'].decode('utf-8', errors='replace')
  return RunResult(
      reply['returncode'], stdout,
      reply['stderr'].decode('utf-8', errors='replace'), reply['timed_out'],
      reply['seconds'], test_code is not None and _token_ok(stdout, token),
      reply['stdout_size'] >= limits.max_output_bytes)


def _rlimits(limits: SandboxLimits) -> dict[str, int]:
  return {
      'memory_bytes': int(limits.memory_mb) << 20,
      'cpu_seconds': max(1, math.ceil(limits.timeout_s)),
      'file_bytes': int(limits.max_output_bytes),
      'open_files': int(limits.open_files),
      'processes': int(limits.processes),
  }


def _run_cold(program: str, stdin: str, test_code: str | None,
              limits: SandboxLimits) -> RunResult:
  """One fresh `python -I -S _sandbox_boot.py` for this run."""
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
        'limits': _rlimits(limits),
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
    stderr = _read_capped(root / 'stderr.txt', _STDERR_TAIL, tail=True)
    token_ok = test_code is not None and _token_ok(stdout, token)
    capped = os.path.getsize(root / 'stdout.txt') >= limits.max_output_bytes
    return RunResult(proc.returncode, stdout, stderr, timed_out,
                     time.monotonic() - t0, token_ok, capped)
  except OSError as e:  # e.g. no space for the temp dir: a failed run
    return RunResult(None, '', f'sandbox error: {e}', False,
                     time.monotonic() - t0)
  finally:
    for fd in (read_fd, write_fd):
      if fd is not None:
        os.close(fd)
    shutil.rmtree(workdir, ignore_errors=True)
