"""Group-relative advantage estimators (registry `ADVANTAGES`).

Shapes: the rollout holds P prompts with G completions each. Estimators take
`rewards_PxG` (row p = the G completions of prompt p) and return `adv_PxG`.
The loss sees the same numbers flattened prompt-major, `adv_B` with B = P * G
(the G completions of prompt 0 first): `adv_PxG.reshape(-1)`.
`compute_advantages` does that round trip for flat rewards.

Every estimator has the signature `fn(rewards_PxG, *, eps, **keywords) ->
adv_PxG`, computes in float32 and is jit-compatible (G is a static shape).
Its keywords are declared when it is registered: `options`, which a config
sets, and `inputs`, arrays the trainer fills (`ADVANTAGES.inputs(name)`):

  name                    options / inputs
  'grpo'                  scale='group' | 'batch' | 'none'  (TRL scale_rewards)
  'drgrpo', 'rloo'        -
  'reinforce_pp'          input lengths_PxG (token-weighted batch statistics)
  'reinforce_pp_baseline' input lengths_PxG
  'remax'                 input baseline_P (reward of the greedy answer)
  'opo'                   input lengths_PxG (completion lengths in tokens)

A group whose rewards are all equal gets exactly zero advantage under every
group-baselined estimator ('grpo', 'drgrpo', 'rloo', 'opo',
'reinforce_pp_baseline' without lengths): it teaches nothing (see
`dynamic_sampling`). 'reinforce_pp' and 'remax'
have no group baseline, so such a group can still carry a signal.

`multi_reward_advantages` combines several rewards, either summed and then
normalised, or normalised per reward within its group and then summed (GDPO).
"""

from typing import Mapping

import jax
import jax.numpy as jnp

from r1jax.registry import Registry

ADVANTAGES = Registry('advantage estimator')

GRPO_SCALES = ('group', 'batch', 'none')


def _center(rewards_PxG: jax.Array) -> jax.Array:
  """r - mean_group in float32, exactly 0 for a group of equal rewards.

  Shifting by the group's first reward before averaging makes a constant
  group subtract to exact zeros; a plain mean of, say, sixteen 0.1s is not
  exactly 0.1 in float32, and grpo's 1 / (std + eps) would blow the residue
  up to a visible advantage.
  """
  r_PxG = rewards_PxG.astype(jnp.float32)
  d_PxG = r_PxG - r_PxG[:, :1]
  return d_PxG - jnp.mean(d_PxG, axis=1, keepdims=True)


def _group_size(rewards_PxG: jax.Array) -> int:
  if rewards_PxG.ndim != 2:
    raise ValueError(
        'Advantage estimators take rewards of shape [P, G] (prompts x group '
        f'size); got shape {rewards_PxG.shape}. Use compute_advantages for '
        'flat prompt-major rewards.'
    )
  return rewards_PxG.shape[1]


def _sample_std(x_N: jax.Array, w_N: jax.Array | None = None) -> jax.Array:
  """Bessel-corrected std of the entries of x (weights w: repeat counts)."""
  x_N = x_N.reshape(-1)
  if w_N is None:
    n = x_N.shape[0]
    mean = jnp.mean(x_N)
    return jnp.sqrt(jnp.sum(jnp.square(x_N - mean)) / max(n - 1, 1))
  w_N = w_N.reshape(-1).astype(jnp.float32)
  n = jnp.sum(w_N)
  mean = jnp.sum(w_N * x_N) / jnp.maximum(n, 1.0)
  var = jnp.sum(w_N * jnp.square(x_N - mean)) / jnp.maximum(n - 1.0, 1.0)
  return jnp.sqrt(var)


