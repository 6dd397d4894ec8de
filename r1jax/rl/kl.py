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
