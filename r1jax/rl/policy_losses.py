"""The policy-loss contract, PPO's clipped surrogate and its clipped family.

Shapes: B sequences (completions; P prompts x G, flattened prompt-major), T
completion positions. A policy loss takes per-token log-probs of the sampled
tokens, `logp_BxT` (current policy, differentiated) and `old_logp_BxT` (the
policy that sampled, constant), one advantage per sequence `adv_B`, and
`mask_BxT` (1 on completion tokens, 0 on prompt and padding). All math is
float32 whatever the input dtype.

Every policy loss returns per-token losses [B, T] (a sequence-level loss is
written on each of the sequence's tokens), so any loss combines with any
aggregation (`aggregation.py`); with 'seq_mean_token_mean' a sequence-level
loss counts each sequence once, as in its paper.

This module holds the registry `POLICY_LOSSES`, the contract every entry
keeps (`PolicyLossOutput`), the helpers the entries share (`prepare`,
`clipped_objective`, `token_output`, `sequence_output`, ...) and the losses
built on PPO's clipped surrogate: 'clipped_token', 'clipped_sequence', 'gspo'
and 'gspo_token'. The losses that replace or reshape the clip (cispo, sapo,
gmpo, clip_cov, kl_cov) are in `policy_losses_extra.py`. The table of all
names: the docstring of `r1jax.rl`.

Every entry takes `(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low,
epsilon_high, dual_clip)`; the keyword options beyond those (e.g. 'delta',
sapo's 'tau_pos') are declared when it is registered (`options=`), and
`grpo_loss` refuses any other.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from r1jax.registry import Registry

POLICY_LOSSES = Registry('policy loss')

# A sequence log-ratio is a sum over up to T tokens; past this the ratio is far
# outside any clip range, and capping it keeps exp() from overflowing to inf
# (inf * 0 cotangent = nan). verl caps GSPO's at 10; 20 is a looser guard.
MAX_SEQ_LOG_RATIO = 20.0


class PolicyLossOutput(NamedTuple):
  """What a policy loss returns. Boolean arrays mark where a clip is active.

  Every POLICY_LOSSES entry is called as
  fn(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low, epsilon_high,
     dual_clip, **options) -> PolicyLossOutput,
  options being the loss's own keywords (`delta`, the `policy_options` of
  grpo_loss); a loss refuses a keyword it does not take.

  loss_BxT: per-token loss, 0 where the mask is 0.
  ratio_BxT: the importance ratio the loss clips (token ratio, or the
    sequence ratio repeated on each token of the sequence).
  clipped_low_BxT: adv < 0 and ratio < 1 - epsilon_low (zero gradient).
  clipped_high_BxT: adv > 0 and ratio > 1 + epsilon_high (zero gradient).
  clipped_dual_BxT: adv < 0 and ratio > dual_clip or > delta (zero
    gradient).
  metrics: optional loss-specific float32 scalars, merged into grpo_loss's.
  """

  loss_BxT: jax.Array
  ratio_BxT: jax.Array
  clipped_low_BxT: jax.Array
  clipped_high_BxT: jax.Array
  clipped_dual_BxT: jax.Array
  metrics: dict | None = None


def clipped_objective(ratio, adv, epsilon_low, epsilon_high, dual_clip,
                      delta=None):
  """PPO's pessimistic surrogate min(r A, clip(r) A), optionally dual-clipped.

  Works elementwise on arrays of one shape. Dual-clip (Ye et al. 2020) bounds
  the objective of a negative advantage below by c * A, so a token whose ratio
  has grown huge cannot dominate the update.

  `delta` is INTELLECT-2's two-sided clip (Prime Intellect 2025, "INTELLECT-2:
  a reasoning model trained through globally decentralized RL", arXiv
  2505.07291; TRL `delta`): the unclipped branch uses min(r, delta), so
  min(min(r, delta) A, clip(r) A). For delta > 1 + epsilon_high (the
  recommended setting; the paper uses 4) it only acts on A < 0, where it
  equals dual-clip with c = delta.
  """
  hi = 1.0 + epsilon_high
  unclipped = (ratio if delta is None else jnp.minimum(ratio, delta)) * adv
  clipped = jnp.clip(ratio, 1.0 - epsilon_low, hi) * adv
  objective = jnp.minimum(unclipped, clipped)
  low = jnp.logical_and(adv < 0, ratio < 1.0 - epsilon_low)
  # Where the value no longer follows r, its gradient is 0: for A > 0 above
  # min(1 + eps_high, delta), for A < 0 above max(1 + eps_high, delta).
  high = jnp.logical_and(
      adv > 0, ratio > (hi if delta is None else jnp.minimum(hi, delta)))
  if delta is None:
    dual = jnp.zeros(ratio.shape, bool)
  else:
    dual = jnp.logical_and(adv < 0, ratio > jnp.maximum(hi, delta))
  if dual_clip is not None:
    objective = jnp.where(
        adv < 0, jnp.maximum(objective, dual_clip * adv), objective
    )
    dual = dual | jnp.logical_and(adv < 0, ratio > dual_clip)
  return objective, low, high, dual


def prepare(logp_BxT, old_logp_BxT, adv_B, mask_BxT):
  """float32 inputs; log-ratio zeroed (via where, so no nan leaks) off-mask.

  old log-probs and advantages are constants of the objective: stopping their
  gradient here means an on-policy caller may pass old_logp = logp (ratio 1)
  and still get the policy gradient, not zero.
  """
  valid_BxT = mask_BxT > 0
  logp_BxT = jnp.where(valid_BxT, logp_BxT.astype(jnp.float32), 0.0)
  old_BxT = jnp.where(valid_BxT, old_logp_BxT.astype(jnp.float32), 0.0)
  old_BxT = jax.lax.stop_gradient(old_BxT)
  adv_Bx1 = jax.lax.stop_gradient(adv_B.astype(jnp.float32))[:, None]
  return valid_BxT, logp_BxT, logp_BxT - old_BxT, adv_Bx1


def token_output(ratio_BxT, adv_Bx1, valid_BxT, clip):
  """A token-ratio loss: the clipped objective per token, negated, masked."""
  adv_BxT = jnp.broadcast_to(adv_Bx1, ratio_BxT.shape)
  obj, low, high, dual = clipped_objective(ratio_BxT, adv_BxT, *clip)
  return PolicyLossOutput(
      jnp.where(valid_BxT, -obj, 0.0), ratio_BxT, low, high, dual
  )


def sequence_output(log_ratio_B, adv_Bx1, valid_BxT, clip):
  """A sequence-ratio loss: clipped once per sequence, on each of its tokens."""
  ratio_Bx1 = jnp.exp(jnp.minimum(log_ratio_B, MAX_SEQ_LOG_RATIO))[:, None]
  obj, low, high, dual = clipped_objective(ratio_Bx1, adv_Bx1, *clip)
  shape = valid_BxT.shape
  return PolicyLossOutput(
      jnp.where(valid_BxT, -jnp.broadcast_to(obj, shape), 0.0),
      jnp.broadcast_to(ratio_Bx1, shape),
      jnp.broadcast_to(low, shape),
      jnp.broadcast_to(high, shape),
      jnp.broadcast_to(dual, shape),
  )


def mean_log_ratio(log_ratio_BxT, valid_BxT):
  """Per-sequence mean of the log-ratio over its valid tokens (0 if none)."""
  len_B = jnp.sum(valid_BxT.astype(jnp.float32), axis=1)
  return jnp.sum(log_ratio_BxT, axis=1) / jnp.maximum(len_B, 1.0)


def no_clip(shape):
  """The clip flags of a loss that stops no token's gradient."""
  return jnp.zeros(shape, bool)


