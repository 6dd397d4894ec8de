"""A pool of math-verify worker processes with a hard per-item timeout.

Why a pool: math-verify (sympy) can take seconds or hang on adversarial
answers, and its own timeouts use `signal.alarm`, which only works in a
process's main thread. A training process runs JAX threads, so symbolic checks
run in separate processes that the caller can kill.

How the workers start: each worker is a fresh interpreter running
`_math_verify_worker.py` by path -- the "spawn" start method in spirit (never
a fork of the caller, which may hold JAX threads and device handles), done
with `subprocess` rather than `multiprocessing`'s spawn context because the
latter re-imports the caller's `__main__` in every worker, i.e. the training
script and with it JAX. Workers import only math-verify and talk JSON lines
over pipes.

Guarantees:
  * every item gets at most `timeout_s` of wall-clock time from dispatch; a
    worker still busy after that is killed (SIGKILL) and replaced, and the
    item scores False and is counted in `PoolStats.timeouts`;
  * a worker that dies (segfault, OOM kill) is replaced too (`crashes`);
  * the pool is created lazily by `get_pool()`, reused, and closed at exit.

Threads: `MathVerifyPool.verify` holds a lock, so concurrent callers queue.
"""

import atexit
import dataclasses
import json
import os
import pathlib
import selectors
import subprocess
import sys
import threading
import time
from typing import Sequence

_WORKER_SCRIPT = pathlib.Path(__file__).with_name('_math_verify_worker.py')
_DEFAULT_TIMEOUT_S = 5.0
# Importing sympy + math-verify takes ~1 s; allow for a loaded machine.
_START_TIMEOUT_S = 120.0
# Longer answers are not sent to the symbolic checker (score False): a real
# final answer is short, and huge strings are what makes sympy hang.
MAX_ANSWER_CHARS = 1000


