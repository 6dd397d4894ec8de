"""Entropy-based token selection and the entropy bonus's coefficient.

`high_entropy_mask`: train only on the "forking" tokens, the top-q fraction
by entropy (Wang et al. 2025, "Beyond the 80/20 rule: high-entropy minority
tokens drive effective RL for LLM reasoning", arXiv 2506.01939; q = 0.2 in
the paper; TRL `top_entropy_quantile`).

`gated_entropy_coef`: the entropy bonus acts only while the entropy is at
or below a target (He et al. 2025, "Skywork Open Reasoner 1 technical
report", arXiv 2505.22312; grpo_loss's `entropy_target`). The coefficient
itself is fixed (`entropy_coef`); Skywork's adaptive coefficient, which
would be state carried across steps, is not implemented.
"""

import jax
import jax.numpy as jnp


def masked_quantile(x_BxT: jax.Array, mask_BxT: jax.Array,
                    q: float | jax.Array) -> jax.Array:
  """The q-quantile of x over the masked positions, linear interpolation.

  torch.quantile's (and numpy's default) rule: position q * (n - 1) in the
  sorted values. 0 when no position is masked. The count n may be traced.
  """
  valid = (mask_BxT > 0).reshape(-1)
  x = jnp.where(valid, x_BxT.astype(jnp.float32).reshape(-1), jnp.inf)
  s = jnp.sort(x)
  n = jnp.sum(valid.astype(jnp.int32))
  pos = jnp.asarray(q, jnp.float32) * jnp.maximum(n - 1, 0).astype(
      jnp.float32)
  lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, jnp.maximum(n - 1, 0))
  hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
  frac = pos - lo.astype(jnp.float32)
  s_lo, s_hi = s[lo], s[hi]
  value = s_lo + frac * jnp.where(frac > 0, s_hi - s_lo, 0.0)
  return jnp.where(n > 0, value, 0.0)


def high_entropy_mask(entropy_BxT: jax.Array, mask_BxT: jax.Array,
                      quantile: float | jax.Array) -> jax.Array:
  """[B, T] bool: valid tokens among the top `quantile` fraction by entropy.

  TRL's rule: keep tokens whose entropy is >= the (1 - quantile)-quantile of
  the valid tokens' entropies. quantile = 1 keeps every valid token; ties at
  the threshold are all kept. Statistics are over the batch given (under a
  mesh, the whole global batch; with gradient accumulation, one micro-batch).
  The entropies' gradient plays no part.
  """
  ent_BxT = jax.lax.stop_gradient(entropy_BxT.astype(jnp.float32))
  thr = masked_quantile(ent_BxT, mask_BxT, 1.0 - jnp.asarray(quantile,
                                                             jnp.float32))
  return (mask_BxT > 0) & (ent_BxT >= thr)


def gated_entropy_coef(coef: float | jax.Array, entropy: float | jax.Array,
                       target: float | None) -> jax.Array:
  """The coefficient that acts: coef if entropy <= target (or no target)."""
  coef = jnp.asarray(coef, jnp.float32)
  if target is None:
    return coef
  return jnp.where(jnp.asarray(entropy) <= target, coef, 0.0)
