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
                     'cispo'             MiniMax-M1: clipped, stop-gradient IS
                                         weight times log-prob; clipped tokens
                                         keep their gradient
                     'sapo'              SAPO: sigmoid-gated soft clip, its
                                         temperatures per advantage sign
                     'gmpo'              GMPO: geometric mean of token ratios,
                                         clipped per token in log space
                     'clip_cov'          Clip-Cov: 'clipped_token' with the
                                         gradient of a few high-covariance
                                         tokens cut
                     'kl_cov'            KL-Cov: unclipped ratio with a |log
                                         ratio| penalty on the highest-
                                         covariance tokens
  LOSS_AGGREGATIONS  'seq_mean_token_mean'  token mean per sequence, then mean
                                            over sequences (DeepSeekMath eq. 3)
                     'token_mean'           mean over all tokens of the batch
                                            (DAPO)
                     'seq_sum_norm'         sum / (B * max_len), Dr. GRPO
  KL_ESTIMATORS      'k1', 'k2', 'k3' (default)   see kl.py

The clip-based losses ('clipped_token', 'clipped_sequence', 'gspo',
'gspo_token', 'clip_cov') also take `delta`, INTELLECT-2's two-sided clip.
Loss-specific hyper-parameters come through grpo_loss's `policy_options`.

