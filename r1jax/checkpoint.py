"""Orbax checkpoints of the whole train state, through orbax's v1 API.

A train state is one pytree, for example

    {'params': nnx.State, 'opt_state': optax state, 'step': int,
     'rng': typed PRNG key, 'ref_params': nnx.State (optional),
     'data_state': {'epoch': int, 'order': np.ndarray}}

    ckpt = Checkpointer(workdir / 'checkpoints', max_to_keep=3)
    if ckpt.latest_step() is not None:
      state = ckpt.restore(abstract_state=abstract_like(state, shardings))
    ...
    ckpt.save(step, state)        # async: returns once arrays are copied
    ckpt.close()                  # waits for the last save

Everything needed lives in `orbax.checkpoint.v1` (orbax-checkpoint 0.12.8):
`v1.training.Checkpointer` saves pytrees (nnx.State, optax namedtuples, typed
PRNG keys, numpy arrays and Python scalars all round-trip when restored with an
abstract target of the same structure), keeps the last N through a
preservation policy, and restores onto any sharding given by
`jax.ShapeDtypeStruct(..., sharding=...)` leaves. The v1 package lives at
`orbax.checkpoint.experimental.v1` and is exported as the attribute
`orbax.checkpoint.v1`; `import orbax.checkpoint.v1` fails, hence `ocp.v1`.

Safety, as verified in tests/test_checkpoint.py:
  * orbax writes a step to '<step>.orbax-checkpoint-tmp-<time>' and renames it
    after `commit_success.txt` is written, so an interrupted save never shows
    as a step; leftovers are removed when a Checkpointer is opened.
  * old steps are deleted only after the new step is committed.
  * on local disks orbax trusts any directory named like a step; we also
    require the commit marker, so a foreign half-copied step directory is
    ignored (neither counted nor deleted by keep-last-N).
  * a target that does not fit the checkpoint fails before any read, naming
    the first mismatched key and shapes (orbax's own error names neither).

Damage, as verified in tests/test_faults.py: a committed step whose files
cannot be read (a missing or truncated file, metadata that is not JSON, a
manifest or array orbax cannot decode) raises `UnreadableCheckpointError`
naming the step and the file (or the array) instead of orbax's error, and
`set_aside` moves such a step to '<directory>/unreadable-<step>' (never
deleted; orbax lists only step-named directories, so it is out of the way).
r1jax.run.train_state.restore_latest then resumes from the newest readable
step. Bytes flipped inside array data are not detected: orbax stores no
checksums. A save that fails (disk full, a write error) raises
`CheckpointSaveError`, one line naming the step and the cause; the steps
saved before it are untouched.
"""

import json
import logging as py_logging
import pathlib
import re
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from r1jax import errors

v1 = ocp.v1
_policies = v1.training.preservation_policies
_decisions = v1.training.save_decision_policies

# Written by orbax as the last file of a step, just before the atomic rename
# (and the commit signal itself on object stores).
COMMIT_MARKER = 'commit_success.txt'
# A damaged step is moved to '<directory>/unreadable-<step>' (`set_aside`).
UNREADABLE_PREFIX = 'unreadable-'
# The files of a step orbax cannot do without, and those it reads as JSON
# ('state' is the one item a Checkpointer saves; array_metadatas/* too).
_STEP_METADATA = '_CHECKPOINT_METADATA'
_REQUIRED_FILES = (_STEP_METADATA, 'state/_METADATA', 'state/manifest.ocdbt')
_JSON_FILES = (_STEP_METADATA, 'state/_METADATA', 'state/_sharding')
# Words of orbax / TensorStore errors that mean a file could not be read.
_READ_FAILURES = ('DATA_LOSS', 'NOT_FOUND', 'OUT_OF_RANGE', 'FAILED_PRECONDITION',
                  'Error reading', 'Error decoding', 'error while reading',
                  'No such file', 'Invalid JSON')
_MAX_WHY = 240


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


