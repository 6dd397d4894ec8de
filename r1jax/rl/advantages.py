"""Group-relative advantage estimators (registry `ADVANTAGES`).

Shapes: the rollout holds P prompts with G completions each. Estimators take
`rewards_PxG` (row p = the G completions of prompt p) and return `adv_PxG`.
The loss sees the same numbers flattened prompt-major, `adv_B` with B = P * G
(the G completions of prompt 0 first): `adv_PxG.reshape(-1)`.
`compute_advantages` does that round trip for flat rewards.

Every estimator has the signature `fn(rewards_PxG, *, eps) -> adv_PxG`,
computes in float32 and is jit-compatible (G is a static shape). A group whose
rewards are all equal gets zero advantage under every estimator: it teaches
nothing (see `metrics.rollout_metrics` and `dynamic_sampling`).
"""

import jax
import jax.numpy as jnp

from r1jax.registry import Registry

ADVANTAGES = Registry('advantage estimator')


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


@ADVANTAGES.register('grpo')
def grpo(rewards_PxG: jax.Array, *, eps: float = 1e-6) -> jax.Array:
  """GRPO advantage (r - mean_group) / (std_group + eps), DeepSeekMath / R1.

  The papers do not say which standard deviation. We use the sample std
  (ddof=1, Bessel-corrected): it is what `torch.std` computes by default, so it
  is what TRL, verl and OpenRLHF use, and our numbers compare with theirs. For
  G = 16 it is sqrt(16/15) ~ 1.03 times the population std, a global scale
  that Adam mostly absorbs. With G = 1 the std is taken as 0 (advantage 0).

  Args:
    rewards_PxG: rewards, one row per prompt.
    eps: added to the std so that zero-spread groups give 0, not nan.

  Returns:
    adv_PxG, float32.
  """
  g = _group_size(rewards_PxG)
  centered_PxG = _center(rewards_PxG)
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


def compute_advantages(
    rewards_B: jax.Array,
    group_size: int,
    estimator: str = 'grpo',
    *,
    eps: float = 1e-6,
) -> jax.Array:
  """Advantages for flat prompt-major rewards [B] with B = P * group_size.

  Args:
    rewards_B: rewards, the `group_size` completions of prompt 0 first.
    group_size: G, completions per prompt (static).
    estimator: a name in `ADVANTAGES`.
    eps: passed to the estimator.

  Returns:
    adv_B, float32, in the same order as `rewards_B`.
  """
  if rewards_B.ndim != 1 or rewards_B.shape[0] % group_size:
    raise ValueError(
        f'rewards_B must be 1-D with a length divisible by group_size='
        f'{group_size}; got shape {rewards_B.shape}.'
    )
  fn = ADVANTAGES.get(estimator)
  rewards_PxG = rewards_B.reshape(-1, group_size)
  return fn(rewards_PxG, eps=eps).reshape(-1)
