"""`grpo_loss`, the one loss the GRPO trainer calls, and its option checks.

`grpo_loss` chains a policy loss, its optional factors (top-entropy token
selection, the off-policy mask, rollout correction), the KL term, the
aggregation and the entropy bonus. Its parts live in their own
modules: the policy losses in `policy_losses.py` (the contract, shapes and
PPO's clipped family) and `policy_losses_extra.py` (cispo, sapo, gmpo,
clip_cov, kl_cov), the aggregations with their unit counts in
`aggregation.py`, the KL estimators in `kl.py`, the optional factors in
`entropy.py` and `rollout_correction.py`. The strings a config gives each
option: the table in `r1jax.rl`'s docstring; every option: `LossConfig`.

Use under jit with the options closed over or static:
  loss_fn = functools.partial(grpo_loss, policy_loss='gspo', beta=0.0)
  loss_fn = functools.partial(grpo_loss, config=LossConfig(beta=0.0))
  (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
"""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.rl import aggregation as aggregation_lib
from r1jax.rl import entropy as entropy_lib
from r1jax.rl import kl as kl_lib
from r1jax.rl import metrics as metrics_lib
from r1jax.rl import policy_losses
# policy_losses_extra: imported for its entries in POLICY_LOSSES.
from r1jax.rl import policy_losses_extra  # pylint: disable=unused-import
from r1jax.rl import rollout_correction as rc_lib


def _check_shapes(mask_BxT, adv_B, **arrays_BxT):
  """Every [B, T] input has the mask's shape; adv_B is [B]."""
  b, t = mask_BxT.shape
  for name, x in arrays_BxT.items():
    if x is not None and x.shape != (b, t):
      raise ValueError(f'{name} has shape {x.shape}; mask_BxT has {(b, t)}.')
  if adv_B.shape != (b,):
    raise ValueError(f'adv_B has shape {adv_B.shape}; expected {(b,)}.')


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


def _is_python_zero(x):
  """True for a Python 0 (static off switch); a traced or numpy 0 is not."""
  return isinstance(x, (int, float)) and x == 0


def _policy_loss(policy_fn, name, logp_BxT, old_logp_BxT, adv_B, mask_BxT,
                 epsilon_low, epsilon_high, dual_clip, delta, policy_options):
  """Calls the policy loss; an option it does not declare is a ValueError."""
  options = dict(policy_options or {})
  if delta is not None:
    options['delta'] = delta
  declared = policy_losses.POLICY_LOSSES.options(name)
  unknown = sorted(set(options) - set(declared))
  if unknown:
    raise ValueError(f'policy loss {name!r} does not take the options '
                     f'{unknown}; it takes {list(declared)}.')
  return policy_fn(
      logp_BxT, old_logp_BxT, adv_B, mask_BxT,
      epsilon_low=epsilon_low, epsilon_high=epsilon_high,
      dual_clip=dual_clip, **options,
  )


def _select_high_entropy(policy_BxT, entropy_BxT, mask_BxT, valid_BxT, q):
  """The policy loss on the top-q entropy tokens only; those tokens."""
  train_BxT = entropy_lib.high_entropy_mask(entropy_BxT, mask_BxT, q)
  metrics = {'entropy_selected_frac': metrics_lib.masked_mean(
      train_BxT, valid_BxT)}
  return jnp.where(train_BxT, policy_BxT, 0.0), train_BxT, metrics


def _mask_offpolicy(policy_BxT, logp_BxT, behaviour_logp_BxT, adv_B,
                    mask_BxT, valid_BxT, threshold):
  """DeepSeek-V3.2's off-policy sequence mask on the policy loss."""
  keep_B = rc_lib.offpolicy_sequence_mask(
      logp_BxT, behaviour_logp_BxT, adv_B.astype(jnp.float32), mask_BxT,
      threshold)
  metrics = {'offpolicy_masked_frac': metrics_lib.masked_mean(
      1.0 - keep_B, jnp.any(valid_BxT, axis=1))}
  return policy_BxT * keep_B[:, None], metrics


