"""Corrections for a sampler that is not the policy being trained.

The sampler's log-probs `sampler_logp_BxT` can differ from the trainer's
`old_logp_BxT` for the same tokens: bf16 sampling with an fp32 trainer,
another kernel, or (async rollouts) a stale copy of the weights. The policy
gradient is then taken on off-policy samples. Two remedies, both on the
weight w = pi_old(y) / pi_sampler(y) (the trainer's recomputed log-probs over
the sampler's; constant, no gradient):

  'tis_token'  truncated IS, per token: w_t clipped to [threshold_low,
               threshold] (Yao et al. 2025, "Your efficient RL framework
               secretly brings you off-policy RL training", fengyao.notion.site;
               TRL vllm_importance_sampling_mode='token_truncate'; verl
               rollout_is='token')
  'tis_seq'    the same with one weight per sequence, exp(sum_t log w_t)
               (TRL 'sequence_truncate'; verl rollout_is='sequence')
  'mis_token'  masked IS: w_t where threshold_low <= w_t <= threshold, else 0
               (Liu et al. 2025, "When speed kills stability: demystifying RL
               collapse from the training-inference mismatch"; TRL
               'token_mask')
  'mis_seq'    the same per sequence (TRL 'sequence_mask')

The weight multiplies the per-token policy loss (not the KL term), as in TRL
and verl. `threshold_low=None` means no lower bound. Log-weights are clipped
to +-20 before exp (verl's SAFETY_BOUND).

`offpolicy_sequence_mask` is DeepSeek-V3.2's off-policy sequence masking
(DeepSeek-AI 2025, "DeepSeek-V3.2: pushing the frontier of open LLMs",
arXiv 2512.02556, eq. 9): a sequence with a negative advantage whose mean
per-token KL from the sampling policy to the current one exceeds delta is
dropped from the policy loss.
"""

import jax
import jax.numpy as jnp

from r1jax.rl import metrics as metrics_lib

ROLLOUT_CORRECTIONS = ('tis_token', 'tis_seq', 'mis_token', 'mis_seq')

# Log-weights are clipped to this before exp (verl's SAFETY_BOUND).
MAX_LOG_WEIGHT = 20.0


def check_rollout_correction(mode, threshold, threshold_low):
  """Fails at trace time on a bad mode or threshold (Python numbers only)."""
  if mode is None:
    return
  if mode not in ROLLOUT_CORRECTIONS:
    raise ValueError(
        f'rollout_correction must be None or one of {ROLLOUT_CORRECTIONS}; '
        f'got {mode!r}.')
  concrete = (int, float)
  if threshold is not None and isinstance(threshold, concrete) and (
      threshold <= 0):
    raise ValueError(
        f'rollout_correction_threshold must be > 0; got {threshold}.')
  if (isinstance(threshold_low, concrete) and isinstance(threshold, concrete)
      and threshold_low >= threshold):
    raise ValueError(
        f'rollout_correction_threshold_low ({threshold_low}) must be below '
        f'rollout_correction_threshold ({threshold}).')