def default_num_workers() -> int:
  """Half the CPUs (the other half keeps the trainer's host loop busy), 1-16."""
  return max(1, min(16, (os.cpu_count() or 2) // 2))


@dataclasses.dataclass
class PoolStats:
  """Counters for one `verify` call (all items, not only the pool's)."""

  items: int = 0
  timeouts: int = 0  # hard timeouts (worker killed) + math-verify's own
  hard_timeouts: int = 0  # workers killed for running past `timeout_s`
  crashes: int = 0  # workers that died while checking an item
  seconds: float = 0.0

  def as_metrics(self, prefix: str = 'math_verify/') -> dict[str, float]:
    return {prefix + k: float(v) for k, v in dataclasses.asdict(self).items()}


class _Worker:
  """One worker process, its pipes and a line buffer."""

  def __init__(self):
    self.proc = subprocess.Popen(
        # -P: the script's folder (r1jax/rewards) must not shadow stdlib names.
        [sys.executable, '-u', '-P', str(_WORKER_SCRIPT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        # Its own session, so a terminal's Ctrl-C reaches only the trainer,
        # which then closes the pool itself.
        start_new_session=True,
        close_fds=True,
        env=_worker_env(),
    )
    self.fd = self.proc.stdout.fileno()
    os.set_blocking(self.fd, False)
    self.buf = b''
    self.ready = False
    self.start_deadline = time.monotonic() + _START_TIMEOUT_S
    self.task: tuple[int, float] | None = None  # (item index, deadline)

  def send(self, payload: dict) -> None:
    self.proc.stdin.write((json.dumps(payload) + '\n').encode())
    self.proc.stdin.flush()

  def read_lines(self) -> list[dict] | None:
    """Complete messages available now; None when the worker has exited."""
    try:
      chunk = os.read(self.fd, 1 << 16)
    except BlockingIOError:
      return []
    if not chunk:
      return None
    self.buf += chunk
    *lines, self.buf = self.buf.split(b'\n')
    try:
      return [json.loads(l) for l in lines if l.strip()]
    except ValueError:
      return None  # garbage on the protocol pipe: treat as a dead worker

  def kill(self) -> None:
    try:
      self.proc.kill()
    except ProcessLookupError:
      pass
    self.proc.wait()
    for f in (self.proc.stdin, self.proc.stdout):
      try:
        f.close()
      except OSError:
        pass

  def close(self, grace_s: float = 1.0) -> None:
    try:
      self.proc.stdin.write(b'\n')
      self.proc.stdin.flush()
      self.proc.wait(timeout=grace_s)
    except (OSError, subprocess.TimeoutExpired, ValueError):
      pass
    self.kill()


def _worker_env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k in ('PATH', 'HOME', 'LANG')}
  # The worker needs the caller's sys.path (venv site-packages) for math-verify.
  env['PYTHONPATH'] = os.pathsep.join(p for p in sys.path if p)
  env['PYTHONHASHSEED'] = '0'
  return env


class MathVerifyPool:
  """Symbolic answer checking in `num_workers` worker processes.

  Usage:
    pool = MathVerifyPool(num_workers=4, timeout_s=5.0)
    ok, stats = pool.verify([('\\\\sqrt{8}', '2\\\\sqrt{2}'), ('1', '2')])
    pool.close()
  """

  def __init__(
      self,
      num_workers: int | None = None,
      timeout_s: float = _DEFAULT_TIMEOUT_S,
  ):
    self.num_workers = num_workers or default_num_workers()
    self.timeout_s = float(timeout_s)
    self._workers: list[_Worker] = []
    self._lock = threading.Lock()
    self._failed_starts = 0
    self.total = PoolStats()  # cumulative over the pool's life

  # -- lifecycle -------------------------------------------------------------

  def _start_workers(self) -> None:
    while len(self._workers) < self.num_workers:
      self._workers.append(_Worker())

  def close(self) -> None:
    """Stops all workers; the pool restarts them if used again."""
    with self._lock:
      for w in self._workers:
        w.close()
      self._workers = []

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # -- checking --------------------------------------------------------------

  def verify(
      self,
      pairs: Sequence[tuple[str, str]],
      timeout_s: float | None = None,
  ) -> tuple[list[bool], PoolStats]:
    """Checks `pred == gold` symbolically for each `(pred, gold)` pair.

    Identical pairs are checked once. Returns one bool per pair (False for
    unequal, unparsable, over-long, timed-out or crashed items) and the
    counters of this call.
    """
    timeout_s = self.timeout_s if timeout_s is None else float(timeout_s)
    t0 = time.monotonic()
    stats = PoolStats(items=len(pairs))
    unique: dict[tuple[str, str], int] = {}
    for pred, gold in pairs:
      if len(pred) <= MAX_ANSWER_CHARS and len(gold) <= MAX_ANSWER_CHARS:
        unique.setdefault((pred, gold), len(unique))
    keys = list(unique)
    results = [False] * len(keys)
    if keys:
      with self._lock:
        try:
          self._run(keys, results, timeout_s, stats)
        except BaseException:
          # Interrupted mid-batch (or broken): replies still in flight must
          # not be read as answers to the next call's items.
          for w in self._workers:
            w.kill()
          self._workers = []
          raise
    out = [
        results[unique[p]] if p in unique else False for p in map(tuple, pairs)
    ]
    stats.seconds = time.monotonic() - t0
    for f in dataclasses.fields(PoolStats):
      setattr(self.total, f.name,
              getattr(self.total, f.name) + getattr(stats, f.name))
    return out, stats

  def _run(self, keys, results, timeout_s, stats) -> None:
    self._start_workers()
    todo = list(range(len(keys) - 1, -1, -1))  # a stack, popped in order
    alarm = max(1, int(timeout_s // 2))  # math-verify's own, softer limit
    with selectors.DefaultSelector() as sel:
      for w in self._workers:
        sel.register(w.fd, selectors.EVENT_READ, w)
      while todo or any(w.task for w in self._workers):
        now = time.monotonic()
        for w in self._workers:
          if w.ready and w.task is None and todo:
            i = todo.pop()
            pred, gold = keys[i]
            w.task = (i, now + timeout_s)
            try:
              w.send({'id': i, 'pred': pred, 'gold': gold, 'timeout': alarm})
            except (BrokenPipeError, OSError):
              pass  # noticed as EOF below
        deadlines = [w.task[1] if w.task else w.start_deadline
                     for w in self._workers if w.task or not w.ready]
        wait = (max(0.0, min(deadlines) - time.monotonic())
                if deadlines else None)
        for key, _ in sel.select(wait):
          w = key.data
          msgs = w.read_lines()
          if msgs is None:  # died
            self._replace(sel, w, stats, crashed=True)
            continue
          for msg in msgs:
            if 'error' in msg:
              raise RuntimeError(f'math-verify worker failed: {msg["error"]}')
            if msg.get('ready'):
              w.ready = True
              continue
            if w.task and msg['id'] == w.task[0]:
              results[msg['id']] = bool(msg['ok'])
              stats.timeouts += int(bool(msg.get('timeout')))
              w.task = None
        now = time.monotonic()
        for w in list(self._workers):
          if w.task and now >= w.task[1]:
            stats.timeouts += 1
            stats.hard_timeouts += 1
            self._replace(sel, w, stats, crashed=False)
        if any(not w.ready and now > w.start_deadline for w in self._workers):
          raise RuntimeError(
              f'math-verify workers did not start within {_START_TIMEOUT_S} s')
      for w in self._workers:
        sel.unregister(w.fd)

  def _replace(self, sel, w: _Worker, stats: PoolStats, crashed: bool) -> None:
    """Kills `w` (its item scores False) and starts a fresh worker."""
    stats.crashes += int(crashed and w.task is not None)
    if not w.ready:
      self._failed_starts += 1
      if self._failed_starts > 2 * self.num_workers:
        raise RuntimeError('math-verify workers keep dying before start-up')
    sel.unregister(w.fd)
    w.kill()
    fresh = _Worker()
    self._workers[self._workers.index(w)] = fresh
    sel.register(fresh.fd, selectors.EVENT_READ, fresh)


# ----------------------------------------------------------------------------
# The process-wide pool
# ----------------------------------------------------------------------------

_POOL: MathVerifyPool | None = None
_POOL_PID = 0
_POOL_LOCK = threading.Lock()


def get_pool(
    num_workers: int | None = None, timeout_s: float | None = None
) -> MathVerifyPool:
  """The shared pool, created on first use and closed at interpreter exit.

  Asking for a different `num_workers` restarts it; `timeout_s` only changes
  the default per-item timeout.
  """
  global _POOL, _POOL_PID
  with _POOL_LOCK:
    if _POOL is not None and _POOL_PID != os.getpid():
      # A forked child (e.g. a data-loader process) must not share the
      # parent's pipes; it gets its own workers and leaves the parent's alone.
      _POOL = None
    if _POOL is None:
      _POOL = MathVerifyPool(num_workers, timeout_s or _DEFAULT_TIMEOUT_S)
      _POOL_PID = os.getpid()
    else:
      if num_workers and num_workers != _POOL.num_workers:
        _POOL.close()
        _POOL.num_workers = num_workers
      if timeout_s:
        _POOL.timeout_s = float(timeout_s)
    return _POOL


def shutdown_pool() -> None:
  """Closes the shared pool's workers (registered with atexit)."""
  global _POOL
  with _POOL_LOCK:
    if _POOL is not None and _POOL_PID == os.getpid():
      _POOL.close()
    _POOL = None


atexit.register(shutdown_pool)


def verify_pairs(
    pairs: Sequence[tuple[str, str]], timeout_s: float | None = None
) -> tuple[list[bool], PoolStats]:
  """Symbolic check of `(pred, gold)` pairs on the shared pool."""
  return get_pool().verify(pairs, timeout_s)
