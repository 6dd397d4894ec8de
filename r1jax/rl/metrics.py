"""Masked statistics and the rollout-level metrics of GRPO.

`grpo_loss` (in `losses.py`) returns the per-update metrics; `rollout_metrics`
is computed once per rollout from the group rewards, because a mini-batch of the
update need not hold whole groups.
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


def zero_spread_groups(rewards_PxG: jax.Array, atol: float = 0.0) -> jax.Array:
  """[P] bool: groups whose rewards are all equal (max - min <= atol)."""
  r_PxG = rewards_PxG.astype(jnp.float32)
  return jnp.max(r_PxG, axis=1) - jnp.min(r_PxG, axis=1) <= atol


def rollout_metrics(
    rewards_PxG: jax.Array, adv_PxG: jax.Array | None = None
) -> dict[str, jax.Array]:
  """Scalars that describe one rollout of P groups of G completions.

  `frac_zero_spread_groups` is the fraction of prompts whose G rewards are all
  equal (all right or all wrong). Their advantages are 0, so they add nothing
  to the policy gradient; when it is near 1 the loss is ~0 (plus the KL term)
  and learning stalls, which is the usual reason for a "GRPO loss is zero"
  surprise. DAPO's dynamic sampling (`dynamic_sampling.py`) filters them.

  Args:
    rewards_PxG: rewards, one row per prompt.
    adv_PxG: optional advantages of the same shape, for their statistics.

  Returns:
    reward_mean/_std/_min/_max, frac_zero_spread_groups and, if `adv_PxG` is
    given, adv_mean/_std/_min/_max.
  """
  r_PxG = rewards_PxG.astype(jnp.float32)
  ones_PxG = jnp.ones(r_PxG.shape, jnp.float32)
  zero_P = zero_spread_groups(r_PxG)
  out = stats('reward', r_PxG, ones_PxG)
  out['frac_zero_spread_groups'] = jnp.mean(zero_P.astype(jnp.float32))
  if adv_PxG is not None:
    out.update(stats('adv', adv_PxG, ones_PxG))
  return out