def rollout_correction_weights(
    old_logp_BxT: jax.Array,
    sampler_logp_BxT: jax.Array,
    mask_BxT: jax.Array,
    *,
    mode: str,
    threshold: float | None = 2.0,
    threshold_low: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Importance weights pi_old / pi_sampler, truncated or masked (see top).

  Args:
    old_logp_BxT: the trainer's log-probs of the sampled tokens at rollout
      time (gradient stopped here).
    sampler_logp_BxT: the sampler's log-probs of the same tokens.
    mask_BxT: 1 on completion tokens.
    mode: one of ROLLOUT_CORRECTIONS.
    threshold: upper bound C (TIS clips to it, MIS drops above it); None: no
      upper bound.
    threshold_low: optional lower bound.

  Returns:
    (w_BxT, metrics): float32 weights, 0 off-mask; metrics
    rollout_is_weight_mean/_min/_max (valid tokens, after truncation or
    masking) and rollout_is_masked_frac (valid tokens whose weight MIS set
    to 0; 0 for TIS).
  """
  check_rollout_correction(mode, threshold, threshold_low)
  valid_BxT = mask_BxT > 0
  log_w_BxT = jnp.where(
      valid_BxT,
      old_logp_BxT.astype(jnp.float32) - sampler_logp_BxT.astype(jnp.float32),
      0.0)
  log_w_BxT = jax.lax.stop_gradient(log_w_BxT)
  if mode.endswith('_seq'):
    log_w_BxT = jnp.broadcast_to(
        jnp.sum(log_w_BxT, axis=1, keepdims=True), log_w_BxT.shape)
  w_BxT = jnp.exp(jnp.clip(log_w_BxT, -MAX_LOG_WEIGHT, MAX_LOG_WEIGHT))
  hi = jnp.inf if threshold is None else threshold
  lo = 0.0 if threshold_low is None else threshold_low
  if mode.startswith('tis'):
    w_BxT = jnp.clip(w_BxT, lo, hi)
    dropped_BxT = jnp.zeros(w_BxT.shape, bool)
  else:
    dropped_BxT = (w_BxT > hi) | (w_BxT < lo)
    w_BxT = jnp.where(dropped_BxT, 0.0, w_BxT)
  w_BxT = jnp.where(valid_BxT, w_BxT, 0.0)
  out = metrics_lib.stats('rollout_is_weight', w_BxT, valid_BxT)
  del out['rollout_is_weight_std']
  out['rollout_is_masked_frac'] = metrics_lib.masked_mean(
      dropped_BxT, valid_BxT)
  return w_BxT, out


def logp_gap_metrics(
    old_logp_BxT: jax.Array, sampler_logp_BxT: jax.Array, mask_BxT: jax.Array
) -> dict[str, jax.Array]:
  """How far the sampler's log-probs are from the trainer's (valid tokens).

  rollout_logp_gap_mean / _max: mean and max of |old - sampler| (TRL's
  sampling/sampling_logp_difference); rollout_kl: mean of sampler - old,
  the k1 estimate of KL(pi_sampler || pi_old) on the sampler's tokens;
  rollout_kl_k3: the k3 estimate of the same.
  """
  valid_BxT = mask_BxT > 0
  d_BxT = jnp.where(
      valid_BxT,
      sampler_logp_BxT.astype(jnp.float32) - old_logp_BxT.astype(jnp.float32),
      0.0)
  return {
      'rollout_logp_gap_mean': metrics_lib.masked_mean(jnp.abs(d_BxT),
                                                       valid_BxT),
      'rollout_logp_gap_max': metrics_lib.masked_max(jnp.abs(d_BxT),
                                                     valid_BxT),
      'rollout_kl': metrics_lib.masked_mean(d_BxT, valid_BxT),
      'rollout_kl_k3': metrics_lib.masked_mean(
          jnp.expm1(-d_BxT) + d_BxT, valid_BxT),
  }


def offpolicy_sequence_mask(
    logp_BxT: jax.Array,
    sampler_logp_BxT: jax.Array,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    threshold: float,
) -> jax.Array:
  """DeepSeek-V3.2 off-policy sequence mask: [B] float, 1 = keep.

  keep_b = (A_b >= 0) or (mean_t [log pi_sampler - log pi_theta] <= delta),
  the mean over the sequence's valid tokens, pi_theta the current policy
  without gradient (TRL `get_off_policy_mask`). Positive-advantage samples
  are always kept: the paper argues that mostly the negative samples of a
  stale policy mislead.

  Args:
    logp_BxT: current-policy log-probs (gradient stopped).
    sampler_logp_BxT: the sampling policy's (pass old_logp_BxT when the
      sampler's own log-probs are not at hand).
    adv_B: advantages.
    mask_BxT: 1 on completion tokens.
    threshold: delta > 0.
  """
  valid_BxT = mask_BxT > 0
  d_BxT = jnp.where(
      valid_BxT,
      sampler_logp_BxT.astype(jnp.float32)
      - jax.lax.stop_gradient(logp_BxT.astype(jnp.float32)),
      0.0)
  len_B = jnp.sum(valid_BxT.astype(jnp.float32), axis=1)
  kl_B = jnp.sum(d_BxT, axis=1) / jnp.maximum(len_B, 1.0)
  keep_B = (adv_B >= 0) | (kl_B <= threshold)
  return jax.lax.stop_gradient(keep_B.astype(jnp.float32))
