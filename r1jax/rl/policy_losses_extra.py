"""Policy losses that replace or reshape PPO's clip; in POLICY_LOSSES too.

'cispo' clips a stop-gradient importance weight instead of the objective,
'sapo' gates the ratio with a sigmoid, 'gmpo' clips the geometric mean of the
token ratios in log space; 'clip_cov' and 'kl_cov' hold the entropy up by
cutting the gradient of, or penalising, the few tokens whose log-prob
covaries most with the advantage. Each keeps the contract of
`policy_losses.PolicyLossOutput`; importing `r1jax.rl` registers them.
"""

import jax
import jax.numpy as jnp

from r1jax.rl import metrics as metrics_lib
from r1jax.rl.policy_losses import MAX_SEQ_LOG_RATIO
from r1jax.rl.policy_losses import mean_log_ratio
from r1jax.rl.policy_losses import no_clip
from r1jax.rl.policy_losses import POLICY_LOSSES
from r1jax.rl.policy_losses import PolicyLossOutput
from r1jax.rl.policy_losses import prepare
from r1jax.rl.policy_losses import reject_options
from r1jax.rl.policy_losses import token_output


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
  reject_options('cispo', dual_clip=dual_clip)
  valid_BxT, logp_BxT, log_ratio_BxT, adv_Bx1 = prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  ratio_BxT = jnp.exp(log_ratio_BxT)
  w_BxT = jax.lax.stop_gradient(
      jnp.clip(ratio_BxT, 1.0 - epsilon_low, 1.0 + epsilon_high))
  loss_BxT = jnp.where(valid_BxT, -w_BxT * adv_Bx1 * logp_BxT, 0.0)
  no = no_clip(ratio_BxT.shape)
  metrics = {
      'cispo_clip_frac_low': metrics_lib.masked_mean(
          ratio_BxT < 1.0 - epsilon_low, valid_BxT),
      'cispo_clip_frac_high': metrics_lib.masked_mean(
          ratio_BxT > 1.0 + epsilon_high, valid_BxT),
  }
  return PolicyLossOutput(loss_BxT, ratio_BxT, no, no, no, metrics)


@POLICY_LOSSES.register('sapo', options=('tau_pos', 'tau_neg'))
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
  reject_options('sapo', dual_clip=dual_clip)
  if isinstance(tau_pos, (int, float)) and tau_pos <= 0 or isinstance(
      tau_neg, (int, float)) and tau_neg <= 0:
    raise ValueError(f'sapo temperatures must be > 0; got tau_pos={tau_pos}, '
                     f'tau_neg={tau_neg}.')
  valid_BxT, _, log_ratio_BxT, adv_Bx1 = prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  ratio_BxT = jnp.exp(jnp.minimum(log_ratio_BxT, MAX_SEQ_LOG_RATIO))
  tau_Bx1 = jnp.where(adv_Bx1 > 0, tau_pos, tau_neg).astype(jnp.float32)
  gate_BxT = jax.nn.sigmoid(tau_Bx1 * (ratio_BxT - 1.0)) * (4.0 / tau_Bx1)
  loss_BxT = jnp.where(valid_BxT, -gate_BxT * adv_Bx1, 0.0)
  no = no_clip(ratio_BxT.shape)
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
  reject_options('gmpo', dual_clip=dual_clip)
  valid_BxT, _, log_ratio_BxT, adv_Bx1 = prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  sign_Bx1 = jnp.sign(adv_Bx1)
  clamped_BxT = jnp.clip(log_ratio_BxT, -epsilon_low, epsilon_high)
  pess_BxT = sign_Bx1 * jnp.minimum(sign_Bx1 * log_ratio_BxT,
                                    sign_Bx1 * clamped_BxT)
  pess_BxT = jnp.where(valid_BxT, pess_BxT, 0.0)
  log_s_B = jnp.minimum(mean_log_ratio(pess_BxT, valid_BxT),
                        MAX_SEQ_LOG_RATIO)
  obj_Bx1 = adv_Bx1 * jnp.exp(log_s_B)[:, None]
  shape = valid_BxT.shape
  raw_ratio_B = jnp.exp(jnp.minimum(mean_log_ratio(log_ratio_BxT, valid_BxT),
                                    MAX_SEQ_LOG_RATIO))
  high = jnp.logical_and(adv_Bx1 > 0, log_ratio_BxT > epsilon_high)
  low = jnp.logical_and(adv_Bx1 < 0, log_ratio_BxT < -epsilon_low)
  return PolicyLossOutput(
      jnp.where(valid_BxT, -jnp.broadcast_to(obj_Bx1, shape), 0.0),
      jnp.broadcast_to(raw_ratio_B[:, None], shape), low, high,
      no_clip(shape))


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


@POLICY_LOSSES.register('clip_cov', options=('clip_cov_ratio', 'clip_cov_lb',
                                     'clip_cov_ub', 'delta'))
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
  valid_BxT, logp_BxT, log_ratio_BxT, adv_Bx1 = prepare(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT
  )
  out = token_output(jnp.exp(log_ratio_BxT), adv_Bx1, valid_BxT, clip)
  cov_BxT = _token_covariance(logp_BxT, adv_Bx1, valid_BxT)
  clipped = out.clipped_low_BxT | out.clipped_high_BxT | out.clipped_dual_BxT
  eligible = (valid_BxT & ~clipped & (cov_BxT > clip_cov_lb)
              & (cov_BxT < clip_cov_ub))
  cut_BxT = _top_k_mask(cov_BxT, eligible,
                        _num_selected(clip_cov_ratio, valid_BxT))
  metrics = {'clip_cov_frac': metrics_lib.masked_mean(cut_BxT, valid_BxT)}
  return out._replace(loss_BxT=jnp.where(cut_BxT, 0.0, out.loss_BxT),
                      metrics=metrics)


@POLICY_LOSSES.register('kl_cov', options=('kl_cov_ratio', 'kl_cov_coef'))
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
  reject_options('kl_cov', dual_clip=dual_clip)
  valid_BxT, logp_BxT, log_ratio_BxT, adv_Bx1 = prepare(
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
  no = no_clip(ratio_BxT.shape)
  metrics = {'kl_cov_frac': metrics_lib.masked_mean(pen_BxT, valid_BxT)}
  return PolicyLossOutput(jnp.where(valid_BxT, loss_BxT, 0.0), ratio_BxT, no,
                          no, no, metrics)
