"""GRPO policy losses, loss aggregation and the loss the trainer calls.

Shapes: B sequences (completions; P prompts x G, flattened prompt-major), T
completion positions. Inputs are per-token log-probs of the sampled tokens,
`logp_BxT` (current policy, differentiated), `old_logp_BxT` (the policy that
sampled, constant), `ref_logp_BxT` (frozen reference, constant), one advantage
per sequence `adv_B`, and `mask_BxT` (1 on completion tokens, 0 on prompt and
padding). All math is float32 whatever the input dtype.

Three registries, each picked by a config string:

  POLICY_LOSSES      'clipped_token'     PPO/GRPO token-level ratio, clip-higher
                                         (epsilon_low != epsilon_high, DAPO),
                                         optional dual-clip
                     'clipped_sequence'  ratio of whole-sequence probabilities,
                                         exp(sum_t log-ratio), clipped per
                                         sequence (the R1 paper's equations)
                     'gspo'              exp(mean_t log-ratio), clipped per
                                         sequence (GSPO, Zheng et al. 2025)
                     'gspo_token'        GSPO-token: the same value, gradient
                                         through each token via stop-gradient
  LOSS_AGGREGATIONS  'seq_mean_token_mean'  token mean per sequence, then mean
                                            over sequences (DeepSeekMath eq. 3)
                     'token_mean'           mean over all tokens of the batch
                                            (DAPO)
                     'seq_sum_norm'         sum / (B * max_len), Dr. GRPO
  KL_ESTIMATORS      'k1', 'k2', 'k3' (default)   see kl.py

Every policy loss returns per-token losses [B, T] (a sequence-level loss is
written on each of the sequence's tokens), so any loss combines with any
aggregation; with 'seq_mean_token_mean' a sequence-level loss counts each
sequence once, as in its paper.

Use under jit with the options closed over or static:
  loss_fn = functools.partial(grpo_loss, policy_loss='gspo', beta=0.0)
  (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.registry import Registry
from r1jax.rl import kl as kl_lib
from r1jax.rl import metrics as metrics_lib

POLICY_LOSSES = Registry('policy loss')
LOSS_AGGREGATIONS = Registry('loss aggregation')

# A sequence log-ratio is a sum over up to T tokens; past this the ratio is far
# outside any clip range, and capping it keeps exp() from overflowing to inf
# (inf * 0 cotangent = nan). verl caps GSPO's at 10; 20 is a looser guard.
MAX_SEQ_LOG_RATIO = 20.0


class PolicyLossOutput(NamedTuple):
  """What a policy loss returns. Boolean arrays mark where a clip is active.

  Every POLICY_LOSSES entry is called as
  fn(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low, epsilon_high,
     dual_clip) -> PolicyLossOutput.

  loss_BxT: per-token loss, 0 where the mask is 0.
  ratio_BxT: the importance ratio the loss clips (token ratio, or the
    sequence ratio repeated on each token of the sequence).
  clipped_low_BxT: adv < 0 and ratio < 1 - epsilon_low (zero gradient).
  clipped_high_BxT: adv > 0 and ratio > 1 + epsilon_high (zero gradient).
  clipped_dual_BxT: adv < 0 and ratio > dual_clip (zero gradient).
  """

  loss_BxT: jax.Array
  ratio_BxT: jax.Array
  clipped_low_BxT: jax.Array
  clipped_high_BxT: jax.Array
  clipped_dual_BxT: jax.Array


def _clipped_objective(ratio, adv, epsilon_low, epsilon_high, dual_clip):
  """PPO's pessimistic surrogate min(r A, clip(r) A), optionally dual-clipped.

  Works elementwise on arrays of one shape. Dual-clip (Ye et al. 2020) bounds
  the objective of a negative advantage below by c * A, so a token whose ratio
  has grown huge cannot dominate the update.
  """
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv
  objective = jnp.minimum(unclipped, clipped)
  low = jnp.logical_and(adv < 0, ratio < 1.0 - epsilon_low)
  high = jnp.logical_and(adv > 0, ratio > 1.0 + epsilon_high)
  if dual_clip is None:
    dual = jnp.zeros(ratio.shape, bool)
  else:
    objective = jnp.where(
        adv < 0, jnp.maximum(objective, dual_clip * adv), objective
    )
    dual = jnp.logical_and(adv < 0, ratio > dual_clip)
  return objective, low, high, dual


def _prepare(logp_BxT, old_logp_BxT, adv_B, mask_BxT):
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


def _token_output(ratio_BxT, adv_Bx1, valid_BxT, clip):
  adv_BxT = jnp.broadcast_to(adv_Bx1, ratio_BxT.shape)
  obj, low, high, dual = _clipped_objective(ratio_BxT, adv_BxT, *clip)
  return PolicyLossOutput(
      jnp.where(valid_BxT, -obj, 0.0), ratio_BxT, low, high, dual
  )


def _sequence_output(log_ratio_B, adv_Bx1, valid_BxT, clip):
  ratio_Bx1 = jnp.exp(jnp.minimum(log_ratio_B, MAX_SEQ_LOG_RATIO))[:, None]
  obj, low, high, dual = _clipped_objective(ratio_Bx1, adv_Bx1, *clip)
  shape = valid_BxT.shape
  return PolicyLossOutput(
      jnp.where(valid_BxT, -jnp.broadcast_to(obj, shape), 0.0),
      jnp.broadcast_to(ratio_Bx1, shape),
      jnp.broadcast_to(low, shape),
      jnp.broadcast_to(high, shape),
      jnp.broadcast_to(dual, shape),
  )


@POLICY_LOSSES.register('clipped_token')
def clipped_token(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low=0.2,
                  epsilon_high=0.2, dual_clip=None):
  """Per-token clipped surrogate: ratio_t = pi(y_t) / pi_old(y_t)."""
  clip = (epsilon_low, epsilon_high, dual_clip)
  valid_BxT, _, log_ratio_BxT, adv_Bx1 = _prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  return _token_output(jnp.exp(log_ratio_BxT), adv_Bx1, valid_BxT, clip)


@POLICY_LOSSES.register('clipped_sequence')
def clipped_sequence(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *,
                     epsilon_low=0.2, epsilon_high=0.2, dual_clip=None):
  """Sequence ratio pi(o|q) / pi_old(o|q) = exp(sum_t log-ratio), clipped once.

  The R1 paper writes GRPO with this ratio. Its log grows with length, so long
  sequences leave the clip range after small per-token changes.
  """
  clip = (epsilon_low, epsilon_high, dual_clip)
  valid_BxT, _, log_ratio_BxT, adv_Bx1 = _prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  log_ratio_B = jnp.sum(log_ratio_BxT, axis=1)
  return _sequence_output(log_ratio_B, adv_Bx1, valid_BxT, clip)


def _mean_log_ratio(log_ratio_BxT, valid_BxT):
  len_B = jnp.sum(valid_BxT.astype(jnp.float32), axis=1)
  return jnp.sum(log_ratio_BxT, axis=1) / jnp.maximum(len_B, 1.0)


@POLICY_LOSSES.register('gspo')
def gspo(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low=0.2,
         epsilon_high=0.2, dual_clip=None):
  """GSPO: length-normalised sequence ratio exp(mean_t log-ratio), clipped.

  GSPO uses far smaller clip ranges than token-level GRPO (3e-4 / 4e-4).
  """
  clip = (epsilon_low, epsilon_high, dual_clip)
  valid_BxT, _, log_ratio_BxT, adv_Bx1 = _prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  log_ratio_B = _mean_log_ratio(log_ratio_BxT, valid_BxT)
  return _sequence_output(log_ratio_B, adv_Bx1, valid_BxT, clip)


@POLICY_LOSSES.register('gspo_token')
def gspo_token(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low=0.2,
               epsilon_high=0.2, dual_clip=None):
  """GSPO-token: s_t = sg[s] * pi(y_t) / sg[pi(y_t)], clipped per token.

  Its value is GSPO's sequence ratio s on every token; its gradient reaches
  each token's log-prob separately, which only differs from 'gspo' when
  advantages differ per token. With one advantage per sequence (this API) it
  equals 'gspo' in value and gradient under every aggregation.
  """
  clip = (epsilon_low, epsilon_high, dual_clip)
  valid_BxT, logp_BxT, log_ratio_BxT, adv_Bx1 = _prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  log_s_B = jnp.minimum(
      _mean_log_ratio(log_ratio_BxT, valid_BxT), MAX_SEQ_LOG_RATIO
  )
  s_Bx1 = jax.lax.stop_gradient(jnp.exp(log_s_B))[:, None]
  ratio_BxT = s_Bx1 * jnp.exp(logp_BxT - jax.lax.stop_gradient(logp_BxT))
  return _token_output(ratio_BxT, adv_Bx1, valid_BxT, clip)


def _masked_loss(loss_BxT, mask_BxT):
  m_BxT = mask_BxT.astype(jnp.float32)
  return jnp.where(m_BxT > 0, loss_BxT.astype(jnp.float32), 0.0) * m_BxT, m_BxT


@LOSS_AGGREGATIONS.register('seq_mean_token_mean')
def seq_mean_token_mean(loss_BxT, mask_BxT, *, max_len=None):
  """Mean over sequences of each sequence's token mean (DeepSeekMath eq. 3).

  Every sequence weighs the same, so a token of a long answer weighs less than
  one of a short answer. Rows without any completion token (batch padding) are
  left out of the mean over sequences.
  """
  del max_len
  l_BxT, m_BxT = _masked_loss(loss_BxT, mask_BxT)
  len_B = jnp.sum(m_BxT, axis=1)
  seq_B = jnp.sum(l_BxT, axis=1) / jnp.maximum(len_B, 1.0)
  num_seqs = jnp.sum((len_B > 0).astype(jnp.float32))
  return jnp.sum(seq_B) / jnp.maximum(num_seqs, 1.0)


@LOSS_AGGREGATIONS.register('token_mean')
def token_mean(loss_BxT, mask_BxT, *, max_len=None):
  """Mean over all completion tokens of the batch (DAPO); tokens weigh alike."""
  del max_len
  l_BxT, m_BxT = _masked_loss(loss_BxT, mask_BxT)
  return jnp.sum(l_BxT) / jnp.maximum(jnp.sum(m_BxT), 1.0)


@LOSS_AGGREGATIONS.register('seq_sum_norm')
def seq_sum_norm(loss_BxT, mask_BxT, *, max_len=None):
  """Dr. GRPO: sum over tokens / max_len, mean over the B rows.

  The normaliser B * max_len is a constant (max_len defaults to T), so no
  length bias enters through it.
  """
  l_BxT, _ = _masked_loss(loss_BxT, mask_BxT)
  b, t = l_BxT.shape
  return jnp.sum(l_BxT) / (b * (t if max_len is None else max_len))


def _check_options(beta, ref_present, epsilon_low, epsilon_high, dual_clip,
                   max_len):
  """Fail at trace time, naming the bad option."""
  concrete = (int, float, np.integer, np.floating)
  if not ref_present and (not isinstance(beta, concrete) or beta != 0):
    raise ValueError(
        f'grpo_loss got ref_logp_BxT=None with beta={beta!r}: the KL penalty '
        'needs the reference log-probs. Pass them, or set beta=0 (a Python '
        'number) to skip the reference forward pass.'
    )
  if isinstance(epsilon_low, concrete) and not 0 <= epsilon_low < 1:
    raise ValueError(f'epsilon_low must be in [0, 1); got {epsilon_low}.')
  if isinstance(epsilon_high, concrete) and epsilon_high < 0:
    raise ValueError(f'epsilon_high must be >= 0; got {epsilon_high}.')
  if dual_clip is not None and dual_clip <= 1:
    raise ValueError(f'dual_clip must be None or > 1; got {dual_clip}.')
  if max_len is not None and max_len <= 0:
    raise ValueError(f'max_len must be None or > 0; got {max_len}.')


def grpo_loss(
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    ref_logp_BxT: jax.Array | None,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    *,
    policy_loss: str = 'clipped_token',
    aggregation: str = 'seq_mean_token_mean',
    kl_estimator: str = 'k3',
    beta: float = 0.001,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    dual_clip: float | None = None,
    max_len: int | None = None,
    entropy_BxT: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The GRPO objective (as a loss to minimise) and its metrics.

  loss = aggregation(policy_loss_BxT + beta * kl_BxT), the KL inside the same
  per-token aggregation as in DeepSeekMath eq. 3.

  Under jit, the string options, dual_clip and max_len must be static (close
  over them with functools.partial, or list them in static_argnames); beta and
  the epsilons may be traced, except that beta must be the Python number 0
  when ref_logp_BxT is None.

  Args:
    logp_BxT: log pi(y_t) of the sampled tokens under the current policy.
    old_logp_BxT: the same under the sampling policy (no gradient taken).
    ref_logp_BxT: the same under the reference; may be None only if beta == 0
      (then the trainer can skip the reference forward pass).
    adv_B: one advantage per sequence (`advantages.compute_advantages`).
    mask_BxT: 1 on completion tokens, 0 on prompt and padding; positions
      where it is 0 affect neither the loss nor its gradient.
    policy_loss: a name in POLICY_LOSSES.
    aggregation: a name in LOSS_AGGREGATIONS.
    kl_estimator: a name in kl.KL_ESTIMATORS.
    beta: KL coefficient (R1: 0.001; DAPO, Dr. GRPO: 0).
    epsilon_low: lower clip range, ratio >= 1 - epsilon_low.
    epsilon_high: upper clip range, ratio <= 1 + epsilon_high (DAPO: 0.28).
    dual_clip: None, or c > 1 bounding a negative advantage's objective at
      c * A (3.0 is common).
    max_len: the constant length of 'seq_sum_norm' (default: T).
    entropy_BxT: optional exact per-token entropy of the policy (from the
      logits); reported as 'entropy'.

  Returns:
    (loss, metrics): a float32 scalar and a dict of float32 scalars:
    loss, policy_loss, kl (token mean over valid tokens; absent when
    ref_logp_BxT is None), ratio_mean/_std/_min/_max (valid tokens),
    clip_frac_low, clip_frac_high, clip_frac_dual (fractions of valid tokens
    whose gradient a clip stops), entropy_mc (-token mean of logp: the
    sampled-token estimate of the entropy, exact in expectation only for
    tokens drawn from the current policy at temperature 1), entropy (if
    entropy_BxT is given),
    adv_mean/_std/_min/_max and frac_zero_adv_seqs (over sequences with at
    least one valid token; zero-advantage sequences give no policy gradient),
    num_tokens.
  """
  b, t = mask_BxT.shape
  for name, x in (('logp_BxT', logp_BxT), ('old_logp_BxT', old_logp_BxT),
                  ('ref_logp_BxT', ref_logp_BxT),
                  ('entropy_BxT', entropy_BxT)):
    if x is not None and x.shape != (b, t):
      raise ValueError(f'{name} has shape {x.shape}; mask_BxT has {(b, t)}.')
  if adv_B.shape != (b,):
    raise ValueError(f'adv_B has shape {adv_B.shape}; expected {(b,)}.')
  _check_options(beta, ref_logp_BxT is not None, epsilon_low, epsilon_high,
                 dual_clip, max_len)
  policy_fn = POLICY_LOSSES.get(policy_loss)
  aggregate = LOSS_AGGREGATIONS.get(aggregation)
  kl_fn = kl_lib.KL_ESTIMATORS.get(kl_estimator)

  out = policy_fn(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT,
      epsilon_low=epsilon_low, epsilon_high=epsilon_high, dual_clip=dual_clip,
  )
  valid_BxT = mask_BxT > 0
  total_BxT = out.loss_BxT
  metrics = {}
  if ref_logp_BxT is not None:
    # Zero both sides off-mask so padded garbage (even -inf) yields kl = 0.
    kl_BxT = kl_fn(
        jnp.where(valid_BxT, logp_BxT.astype(jnp.float32), 0.0),
        jax.lax.stop_gradient(
            jnp.where(valid_BxT, ref_logp_BxT.astype(jnp.float32), 0.0)),
    )
    metrics['kl'] = metrics_lib.masked_mean(kl_BxT, valid_BxT)
    if not (isinstance(beta, (int, float)) and beta == 0):
      total_BxT = total_BxT + beta * kl_BxT
  loss = aggregate(total_BxT, mask_BxT, max_len=max_len)

  metrics['loss'] = loss
  metrics['policy_loss'] = aggregate(out.loss_BxT, mask_BxT, max_len=max_len)
  metrics.update(metrics_lib.stats('ratio', out.ratio_BxT, valid_BxT))
  metrics['clip_frac_low'] = metrics_lib.masked_mean(
      out.clipped_low_BxT, valid_BxT)
  metrics['clip_frac_high'] = metrics_lib.masked_mean(
      out.clipped_high_BxT, valid_BxT)
  metrics['clip_frac_dual'] = metrics_lib.masked_mean(
      out.clipped_dual_BxT, valid_BxT)
  metrics['entropy_mc'] = -metrics_lib.masked_mean(logp_BxT, valid_BxT)
  if entropy_BxT is not None:
    metrics['entropy'] = metrics_lib.masked_mean(entropy_BxT, valid_BxT)
  seq_valid_B = jnp.any(valid_BxT, axis=1)
  adv_f32_B = adv_B.astype(jnp.float32)
  metrics.update(metrics_lib.stats('adv', adv_f32_B, seq_valid_B))
  metrics['frac_zero_adv_seqs'] = metrics_lib.masked_mean(
      adv_f32_B == 0, seq_valid_B)
  metrics['num_tokens'] = jnp.sum(valid_BxT.astype(jnp.float32))
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
