"""Writes that a kill cannot leave half done: a temporary name, then a rename.

    write_text(path, text)        a file holds its old content or the new one
    with replaced_dir(path) as d: a directory is written in full beside `path`
      ...write files into d...    and then takes its place, so `path` is the
                                  old directory or the new one

A kill (SIGKILL, a power cut after the data reached the disk) at any moment
leaves no part-written file under the final name: the data is written and
flushed (fsync) under '<name>.tmp-<pid>', then renamed, which POSIX makes
atomic within a directory. What a kill leaves under a temporary name is
removed the next time the same path is written (`recover`).
"""

import contextlib
import glob
import os
import pathlib
import shutil
from typing import Callable, Iterator

_TMP = '.tmp-'   # '<name>.tmp-<pid>': being written
_OLD = '.old-'   # '<name>.old-<pid>': a replaced directory, until removed


def _tmp_name(path: pathlib.Path, tag: str = _TMP) -> pathlib.Path:
  return path.with_name(f'{path.name}{tag}{os.getpid()}')


def fsync_path(path) -> None:
  """Flushes a file (or a directory's entries) to the disk."""
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  except OSError:
    pass  # some file systems cannot fsync a directory
  finally:
    os.close(fd)


def write_bytes(path, data: bytes) -> None:
  """Writes `data` to `path`: the old content or the new, never a part."""
  path = pathlib.Path(path)
  tmp = _tmp_name(path)
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  for leftover in path.parent.glob(f'{glob.escape(path.name)}{_TMP}*'):
    leftover.unlink(missing_ok=True)  # a killed earlier write's


def write_text(path, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically (see `write_bytes`)."""
  write_bytes(path, text.encode('utf-8'))


def recover(path) -> None:
  """Clears what a kill left in the middle of `replaced_dir(path)`.

  Temporary directories (partly written) are removed. A kill between the two
  renames of the swap leaves no `path` but the complete old directory beside
  it: that one is put back.
  """
  path = pathlib.Path(path)
  pattern = glob.escape(path.name)
  olds = sorted(path.parent.glob(f'{pattern}{_OLD}*'), key=os.path.getmtime)
  if olds and not path.exists():
    os.rename(olds.pop(), path)
  for leftover in olds + list(path.parent.glob(f'{pattern}{_TMP}*')):
    if leftover.is_dir() and not leftover.is_symlink():
      shutil.rmtree(leftover, ignore_errors=True)
    else:
      leftover.unlink(missing_ok=True)


def _link_or_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
  """A hard link of `src` (a copy across file systems); directories whole."""
  src, dst = pathlib.Path(src), pathlib.Path(dst)
  if src.is_dir() and not src.is_symlink():
    shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    return
  try:
    os.link(src, dst, follow_symlinks=False)
  except OSError:
    shutil.copy2(src, dst, follow_symlinks=False)


@contextlib.contextmanager
def replaced_dir(path, keep: Callable[[str], bool] = lambda name: True
                 ) -> Iterator[pathlib.Path]:
  """Yields an empty directory beside `path`; when the block ends without an
  exception, it takes `path`'s place.

  Entries of the old `path` that the new directory lacks are kept (hard
  links, made before the swap) when `keep(name)`: files a user put there
  survive a re-export. The swap is two renames; a kill between them leaves
  the old directory under '<name>.old-<pid>', which `recover` (called here
  first) puts back. A symlink `path` is followed: its target is replaced.
  """
  path = pathlib.Path(path)
  if path.is_symlink():
    path = path.resolve()
  path.parent.mkdir(parents=True, exist_ok=True)
  recover(path)
  tmp = _tmp_name(path)
  tmp.mkdir()
  try:
    yield tmp
    if path.is_dir():
      for entry in path.iterdir():
        if keep(entry.name) and not (tmp / entry.name).exists():
          _link_or_copy(entry, tmp / entry.name)
    for f in tmp.rglob('*'):
      if f.is_file() and not f.is_symlink():
        fsync_path(f)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if path.exists():
    old = _tmp_name(path, _OLD)
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, path)
  fsync_path(path.parent)
