"""Advantage estimators: hand-computed cases and per-group properties."""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import advantages
from r1jax.rl import metrics

ADV = advantages.ADVANTAGES

# Rewards that are exact in float32, so that the hand numbers are exact too.
_reward = st.integers(-8, 8).map(lambda k: k / 4)
_rewards_PxG = st.tuples(st.integers(1, 4), st.integers(2, 6)).flatmap(
    lambda s: hnp.arrays(np.float32, s, elements=_reward)
)


def test_registry_names():
  assert ADV.names() == ['drgrpo', 'grpo', 'rloo']
  with pytest.raises(KeyError, match='known'):
    ADV.get('ppo')


def test_grpo_hand_computed():
  # Row 0: mean 4, deviations (-2, 0, 2), sample var (4 + 0 + 4) / 2 = 4,
  # std 2 -> (-1, 0, 1).
  # Row 1: mean 1/3, deviations (2/3, -1/3, -1/3), sample var
  # (4/9 + 1/9 + 1/9) / 2 = 1/3, std 1/sqrt(3) -> (2/sqrt(3), -1/sqrt(3), ...).
  rewards = jnp.array([[2.0, 4.0, 6.0], [1.0, 0.0, 0.0]])
  s3 = 3.0**0.5
  expected = [[-1.0, 0.0, 1.0], [2 / s3, -1 / s3, -1 / s3]]
  np.testing.assert_allclose(ADV.get('grpo')(rewards), expected, rtol=1e-5)


def test_grpo_binary_group_of_four():
  # Two right, two wrong: deviations +-1/2, sample var 4 * 1/4 / 3 = 1/3,
  # adv = +-(1/2) * sqrt(3) = +-0.8660254.
  adv = ADV.get('grpo')(jnp.array([[1.0, 0.0, 0.0, 1.0]]))
  np.testing.assert_allclose(
      adv, [[0.8660254, -0.8660254, -0.8660254, 0.8660254]], rtol=1e-5
  )


def test_drgrpo_hand_computed():
  rewards = jnp.array([[2.0, 4.0, 6.0], [1.0, 0.0, 0.0]])
  expected = [[-2.0, 0.0, 2.0], [2 / 3, -1 / 3, -1 / 3]]
  np.testing.assert_allclose(ADV.get('drgrpo')(rewards), expected, rtol=1e-6)


def test_rloo_hand_computed():
  # 2 - (4 + 6) / 2 = -3; 4 - (2 + 6) / 2 = 0; 6 - (2 + 4) / 2 = 3.
  # 1 - (0 + 0) / 2 = 1; 0 - (1 + 0) / 2 = -1/2 (twice).
  rewards = jnp.array([[2.0, 4.0, 6.0], [1.0, 0.0, 0.0]])
  expected = [[-3.0, 0.0, 3.0], [1.0, -0.5, -0.5]]
  np.testing.assert_allclose(ADV.get('rloo')(rewards), expected, rtol=1e-6)


def test_compute_advantages_is_prompt_major():
  # Prompt 0 = (2, 4, 6), prompt 1 = (1, 1, 1).
  rewards_B = jnp.array([2.0, 4.0, 6.0, 1.0, 1.0, 1.0])
  adv_B = advantages.compute_advantages(rewards_B, 3, 'grpo')
  np.testing.assert_allclose(adv_B, [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match='divisible'):
    advantages.compute_advantages(rewards_B, 4)


def test_shape_errors():
  with pytest.raises(ValueError, match=r'\[P, G\]'):
    ADV.get('grpo')(jnp.zeros((6,)))
  with pytest.raises(ValueError, match='at least 2'):
    ADV.get('rloo')(jnp.zeros((3, 1)))


def test_group_of_one_gives_zero_for_grpo():
  adv = ADV.get('grpo')(jnp.array([[3.0], [-1.0]]))
  np.testing.assert_array_equal(adv, [[0.0], [0.0]])


@pytest.mark.parametrize('name', ['grpo', 'drgrpo', 'rloo'])
def test_jit_and_dtype(name):
  rewards = jnp.array([[0.0, 1.0, 1.0, 0.5], [1.0, 1.0, 0.0, 0.0]],
                      jnp.bfloat16)
  eager = ADV.get(name)(rewards)
  jitted = jax.jit(ADV.get(name))(rewards)
  assert eager.dtype == jnp.float32 and jitted.dtype == jnp.float32
  np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(rewards=_rewards_PxG, name=st.sampled_from(['grpo', 'drgrpo', 'rloo']))
def test_zero_mean_per_group(rewards, name):
  adv = np.asarray(ADV.get(name)(jnp.asarray(rewards)))
  np.testing.assert_allclose(adv.mean(axis=1), 0.0, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(rewards=_rewards_PxG)
def test_grpo_unit_sample_std_and_drgrpo_relation(rewards):
  """grpo = drgrpo / (sample std + eps), so groups with spread have std 1."""
  r = jnp.asarray(rewards)
  grpo_adv = np.asarray(ADV.get('grpo')(r, eps=0.0))
  dr_adv = np.asarray(ADV.get('drgrpo')(r))
  rloo_adv = np.asarray(ADV.get('rloo')(r))
  g = rewards.shape[1]
  np.testing.assert_allclose(rloo_adv, dr_adv * g / (g - 1), atol=1e-5)
  spread = np.ptp(rewards, axis=1) > 0
  np.testing.assert_allclose(
      grpo_adv[spread].std(axis=1, ddof=1), 1.0, rtol=1e-4
  )


@settings(max_examples=30, deadline=None)
@given(
    value=st.floats(-1e3, 1e3, width=32),
    g=st.integers(2, 16),
    name=st.sampled_from(['grpo', 'drgrpo', 'rloo']),
)
def test_zero_spread_group_is_exactly_zero(value, g, name):
  # A naive mean of g copies of e.g. 0.1 is not exactly 0.1 in float32 and
  # grpo's 1 / eps would turn the residue into a visible advantage.
  adv = ADV.get(name)(jnp.full((1, g), value, jnp.float32))
  np.testing.assert_array_equal(adv, np.zeros((1, g)))


def test_rollout_metrics_hand_computed():
  rewards = jnp.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0],
                       [2.0, 2.0, 2.0]])
  m = metrics.rollout_metrics(rewards, ADV.get('drgrpo')(rewards))
  # Groups 0, 2 and 3 have equal rewards: 3 of 4.
  assert float(m['frac_zero_spread_groups']) == 0.75
  # Rewards sum to 3 + 1 + 0 + 6 = 10 over 12 entries.
  np.testing.assert_allclose(m['reward_mean'], 10 / 12, rtol=1e-6)
  assert float(m['reward_min']) == 0.0 and float(m['reward_max']) == 2.0
  # Only group 1 is non-zero: (-1/3, 2/3, -1/3).
  np.testing.assert_allclose(m['adv_max'], 2 / 3, rtol=1e-6)
  np.testing.assert_allclose(m['adv_min'], -1 / 3, rtol=1e-6)
  np.testing.assert_allclose(m['adv_mean'], 0.0, atol=1e-7)