@ADVANTAGES.register('grpo', options=('scale',))
def grpo(rewards_PxG: jax.Array, *, eps: float = 1e-6,
         scale: str = 'group') -> jax.Array:
  """GRPO advantage (r - mean_group) / (std_group + eps), DeepSeekMath / R1.

  `scale` picks the std (TRL's `scale_rewards`): 'group' (the default, the
  paper's), 'batch' (the sample std of all P * G rewards, as in "Tricks or
  traps? A deep dive into RL for LLM reasoning", Liu et al. 2025, arXiv
  2508.08221, "Lite PPO"), or 'none' (no division: Dr. GRPO, equal to
  'drgrpo').

  The papers do not say which standard deviation. We use the sample std
  (ddof=1, Bessel-corrected): it is what `torch.std` computes by default, so it
  is what TRL, verl and OpenRLHF use, and our numbers compare with theirs. For
  G = 16 it is sqrt(16/15) ~ 1.03 times the population std, a global scale
  that Adam mostly absorbs. With G = 1 the std is taken as 0 (advantage 0).

  Args:
    rewards_PxG: rewards, one row per prompt.
    eps: added to the std so that zero-spread groups give 0, not nan.
    scale: 'group', 'batch' or 'none' (see above).

  Returns:
    adv_PxG, float32.
  """
  if scale not in GRPO_SCALES:
    raise ValueError(f'grpo scale must be one of {GRPO_SCALES}; got {scale!r}.')
  g = _group_size(rewards_PxG)
  centered_PxG = _center(rewards_PxG)
  if scale == 'none':
    return centered_PxG
  if scale == 'batch':
    return centered_PxG / (_sample_std(rewards_PxG.astype(jnp.float32)) + eps)
  var_Px1 = jnp.sum(jnp.square(centered_PxG), axis=1, keepdims=True) / max(
      g - 1, 1
  )
  return centered_PxG / (jnp.sqrt(var_Px1) + eps)


@ADVANTAGES.register('drgrpo')
def drgrpo(rewards_PxG: jax.Array, *, eps: float = 1e-6) -> jax.Array:
  """Dr. GRPO advantage r - mean_group, without std scaling.

  Dividing by the std up-weights groups that are nearly all right or all wrong
  (a question-difficulty bias); Dr. GRPO (Liu et al. 2025) drops it. `eps` is
  accepted for a uniform signature and unused.
  """
  del eps
  _group_size(rewards_PxG)
  return _center(rewards_PxG)


@ADVANTAGES.register('rloo')
def rloo(rewards_PxG: jax.Array, *, eps: float = 1e-6) -> jax.Array:
  """REINFORCE leave-one-out: r_i - mean of the other G - 1 rewards.

  Equals G / (G - 1) * (r_i - mean_group), so the baseline does not depend on
  the sample it scores (unbiased). Needs G >= 2. `eps` is unused.
  """
  del eps
  g = _group_size(rewards_PxG)
  if g < 2:
    raise ValueError(f'rloo needs a group size of at least 2; got {g}.')
  # r_i - (sum - r_i) / (G - 1) == G / (G - 1) * (r_i - mean).
  return _center(rewards_PxG) * (g / (g - 1))


def _lengths(lengths_PxG, shape, name):
  if lengths_PxG is None:
    return None
  lengths_PxG = jnp.asarray(lengths_PxG)
  if lengths_PxG.shape != shape:
    raise ValueError(
        f'{name}: lengths_PxG has shape {lengths_PxG.shape}; rewards have '
        f'{shape}.')
  return lengths_PxG.astype(jnp.float32)


def _whiten(x_PxG, lengths_PxG, eps, shift_mean):
  """(x - mean) / (std + eps) over the whole batch; weights = lengths."""
  if lengths_PxG is None:
    mean = jnp.mean(x_PxG)
  else:
    mean = jnp.sum(lengths_PxG * x_PxG) / jnp.maximum(jnp.sum(lengths_PxG), 1.)
  std = _sample_std(x_PxG, lengths_PxG)
  return ((x_PxG - mean) if shift_mean else x_PxG) / (std + eps)


@ADVANTAGES.register('reinforce_pp', inputs=('lengths_PxG',))
def reinforce_pp(rewards_PxG: jax.Array, *, eps: float = 1e-6,
                 lengths_PxG: jax.Array | None = None) -> jax.Array:
  """REINFORCE++: the reward whitened over the whole batch, no group baseline.

  Hu et al. 2025, "REINFORCE++: an efficient RLHF algorithm with robustness
  to both prompt and reward models", arXiv 2501.03262 (global advantage
  normalisation). (r - mean_batch) / (std_batch + eps) with the sample std.
  verl and OpenRLHF whiten the per-token returns (for an outcome reward, the
  reward repeated on each completion token), so every completion counts as
  many times as it has tokens: pass `lengths_PxG` to get exactly that.
  Zero-spread groups are not zeroed (there is no group baseline).
  """
  _group_size(rewards_PxG)
  lengths_PxG = _lengths(lengths_PxG, rewards_PxG.shape, 'reinforce_pp')
  return _whiten(rewards_PxG.astype(jnp.float32), lengths_PxG, eps, True)


@ADVANTAGES.register('reinforce_pp_baseline',
                       inputs=('lengths_PxG',))
