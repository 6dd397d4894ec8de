"""Sandbox bootstrap: lock down this interpreter, then run the user's code.

Run by `sandbox` as `python -I -S _sandbox_boot.py CONFIG_HEX` (a
marshalled dict of paths and limits) in a
fresh process (its own session, a private working directory, a minimal
environment), or imported by the warm worker (`_sandbox_serve.py`), which does
step 2 once and steps 3-5 in a child forked for each run. Standard library only. In
order, it

  1. reads the program, the test code and a one-time token (from an inherited
     pipe, so that the user's code cannot read it from argv or a file);
  2. when root: unshares the network namespace (no interfaces but a down
     loopback) and the mount namespace, then remounts every filesystem
     read-only except the working directory;
  3. sets rlimits: address space, CPU seconds, file size, open files, no core
     dumps, process count;
  4. installs an audit hook (PEP 578) that refuses: process creation
     (fork, exec, spawn, system, subprocess, posix_spawn), signals to other
     processes, sockets, ctypes / native test modules, raising rlimits,
     opening files for writing and changing files outside the working
     directory, and reading /proc entries of other processes (their
     environment, memory);
  5. runs the program as `__main__` (stdin tests) or as module `solution`
     followed by the test code (assert tests), and after assert tests prints
     the token, which proves that the tests ran to the end (an `os._exit(0)`
     cannot fake it).

Audit hooks are not a security boundary against code written to attack this
bootstrap (see `code_sandbox` for the honest list of limits).
"""

import marshal
import os
import sys
import types


def unshare_and_remount(root: str) -> dict:
  """Best-effort kernel isolation as root; returns what was achieved."""
  done = {'net': False, 'fs_readonly': False}
  if os.geteuid() != 0:
    return done
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
  except ImportError:
    return done
  libc = ctypes.CDLL(None, use_errno=True)
  clone_newnet, clone_newns = 0x40000000, 0x00020000
  done['net'] = libc.unshare(clone_newnet) == 0
  if libc.unshare(clone_newns) != 0:
    return done
  # From here on we are in a private mount namespace: nothing below can
  # change the host's mounts, and every step is checked before the next.
  ms_rdonly, ms_nosuid, ms_nodev, ms_noexec = 1, 2, 4, 8
  ms_remount, ms_bind, ms_rec, ms_private = 32, 4096, 16384, 1 << 18
  atime_flags = {'noatime': 1024, 'nodiratime': 2048, 'relatime': 1 << 21,
                 'strictatime': 1 << 24}
  mount = libc.mount
  mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                    ctypes.c_ulong, ctypes.c_void_p]
  if mount(b'none', b'/', None, ms_rec | ms_private, None) != 0:
    return done
  broot = root.encode()
  if mount(broot, broot, None, ms_bind | ms_rec, None) != 0:
    return done
  with open('/proc/self/mountinfo') as f:
    lines = f.read().splitlines()
  ok = True
  for line in lines:
    fields = line.split()
    point = fields[4].encode().decode('unicode_escape')
    options = fields[5].split(',')
    if (point == root or point.startswith(root + '/')
        or point.split('/')[1:2] in (['proc'], ['sys'])):
      continue
    flags = ms_remount | ms_bind | ms_rdonly
    flags |= ms_nosuid * ('nosuid' in options) | ms_nodev * ('nodev' in options)
    flags |= ms_noexec * ('noexec' in options)
    for name, bit in atime_flags.items():
      if name in options:
        flags |= bit
    if mount(None, point.encode(), None, flags, None) != 0:
      ok = False
  done['fs_readonly'] = ok
  return done


def set_limits(limits: dict) -> None:
  import resource  # pylint: disable=g-import-not-at-top
  for name, value in (
      ('RLIMIT_AS', limits['memory_bytes']),
      ('RLIMIT_CPU', limits['cpu_seconds']),
      ('RLIMIT_FSIZE', limits['file_bytes']),
      ('RLIMIT_NOFILE', limits['open_files']),
      ('RLIMIT_CORE', 0),
      ('RLIMIT_NPROC', limits['processes']),
  ):
    res = getattr(resource, name)
    _, old_hard = resource.getrlimit(res)
    # RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL a second later.
    soft, hard = value, value + (name == 'RLIMIT_CPU')
    if old_hard != resource.RLIM_INFINITY:
      soft, hard = min(soft, old_hard), min(hard, old_hard)
    try:
      resource.setrlimit(res, (soft, hard))
    except (ValueError, OSError):
      pass