def _correct_rollout(policy_BxT, old_logp_BxT, sampler_logp_BxT, mask_BxT,
                     mode, threshold, threshold_low):
  """The policy loss times the rollout-correction weight pi_old / pi_sampler."""
  is_w_BxT, metrics = rc_lib.rollout_correction_weights(
      old_logp_BxT, sampler_logp_BxT, mask_BxT, mode=mode,
      threshold=threshold, threshold_low=threshold_low)
  return policy_BxT * is_w_BxT, metrics


def _token_kl(kl_fn, logp_BxT, ref_logp_BxT, valid_BxT):
  """Per-token KL to the reference (no gradient through the reference)."""
  # Zero both sides off-mask so padded garbage (even -inf) yields kl = 0.
  return kl_fn(
      jnp.where(valid_BxT, logp_BxT.astype(jnp.float32), 0.0),
      jax.lax.stop_gradient(
          jnp.where(valid_BxT, ref_logp_BxT.astype(jnp.float32), 0.0)),
  )


def _entropy_bonus(entropy_BxT, train_BxT, entropy_coef, entropy_target):
  """coef * (token mean of the entropy where the policy loss trains)."""
  bonus = metrics_lib.masked_mean(entropy_BxT, train_BxT)
  coef = entropy_lib.gated_entropy_coef(
      entropy_coef, jax.lax.stop_gradient(bonus), entropy_target)
  return coef * bonus, {'entropy_bonus': bonus, 'entropy_coef_applied': coef}