def reinforce_pp_baseline(rewards_PxG: jax.Array, *, eps: float = 1e-6,
                          lengths_PxG: jax.Array | None = None) -> jax.Array:
  """REINFORCE++-baseline: r - mean_group, then divided by the batch std.

  Hu et al. 2025, arXiv 2501.03262 (section "REINFORCE++-baseline"); verl's
  `reinforce_plus_plus_baseline`. The group mean removes the prompt's
  difficulty; the batch std (rather than GRPO's per-group std) keeps the
  scale from blowing up groups that are nearly all right or all wrong.
  Without lengths the batch mean of the centred rewards is exactly 0 and is
  not subtracted again, so zero-spread groups stay exactly 0. With
  `lengths_PxG`, statistics are token-weighted as in verl (masked whitening
  of per-token returns), mean included.
  """
  _group_size(rewards_PxG)
  lengths_PxG = _lengths(lengths_PxG, rewards_PxG.shape,
                         'reinforce_pp_baseline')
  centered_PxG = _center(rewards_PxG)
  return _whiten(centered_PxG, lengths_PxG, eps, lengths_PxG is not None)


@ADVANTAGES.register('remax', inputs=('baseline_P',))
def remax(rewards_PxG: jax.Array, *, eps: float = 1e-6,
          baseline_P: jax.Array | None = None) -> jax.Array:
  """ReMax: r - reward of the prompt's greedy completion.

  Li et al. 2023, "ReMax: a simple, effective, and efficient RL method for
  aligning LLMs", arXiv 2310.10505. The trainer decodes one greedy answer per
  prompt, scores it and passes its reward as `baseline_P` ([P]). `eps` is
  unused.
  """
  del eps
  _group_size(rewards_PxG)
  if baseline_P is None:
    raise ValueError(
        "remax needs baseline_P=[P] rewards of each prompt's greedy "
        'completion (pass it through compute_advantages(..., baseline_P=...)).')
  baseline_P = jnp.asarray(baseline_P)
  if baseline_P.shape != rewards_PxG.shape[:1]:
    raise ValueError(f'remax: baseline_P has shape {baseline_P.shape}; '
                     f'expected {rewards_PxG.shape[:1]}.')
  return rewards_PxG.astype(jnp.float32) - baseline_P.astype(
      jnp.float32)[:, None]


@ADVANTAGES.register('opo', inputs=('lengths_PxG',))
def opo(rewards_PxG: jax.Array, *, eps: float = 1e-6,
        lengths_PxG: jax.Array | None = None) -> jax.Array:
  """OPO: r - length-weighted group mean sum_i l_i r_i / sum_i l_i.

  Hao et al. 2025, "On-policy RL with optimal reward baseline", arXiv
  2505.23585: under the assumption that the gradient norm grows with the
  number of tokens, the variance-minimising baseline weights each reward by
  its completion length. `lengths_PxG` (tokens per completion) is required.
  `eps` is unused.
  """
  del eps
  _group_size(rewards_PxG)
  if lengths_PxG is None:
    raise ValueError('opo needs lengths_PxG (completion lengths in tokens; '
                     'compute_advantages takes lengths_B=...).')
  l_PxG = _lengths(lengths_PxG, rewards_PxG.shape, 'opo')
  r_PxG = rewards_PxG.astype(jnp.float32)
  # Shift by the first reward so a constant group gives exact zeros.
  d_PxG = r_PxG - r_PxG[:, :1]
  b_Px1 = jnp.sum(l_PxG * d_PxG, axis=1, keepdims=True) / jnp.maximum(
      jnp.sum(l_PxG, axis=1, keepdims=True), 1e-12)
  return d_PxG - b_Px1


