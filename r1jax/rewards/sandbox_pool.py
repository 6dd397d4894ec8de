"""Warm sandbox workers: one fork per run instead of one fresh interpreter.

A cold sandboxed run starts `python -I -S _sandbox_boot.py` (tens of ms of
interpreter start-up, imports and, as root, namespace set-up) for a program
that often runs in a millisecond. A worker (`_sandbox_serve.py`) pays
that once: started in a fresh session with the minimal environment and a
private working directory, it isolates itself (as root: its own network and
mount namespaces, every filesystem but that directory read-only), imports the
modules programs commonly use, and then forks one child per run, which locks
itself down (rlimits, audit hook, module patches) before it runs the user's
code. The containment of each run is the cold path's (see `code_sandbox`),
except that the namespaces are the worker's, shared by its runs one after
the other (the worker empties its directory after each run, and retires
when it cannot).

    pool = get_pool(isolate=True)
    reply = pool.run(request, guard_s=timeout_s + 30)   # None: worker failed

Workers are started on demand, one per concurrent caller thread, and kept
until `shutdown_pools()` (registered at exit). A process that forks gets new
workers of its own; those of its parent are left alone.
"""

import atexit
import marshal
import os
import pathlib
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

BOOT = pathlib.Path(__file__).with_name('_sandbox_serve.py')
START_TIMEOUT_S = 60.0  # a worker's start-up, on a loaded machine
# A worker's directory: <tmp>/r1jax_sandbox_w<pid of the process it serves>_*
DIR_PREFIX = 'r1jax_sandbox_w'


def clean_env(workdir: str) -> dict[str, str]:
  """The whole environment of sandboxed code: nothing of the caller's
  (tokens, keys), HOME and TMPDIR its working directory."""
  return {
      'PATH': '/usr/local/bin:/usr/bin:/bin',
      'HOME': workdir,
      'TMPDIR': workdir,
      'LANG': 'C.UTF-8',
      'LC_ALL': 'C.UTF-8',
      'OMP_NUM_THREADS': '1',
  }


class WorkerError(RuntimeError):
  """A worker died, stalled or answered nonsense; it has been killed.

  `started`: whether the run had begun (False: the worker was gone before
  it took the run, which can then go to another worker).
  """

  def __init__(self, message: str, started: bool = True):
    super().__init__(message)
    self.started = started


