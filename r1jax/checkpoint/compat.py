"""Restore targets, and the check that a checkpoint fits one before any read."""

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

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
    return numpy_scalars_as_arrays(x)
  if shardings is None or isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: one(x, shardings), state)
  return jax.tree.map(one, state, shardings)


def numpy_scalars_as_arrays(x):
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
  skipped = {k for k, v in target.items() if v is ocp.v1.PLACEHOLDER}
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


