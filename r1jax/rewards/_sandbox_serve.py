"""The sandbox's warm worker: `python -I -S _sandbox_serve.py CONFIG_HEX`.

Started by `sandbox_pool`; it isolates itself once with `_sandbox_boot`'s
steps and serves runs, each in a forked child (below). Standard library only.
"""

import gc
import marshal
import os
import select
import sys
import time

# -I leaves this file's directory off sys.path: add it for this one import.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sandbox_boot as boot  # pylint: disable=g-import-not-at-top,wrong-import-position
del sys.path[0]


# ----------------------------------------------------------------------------
# The warm worker: `python -I -S _sandbox_serve.py CONFIG_HEX`
# ----------------------------------------------------------------------------
#
# Started once by `sandbox_pool` in a fresh session, with the minimal
# environment and a private working directory ROOT. It isolates itself as
# root (network and mount namespaces, everything but ROOT read-only: step 2,
# once), imports the standard modules programs commonly use, and then serves
# runs one at a time over its stdin/stdout pipes (8-byte length + marshal):
#
#   request  {program, test_code, stdin (bytes), token, limits, audit,
#             timeout_s, stdout_tail, max_output}
#   replies  {pid}, then {returncode, timed_out, seconds, stdout, stdout_size,
#             stderr, clean}
#
# For each run it forks a child, which starts a session of its own, takes
# stdin/stdout/stderr files in ROOT as fds 0-2, closes every other fd (the
# pipes to the trainer), locks itself down (steps 3-4) and runs the user's
# code (step 5). The worker kills the child's group (SIGKILL) at the time
# limit, reads the outputs through its own descriptors (the child cannot
# swap them), and empties ROOT; it exits when ROOT cannot be emptied, when
# its stdin closes, or when its parent goes away.

# What the lock-down imports (extension modules: a few ms each if every run
# loaded them again), then what programs commonly import.
_PRELOAD = ('_posixsubprocess', '_signal', 'resource',
            're', 'math', 'cmath', 'collections', 'collections.abc',
            'itertools', 'functools', 'heapq', 'bisect', 'string',
            'operator', 'copy', 'typing', 'random', 'decimal', 'fractions',
            'statistics', 'datetime', 'traceback', 'shutil')
_STDERR_TAIL = 1 << 16
# Run once by the worker, so that what every run would otherwise initialise
# for itself (the compiler's first use alone: ~2 ms) is done before the fork.
_WARM_UP = """
def _f(xs):
  return sorted({x: f'{x:>3}' for x in xs if x % 2}.items())
class _C:
  def __init__(self, v):
    self.v = [v] * 2
assert _f([1, 2, 3]) == [(1, '  1'), (3, '  3')] and _C(1).v == [1, 1]
try:
  raise AssertionError('warm-up')
except AssertionError as e:
  _tb = ''.join(traceback.format_exception(e))
"""


def _read_exact(fd: int, n: int) -> bytes | None:
  chunks, got = [], 0
  while got < n:
    chunk = os.read(fd, n - got)
    if not chunk:
      return None
    chunks.append(chunk)
    got += len(chunk)
  return b''.join(chunks)


def _send(fd: int, obj) -> None:
  data = marshal.dumps(obj)
  view = memoryview(len(data).to_bytes(8, 'little') + data)
  while view:
    view = view[os.write(fd, view):]


def _exit_code(e: SystemExit) -> int:
  """What the interpreter would exit with for `raise SystemExit(code)`."""
  if e.code is None:
    return 0
  if isinstance(e.code, int):
    return e.code & 0xff
  try:
    sys.stderr.write(f'{e.code}\n')
  except Exception:  # pylint: disable=broad-except
    pass
  return 1


def _flush_std() -> None:
  for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except
      pass


def _child(root: str, req: dict, fds: tuple[int, int, int]) -> None:
  """The forked run: never returns."""
  code = 126
  try:
    os.setsid()
    for fd, std in zip(fds, (0, 1, 2)):
      os.dup2(fd, std)
    os.closerange(3, 1 << 20)
    if 'random' in sys.modules:  # not the worker's (shared) random state
      sys.modules['random'].seed()
    boot.lock_down(root, req['limits'], req['audit'])
    program = req['program'].decode('utf-8', errors='replace')
    test_code = req['test_code']
    if test_code is not None:
      test_code = test_code.decode('utf-8', errors='replace')
    token = req['token']
    del req
    try:
      boot.run_user_code(program, test_code, token)
      code = 0
    except SystemExit as e:
      code = _exit_code(e)
    except BaseException as e:  # pylint: disable=broad-except
      code = 1
      try:
        # preloaded by `serve`; printed as the interpreter would
        sys.modules['traceback'].print_exception(e, file=sys.__stderr__)
      except BaseException:  # pylint: disable=broad-except
        os.write(2, f'\n{type(e).__name__}\n'.encode())
    _flush_std()
  finally:
    os._exit(code)