def _one_line(e: BaseException, directory=None) -> str:
  """The message of `e` in one line of at most _MAX_WHY characters (its
  start and its end, where the cause is), paths under `directory` relative."""
  text = ' '.join(str(e).split()) or type(e).__name__
  if directory is not None:
    text = text.replace(f'{directory}/', '')
  if len(text) > _MAX_WHY:
    text = text[:_MAX_WHY // 3] + ' ... ' + text[-(2 * _MAX_WHY // 3):]
  return text


def _chain_text(e: BaseException) -> str:
  """The messages of `e` and the exceptions it was raised from."""
  parts, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    parts.append(f'{type(e).__name__}: {e}')
    e = e.__cause__ or e.__context__
  return '\n'.join(parts)


def _read_failure(text: str) -> tuple[str | None, str] | None:
  """(the file named, why) when `text` is an error of reading a file: the
  innermost such message, with the array it concerns; None for any other
  error."""
  lines = [l for l in text.splitlines()
           if any(word in l for word in _READ_FAILURES)]
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
  why = line if len(line) <= _MAX_WHY else line[:_MAX_WHY - 3] + '...'
  if arrays:
    why = f'array {arrays[-1]}: {why}'
  return (files[-1] if files else None), why


def _read_json(path: pathlib.Path):
  return json.loads(path.read_text(encoding='utf-8'))


def step_problem(step_dir) -> tuple[str, str] | None:
  """(file, why) of the first file of a committed step that is missing or
  not readable as what orbax expects; None when the files look whole.

  Checks without a restore target (cheap: the metadata files only).
  """
  step_dir = pathlib.Path(step_dir)
  for rel in _REQUIRED_FILES:
    f = step_dir / rel
    if not f.is_file():
      return rel, 'missing'
    if f.stat().st_size == 0:
      return rel, 'empty'
  json_files = [*_JSON_FILES, *(
      f'state/array_metadatas/{p.name}'
      for p in sorted((step_dir / 'state' / 'array_metadatas').glob('*')))]
  for rel in json_files:
    f = step_dir / rel
    if not f.is_file():
      continue  # optional ones
    try:
      value = _read_json(f)
    except (ValueError, UnicodeDecodeError) as e:
      return rel, f'not valid JSON ({getattr(e, "msg", e)})'
    if not isinstance(value, dict):
      return rel, 'not a JSON object'
  return None


class CheckpointMismatchError(ValueError):
  """The checkpoint's tree or shapes differ from the restore target.

  `problems` lists every difference, one line per key.
  """

  def __init__(self, message: str, problems: list[str]):
    super().__init__(message)
    self.problems = problems


def abstract_like(state, shardings=None):
  """The abstract restore target of `state`.

  jax.Arrays (typed PRNG keys included) become ShapeDtypeStructs carrying
  `shardings` (a matching tree of Shardings, or one Sharding for every array)
  or, by default, their current sharding. numpy arrays and Python scalars stay
  as they are (orbax reads only their type, shape and dtype); numpy scalars
  become 0-d arrays, as `Checkpointer.save` stores them.
  """
  def one(x, sharding):
    if isinstance(x, jax.Array) or isinstance(x, jax.ShapeDtypeStruct):
      sharding = sharding or getattr(x, 'sharding', None)
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return _numpy_scalars_as_arrays(x)
  if shardings is None or isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: one(x, shardings), state)
  return jax.tree.map(one, state, shardings)


def _numpy_scalars_as_arrays(x):
  # orbax v1 has no handler for numpy scalars (np.int64(3)); they are stored
  # and restored as 0-d numpy arrays of the same dtype.
  return np.asarray(x) if isinstance(x, np.generic) else x