Every policy loss returns per-token losses [B, T] (a sequence-level loss is
written on each of the sequence's tokens), so any loss combines with any
aggregation; with 'seq_mean_token_mean' a sequence-level loss counts each
sequence once, as in its paper.

Use under jit with the options closed over or static:
  loss_fn = functools.partial(grpo_loss, policy_loss='gspo', beta=0.0)
  (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
"""

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.registry import Registry
from r1jax.rl import entropy as entropy_lib
from r1jax.rl import kl as kl_lib
from r1jax.rl import metrics as metrics_lib
from r1jax.rl import rollout_correction as rc_lib

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


def _clipped_objective(ratio, adv, epsilon_low, epsilon_high, dual_clip,
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
                  epsilon_high=0.2, dual_clip=None, delta=None):
  """Per-token clipped surrogate: ratio_t = pi(y_t) / pi_old(y_t).

  PPO (Schulman et al. 2017) as GRPO uses it (Shao et al. 2024, DeepSeekMath,
  eq. 3), with DAPO's clip-higher (Yu et al. 2025), optional dual-clip and
  INTELLECT-2's `delta` (see `_clipped_objective`).
  """
  clip = (epsilon_low, epsilon_high, dual_clip, delta)
  valid_BxT, _, log_ratio_BxT, adv_Bx1 = _prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  return _token_output(jnp.exp(log_ratio_BxT), adv_Bx1, valid_BxT, clip)


@POLICY_LOSSES.register('clipped_sequence')
def clipped_sequence(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *,
                     epsilon_low=0.2, epsilon_high=0.2, dual_clip=None,
                     delta=None):
  """Sequence ratio pi(o|q) / pi_old(o|q) = exp(sum_t log-ratio), clipped once.

  The R1 paper writes GRPO with this ratio. Its log grows with length, so long
  sequences leave the clip range after small per-token changes.
  """
  clip = (epsilon_low, epsilon_high, dual_clip, delta)
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
         epsilon_high=0.2, dual_clip=None, delta=None):
  """GSPO: length-normalised sequence ratio exp(mean_t log-ratio), clipped.

  GSPO uses far smaller clip ranges than token-level GRPO (3e-4 / 4e-4).
  """
  clip = (epsilon_low, epsilon_high, dual_clip, delta)
  valid_BxT, _, log_ratio_BxT, adv_Bx1 = _prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  log_ratio_B = _mean_log_ratio(log_ratio_BxT, valid_BxT)
  return _sequence_output(log_ratio_B, adv_Bx1, valid_BxT, clip)


@POLICY_LOSSES.register('gspo_token')
def gspo_token(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low=0.2,
               epsilon_high=0.2, dual_clip=None, delta=None):
  """GSPO-token: s_t = sg[s] * pi(y_t) / sg[pi(y_t)], clipped per token.

  Its value is GSPO's sequence ratio s on every token; its gradient reaches
  each token's log-prob separately, which only differs from 'gspo' when
  advantages differ per token. With one advantage per sequence (this API) it
  equals 'gspo' in value and gradient under every aggregation.
  """
  clip = (epsilon_low, epsilon_high, dual_clip, delta)
  valid_BxT, logp_BxT, log_ratio_BxT, adv_Bx1 = _prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  log_s_B = jnp.minimum(
      _mean_log_ratio(log_ratio_BxT, valid_BxT), MAX_SEQ_LOG_RATIO
  )
  s_Bx1 = jax.lax.stop_gradient(jnp.exp(log_s_B))[:, None]
  ratio_BxT = s_Bx1 * jnp.exp(logp_BxT - jax.lax.stop_gradient(logp_BxT))
  return _token_output(ratio_BxT, adv_Bx1, valid_BxT, clip)


def _no_clip(shape):
  return jnp.zeros(shape, bool)


def _reject(name, **given):
  for key, value in given.items():
    if value is not None:
      raise ValueError(f'policy loss {name!r} does not take {key}={value!r}.')


@POLICY_LOSSES.register('cispo')
def cispo(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low=0.2,
          epsilon_high=0.2, dual_clip=None):
  """CISPO: loss_t = -sg(clip(r_t, 1 - eps_low, 1 + eps_high)) A log pi(y_t).

  MiniMax 2025, "MiniMax-M1: scaling test-time compute efficiently with
  lightning attention", arXiv 2506.13585, eq. 4. The importance weight is
  clipped and its gradient stopped, so every token keeps the REINFORCE
  gradient sg(w) A grad log pi, clipped tokens included (PPO's clip drops
  them, and with them the rare "fork" tokens that reflective reasoning
  needs). The paper sets no lower bound in practice (epsilon_low close to 1)
  and tunes the upper one; ScaleRL (arXiv 2510.13786) uses a cap of 5,
  i.e. epsilon_high = 4 here. TRL's cispo caps at `epsilon_high` itself
  (1 + our epsilon_high) with no lower bound; verl's uses both bounds as
  here.

  clip_frac_* stay 0 (no gradient is stopped); the fractions of tokens whose
  weight is clipped are reported as cispo_clip_frac_low / _high.
  """
  _reject('cispo', dual_clip=dual_clip)
  valid_BxT, logp_BxT, log_ratio_BxT, adv_Bx1 = _prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  ratio_BxT = jnp.exp(log_ratio_BxT)
  w_BxT = jax.lax.stop_gradient(
      jnp.clip(ratio_BxT, 1.0 - epsilon_low, 1.0 + epsilon_high))
  loss_BxT = jnp.where(valid_BxT, -w_BxT * adv_Bx1 * logp_BxT, 0.0)
  no = _no_clip(ratio_BxT.shape)
  metrics = {
      'cispo_clip_frac_low': metrics_lib.masked_mean(
          ratio_BxT < 1.0 - epsilon_low, valid_BxT),
      'cispo_clip_frac_high': metrics_lib.masked_mean(
          ratio_BxT > 1.0 + epsilon_high, valid_BxT),
  }
  return PolicyLossOutput(loss_BxT, ratio_BxT, no, no, no, metrics)


@POLICY_LOSSES.register('sapo')
def sapo(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low=0.2,
         epsilon_high=0.2, dual_clip=None, tau_pos=1.0, tau_neg=1.05):
  """SAPO: loss_t = -(4 / tau) sigmoid(tau (r_t - 1)) A, tau by sign of A.

  Gao et al. 2025 (Qwen), "Soft adaptive policy optimization", arXiv
  2511.20347. A smooth gate in place of the hard clip: the gradient
  4 s (1 - s) r A grad log pi (s the sigmoid) equals the unclipped one at
  r = 1 and decays smoothly away from it, faster for negative advantages
  (tau_neg > tau_pos; the paper's 1.05 / 1.0, TRL's defaults). A <= 0 uses
  tau_neg (TRL, verl). The epsilons are unused; no clip flags.

  policy_options: tau_pos, tau_neg (> 0).
  """
  del epsilon_low, epsilon_high
  _reject('sapo', dual_clip=dual_clip)
  if isinstance(tau_pos, (int, float)) and tau_pos <= 0 or isinstance(
      tau_neg, (int, float)) and tau_neg <= 0:
    raise ValueError(f'sapo temperatures must be > 0; got tau_pos={tau_pos}, '
                     f'tau_neg={tau_neg}.')
  valid_BxT, _, log_ratio_BxT, adv_Bx1 = _prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  ratio_BxT = jnp.exp(jnp.minimum(log_ratio_BxT, MAX_SEQ_LOG_RATIO))
  tau_Bx1 = jnp.where(adv_Bx1 > 0, tau_pos, tau_neg).astype(jnp.float32)
  gate_BxT = jax.nn.sigmoid(tau_Bx1 * (ratio_BxT - 1.0)) * (4.0 / tau_Bx1)
  loss_BxT = jnp.where(valid_BxT, -gate_BxT * adv_Bx1, 0.0)
  no = _no_clip(ratio_BxT.shape)
  return PolicyLossOutput(loss_BxT, ratio_BxT, no, no, no)


@POLICY_LOSSES.register('gmpo')
def gmpo(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low=0.4,
         epsilon_high=0.4, dual_clip=None):
  """GMPO: sequence ratio exp(mean_t clip_t(log r_t)), the geometric mean.

  Zhao et al. 2025, "Geometric-mean policy optimization", arXiv 2507.20673
  (verl `geo_mean`). Each token's log-ratio is clipped pessimistically in log
  space, sgn(A) min(sgn(A) log r_t, sgn(A) clip(log r_t, -eps_low,
  eps_high)), so epsilon_low / epsilon_high are log-space bounds here (the
  paper: 0.4 / 0.4, i.e. ratios in (e^-0.4, e^0.4)). The geometric mean is
  less sensitive to outlier tokens than GRPO's arithmetic mean of ratios.
  loss = -A * ratio, one value per sequence (written on each token; use
  'seq_mean_token_mean' to count each sequence once, as verl does). A token
  clipped at eps_high (A > 0) or -eps_low (A < 0) gets zero gradient; the
  others get -A ratio / len_b.
  """
  _reject('gmpo', dual_clip=dual_clip)
  valid_BxT, _, log_ratio_BxT, adv_Bx1 = _prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  sign_Bx1 = jnp.sign(adv_Bx1)
  clamped_BxT = jnp.clip(log_ratio_BxT, -epsilon_low, epsilon_high)
  pess_BxT = sign_Bx1 * jnp.minimum(sign_Bx1 * log_ratio_BxT,
                                    sign_Bx1 * clamped_BxT)
  pess_BxT = jnp.where(valid_BxT, pess_BxT, 0.0)
  log_s_B = jnp.minimum(_mean_log_ratio(pess_BxT, valid_BxT),
                        MAX_SEQ_LOG_RATIO)
  obj_Bx1 = adv_Bx1 * jnp.exp(log_s_B)[:, None]
  shape = valid_BxT.shape
  raw_ratio_B = jnp.exp(jnp.minimum(_mean_log_ratio(log_ratio_BxT, valid_BxT),
                                    MAX_SEQ_LOG_RATIO))
  high = jnp.logical_and(adv_Bx1 > 0, log_ratio_BxT > epsilon_high)
  low = jnp.logical_and(adv_Bx1 < 0, log_ratio_BxT < -epsilon_low)
  return PolicyLossOutput(
      jnp.where(valid_BxT, -jnp.broadcast_to(obj_Bx1, shape), 0.0),
      jnp.broadcast_to(raw_ratio_B[:, None], shape), low, high,
      _no_clip(shape))


def _token_covariance(logp_BxT, adv_Bx1, valid_BxT):
  """(A_t - mean A)(log pi_t - mean log pi), means over valid tokens."""
  lp_BxT = jax.lax.stop_gradient(logp_BxT)
  adv_BxT = jnp.broadcast_to(adv_Bx1, lp_BxT.shape)
  return ((adv_BxT - metrics_lib.masked_mean(adv_BxT, valid_BxT))
          * (lp_BxT - metrics_lib.masked_mean(lp_BxT, valid_BxT)))


def _top_k_mask(score_BxT, eligible_BxT, k):
  """The k eligible positions with the highest score (k may be traced)."""
  flat = jnp.where(eligible_BxT, score_BxT, -jnp.inf).reshape(-1)
  order = jnp.argsort(-flat, stable=True)
  rank = jnp.zeros(flat.shape, jnp.int32).at[order].set(
      jnp.arange(flat.shape[0], dtype=jnp.int32))
  return eligible_BxT & (rank.reshape(score_BxT.shape) < k)


def _num_selected(ratio, valid_BxT):
  n = jnp.sum(valid_BxT.astype(jnp.float32))
  return jnp.maximum(jnp.floor(ratio * n), 1.0).astype(jnp.int32)


@POLICY_LOSSES.register('clip_cov')
def clip_cov(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low=0.2,
             epsilon_high=0.2, dual_clip=None, delta=None,
             clip_cov_ratio=2e-4, clip_cov_lb=1.0, clip_cov_ub=5.0):
  """Clip-Cov: 'clipped_token' with a few high-covariance tokens detached.

  Cui et al. 2025, "The entropy mechanism of reinforcement learning for
  reasoning language models", arXiv 2505.22617 (verl `clip_cov`). Entropy
  falls where log pi and A covary; cutting the gradient of the tokens with
  the largest covariance cov_t = (A_t - mean A)(log pi_t - mean log pi)
  (means over valid tokens) holds the entropy up. Of the valid tokens not
  already clipped whose cov lies in (clip_cov_lb, clip_cov_ub),
  max(1, floor(clip_cov_ratio * num_valid_tokens)) are cut (loss and
  gradient 0). The paper and verl pick them at random; here the ones with
  the highest covariance are picked (deterministic under jit, no key), the
  same set whenever there are no more candidates than that.

  policy_options: clip_cov_ratio, clip_cov_lb, clip_cov_ub. Reported:
  clip_cov_frac (fraction of valid tokens cut).
  """
  clip = (epsilon_low, epsilon_high, dual_clip, delta)
  valid_BxT, logp_BxT, log_ratio_BxT, adv_Bx1 = _prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  out = _token_output(jnp.exp(log_ratio_BxT), adv_Bx1, valid_BxT, clip)
  cov_BxT = _token_covariance(logp_BxT, adv_Bx1, valid_BxT)
  clipped = out.clipped_low_BxT | out.clipped_high_BxT | out.clipped_dual_BxT
  eligible = (valid_BxT & ~clipped & (cov_BxT > clip_cov_lb)
              & (cov_BxT < clip_cov_ub))
  cut_BxT = _top_k_mask(cov_BxT, eligible,
                        _num_selected(clip_cov_ratio, valid_BxT))
  metrics = {'clip_cov_frac': metrics_lib.masked_mean(cut_BxT, valid_BxT)}
  return out._replace(loss_BxT=jnp.where(cut_BxT, 0.0, out.loss_BxT),
                      metrics=metrics)


@POLICY_LOSSES.register('kl_cov')
def kl_cov(logp_BxT, old_logp_BxT, adv_B, mask_BxT, *, epsilon_low=0.2,
           epsilon_high=0.2, dual_clip=None, kl_cov_ratio=2e-4,
           kl_cov_coef=1.0):
  """KL-Cov: -r A everywhere, plus coef |log r| on the top-covariance tokens.

  Cui et al. 2025, arXiv 2505.22617 (verl `kl_cov`, `ppo_kl_coef`). No ratio
  clip at all; instead the max(1, floor(kl_cov_ratio * num_valid_tokens))
  valid tokens with the largest cov_t = (A_t - mean A)(log pi_t - mean
  log pi) get the penalty kl_cov_coef * |log pi_t - log pi_old_t|, which
  pulls exactly those tokens back to the old policy. The epsilons are
  unused.

  policy_options: kl_cov_ratio, kl_cov_coef. Reported: kl_cov_frac.
  """
  del epsilon_low, epsilon_high
  _reject('kl_cov', dual_clip=dual_clip)
  valid_BxT, logp_BxT, log_ratio_BxT, adv_Bx1 = _prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  ratio_BxT = jnp.exp(log_ratio_BxT)
  cov_BxT = _token_covariance(logp_BxT, adv_Bx1, valid_BxT)
  pen_BxT = _top_k_mask(cov_BxT, valid_BxT,
                        _num_selected(kl_cov_ratio, valid_BxT))
  # sign(x) * x is |x| with gradient sign(x): 0 at x = 0 (torch's abs), so
  # on-policy (ratio 1) the penalty adds no gradient.
  abs_BxT = jnp.sign(log_ratio_BxT) * log_ratio_BxT
  loss_BxT = -adv_Bx1 * ratio_BxT + jnp.where(
      pen_BxT, kl_cov_coef * abs_BxT, 0.0)
  no = _no_clip(ratio_BxT.shape)
  metrics = {'kl_cov_frac': metrics_lib.masked_mean(pen_BxT, valid_BxT)}
  return PolicyLossOutput(jnp.where(valid_BxT, loss_BxT, 0.0), ratio_BxT, no,
                          no, no, metrics)


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


def _check_extras(entropy_BxT, entropy_coef, top_entropy_quantile,
                  sampler_logp_BxT, rollout_correction, rc_threshold,
                  rc_threshold_low, offpolicy_mask_threshold, delta):
  """Fail at trace time on the options added to grpo_loss, naming them."""
  concrete = (int, float, np.integer, np.floating)
  needs_entropy = top_entropy_quantile is not None or not (
      isinstance(entropy_coef, concrete) and entropy_coef == 0)
  if needs_entropy and entropy_BxT is None:
    raise ValueError(
        'grpo_loss: top_entropy_quantile and a non-zero entropy_coef need '
        'entropy_BxT (the per-token entropy of the policy, from the logits).')
  if isinstance(top_entropy_quantile, concrete) and not (
      0 <= top_entropy_quantile <= 1):
    raise ValueError('top_entropy_quantile must be None or in [0, 1]; got '
                     f'{top_entropy_quantile}.')
  rc_lib.check_rollout_correction(rollout_correction, rc_threshold,
                                  rc_threshold_low)
  if rollout_correction is not None and sampler_logp_BxT is None:
    raise ValueError(f'rollout_correction={rollout_correction!r} needs '
                     'sampler_logp_BxT (the sampler\'s log-probs).')
  if isinstance(offpolicy_mask_threshold, concrete) and (
      offpolicy_mask_threshold < 0):
    raise ValueError('offpolicy_mask_threshold must be None or >= 0; got '
                     f'{offpolicy_mask_threshold}.')
  if delta is not None and isinstance(delta, concrete) and delta <= 1:
    raise ValueError(f'delta must be None or > 1; got {delta}.')


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
    delta: float | None = None,
    policy_options: Mapping[str, Any] | None = None,
    seq_weights_B: jax.Array | None = None,
    top_entropy_quantile: float | None = None,
    entropy_coef: float = 0.0,
    entropy_target: float | None = None,
    sampler_logp_BxT: jax.Array | None = None,
    rollout_correction: str | None = None,
    rollout_correction_threshold: float | None = 2.0,
    rollout_correction_threshold_low: float | None = None,
    offpolicy_mask_threshold: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The GRPO objective (as a loss to minimise) and its metrics.

  loss = aggregation(w_b * (c_bt * policy_loss_bt + beta * kl_bt))
         - entropy_coef * mean_t entropy_bt,

  the KL inside the same per-token aggregation as in DeepSeekMath eq. 3.
  c_bt (1 by default) is the product of the optional policy-loss factors:
  the high-entropy token selection, DeepSeek-V3.2's off-policy sequence mask
  and the rollout-correction weight; w_b are `seq_weights_B`. With every new
  option at its default the loss and metrics are those of the plain
  objective, bit for bit.

  Under jit, the string options, dual_clip, delta, max_len, policy_options
  and every None-or-value option must be static (close over them with
  functools.partial, or list them in static_argnames); beta, entropy_coef
  and the epsilons and thresholds may be traced, except that beta must be
  the Python number 0 when ref_logp_BxT is None.

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
    kl_estimator: a name in kl.KL_ESTIMATORS ('k3+' etc.: straight-through).
    beta: KL coefficient (R1: 0.001; DAPO, Dr. GRPO: 0). To put the KL into
      the reward instead, use `kl.kl_penalized_rewards` and beta = 0.
    epsilon_low: lower clip range, ratio >= 1 - epsilon_low ('gmpo': the
      log-ratio bound, log r >= -epsilon_low).
    epsilon_high: upper clip range, ratio <= 1 + epsilon_high (DAPO: 0.28;
      'gmpo': log r <= epsilon_high).
    dual_clip: None, or c > 1 bounding a negative advantage's objective at
      c * A (3.0 is common).
    max_len: the constant length of 'seq_sum_norm' (default: T).
    entropy_BxT: optional exact per-token entropy of the policy (from the
      logits); reported as 'entropy'. Needed by top_entropy_quantile and
      entropy_coef; for the bonus it must carry the policy's gradient.
    delta: INTELLECT-2's two-sided clip, an upper bound > 1 on the ratio of
      the unclipped branch (the 'clipped_*', 'gspo*' and 'clip_cov' losses;
      TRL `delta`; see `_clipped_objective`). None: off.
    policy_options: keyword options of the chosen policy loss, e.g.
      {'tau_pos': 1.0, 'tau_neg': 1.05} for 'sapo', {'clip_cov_ratio': 2e-4,
      'clip_cov_lb': 1.0, 'clip_cov_ub': 5.0} for 'clip_cov',
      {'kl_cov_ratio': 2e-4, 'kl_cov_coef': 1.0} for 'kl_cov'. Any mapping
      (a ConfigDict too); an option the loss does not take is an error.
    seq_weights_B: per-sequence weights of the whole per-token loss (policy
      and KL). A sequence with weight 0 leaves the loss entirely: it is
      removed from the mask, so from every normaliser and every metric (as
      TRL's mask_truncated_completions zeroes its completion mask). Pass
      `1 - truncated_B` to train without truncated completions (DAPO's
      overlong filtering).
    top_entropy_quantile: None (all tokens), or q in [0, 1]: the policy loss
      keeps only the valid tokens whose entropy is in the top q fraction of
      the batch ("Beyond the 80/20 rule", arXiv 2506.01939; q = 0.2 there;
      TRL). The normalisers still count every valid token (as in TRL).
    entropy_coef: coefficient of the entropy bonus, - coef * token mean of
      entropy_BxT over the tokens that the policy loss trains on (TRL's
      `entropy_coef`); 0 = off. May be traced (the adaptive coefficient of
      `entropy.update_entropy_coef`, carried by the trainer).
    entropy_target: None, or the bonus only acts while this batch's mean
      entropy is <= the target (Skywork-OR1's adaptive entropy control,
      arXiv 2505.22312; see `entropy.py`).
    sampler_logp_BxT: the sampler's own log-probs of the sampled tokens,
      when they can differ from old_logp_BxT (bf16 sampler, stale async
      weights). Its gap to old_logp_BxT is reported; it feeds the rollout
      correction and the off-policy mask.
    rollout_correction: None, or 'tis_token' | 'tis_seq' | 'mis_token' |
      'mis_seq': truncated or masked importance sampling with the weight
      pi_old / pi_sampler (see `rollout_correction.py`).
    rollout_correction_threshold: its upper bound C (TRL
      vllm_importance_sampling_clip_max; verl rollout_is_threshold = 2).
    rollout_correction_threshold_low: its optional lower bound.
    offpolicy_mask_threshold: None, or DeepSeek-V3.2's delta: negative-
      advantage sequences whose mean per-token log(pi_sampler / pi_theta)
      exceeds it are dropped from the policy loss (TRL
      off_policy_mask_threshold; arXiv 2512.02556 eq. 9). Uses
      sampler_logp_BxT, or old_logp_BxT when that is None.

  Returns:
    (loss, metrics): a float32 scalar and a dict of float32 scalars:
    loss, policy_loss (the aggregated policy term, factors included), kl
    (token mean over valid tokens; absent when ref_logp_BxT is None),
    ratio_mean/_std/_min/_max (valid tokens), clip_frac_low, clip_frac_high,
    clip_frac_dual (fractions of valid tokens whose gradient a clip stops),
    entropy_mc (-token mean of logp: the sampled-token estimate of the
    entropy, exact in expectation only for tokens drawn from the current
    policy at temperature 1), entropy (if entropy_BxT is given),
    adv_mean/_std/_min/_max and frac_zero_adv_seqs (over sequences with at
    least one valid token; zero-advantage sequences give no policy gradient),
    num_tokens; and, when the option is on: the policy loss's own metrics
    (cispo_clip_frac_*, clip_cov_frac, kl_cov_frac), entropy_selected_frac,
    entropy_bonus and entropy_coef_applied, rollout_logp_gap_mean/_max,
    rollout_kl, rollout_kl_k3, rollout_is_weight_mean/_min/_max,
    rollout_is_masked_frac, offpolicy_masked_frac (fraction of valid
    sequences dropped), seq_weight_mean.
  """
  b, t = mask_BxT.shape
  for name, x in (('logp_BxT', logp_BxT), ('old_logp_BxT', old_logp_BxT),
                  ('ref_logp_BxT', ref_logp_BxT),
                  ('entropy_BxT', entropy_BxT),
                  ('sampler_logp_BxT', sampler_logp_BxT)):
    if x is not None and x.shape != (b, t):
      raise ValueError(f'{name} has shape {x.shape}; mask_BxT has {(b, t)}.')
  if adv_B.shape != (b,):
    raise ValueError(f'adv_B has shape {adv_B.shape}; expected {(b,)}.')
  if seq_weights_B is not None and seq_weights_B.shape != (b,):
    raise ValueError(
        f'seq_weights_B has shape {seq_weights_B.shape}; expected {(b,)}.')
  _check_options(beta, ref_logp_BxT is not None, epsilon_low, epsilon_high,
                 dual_clip, max_len)
  _check_extras(entropy_BxT, entropy_coef, top_entropy_quantile,
                sampler_logp_BxT, rollout_correction,
                rollout_correction_threshold, rollout_correction_threshold_low,
                offpolicy_mask_threshold, delta)
  policy_fn = POLICY_LOSSES.get(policy_loss)
  aggregate = LOSS_AGGREGATIONS.get(aggregation)
  kl_fn = kl_lib.KL_ESTIMATORS.get(kl_estimator)

  metrics = {}
  if seq_weights_B is not None:
    w_B = jax.lax.stop_gradient(seq_weights_B.astype(jnp.float32))
    metrics['seq_weight_mean'] = metrics_lib.masked_mean(
        w_B, jnp.any(mask_BxT > 0, axis=1))
    mask_BxT = jnp.where((w_B != 0)[:, None], mask_BxT, 0)

  options = dict(policy_options or {})
  if delta is not None:
    options['delta'] = delta
  try:
    out = policy_fn(
        logp_BxT, old_logp_BxT, adv_B, mask_BxT,
        epsilon_low=epsilon_low, epsilon_high=epsilon_high,
        dual_clip=dual_clip, **options,
    )
  except TypeError as e:
    if 'unexpected keyword' not in str(e):
      raise
    raise ValueError(f'policy loss {policy_loss!r} does not take the options '
                     f'{sorted(options)}: {e}') from None
  valid_BxT = mask_BxT > 0
  policy_BxT = out.loss_BxT
  if out.metrics:
    metrics.update(out.metrics)

  train_BxT = valid_BxT  # the tokens the policy loss trains on
  if top_entropy_quantile is not None:
    train_BxT = entropy_lib.high_entropy_mask(entropy_BxT, mask_BxT,
                                              top_entropy_quantile)
    policy_BxT = jnp.where(train_BxT, policy_BxT, 0.0)
    metrics['entropy_selected_frac'] = metrics_lib.masked_mean(
        train_BxT, valid_BxT)
  if sampler_logp_BxT is not None:
    metrics.update(rc_lib.logp_gap_metrics(old_logp_BxT, sampler_logp_BxT,
                                           mask_BxT))
  if offpolicy_mask_threshold is not None:
    keep_B = rc_lib.offpolicy_sequence_mask(
        logp_BxT,
        old_logp_BxT if sampler_logp_BxT is None else sampler_logp_BxT,
        adv_B.astype(jnp.float32), mask_BxT, offpolicy_mask_threshold)
    policy_BxT = policy_BxT * keep_B[:, None]
    metrics['offpolicy_masked_frac'] = metrics_lib.masked_mean(
        1.0 - keep_B, jnp.any(valid_BxT, axis=1))
  if rollout_correction is not None:
    is_w_BxT, is_metrics = rc_lib.rollout_correction_weights(
        old_logp_BxT, sampler_logp_BxT, mask_BxT, mode=rollout_correction,
        threshold=rollout_correction_threshold,
        threshold_low=rollout_correction_threshold_low)
    policy_BxT = policy_BxT * is_w_BxT
    metrics.update(is_metrics)

  total_BxT = policy_BxT
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
  if seq_weights_B is not None:
    total_BxT = total_BxT * w_B[:, None]
    policy_BxT = policy_BxT * w_B[:, None]
  loss = aggregate(total_BxT, mask_BxT, max_len=max_len)
  metrics['policy_loss'] = aggregate(policy_BxT, mask_BxT, max_len=max_len)

  if entropy_BxT is not None:
    metrics['entropy'] = metrics_lib.masked_mean(entropy_BxT, valid_BxT)
  if not (isinstance(entropy_coef, (int, float)) and entropy_coef == 0):
    bonus = metrics_lib.masked_mean(entropy_BxT, train_BxT)
    coef = entropy_lib.gated_entropy_coef(
        entropy_coef, jax.lax.stop_gradient(bonus), entropy_target)
    loss = loss - coef * bonus
    metrics['entropy_bonus'] = bonus
    metrics['entropy_coef_applied'] = coef

  metrics['loss'] = loss
  metrics.update(metrics_lib.stats('ratio', out.ratio_BxT, valid_BxT))
  metrics['clip_frac_low'] = metrics_lib.masked_mean(
      out.clipped_low_BxT, valid_BxT)
  metrics['clip_frac_high'] = metrics_lib.masked_mean(
      out.clipped_high_BxT, valid_BxT)
  metrics['clip_frac_dual'] = metrics_lib.masked_mean(
      out.clipped_dual_BxT, valid_BxT)
  metrics['entropy_mc'] = -metrics_lib.masked_mean(logp_BxT, valid_BxT)
  seq_valid_B = jnp.any(valid_BxT, axis=1)
  adv_f32_B = adv_B.astype(jnp.float32)
  metrics.update(metrics_lib.stats('adv', adv_f32_B, seq_valid_B))
  metrics['frac_zero_adv_seqs'] = metrics_lib.masked_mean(
      adv_f32_B == 0, seq_valid_B)
  metrics['num_tokens'] = jnp.sum(valid_BxT.astype(jnp.float32))
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