def reject_options(name, **given):
  """Refuse the shared keywords (dual_clip, ...) that loss `name` ignores."""
  for key, value in given.items():
    if value is not None:
      raise ValueError(f'policy loss {name!r} does not take {key}={value!r}.')


@POLICY_LOSSES.register('clipped_token', options=('delta',))
def clipped_token(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low=0.2,
                  epsilon_high=0.2, dual_clip=None, delta=None):
  """Per-token clipped surrogate: ratio_t = pi(y_t) / pi_old(y_t).

  PPO (Schulman et al. 2017) as GRPO uses it (Shao et al. 2024, DeepSeekMath,
  eq. 3), with DAPO's clip-higher (Yu et al. 2025), optional dual-clip and
  INTELLECT-2's `delta` (see `clipped_objective`).
  """
  clip = (epsilon_low, epsilon_high, dual_clip, delta)
  valid_BxT, _, log_ratio_BxT, adv_Bx1 = prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  return token_output(jnp.exp(log_ratio_BxT), adv_Bx1, valid_BxT, clip)


@POLICY_LOSSES.register('clipped_sequence', options=('delta',))
def clipped_sequence(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *,
                     epsilon_low=0.2, epsilon_high=0.2, dual_clip=None,
                     delta=None):
  """Sequence ratio pi(o|q) / pi_old(o|q) = exp(sum_t log-ratio), clipped once.

  The R1 paper writes GRPO with this ratio. Its log grows with length, so long
  sequences leave the clip range after small per-token changes.
  """
  clip = (epsilon_low, epsilon_high, dual_clip, delta)
  valid_BxT, _, log_ratio_BxT, adv_Bx1 = prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  log_ratio_B = jnp.sum(log_ratio_BxT, axis=1)
  return sequence_output(log_ratio_B, adv_Bx1, valid_BxT, clip)


@POLICY_LOSSES.register('gspo', options=('delta',))
def gspo(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low=0.2,
         epsilon_high=0.2, dual_clip=None, delta=None):
  """GSPO: length-normalised sequence ratio exp(mean_t log-ratio), clipped.

  GSPO uses far smaller clip ranges than token-level GRPO (3e-4 / 4e-4).
  """
  clip = (epsilon_low, epsilon_high, dual_clip, delta)
  valid_BxT, _, log_ratio_BxT, adv_Bx1 = prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  log_ratio_B = mean_log_ratio(log_ratio_BxT, valid_BxT)
  return sequence_output(log_ratio_B, adv_Bx1, valid_BxT, clip)


@POLICY_LOSSES.register('gspo_token', options=('delta',))
def gspo_token(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low=0.2,
               epsilon_high=0.2, dual_clip=None, delta=None):
  """GSPO-token: s_t = sg[s] * pi(y_t) / sg[pi(y_t)], clipped per token.

  Its value is GSPO's sequence ratio s on every token; its gradient reaches
  each token's log-prob separately, which only differs from 'gspo' when
  advantages differ per token. With one advantage per sequence (this API) it
  equals 'gspo' in value and gradient under every aggregation.
  """
  clip = (epsilon_low, epsilon_high, dual_clip, delta)
  valid_BxT, logp_BxT, log_ratio_BxT, adv_Bx1 = prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  log_s_B = jnp.minimum(
      mean_log_ratio(log_ratio_BxT, valid_BxT), MAX_SEQ_LOG_RATIO
  )
  s_Bx1 = jax.lax.stop_gradient(jnp.exp(log_s_B))[:, None]
  ratio_BxT = s_Bx1 * jnp.exp(logp_BxT - jax.lax.stop_gradient(logp_BxT))
  return token_output(ratio_BxT, adv_Bx1, valid_BxT, clip)