def _key_str(k) -> str:
  for attr in ('key', 'idx', 'name'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flat(tree) -> dict[str, Any]:
  """'a/0/b' -> leaf, keyed as orbax keys its saved tree."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(_key_str(k) for k in path): leaf for path, leaf in flat}


def _stored_shape(leaf):
  """Shape as written to disk (typed PRNG keys are stored as key data)."""
  if not hasattr(leaf, 'shape'):
    return None  # a Python scalar
  dtype = getattr(leaf, 'dtype', None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return jax.eval_shape(jax.random.key_data,
                          jax.ShapeDtypeStruct(leaf.shape, dtype)).shape
  return tuple(leaf.shape)


def _describe(leaf) -> str:
  shape = _stored_shape(leaf)
  if shape is None:
    return f'scalar {type(leaf).__name__}'
  return f'{shape} {getattr(leaf, "dtype", "")}'.strip()


def check_compatible(saved_metadata, abstract_state, where: str = '') -> None:
  """Raises CheckpointMismatchError naming the first key that does not fit.

  Trees must have the same keys and arrays the same shapes; dtypes may differ
  (orbax casts on restore, e.g. float32 -> bfloat16).
  """
  saved = _flat(saved_metadata)
  target = _flat(abstract_state)
  # PLACEHOLDER (...) leaves are deliberately not restored.
  skipped = {k for k, v in target.items() if v is v1.PLACEHOLDER}
  target = {k: v for k, v in target.items() if k not in skipped}
  problems = []
  for key, want in target.items():
    if key not in saved:
      problems.append(f'{key}: in the target ({_describe(want)}) but not in '
                      f'the checkpoint')
      continue
    got_shape, want_shape = _stored_shape(saved[key]), _stored_shape(want)
    if (got_shape is None) != (want_shape is None) or got_shape != want_shape:
      problems.append(f'{key}: checkpoint has {_describe(saved[key])}, target '
                      f'has {_describe(want)}')
  for key in saved:
    if key not in target and key not in skipped:
      problems.append(f'{key}: in the checkpoint ({_describe(saved[key])}) '
                      f'but not in the target')
  if problems:
    shown = '\n  '.join(problems[:8])
    more = f'\n  ... and {len(problems) - 8} more' if len(problems) > 8 else ''
    raise CheckpointMismatchError(
        f'Checkpoint {where} does not match the restore target '
        f'({len(problems)} differences). First: {problems[0]}\n  {shown}{more}',
        problems)


class _CommittedSteps:
  """Orbax's standard step names ('<step>'), listing committed steps only.

  On local disks orbax takes any directory named like a step as complete; a
  half-copied or foreign one would then become "latest", count towards
  keep-last-N and block saving smaller steps. Requiring the commit marker
  hides such directories from orbax altogether (they are left untouched).
  """

  def __init__(self):
    self._inner = v1.path.step.standard_name_format()

  def build_name(self, step: int) -> str:
    return self._inner.build_name(step)

  def find_all(self, base_path):
    return (m for m in self._inner.find_all(base_path) if _listable(m.path))

  def find_step(self, base_path, step: int):
    found = self._inner.find_step(base_path, step)
    if not _listable(found.path):
      raise ValueError(f'Step directory {found.path} has no {COMMIT_MARKER} '
                       f'or an unreadable {_STEP_METADATA}.')
    return found


def _committed(step_dir) -> bool:
  return (pathlib.Path(step_dir) / COMMIT_MARKER).exists()


def _listable(step_dir) -> bool:
  """Committed, with step metadata orbax can list (a damaged
  _CHECKPOINT_METADATA makes orbax's listing of every step fail)."""
  if not _committed(step_dir):
    return False
  try:
    meta = _read_json(pathlib.Path(step_dir) / _STEP_METADATA)
  except (OSError, ValueError, UnicodeDecodeError):
    return False
  return isinstance(meta, dict) and bool(meta.get('commit_timestamp_nsecs'))


class _Recorder(py_logging.Handler):
  """Keeps the messages logged while it is attached."""

  def __init__(self):
    super().__init__(py_logging.WARNING)
    self.messages: list[str] = []

  def emit(self, record):
    try:
      self.messages.append(record.getMessage())
    except Exception:  # pylint: disable=broad-except
      pass


class Checkpointer:
  """Saves and restores the train state every few steps, keeping the last N.

  All methods must be called on every process of a multi-host job (orbax
  synchronises them); each host writes its own shards.
  """

  def __init__(self, directory, *, max_to_keep: int | None = None,
               keep_every_n_steps: int | None = None,
               save_interval_steps: int = 1, async_save: bool = True):
    """Opens (creating if needed) a directory of step checkpoints.

    Args:
      directory: the checkpoint root; steps live in '<directory>/<step>'.
      max_to_keep: keep the newest N complete steps (None keeps all).
      keep_every_n_steps: also keep every step divisible by this forever.
      save_interval_steps: `save` writes only at multiples of this (or when
        forced, or when JAX reports a preemption).
      async_save: return from `save` once arrays are copied to host memory
        and write in the background; `wait` or the next `save` waits for it.
    """
    self.directory = pathlib.Path(directory).absolute()
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f'max_to_keep must be >= 1 or None, got {max_to_keep}')
    self._async = async_save
    self._pending = None
    self._pending_step = None
    keep = [_policies.LatestN(max_to_keep)]
    if keep_every_n_steps:
      keep.append(_policies.EveryNSteps(keep_every_n_steps))
    self._ckptr = v1.training.Checkpointer(
        self.directory,
        save_decision_policy=_decisions.AnySavePolicy([
            _decisions.FixedIntervalPolicy(save_interval_steps),
            _decisions.PreemptionCheckpointingPolicy(),
        ]),
        preservation_policy=_policies.AnyPreservationPolicy(keep),
        step_name_format=_CommittedSteps(),
        # Leftovers of interrupted saves; never listed as steps anyway.
        cleanup_tmp_directories=True,
    )
    for path in sorted(self.directory.iterdir()):
      if path.name.isdigit() and path.is_dir() and not _committed(path):
        logging.warning('Ignoring step directory %s: it has no %s (partially '
                        'written or copied); remove it.', path, COMMIT_MARKER)

  def _orbax_steps(self) -> list[int]:
    return [c.step for c in self._ckptr.checkpoints]

  def all_steps(self) -> list[int]:
    """Steps with a complete checkpoint, ascending (in-flight save excluded)."""
    return [s for s in self._orbax_steps()
            if _committed(self.directory / str(s))]

  def committed_steps(self) -> list[int]:
    """Every step directory with the commit marker, ascending: `all_steps`
    plus those orbax cannot list (a damaged _CHECKPOINT_METADATA)."""
    if not self.directory.is_dir():
      return []
    return sorted(int(p.name) for p in self.directory.iterdir()
                  if p.name.isdigit() and p.is_dir() and _committed(p))

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, force: bool = False,
           metadata: dict | None = None) -> bool:
    """Saves `state` as `step` if the interval (or `force`) says so.

    Returns whether a save was started. A step that already exists is left
    untouched (re-saving it after a resume would write the same state), and
    orbax skips unforced steps below the latest saved one.
    `metadata` is a JSON-able dict stored with the step (see `metadata`).
    """
    step = int(step)
    if step in self._orbax_steps():
      logging.info('Checkpoint step %d already exists; not saving it again.',
                   step)
      return False
    if self._pending is not None and (force or self._ckptr.should_save(step)):
      self.wait()  # orbax would wait for it too; its error names its step
    state = jax.tree.map(_numpy_scalars_as_arrays, state)
    try:
      response = self._ckptr.save_async(step, state, force=force,
                                        custom_metadata=metadata)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from e
    if response is None:
      return False
    self._pending, self._pending_step = response, step
    if not self._async:
      self.wait()
    return True

  def wait(self) -> None:
    """Blocks until a background save is committed.

    Raises:
      CheckpointSaveError: the save failed (one line: the step, the cause,
        the step to resume from).
    """
    pending, step = self._pending, self._pending_step
    self._pending = self._pending_step = None
    try:
      if pending is not None:
        pending.result()
      self._ckptr.wait()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from e

  def _save_failed(self, step: int | None, e: Exception) -> CheckpointSaveError:
    if isinstance(e, CheckpointSaveError):
      return e
    saved = [s for s in self.committed_steps() if s != step]
    what = f'step {step}' if step is not None else 'a step'
    keep = (f'the checkpoints saved before it are intact (latest: step '
            f'{saved[-1]}); free disk space or fix the disk, then run the '
            f'same command to resume from step {saved[-1]}' if saved else
            'no checkpoint was saved before it; free disk space or fix the '
            'disk, then run the same command to start again')
    return CheckpointSaveError(
        f'saving checkpoint {what} in {self.directory} failed: '
        f'{_one_line(e, self.directory)}. The run stopped; {keep}', step)

  def _resolve(self, step: int | None) -> int:
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f'No complete checkpoint in {self.directory}.')
      return steps[-1]
    if step not in steps:
      raise FileNotFoundError(
          f'No complete checkpoint for step {step} in {self.directory}; '
          f'complete steps: {steps}')
    return step

  def restore(self, step: int | None = None, abstract_state=None):
    """The state saved at `step` (default: the latest complete one).

    Args:
      step: which step; None for the latest.
      abstract_state: the target, usually `abstract_like(state, shardings)`:
        arrays land on its shardings and the result has its tree structure
        (nnx.State, optax namedtuples, typed keys). Without it orbax returns
        plain dicts and lists on the saved shardings (same topology only).

    Raises:
      FileNotFoundError: no such complete step.
      UnreadableCheckpointError: a file of the step is missing or damaged;
        the message names it (or the array that could not be read).
      CheckpointMismatchError: target keys or shapes differ from the saved
        ones; the message names the first difference.
    """
    self.wait()
    if step is not None and int(step) in self.committed_steps():
      step = int(step)  # listed by orbax or not: the file check names why
    else:
      step = self._resolve(step)
    step_dir = self.directory / str(step)
    problem = step_problem(step_dir)
    if problem is not None:
      raise UnreadableCheckpointError(step, step_dir / problem[0], problem[1])
    if step not in self._orbax_steps():
      self._ckptr.reload()  # a step set aside or copied in since opening
    if abstract_state is None:
      return self._load(step)
    abstract_state = jax.tree.map(_numpy_scalars_as_arrays, abstract_state)
    saved = self._saved_tree(step)
    check_compatible(saved, abstract_state, where=f'{step_dir}')
    return self._load(step, abstract_state)

  def _saved_tree(self, step: int):
    """The saved tree's metadata; orbax logs (and swallows) a read error and
    returns None, so the log is read for the file it names."""
    step_dir = self.directory / str(step)
    seen = _Recorder()
    absl_logger = py_logging.getLogger('absl')
    absl_logger.addHandler(seen)
    try:
      saved = self._ckptr.metadata(step).metadata
    except Exception as e:  # pylint: disable=broad-except
      failure = _read_failure(_chain_text(e))
      if failure is None:
        raise
      raise UnreadableCheckpointError(step, failure[0] or step_dir,
                                      failure[1]) from e
    finally:
      absl_logger.removeHandler(seen)
    if saved is None:
      failure = _read_failure('\n'.join(seen.messages)) or (
          None, 'orbax could not read the tree of arrays')
      raise UnreadableCheckpointError(
          step, failure[0] or step_dir / 'state', failure[1])
    return saved

  def _load(self, step: int, abstract_state=None):
    try:
      if abstract_state is None:
        return self._ckptr.load(step)
      return self._ckptr.load(step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except
      failure = _read_failure(_chain_text(e))
      if failure is None:
        raise
      raise UnreadableCheckpointError(
          step, failure[0] or self.directory / str(step) / 'state',
          failure[1]) from e

  def set_aside(self, step: int) -> pathlib.Path:
    """Moves step `step` to '<directory>/unreadable-<step>' (or -2, -3, ...
    when taken), where orbax neither lists nor deletes it; returns the path.
    Nothing is deleted. Process 0 moves it; every process must call this."""
    self.wait()
    src = self.directory / str(int(step))
    dest = self.directory / f'{UNREADABLE_PREFIX}{int(step)}'
    n = 2
    while dest.exists():
      dest = self.directory / f'{UNREADABLE_PREFIX}{int(step)}-{n}'
      n += 1
    if jax.process_index() == 0:
      src.rename(dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'r1jax_set_aside_{step}')
    self._ckptr.reload()
    return dest

  def metadata(self, step: int | None = None) -> dict:
    """The `metadata` dict given to `save` for `step` (default: latest)."""
    step = self._resolve(step)
    return dict(self._ckptr.metadata(step).custom_metadata or {})

  def close(self) -> None:
    """Waits for the last save, then releases orbax's threads."""
    try:
      self.wait()
    finally:
      self._ckptr.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
