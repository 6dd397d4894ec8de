"""`Checkpointer`: orbax v1 checkpoints of a train state (see the package doc)."""

import logging as py_logging
import pathlib

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from r1jax.checkpoint import compat
from r1jax.checkpoint import damage
from r1jax.checkpoint.damage import CheckpointSaveError, UnreadableCheckpointError

v1 = ocp.v1
_policies = v1.training.preservation_policies
_decisions = v1.training.save_decision_policies


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
    return (m for m in self._inner.find_all(base_path) if damage.is_listable(m.path))

  def find_step(self, base_path, step: int):
    found = self._inner.find_step(base_path, step)
    if not damage.is_listable(found.path):
      raise ValueError(f'Step directory {found.path} has no {damage.COMMIT_MARKER} '
                       f'or an unreadable {damage.STEP_METADATA}.')
    return found


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
      if path.name.isdigit() and path.is_dir() and not damage.is_committed(path):
        logging.warning('Ignoring step directory %s: it has no %s (partially '
                        'written or copied); remove it.', path, damage.COMMIT_MARKER)

  def _orbax_steps(self) -> list[int]:
    return [c.step for c in self._ckptr.checkpoints]

  def all_steps(self) -> list[int]:
    """Steps with a complete checkpoint, ascending (in-flight save excluded)."""
    return [s for s in self._orbax_steps()
            if damage.is_committed(self.directory / str(s))]

  def committed_steps(self) -> list[int]:
    """Every step directory with the commit marker, ascending: `all_steps`
    plus those orbax cannot list (a damaged _CHECKPOINT_METADATA)."""
    if not self.directory.is_dir():
      return []
    return sorted(int(p.name) for p in self.directory.iterdir()
                  if p.name.isdigit() and p.is_dir() and damage.is_committed(p))

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
    state = jax.tree.map(compat.numpy_scalars_as_arrays, state)
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
        f'{damage.one_line(e, self.directory)}. The run stopped; {keep}', step)

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
    problem = damage.step_problem(step_dir)
    if problem is not None:
      raise UnreadableCheckpointError(step, step_dir / problem[0], problem[1])
    if step not in self._orbax_steps():
      self._ckptr.reload()  # a step set aside or copied in since opening
    if abstract_state is None:
      return self._load(step)
    abstract_state = jax.tree.map(compat.numpy_scalars_as_arrays, abstract_state)
    saved = self._saved_tree(step)
    compat.check_compatible(saved, abstract_state, where=f'{step_dir}')
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
      failure = damage.read_failure(damage.chain_text(e))
      if failure is None:
        raise
      raise UnreadableCheckpointError(step, failure[0] or step_dir,
                                      failure[1]) from e
    finally:
      absl_logger.removeHandler(seen)
    if saved is None:
      failure = damage.read_failure('\n'.join(seen.messages)) or (
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
      failure = damage.read_failure(damage.chain_text(e))
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
    dest = self.directory / f'{damage.UNREADABLE_PREFIX}{int(step)}'
    n = 2
    while dest.exists():
      dest = self.directory / f'{damage.UNREADABLE_PREFIX}{int(step)}-{n}'
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