class _Worker:
  """One `_sandbox_serve.py` process and its working directory."""

  def __init__(self, isolate: bool):
    self.root = tempfile.mkdtemp(prefix=f'{DIR_PREFIX}{os.getpid()}_')
    cfg = {'root': self.root, 'isolate': isolate}
    self.proc = subprocess.Popen(
        [sys.executable, '-I', '-S', str(BOOT),
         marshal.dumps(cfg).hex()],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, cwd=self.root, env=clean_env(self.root),
        start_new_session=True, close_fds=True, bufsize=0)
    self._in = self.proc.stdin.fileno()
    self._out = self.proc.stdout.fileno()
    self.child: int | None = None  # the run in progress
    try:
      hello = self._recv(START_TIMEOUT_S)
    except WorkerError:
      self.close()
      raise
    self.isolation = hello.get('isolation', {})

  @property
  def pid(self) -> int:
    return self.proc.pid

  def _read_exact(self, n: int, deadline: float) -> bytes:
    chunks, got = [], 0
    poller = select.poll()
    poller.register(self._out, select.POLLIN)
    while got < n:
      remaining = deadline - time.monotonic()
      if remaining <= 0 or not poller.poll(remaining * 1000):
        raise WorkerError('sandbox worker did not answer in time')
      chunk = os.read(self._out, n - got)
      if not chunk:
        raise WorkerError('sandbox worker exited')
      chunks.append(chunk)
      got += len(chunk)
    return b''.join(chunks)

  def _recv(self, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    n = int.from_bytes(self._read_exact(8, deadline), 'little')
    try:
      reply = marshal.loads(self._read_exact(n, deadline))
    except (EOFError, ValueError, TypeError) as e:
      raise WorkerError(f'sandbox worker sent a bad reply ({e})') from None
    if not isinstance(reply, dict):
      raise WorkerError('sandbox worker sent a bad reply')
    return reply

  def run(self, request: dict[str, Any], guard_s: float) -> dict[str, Any]:
    """The worker's reply to one run; raises WorkerError (and closes the
    worker) when it fails to give one within `guard_s`."""
    data = marshal.dumps(request)
    started = False
    try:
      view = memoryview(len(data).to_bytes(8, 'little') + data)
      while view:
        view = view[os.write(self._in, view):]
      deadline = time.monotonic() + guard_s
      self.child = self._recv(guard_s).get('pid')
      started = True
      reply = self._recv(max(0.0, deadline - time.monotonic()))
      self.child = None
      return reply
    except (OSError, WorkerError) as e:
      self.close()
      raise WorkerError(str(e), started) from None

  def alive(self) -> bool:
    return self.proc.poll() is None

  def close(self) -> None:
    """Kills the worker and the run it may be in, removes its directory."""
    for group in (self.child, self.proc.pid):
      if group:
        try:
          os.killpg(group, signal.SIGKILL)
        except OSError:
          pass
    for f in (self.proc.stdin, self.proc.stdout):
      try:
        f.close()
      except OSError:
        pass
    try:
      self.proc.kill()
    except OSError:
      pass
    self.proc.wait()
    shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:
    return True
  return True


def sweep_orphaned_dirs(tmp: str | None = None) -> int:
  """Removes the empty directories of workers whose process is gone.

  A worker empties its directory after each run, but cannot remove it (as
  root, everything outside it is read-only to the worker): when the process
  it served dies without `shutdown_pools` (SIGKILL), the worker exits and its
  empty directory stays. Returns how many were removed.
  """
  removed = 0
  tmp = tmp or tempfile.gettempdir()
  try:
    entries = list(os.scandir(tmp))
  except OSError:
    return 0
  for entry in entries:
    if not entry.name.startswith(DIR_PREFIX):
      continue
    pid = entry.name[len(DIR_PREFIX):].split('_', 1)[0]
    if pid.isdigit() and not _alive(int(pid)):
      try:
        os.rmdir(entry.path)  # empty ones only
        removed += 1
      except OSError:
        pass
  return removed


class SandboxPool:
  """Workers of one isolation setting, started on demand and reused."""

  def __init__(self, isolate: bool):
    sweep_orphaned_dirs()
    self.isolate = isolate
    self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
    self._lock = threading.Lock()
    self._workers: set[_Worker] = set()
    self.started = 0  # workers started so far (replacements included)

  def _acquire(self) -> tuple[_Worker, bool]:
    """An idle worker, else a new one; and whether it is new."""
    while True:
      try:
        worker = self._idle.get_nowait()
      except queue.Empty:
        break
      if worker.alive():
        return worker, False
      self._discard(worker)
    worker = _Worker(self.isolate)
    with self._lock:
      self._workers.add(worker)
      self.started += 1
    return worker, True

  def _discard(self, worker: _Worker) -> None:
    worker.close()
    with self._lock:
      self._workers.discard(worker)

  def warm(self, n: int) -> None:
    """Starts workers until `n` are idle (to keep start-up out of a timing)."""
    fresh = [self._acquire()[0]
             for _ in range(max(0, n - self._idle.qsize()))]
    for w in fresh:
      self._idle.put(w)

  def run(self, request: dict[str, Any], guard_s: float) -> dict[str, Any]:
    """One sandboxed run (see `_sandbox_serve.serve` for the request and the
    reply); raises WorkerError when the worker failed during the run (it is
    replaced). A worker found dead before the run starts is replaced and
    the run goes to the next one (unless that was a new worker)."""
    while True:
      worker, new = self._acquire()
      try:
        reply = worker.run(request, guard_s)
        break
      except WorkerError as e:
        self._discard(worker)
        if e.started or new:
          raise
    if reply.get('clean', False) and worker.alive():
      self._idle.put(worker)
    else:  # it could not empty its directory: it has exited
      self._discard(worker)
    return reply

  def pids(self) -> list[int]:
    with self._lock:
      return [w.pid for w in self._workers]

  def shutdown(self) -> None:
    with self._lock:
      workers, self._workers = list(self._workers), set()
    for w in workers:
      w.close()


_POOLS: dict[tuple[int, bool], SandboxPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(isolate: bool = True) -> SandboxPool:
  """This process's pool of workers with that isolation setting."""
  key = (os.getpid(), bool(isolate))
  with _POOLS_LOCK:
    if key not in _POOLS:
      _POOLS[key] = SandboxPool(bool(isolate))
    return _POOLS[key]


def worker_pids() -> list[int]:
  """The workers of this process (they idle between runs)."""
  with _POOLS_LOCK:
    pools = [p for (pid, _), p in _POOLS.items() if pid == os.getpid()]
  return [w for p in pools for w in p.pids()]


def shutdown_pools() -> None:
  """Stops this process's workers (also run at exit)."""
  with _POOLS_LOCK:
    mine = [k for k in _POOLS if k[0] == os.getpid()]
    pools = [_POOLS.pop(k) for k in mine]
  for p in pools:
    p.shutdown()


atexit.register(shutdown_pools)
