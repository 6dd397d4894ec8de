"""Telling a whole committed checkpoint step from a damaged one.

`step_problem` checks a step's files without a restore target (the metadata
files only); `read_failure` reads orbax's / TensorStore's error text for the
file (and the array) that could not be read. `Checkpointer` raises
`UnreadableCheckpointError` and `CheckpointSaveError` with what these find.
"""

import json
import pathlib
import re

from r1jax import errors

# Written by orbax as the last file of a step, just before the atomic rename
# (and the commit signal itself on object stores).
COMMIT_MARKER = 'commit_success.txt'
# A damaged step is moved to '<directory>/unreadable-<step>' (`set_aside`).
UNREADABLE_PREFIX = 'unreadable-'
# The files of a step orbax cannot do without, and those it reads as JSON
# ('state' is the one item a Checkpointer saves; array_metadatas/* too).
STEP_METADATA = '_CHECKPOINT_METADATA'
REQUIRED_FILES = (STEP_METADATA, 'state/_METADATA', 'state/manifest.ocdbt')
JSON_FILES = (STEP_METADATA, 'state/_METADATA', 'state/_sharding')
# Words of orbax / TensorStore errors that mean a file could not be read.
READ_FAILURES = ('DATA_LOSS', 'NOT_FOUND', 'OUT_OF_RANGE', 'FAILED_PRECONDITION',
                  'Error reading', 'Error decoding', 'error while reading',
                  'No such file', 'Invalid JSON')
MAX_WHY = 240


class UnreadableCheckpointError(errors.CheckpointError):
  """A committed step that cannot be read: a damaged or missing file.

  `step`, `path` (the file, or the step directory) and `why`.
  """

  def __init__(self, step: int, path, why: str):
    self.step, self.path, self.why = int(step), pathlib.Path(path), why
    super().__init__(f'checkpoint step {step} cannot be read: {path}: {why}')


class CheckpointSaveError(errors.CheckpointError):
  """Saving a step failed (disk full, a write error); `step` is the step."""

  def __init__(self, message: str, step: int | None):
    super().__init__(message)
    self.step = step


def one_line(e: BaseException, directory=None) -> str:
  """The message of `e` in one line of at most MAX_WHY characters (its
  start and its end, where the cause is), paths under `directory` relative."""
  text = ' '.join(str(e).split()) or type(e).__name__
  if directory is not None:
    text = text.replace(f'{directory}/', '')
  if len(text) > MAX_WHY:
    text = text[:MAX_WHY // 3] + ' ... ' + text[-(2 * MAX_WHY // 3):]
  return text


def chain_text(e: BaseException) -> str:
  """The messages of `e` and the exceptions it was raised from."""
  parts, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    parts.append(f'{type(e).__name__}: {e}')
    e = e.__cause__ or e.__context__
  return '\n'.join(parts)


def read_failure(text: str) -> tuple[str | None, str] | None:
  """(the file named, why) when `text` is an error of reading a file: the
  innermost such message, with the array it concerns; None for any other
  error."""
  lines = [l for l in text.splitlines()
           if any(word in l for word in READ_FAILURES)]
  if not lines:
    return None
  line = ' '.join(lines[-1].split())  # the innermost cause
  for cut in (' [tensorstore_spec=', ' See full TensorStore details'):
    if cut in line:
      line = line[:line.index(cut)]
  files = [f for f in re.findall(r'local file "([^"]+)"', text)
           if not f.endswith('/')]
  arrays = (re.findall(r' in "([^"/]+)/', line) or
            re.findall(r"'path': '([^'/]+)/'", text))
  if files and f'local file "{files[-1]}": ' in line:  # what is wrong in it
    line = line.split(f'local file "{files[-1]}": ', 1)[1]
  line = re.sub(r' in OCDBT database at local file "[^"]*/"', '', line)
  line = re.sub(r'^(\w+Error: |Exception: |Error details: )+', '', line)
  why = line if len(line) <= MAX_WHY else line[:MAX_WHY - 3] + '...'
  if arrays:
    why = f'array {arrays[-1]}: {why}'
  return (files[-1] if files else None), why


def read_json(path: pathlib.Path):
  return json.loads(path.read_text(encoding='utf-8'))


def step_problem(step_dir) -> tuple[str, str] | None:
  """(file, why) of the first file of a committed step that is missing or
  not readable as what orbax expects; None when the files look whole.

  Checks without a restore target (cheap: the metadata files only).
  """
  step_dir = pathlib.Path(step_dir)
  for rel in REQUIRED_FILES:
    f = step_dir / rel
    if not f.is_file():
      return rel, 'missing'
    if f.stat().st_size == 0:
      return rel, 'empty'
  json_files = [*JSON_FILES, *(
      f'state/array_metadatas/{p.name}'
      for p in sorted((step_dir / 'state' / 'array_metadatas').glob('*')))]
  for rel in json_files:
    f = step_dir / rel
    if not f.is_file():
      continue  # optional ones
    try:
      value = read_json(f)
    except (ValueError, UnicodeDecodeError) as e:
      return rel, f'not valid JSON ({getattr(e, "msg", e)})'
    if not isinstance(value, dict):
      return rel, 'not a JSON object'
  return None


def is_committed(step_dir) -> bool:
  return (pathlib.Path(step_dir) / COMMIT_MARKER).exists()


def is_listable(step_dir) -> bool:
  """Committed, with step metadata orbax can list (a damaged
  _CHECKPOINT_METADATA makes orbax's listing of every step fail)."""
  if not is_committed(step_dir):
    return False
  try:
    meta = read_json(pathlib.Path(step_dir) / STEP_METADATA)
  except (OSError, ValueError, UnicodeDecodeError):
    return False
  return isinstance(meta, dict) and bool(meta.get('commit_timestamp_nsecs'))