def _wait_and_kill(pid: int, timeout_s: float) -> tuple[int, bool]:
  """(exit status as a returncode, timed out) of child `pid`, whose whole
  group is SIGKILLed at `timeout_s` and in any case before it is reaped."""
  deadline = time.monotonic() + timeout_s
  timed_out = False
  pidfd = os.pidfd_open(pid)
  try:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    while True:
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        timed_out = True
        break
      if poller.poll(remaining * 1000):
        break
  finally:
    os.close(pidfd)
  for kill in (os.killpg, os.kill):
    try:
      kill(pid, 9)
    except OSError:
      pass
  _, status = os.waitpid(pid, 0)
  return os.waitstatus_to_exitcode(status), timed_out


def _empty(root: str) -> bool:
  """Removes everything in `root`; whether it is empty now."""
  shutil = sys.modules['shutil']  # preloaded by `serve`
  try:
    with os.scandir(root) as entries:
      for entry in entries:
        if entry.is_dir(follow_symlinks=False):
          shutil.rmtree(entry.path)
        else:
          os.unlink(entry.path)
    return not os.listdir(root)
  except OSError:
    return False


def _job(root: str, req: dict) -> dict:
  flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
  fds = tuple(os.open(os.path.join(root, name), flags, 0o600)
              for name in ('stdin.txt', 'stdout.txt', 'stderr.txt'))
  try:
    stdin = memoryview(req['stdin'])
    while stdin:
      stdin = stdin[os.write(fds[0], stdin):]
    os.lseek(fds[0], 0, os.SEEK_SET)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
      _child(root, req, fds)
    _send(1, {'pid': pid})
    returncode, timed_out = _wait_and_kill(pid, req['timeout_s'])
    seconds = time.monotonic() - t0
    size = os.fstat(fds[1]).st_size
    if req['stdout_tail']:
      n = min(size, req['stdout_tail'])
      stdout = os.pread(fds[1], n, size - n)
    else:
      stdout = os.pread(fds[1], min(size, req['max_output']), 0)
    err_size = os.fstat(fds[2]).st_size
    n = min(err_size, _STDERR_TAIL)
    stderr = os.pread(fds[2], n, err_size - n)
  finally:
    for fd in fds:
      os.close(fd)
  return {'returncode': returncode, 'timed_out': timed_out,
          'seconds': seconds, 'stdout': stdout, 'stdout_size': size,
          'stderr': stderr, 'clean': _empty(root)}


def serve() -> None:
  """The warm worker's loop (see above)."""
  cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
  root = os.path.realpath(cfg['root'])
  os.chdir(root)
  isolation = {'net': False, 'fs_readonly': False}
  if cfg.get('isolate', True):
    isolation = boot.unshare_and_remount(root)
    os.chdir(root)
  for name in [m for m in sys.modules if m == 'ctypes' or m.startswith(
      ('ctypes.', '_ctypes'))]:
    del sys.modules[name]
  sys.path = [p for p in sys.path if p]
  for name in _PRELOAD:
    try:
      __import__(name)
    except ImportError:
      pass
  # pylint: disable-next=exec-used
  exec(compile(_WARM_UP, 'warm_up.py', 'exec'),
       {'traceback': sys.modules['traceback']})
  gc.collect()
  gc.freeze()  # the runs' collections skip (and do not copy) these objects
  parent = os.getppid()
  _send(1, {'ready': True, 'pid': os.getpid(), 'isolation': isolation})
  poller = select.poll()
  poller.register(0, select.POLLIN)
  while True:
    if not poller.poll(2000):
      if os.getppid() != parent:
        return
      continue
    header = _read_exact(0, 8)
    if header is None:
      return
    req = _read_exact(0, int.from_bytes(header, 'little'))
    if req is None:
      return
    reply = _job(root, marshal.loads(req))
    _send(1, reply)
    if not reply['clean']:
      return


if __name__ == '__main__':
  serve()
