"""Gradient accumulation of a GRPO loss over micro-batches, exactly.

Every loss aggregation in `losses.LOSS_AGGREGATIONS` is a mean over some unit
of the batch: sequences with at least one completion token
('seq_mean_token_mean'), completion tokens ('token_mean') or rows
('seq_sum_norm', whose per-row sum is divided by a constant). Splitting a
mini-batch into micro-batches and weighting each micro-batch's loss by

    units(micro-batch) / units(mini-batch)

makes the sum of the weighted losses (and so of their gradients) equal to
the loss of the whole mini-batch. `AGGREGATION_UNITS` holds the unit count of
each aggregation; an aggregation not listed is taken to be a mean over rows.
"""

from typing import Callable

import jax
import jax.numpy as jnp

AGGREGATION_UNITS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'seq_mean_token_mean': lambda m_BxT: jnp.sum(
        (jnp.sum(m_BxT, axis=1) > 0).astype(jnp.float32)),
    'token_mean': lambda m_BxT: jnp.sum(m_BxT.astype(jnp.float32)),
    'seq_sum_norm': lambda m_BxT: jnp.asarray(m_BxT.shape[0], jnp.float32),
}


def aggregation_units(aggregation: str, mask_BxT: jax.Array) -> jax.Array:
  """How many units `aggregation` averages over in this batch (float32)."""
  fn = AGGREGATION_UNITS.get(
      aggregation, lambda m: jnp.asarray(m.shape[0], jnp.float32))
  return fn(mask_BxT)


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