def make_audit_hook(root: str):
  """The hook enforcing step 4 of the module docstring."""
  realpath = os.path.realpath
  fsdecode = os.fsdecode
  pid_dir = f'/proc/{os.getpid()}'
  write_flags = (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT
                 | os.O_TRUNC)
  forbidden = frozenset({
      'os.fork', 'os.forkpty', 'os.exec', 'os.spawn', 'os.posix_spawn',
      'os.system', 'os.startfile', 'subprocess.Popen', 'pty.spawn',
      'os.kill', 'os.killpg', 'signal.pthread_kill', 'os.chroot',
      'resource.setrlimit', 'resource.prlimit', 'ctypes.dlopen',
      'ctypes.dlsym', 'ctypes.call_function', 'ctypes.cdata',
      'gc.get_referrers', 'gc.get_objects', 'sys._current_frames',
      'os.setxattr', 'os.removexattr', 'os.chflags', 'os.lchflags',
  })
  blocked_modules = frozenset({
      'ctypes', '_ctypes', '_posixsubprocess', '_testcapi',
      '_testinternalcapi', '_xxsubinterpreters', 'posix', '_signal',
      'resource', 'cffi', '_cffi_backend',
  })
  # event -> (positions of paths that must stay inside `root`, positions of
  # dir_fd arguments, which would let a relative path escape the check)
  path_events = {
      'os.remove': ((0,), (1,)), 'os.rmdir': ((0,), (1,)),
      'os.mkdir': ((0,), (2,)), 'os.rename': ((0, 1), (2, 3)),
      'os.link': ((0, 1), (2, 3)), 'os.symlink': ((1,), (2,)),
      'os.chmod': ((0,), (2,)), 'os.chown': ((0,), (3,)),
      'os.truncate': ((0,), ()), 'os.utime': ((0,), (3,)),
      'shutil.rmtree': ((0,), (1,)), 'shutil.chown': ((0,), ()),
  }

  def inside(path) -> bool:
    if isinstance(path, int):
      return True  # an fd that an allowed open() produced
    p = realpath(fsdecode(path))
    return p == root or p.startswith(root + '/')

  def deny(what):
    raise PermissionError(f'sandbox: {what} is not allowed')

  def hook(event, args):
    if event in forbidden or event.startswith('socket.'):
      deny(event)
    elif event == 'open':
      path, mode, flags = args
      if path is None or isinstance(path, int):
        return
      if isinstance(mode, str):
        writing = any(c in mode for c in 'wax+')
      else:
        writing = bool(flags & write_flags)
      p = realpath(fsdecode(path))
      if writing and not (p == root or p.startswith(root + '/')
                          or p == '/dev/null'):
        deny(f'writing {p!r} outside the working directory')
      if p.startswith('/proc/'):
        first = p.split('/')[2]
        own = p == pid_dir or p.startswith(pid_dir + '/')
        if first.isdigit() and not own:
          deny(f'reading {p!r} of another process')
    elif event in path_events:
      paths, dir_fds = path_events[event]
      # CPython reports an absent dir_fd as -1 (os.*) or None (shutil.*).
      if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
        deny(f'{event} with dir_fd')
      for i in paths:
        if i < len(args) and not inside(args[i]):
          deny(f'{event} outside the working directory')
    elif event == 'import' and args[0] in blocked_modules:
      raise ImportError(f'sandbox: module {args[0]!r} is not available')

  return hook


def guard_open(orig_open):
  """os.open without dir_fd, which would let relative paths escape."""

  def open_(path, flags, mode=0o777, *, dir_fd=None):
    if dir_fd is not None:
      raise PermissionError('sandbox: os.open with dir_fd is not allowed')
    return orig_open(path, flags, mode)

  return open_


def lock_down(root: str, limits: dict, audit: bool) -> None:
  """Steps 3 and 4 (and the module patches) in this process, for good."""
  for name in [m for m in sys.modules if m == 'ctypes' or m.startswith(
      ('ctypes.', '_ctypes'))]:
    del sys.modules[name]
  # Pre-import what the hook then refuses to load again, and take the
  # process-spawning and cross-process-signal paths out of them.
  import _posixsubprocess  # pylint: disable=g-import-not-at-top
  import _signal  # pylint: disable=g-import-not-at-top

  def refuse(*unused_args, **unused_kwargs):
    raise PermissionError('sandbox: starting processes is not allowed')

  _posixsubprocess.fork_exec = refuse
  if hasattr(_signal, 'pidfd_send_signal'):  # `signal` re-exports _signal's
    _signal.pidfd_send_signal = refuse
  safe_open = guard_open(os.open)
  os.open = safe_open
  sys.modules['posix'].open = safe_open
  set_limits(limits)
  sys.dont_write_bytecode = True
  if audit:
    sys.addaudithook(make_audit_hook(root))


def run_user_code(program: str, test_code: str | None, token: bytes) -> None:
  """Step 5: the program, then the tests and the token."""
  sys.argv = ['main.py']
  sys.path = [p for p in sys.path if p]  # never the working directory
  # stdin tests run the program as __main__; assert tests import it as
  # `solution` (its `if __name__ == '__main__':` demo must not eat stdin).
  module = types.ModuleType('__main__' if test_code is None else 'solution')
  module.__file__ = 'main.py'
  sys.modules[module.__name__] = module
  # pylint: disable=exec-used
  exec(compile(program, 'main.py', 'exec'), module.__dict__)
  if test_code is not None:
    exec(compile(test_code, 'tests.py', 'exec'), module.__dict__)
    for stream in (sys.stdout, sys.__stdout__):
      try:
        stream.flush()
      except (AttributeError, OSError, ValueError):
        pass
    os.write(1, b'\n' + token + b'\n')


def main() -> None:
  """One run in this fresh interpreter (`code_sandbox`, `pool=False`)."""
  # marshal, not json: importing json (and re, enum) costs tens of ms.
  cfg = marshal.loads(bytes.fromhex(sys.argv[1]))
  root = os.path.realpath(cfg['root'])
  with open(cfg['program'], encoding='utf-8', errors='replace') as f:
    program = f.read()
  test_code = None
  if cfg.get('test_code'):
    with open(cfg['test_code'], encoding='utf-8', errors='replace') as f:
      test_code = f.read()
  token = b''
  if cfg.get('token_fd') is not None:
    token = os.read(cfg['token_fd'], 256)
    os.close(cfg['token_fd'])
  os.chdir(root)

  if cfg.get('isolate', True):
    unshare_and_remount(root)
    os.chdir(root)  # again: the working directory is now a mount of its own
  lock_down(root, cfg['limits'], cfg.get('audit', True))
  del cfg
  run_user_code(program, test_code, token)


if __name__ == '__main__':
  main()
