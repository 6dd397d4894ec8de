"""Per-token estimators of KL(pi || pi_ref) (registry `KL_ESTIMATORS`).

Each takes the log-probs of the sampled tokens under the current policy and the
frozen reference, `logp_BxT` and `ref_logp_BxT`, and returns `kl_BxT` (float32).
With log_r = log(pi_ref / pi) = ref_logp - logp (Schulman, "Approximating KL
divergence", 2020), for tokens drawn from pi:

  k1 = -log_r                  unbiased, high variance, can be negative
  k2 = log_r**2 / 2            biased, low variance, >= 0
  k3 = exp(log_r) - log_r - 1  unbiased, low variance, >= 0 (DeepSeekMath eq. 4,
                               R1; the default)

The estimators are differentiated through `logp` as they stand (the GRPO way:
the KL term is added to the loss, not to the reward). Masking is the caller's
business (`losses.grpo_loss` zeroes padded positions before calling these).

Straight-through forms 'k1+', 'k2+', 'k3+' (verl's `kl_penalty='k3+'`): the
value of k1 / k2 / k3, the gradient of k2,

  kn+ = kn' + k2 - sg(k2),   kn' = sg(kn)

because for tokens drawn from pi the expected gradient of k2, E[-log_r * grad
logp], is the gradient of KL(pi || pi_ref), while k1's expected gradient is 0
and k3's is that of the reverse KL (Schulman 2020; Tang & Munos 2025, "On a few
pitfalls in KL divergence gradient estimation for RL").
'k2+' equals 'k2'.

`kl_penalized_rewards` puts the penalty into the reward instead of the loss
(InstructGPT / PPO-RLHF style; verl's `use_kl_in_reward`): reward_b -
beta * sum_t kl_bt, computed without gradient before the advantages.
"""

import jax
import jax.numpy as jnp

from r1jax.registry import Registry

KL_ESTIMATORS = Registry('KL estimator')


def _log_r(logp_BxT: jax.Array, ref_logp_BxT: jax.Array) -> jax.Array:
  return ref_logp_BxT.astype(jnp.float32) - logp_BxT.astype(jnp.float32)


@KL_ESTIMATORS.register('k1')
def k1(logp_BxT: jax.Array, ref_logp_BxT: jax.Array) -> jax.Array:
  """k1 = log(pi / pi_ref)."""
  return -_log_r(logp_BxT, ref_logp_BxT)


@KL_ESTIMATORS.register('k2')
def k2(logp_BxT: jax.Array, ref_logp_BxT: jax.Array) -> jax.Array:
  """k2 = 0.5 * log(pi_ref / pi)**2."""
  return 0.5 * jnp.square(_log_r(logp_BxT, ref_logp_BxT))


@KL_ESTIMATORS.register('k3')
def k3(logp_BxT: jax.Array, ref_logp_BxT: jax.Array) -> jax.Array:
  """k3 = pi_ref / pi - log(pi_ref / pi) - 1 (the paper's choice)."""
  log_r = _log_r(logp_BxT, ref_logp_BxT)
  # expm1 keeps precision when the policies nearly agree (log_r ~ 0), where
  # exp(log_r) - 1 would cancel catastrophically in float32.
  return jnp.expm1(log_r) - log_r


def _straight_through(forward_fn):
  def fn(logp_BxT: jax.Array, ref_logp_BxT: jax.Array) -> jax.Array:
    value_BxT = jax.lax.stop_gradient(forward_fn(logp_BxT, ref_logp_BxT))
    grad_BxT = k2(logp_BxT, ref_logp_BxT)
    return value_BxT + (grad_BxT - jax.lax.stop_gradient(grad_BxT))
  fn.__name__ = forward_fn.__name__ + '_plus'
  fn.__doc__ = (
      f'Straight-through {forward_fn.__name__}: its value, the gradient of k2 '
      '(verl kl_penalty="' + forward_fn.__name__ + '+"; Schulman 2020).')
  return fn


k1_plus = KL_ESTIMATORS.add('k1+', _straight_through(k1))
k2_plus = KL_ESTIMATORS.add('k2+', _straight_through(k2))
k3_plus = KL_ESTIMATORS.add('k3+', _straight_through(k3))


def kl_penalized_rewards(
    rewards_B: jax.Array,
    logp_BxT: jax.Array,
    ref_logp_BxT: jax.Array,
    mask_BxT: jax.Array,
    *,
    beta: float,
    kl_estimator: str = 'k1',
    reduce: str = 'sum',
) -> tuple[jax.Array, jax.Array]:
  """KL penalty in the reward: r_b - beta * sum_t kl_bt (no gradient).

  The RLHF form (Ziegler et al. 2019, "Fine-tuning LMs from human
  preferences"; Ouyang et al. 2022, InstructGPT; verl `use_kl_in_reward` with
  `kl_penalty='kl'`): the per-token KL of the sampling policy to the
  reference is subtracted from the outcome reward, so it enters the
  advantages (and is normalised with them) rather than the loss. Use it with
  `beta=0` in `grpo_loss`. verl adds -beta * kl_t to the token-level reward
  and its outcome estimators sum those, hence `reduce='sum'` by default;
  `reduce='mean'` uses the per-sequence token mean instead (length-neutral).

  Args:
    rewards_B: outcome rewards, one per completion.
    logp_BxT: log-probs of the sampled tokens under the sampling (old)
      policy.
    ref_logp_BxT: the same under the reference policy.
    mask_BxT: 1 on completion tokens.
    beta: KL coefficient.
    kl_estimator: a name in KL_ESTIMATORS (verl's default in-reward KL is k1).
    reduce: 'sum' or 'mean' over each sequence's valid tokens.

  Returns:
    (rewards_B - beta * kl_B, kl_B), float32, gradient stopped.
  """
  if reduce not in ('sum', 'mean'):
    raise ValueError(f"reduce must be 'sum' or 'mean'; got {reduce!r}.")
  valid_BxT = mask_BxT > 0
  kl_BxT = KL_ESTIMATORS.get(kl_estimator)(
      jnp.where(valid_BxT, logp_BxT.astype(jnp.float32), 0.0),
      jnp.where(valid_BxT, ref_logp_BxT.astype(jnp.float32), 0.0),
  )
  kl_B = jnp.sum(jnp.where(valid_BxT, kl_BxT, 0.0), axis=1)
  if reduce == 'mean':
    kl_B = kl_B / jnp.maximum(jnp.sum(valid_BxT.astype(jnp.float32), 1), 1.0)
  kl_B = jax.lax.stop_gradient(kl_B)
  return rewards_B.astype(jnp.float32) - beta * kl_B, kl_B