def compute_advantages(
    rewards_B: jax.Array,
    group_size: int,
    estimator: str = 'grpo',
    *,
    eps: float = 1e-6,
    lengths_B: jax.Array | None = None,
    baseline_P: jax.Array | None = None,
    **options,
) -> jax.Array:
  """Advantages for flat prompt-major rewards [B] with B = P * group_size.

  Args:
    rewards_B: rewards, the `group_size` completions of prompt 0 first.
    group_size: G, completions per prompt (static).
    estimator: a name in `ADVANTAGES`.
    eps: passed to the estimator.
    lengths_B: completion lengths, for an estimator with the input
      'lengths_PxG' (it gets them as [P, G]).
    baseline_P: the greedy answers' rewards, for an estimator with the input
      'baseline_P'.
    **options: the estimator's options (`ADVANTAGES.options(estimator)`).

  Returns:
    adv_B, float32, in the same order as `rewards_B`.

  Raises:
    ValueError: an option the estimator does not declare, or an input it
      does not take.
  """
  if rewards_B.ndim != 1 or rewards_B.shape[0] % group_size:
    raise ValueError(
        f'rewards_B must be 1-D with a length divisible by group_size='
        f'{group_size}; got shape {rewards_B.shape}.'
    )
  fn = ADVANTAGES.get(estimator)
  unknown = sorted(set(options) - set(ADVANTAGES.options(estimator)))
  if unknown:
    raise ValueError(
        f'advantage estimator {estimator!r} does not take the options '
        f'{unknown}; it takes {list(ADVANTAGES.options(estimator))}.')
  inputs = {}
  takes = ADVANTAGES.inputs(estimator)
  for name, value in (('lengths_PxG', lengths_B), ('baseline_P', baseline_P)):
    if value is None:
      continue
    if name not in takes:
      raise ValueError(f'advantage estimator {estimator!r} does not take '
                       f'{name}; its inputs: {list(takes)}.')
    value = jnp.asarray(value)
    if name == 'lengths_PxG':
      if value.ndim != 1 or value.shape[0] % group_size:
        raise ValueError(f'lengths_B must be 1-D with a length divisible by '
                         f'group_size={group_size}; got shape {value.shape}.')
      value = value.reshape(-1, group_size)
    inputs[name] = value
  rewards_PxG = rewards_B.reshape(-1, group_size)
  adv_PxG = fn(rewards_PxG, eps=eps, **options, **inputs)
  return adv_PxG.reshape(-1)


MULTI_REWARD_NORMALIZE = ('sum_then_norm', 'norm_then_sum')


def multi_reward_advantages(
    rewards_by_name: Mapping[str, jax.Array],
    weights: Mapping[str, float] | None,
    group_size: int,
    estimator: str = 'grpo',
    normalize: str = 'sum_then_norm',
    *,
    eps: float = 1e-6,
    **options,
) -> jax.Array:
  """Advantages from several rewards, summed before or after normalising.

  'sum_then_norm' (GRPO as usually run, TRL `multi_objective_aggregation=
  'sum_then_normalize'`): r_b = sum_k w_k r_kb, then `estimator`.

  'norm_then_sum' (GDPO: "GDPO: group reward-decoupled normalization policy
  optimization for multi-reward RL optimization", arXiv 2601.05242; TRL
  'normalize_then_sum'): each reward is normalised within
  its group by `estimator` on its own, the weighted sum is then divided by
  its batch std (+ eps). With plain sum-then-normalise, distinct reward
  combinations collapse onto the same advantage (e.g. (1, 0) and (0, 1) for
  two 0/1 rewards) and a reward with a large spread drowns the others;
  decoupled normalisation keeps each reward's signal. The batch mean of the
  sum is exactly 0 for group-baselined estimators and is not subtracted
  (TRL subtracts its float residue), so zero-spread groups stay 0.

  The GRPO stage's switch is `rl.multi_reward`: 'norm_then_sum' calls this;
  'sum_then_norm' there is the plain path (compute_rewards' weighted total,
  then compute_advantages), the same as this one's.

  Args:
    rewards_by_name: reward name -> float [B] rewards, prompt-major (the
      `per_reward` dict of `r1jax.rewards.compute_rewards`).
    weights: reward name -> weight; None weighs every reward 1. Names missing
      from `weights` are ignored (as compute_rewards does with weight 0).
    group_size: G.
    estimator: a name in ADVANTAGES, applied to the sum ('sum_then_norm') or
      to each reward ('norm_then_sum').
    normalize: 'sum_then_norm' or 'norm_then_sum'.
    eps: passed to the estimator, and added to the batch std.
    **options: passed to compute_advantages (the estimator's options and
      inputs).

  Returns:
    adv_B, float32.
  """
  if normalize not in MULTI_REWARD_NORMALIZE:
    raise ValueError(f'normalize must be one of {MULTI_REWARD_NORMALIZE}; '
                     f'got {normalize!r}.')
  if not rewards_by_name:
    raise ValueError('rewards_by_name is empty.')
  if weights is None:
    weights = {name: 1.0 for name in rewards_by_name}
  unknown = set(weights) - set(rewards_by_name)
  if unknown:
    raise ValueError(f'weights name rewards that are absent: {sorted(unknown)}')
  names = [n for n in rewards_by_name if n in weights]
  if normalize == 'sum_then_norm':
    total_B = sum(weights[n] * jnp.asarray(rewards_by_name[n], jnp.float32)
                  for n in names)
    return compute_advantages(total_B, group_size, estimator, eps=eps,
                              **options)
  total_B = sum(
      weights[n] * compute_advantages(
          jnp.asarray(rewards_by_name[n], jnp.float32), group_size, estimator,
          eps=eps, **options)
      for n in names)
  return total_B / (_sample_std(total_B) + eps)
