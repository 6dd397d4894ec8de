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
"""

import pathlib
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

v1 = ocp.v1
_policies = v1.training.preservation_policies
_decisions = v1.training.save_decision_policies

# Written by orbax as the last file of a step, just before the atomic rename
# (and the commit signal itself on object stores).
COMMIT_MARKER = 'commit_success.txt'


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
    return (m for m in self._inner.find_all(base_path) if _committed(m.path))

  def find_step(self, base_path, step: int):
    found = self._inner.find_step(base_path, step)
    if not _committed(found.path):
      raise ValueError(f'Step directory {found.path} has no {COMMIT_MARKER}.')
    return found


def _committed(step_dir) -> bool:
  return (pathlib.Path(step_dir) / COMMIT_MARKER).exists()


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
    state = jax.tree.map(_numpy_scalars_as_arrays, state)
    response = self._ckptr.save_async(step, state, force=force,
                                      custom_metadata=metadata)
    if response is None:
      return False
    self._pending = response
    if not self._async:
      self.wait()
    return True

  def wait(self) -> None:
    """Blocks until a background save is committed; re-raises its error."""
    pending, self._pending = self._pending, None
    if pending is not None:
      pending.result()
    self._ckptr.wait()

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
      CheckpointMismatchError: target keys or shapes differ from the saved
        ones; the message names the first difference.
    """
    self.wait()
    step = self._resolve(step)
    if abstract_state is None:
      return self._ckptr.load(step)
    abstract_state = jax.tree.map(_numpy_scalars_as_arrays, abstract_state)
    saved = self._ckptr.metadata(step).metadata
    check_compatible(saved, abstract_state,
                     where=f'{self.directory / str(step)}')
    return self._ckptr.load(step, abstract_state)

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
