"""Masked statistics, for the metrics `grpo_loss` (in `losses.py`) returns.

The rollout-level metrics (rewards, zero-spread groups, lengths) are the
GRPO stage's, computed once per rollout on the host
(`stages/grpo_rollout.rollout_metrics`): a mini-batch of the update need not
hold whole groups.
"""

import jax
import jax.numpy as jnp


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `x` over positions where `mask` is set; 0 when none are."""
  m = mask.astype(jnp.float32)
  total = jnp.sum(jnp.where(m > 0, x.astype(jnp.float32), 0.0) * m)
  return total / jnp.maximum(jnp.sum(m), 1.0)


def masked_std(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Population std of `x` over the masked positions; 0 when none are."""
  mean = masked_mean(x, mask)
  return jnp.sqrt(masked_mean(jnp.square(x.astype(jnp.float32) - mean), mask))


def masked_min(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Min of `x` over the masked positions; 0 when none are."""
  valid = mask > 0
  lo = jnp.min(jnp.where(valid, x.astype(jnp.float32), jnp.inf))
  return jnp.where(jnp.any(valid), lo, 0.0)


def masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Max of `x` over the masked positions; 0 when none are."""
  valid = mask > 0
  hi = jnp.max(jnp.where(valid, x.astype(jnp.float32), -jnp.inf))
  return jnp.where(jnp.any(valid), hi, 0.0)


def stats(prefix: str, x: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """`{prefix}_mean/_std/_min/_max` of `x` over the masked positions."""
  return {
      f'{prefix}_mean': masked_mean(x, mask),
      f'{prefix}_std': masked_std(x, mask),
      f'{prefix}_min': masked_min(x, mask),
      f'{prefix}_max': masked_max(x, mask),
  }