def _summary_metrics(out, logp_BxT, adv_B, valid_BxT):
  """Ratio, clip, sampled-entropy, advantage and token-count metrics."""
  metrics = metrics_lib.stats('ratio', out.ratio_BxT, valid_BxT)
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
  return metrics


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The options of `grpo_loss`; every default gives the plain GRPO loss.

  The GRPO stage builds one from its config (`rl.policy_loss`,
  `rl.aggregation`, `rl.kl_estimator`, `rl.beta`, `rl.epsilon_low`,
  `rl.epsilon_high`, `rl.dual_clip`; the rest from `rl.loss_options`).

  Attributes:
    policy_loss: a name in policy_losses.POLICY_LOSSES (the names: the table
      in `r1jax.rl`'s docstring).
    aggregation: a name in aggregation.LOSS_AGGREGATIONS.
    kl_estimator: a name in kl.KL_ESTIMATORS ('k3+' etc.: straight-through).
    beta: KL coefficient (R1: 0.001; DAPO, Dr. GRPO: 0). The Python number 0
      adds no KL term (the trainer then skips the reference pass). For the
      KL in the reward instead: `kl.kl_penalized_rewards` with beta = 0 here
      (the GRPO stage's `rl.kl_in_reward`).
    epsilon_low: lower clip range, ratio >= 1 - epsilon_low ('gmpo': the
      log-ratio bound, log r >= -epsilon_low).
    epsilon_high: upper clip range, ratio <= 1 + epsilon_high (DAPO: 0.28;
      'gmpo': log r <= epsilon_high).
    dual_clip: None, or c > 1 bounding a negative advantage's objective at
      c * A (3.0 is common).
    max_len: the constant length of 'seq_sum_norm' (default: T).
    delta: INTELLECT-2's two-sided clip, an upper bound > 1 on the ratio of
      the unclipped branch (the 'clipped_*', 'gspo*' and 'clip_cov' losses;
      TRL `delta`; see `policy_losses.clipped_objective`). None: off.
    policy_options: keyword options of the chosen policy loss, e.g.
      {'tau_pos': 1.0, 'tau_neg': 1.05} for 'sapo', {'clip_cov_ratio': 2e-4,
      'clip_cov_lb': 1.0, 'clip_cov_ub': 5.0} for 'clip_cov',
      {'kl_cov_ratio': 2e-4, 'kl_cov_coef': 1.0} for 'kl_cov'. Any mapping
      (a ConfigDict too); an option the loss does not declare is an error.
    top_entropy_quantile: None (all tokens), or q in [0, 1]: the policy loss
      keeps only the valid tokens whose entropy is in the top q fraction of
      the batch ("Beyond the 80/20 rule", arXiv 2506.01939; q = 0.2 there;
      TRL). The normalisers still count every valid token (as in TRL).
    entropy_coef: coefficient of the entropy bonus, - coef * token mean of
      entropy_BxT over the tokens that the policy loss trains on (TRL's
      `entropy_coef`); 0 = off. May be traced.
    entropy_target: None, or the bonus only acts while this batch's mean
      entropy is <= the target (Skywork-OR1's entropy control, arXiv
      2505.22312; see `entropy.py`).
    rollout_correction: None, or 'tis_token' | 'tis_seq' | 'mis_token' |
      'mis_seq': truncated or masked importance sampling with the weight
      pi_old / pi_sampler (see `rollout_correction.py`); needs
      sampler_logp_BxT.
    rollout_correction_threshold: its upper bound C (TRL
      vllm_importance_sampling_clip_max; verl rollout_is_threshold = 2).
    rollout_correction_threshold_low: its optional lower bound.
    offpolicy_mask_threshold: None, or DeepSeek-V3.2's delta: negative-
      advantage sequences whose mean per-token log(pi_sampler / pi_theta)
      exceeds it are dropped from the policy loss (TRL
      off_policy_mask_threshold; arXiv 2512.02556 eq. 9). Uses
      sampler_logp_BxT, or old_logp_BxT when that is None.
  """
  policy_loss: str = 'clipped_token'
  aggregation: str = 'seq_mean_token_mean'
  kl_estimator: str = 'k3'
  beta: float = 0.001
  epsilon_low: float = 0.2
  epsilon_high: float = 0.2
  dual_clip: float | None = None
  max_len: int | None = None
  delta: float | None = None
  policy_options: Mapping[str, Any] | None = None
  top_entropy_quantile: float | None = None
  entropy_coef: float = 0.0
  entropy_target: float | None = None
  rollout_correction: str | None = None
  rollout_correction_threshold: float | None = 2.0
  rollout_correction_threshold_low: float | None = None
  offpolicy_mask_threshold: float | None = None


def grpo_loss(
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    ref_logp_BxT: jax.Array | None,
    adv_B: jax.Array,
    mask_BxT: jax.Array,
    *,
    entropy_BxT: jax.Array | None = None,
    sampler_logp_BxT: jax.Array | None = None,
    config: LossConfig | None = None,
    **options: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The GRPO objective (as a loss to minimise) and its metrics.

  loss = aggregation(c_bt * policy_loss_bt + beta * kl_bt)
         - entropy_coef * mean_t entropy_bt,

  the KL inside the same per-token aggregation as in DeepSeekMath eq. 3.
  c_bt (1 by default) is the product of the optional policy-loss factors:
  the high-entropy token selection, DeepSeek-V3.2's off-policy sequence mask
  and the rollout-correction weight. With every option at its default the
  loss and metrics are those of the plain objective, bit for bit.

  Under jit, the string options, dual_clip, delta, max_len, policy_options
  and every None-or-value option (`LossConfig`) must be static (close over
  them with functools.partial, or list them in static_argnames); beta,
  entropy_coef and the epsilons and thresholds may be traced, except that
  beta must be the Python number 0 when ref_logp_BxT is None.

  Args:
    logp_BxT: log pi(y_t) of the sampled tokens under the current policy.
    old_logp_BxT: the same under the sampling policy (no gradient taken).
    ref_logp_BxT: the same under the reference; may be None only if beta == 0
      (then the trainer can skip the reference forward pass).
    adv_B: one advantage per sequence (`advantages.compute_advantages`).
    mask_BxT: 1 on completion tokens, 0 on prompt and padding; positions
      where it is 0 affect neither the loss nor its gradient.
    entropy_BxT: optional exact per-token entropy of the policy (from the
      logits); reported as 'entropy'. Needed by top_entropy_quantile and
      entropy_coef; for the bonus it must carry the policy's gradient.
    sampler_logp_BxT: the sampler's own log-probs of the sampled tokens,
      when they can differ from old_logp_BxT (bf16 sampler, stale async
      weights; the GRPO stage passes them when it recomputes old_logp_BxT
      for a rollout correction). Its gap to old_logp_BxT is reported; it
      feeds the rollout correction and the off-policy mask.
    config: the options (`LossConfig`); default LossConfig().
    **options: `LossConfig` fields, set on top of `config` (an unknown name
      is a TypeError).

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
    sequences dropped).
  """
  c = (LossConfig(**options) if config is None
       else dataclasses.replace(config, **options))
  _check_shapes(mask_BxT, adv_B, logp_BxT=logp_BxT,
                old_logp_BxT=old_logp_BxT, ref_logp_BxT=ref_logp_BxT,
                entropy_BxT=entropy_BxT, sampler_logp_BxT=sampler_logp_BxT)
  _check_options(c.beta, ref_logp_BxT is not None, c.epsilon_low,
                 c.epsilon_high, c.dual_clip, c.max_len)
  _check_extras(entropy_BxT, c.entropy_coef, c.top_entropy_quantile,
                sampler_logp_BxT, c.rollout_correction,
                c.rollout_correction_threshold,
                c.rollout_correction_threshold_low,
                c.offpolicy_mask_threshold, c.delta)
  policy_fn = policy_losses.POLICY_LOSSES.get(c.policy_loss)
  aggregate = aggregation_lib.LOSS_AGGREGATIONS.get(c.aggregation).aggregate
  kl_fn = kl_lib.KL_ESTIMATORS.get(c.kl_estimator)

  metrics = {}
  out = _policy_loss(policy_fn, c.policy_loss, logp_BxT, old_logp_BxT, adv_B,
                     mask_BxT, c.epsilon_low, c.epsilon_high, c.dual_clip,
                     c.delta, c.policy_options)
  valid_BxT = mask_BxT > 0
  policy_BxT = out.loss_BxT
  metrics.update(out.metrics or {})

  # The optional factors c_bt of the policy loss.
  train_BxT = valid_BxT  # the tokens the policy loss trains on
  if c.top_entropy_quantile is not None:
    policy_BxT, train_BxT, m = _select_high_entropy(
        policy_BxT, entropy_BxT, mask_BxT, valid_BxT, c.top_entropy_quantile)
    metrics.update(m)
  if sampler_logp_BxT is not None:
    metrics.update(rc_lib.logp_gap_metrics(old_logp_BxT, sampler_logp_BxT,
                                           mask_BxT))
  if c.offpolicy_mask_threshold is not None:
    behaviour_BxT = (old_logp_BxT if sampler_logp_BxT is None
                     else sampler_logp_BxT)
    policy_BxT, m = _mask_offpolicy(policy_BxT, logp_BxT, behaviour_BxT,
                                    adv_B, mask_BxT, valid_BxT,
                                    c.offpolicy_mask_threshold)
    metrics.update(m)
  if c.rollout_correction is not None:
    policy_BxT, m = _correct_rollout(
        policy_BxT, old_logp_BxT, sampler_logp_BxT, mask_BxT,
        c.rollout_correction, c.rollout_correction_threshold,
        c.rollout_correction_threshold_low)
    metrics.update(m)

  total_BxT = policy_BxT
  if ref_logp_BxT is not None:
    kl_BxT = _token_kl(kl_fn, logp_BxT, ref_logp_BxT, valid_BxT)
    metrics['kl'] = metrics_lib.masked_mean(kl_BxT, valid_BxT)
    if not _is_python_zero(c.beta):
      total_BxT = total_BxT + c.beta * kl_BxT
  loss = aggregate(total_BxT, mask_BxT, max_len=c.max_len)
  metrics['policy_loss'] = aggregate(policy_BxT, mask_BxT, max_len=c.max_len)

  if entropy_BxT is not None:
    metrics['entropy'] = metrics_lib.masked_mean(entropy_BxT, valid_BxT)
  if not _is_python_zero(c.entropy_coef):
    bonus_term, m = _entropy_bonus(entropy_BxT, train_BxT, c.entropy_coef,
                                   c.entropy_target)
    loss = loss - bonus_term
    metrics.update(m)

  metrics['loss'] = loss
  metrics.update(_summary_metrics(out, logp_BxT, adv_B, valid_BxT))
  return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
