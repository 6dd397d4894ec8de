"""Gradient accumulation of a GRPO loss over micro-batches, exactly.

Every loss aggregation in `aggregation.LOSS_AGGREGATIONS` is a mean over
some unit of the batch, and is registered with the function that counts
those units. Splitting a mini-batch into micro-batches and weighting each
micro-batch's loss by

    units(micro-batch) / units(mini-batch)

makes the sum of the weighted losses (and so of their gradients) equal to
the loss of the whole mini-batch.
"""

import jax
import jax.numpy as jnp

from r1jax.rl import aggregation as aggregation_lib


def aggregation_units(aggregation: str, mask_BxT: jax.Array) -> jax.Array:
  """How many units `aggregation` averages over in this batch (float32).

  Raises KeyError, naming the known aggregations, for an unknown name.
  """
  return aggregation_lib.LOSS_AGGREGATIONS.get(aggregation).units(mask_BxT)


def micro_weight(aggregation: str, micro_mask_BxT: jax.Array,
                 total_units: jax.Array) -> jax.Array:
  """The weight of one micro-batch's loss in its mini-batch's loss."""
  return aggregation_units(aggregation, micro_mask_BxT) / jnp.maximum(
      total_units, 1.0)


def split_rows(x: jax.Array, n: int) -> jax.Array:
  """[B, ...] -> [n, B / n, ...], part i = rows i, i + n, i + 2n, ...

  Strided rather than contiguous: with the batch sharded in contiguous
  blocks over D devices and (B / D) % n == 0, every part keeps rows on every
  device, so splitting moves no data between devices.
  """
  b = x.shape[0]
  if b % n:
    raise ValueError(f'cannot split {b} rows into {n} equal parts')
  return jnp.moveaxis(x.reshape((b // n, n) + x.shape[1:]), 1, 0)
