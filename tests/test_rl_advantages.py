"""Advantage estimators: hand-computed cases and per-group properties."""

import math

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import advantages

ADV = advantages.ADVANTAGES

# Rewards that are exact in float32, so that the hand numbers are exact too.
_reward = st.integers(-8, 8).map(lambda k: k / 4)
_rewards_PxG = st.tuples(st.integers(1, 4), st.integers(2, 6)).flatmap(
    lambda s: hnp.arrays(np.float32, s, elements=_reward)
)


def test_registry_names():
  assert ADV.names() == ['drgrpo', 'grpo', 'opo', 'reinforce_pp',
                         'reinforce_pp_baseline', 'remax', 'rloo']
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


_NEEDS = {
    'remax': dict(baseline_P=jnp.array([0.5, 1.0])),
    'opo': dict(lengths_PxG=jnp.array([[1, 2, 3, 4], [4, 3, 2, 1]])),
}


@pytest.mark.parametrize('name', sorted(ADV))
def test_jit_and_dtype(name):
  rewards = jnp.array([[0.0, 1.0, 1.0, 0.5], [1.0, 1.0, 0.0, 0.0]],
                      jnp.bfloat16)
  opts = _NEEDS.get(name, {})
  eager = ADV.get(name)(rewards, **opts)
  jitted = jax.jit(lambda r, o: ADV.get(name)(r, **o))(rewards, opts)
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


# --- grpo scale ('group' | 'batch' | 'none', TRL scale_rewards) -------------
def test_grpo_scale_batch_matches_trl():
  """TRL scale_rewards='batch': (r - mean_group) / (std(all rewards) + 1e-4).

  All 8 rewards: mean 5/8, sample var (5 (3/8)^2 + 3 (5/8)^2) / 7 = 15/56,
  std 0.5175492. Numbers written down from TRL's formula.
  """
  rewards = jnp.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
  adv = ADV.get('grpo')(rewards, eps=1e-4, scale='batch')
  np.testing.assert_allclose(
      adv, [[0.96590515, -0.96590515, -0.96590515, 0.96590515],
            [0.48295258, 0.48295258, 0.48295258, -1.44885773]], rtol=1e-5)


def test_grpo_scale_none_is_drgrpo_and_group_is_default():
  rewards = jnp.array([[2.0, 4.0, 6.0], [1.0, 0.0, 0.0]])
  np.testing.assert_array_equal(ADV.get('grpo')(rewards, scale='none'),
                                ADV.get('drgrpo')(rewards))
  np.testing.assert_array_equal(ADV.get('grpo')(rewards, scale='group'),
                                ADV.get('grpo')(rewards))
  with pytest.raises(ValueError, match='scale'):
    ADV.get('grpo')(rewards, scale='global')


# --- REINFORCE++, ReMax, OPO (verl's formulas) ------------------------------
def test_reinforce_pp_hand_computed_and_verl_token_weighting():
  # Without lengths: rewards (1, 0, 0.5, 0), mean 3/8, sample var
  # ((5/8)^2 + 2 (3/8)^2 + (1/8)^2) / 3 = 11/48.
  r = jnp.array([[1.0, 0.0], [0.5, 0.0]])
  std = math.sqrt(11 / 48)
  np.testing.assert_allclose(
      ADV.get('reinforce_pp')(r, eps=0.0),
      (np.array([[1.0, 0.0], [0.5, 0.0]]) - 3 / 8) / std, rtol=1e-5)
  # verl masked_whiten of per-token returns, lengths (2, 1, 3, 1): the tokens
  # hold 1, 1, 0, .5, .5, .5, 0, mean 1/2, sample var 1/6.
  adv = ADV.get('reinforce_pp')(r, eps=0.0,
                                lengths_PxG=jnp.array([[2, 1], [3, 1]]))
  np.testing.assert_allclose(adv, [[1.22474483, -1.22474483],
                                   [0.0, -1.22474483]], rtol=1e-5, atol=1e-7)


def test_reinforce_pp_baseline_hand_computed_and_verl():
  r = jnp.array([[1.0, 0.0], [0.5, 0.0]])
  # Centred (.5, -.5, .25, -.25), sample std sqrt(.625 / 3).
  np.testing.assert_allclose(
      ADV.get('reinforce_pp_baseline')(r, eps=0.0),
      [[1.09544512, -1.09544512], [0.54772256, -0.54772256]], rtol=1e-5)
  # verl: group mean, then masked_whiten over tokens (lengths 2, 1, 3, 1).
  adv = ADV.get('reinforce_pp_baseline')(
      r, eps=0.0, lengths_PxG=jnp.array([[2, 1], [3, 1]]))
  np.testing.assert_allclose(adv, [[0.94491115, -1.70084007],
                                   [0.28347334, -1.03940226]], rtol=1e-5)


def test_remax_and_opo_hand_computed():
  r = jnp.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
  np.testing.assert_allclose(
      ADV.get('remax')(r, baseline_P=jnp.array([1.0, 0.5])),
      [[0.0, -1.0, -1.0], [0.5, 0.5, -0.5]])
  # OPO baselines: (1*1) / 6 = 1/6; (4 + 4) / 10 = 0.8.
  adv = ADV.get('opo')(r, lengths_PxG=jnp.array([[1, 2, 3], [4, 4, 2]]))
  np.testing.assert_allclose(adv, [[5 / 6, -1 / 6, -1 / 6], [0.2, 0.2, -0.8]],
                             rtol=1e-6)
  # Equal lengths: OPO is Dr. GRPO.
  np.testing.assert_allclose(
      ADV.get('opo')(r, lengths_PxG=jnp.full((2, 3), 7)),
      ADV.get('drgrpo')(r), atol=1e-7)
  with pytest.raises(ValueError, match='baseline_P'):
    ADV.get('remax')(r)
  with pytest.raises(ValueError, match='lengths_PxG'):
    ADV.get('opo')(r)


def test_compute_advantages_forwards_and_reshapes_options():
  rewards_B = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
  adv = advantages.compute_advantages(rewards_B, 3, 'opo',
                                      lengths_B=jnp.array([1, 2, 3, 4, 4, 2]))
  np.testing.assert_allclose(adv, [5 / 6, -1 / 6, -1 / 6, 0.2, 0.2, -0.8],
                             rtol=1e-6)
  adv = advantages.compute_advantages(rewards_B, 3, 'remax',
                                      baseline_P=jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(adv, [1, 0, 0, 0, 0, -1])
  adv = advantages.compute_advantages(rewards_B, 3, 'grpo', scale='none')
  np.testing.assert_allclose(adv, [2 / 3, -1 / 3, -1 / 3, 1 / 3, 1 / 3,
                                   -2 / 3], rtol=1e-6)
  with pytest.raises(ValueError, match='does not take'):
    advantages.compute_advantages(rewards_B, 3, 'rloo', scale='batch')


_GROUP_BASELINED = ['grpo', 'drgrpo', 'rloo', 'opo', 'reinforce_pp_baseline']


@settings(max_examples=30, deadline=None)
@given(
    value=st.floats(-1e3, 1e3, width=32),
    g=st.integers(2, 8),
    name=st.sampled_from(_GROUP_BASELINED),
    scale=st.sampled_from(['group', 'batch']),
)
def test_new_estimators_zero_spread_group_is_exactly_zero(value, g, name,
                                                          scale):
  # A second group with spread so that batch statistics are non-trivial.
  r = jnp.stack([jnp.full((g,), value, jnp.float32),
                 jnp.arange(g, dtype=jnp.float32)])
  opts = {'opo': dict(lengths_PxG=jnp.arange(2 * g).reshape(2, g) + 1),
          'grpo': dict(scale=scale)}.get(name, {})
  adv = np.asarray(ADV.get(name)(r, **opts))
  np.testing.assert_array_equal(adv[0], np.zeros(g))


# --- Several rewards: sum then normalise, or normalise then sum (GDPO) ------
_ACC = jnp.array([1.0, 0, 1, 0, 1, 1, 1, 1])
_FMT = jnp.array([1.0, 1, 0, 0, 0, 1, 0, 1])


def test_multi_reward_norm_then_sum_matches_trl_gdpo():
  """TRL multi_objective_aggregation='normalize_then_sum', eps 1e-4.

  Per reward: (r - mean_group) / (std_group + 1e-4); weighted sum; then
  (s - mean) / (std(s) + 1e-4) over the batch. Numbers from that formula.
  """
  adv = advantages.multi_reward_advantages(
      {'acc': _ACC, 'fmt': _FMT}, {'acc': 1.0, 'fmt': 0.5}, 4,
      normalize='norm_then_sum', eps=1e-4)
  np.testing.assert_allclose(
      adv, [1.61998309, -0.53999436, 0.53999436, -1.61998309, -0.53999436,
            0.53999436, -0.53999436, 0.53999436], rtol=1e-5, atol=1e-6)


def test_multi_reward_sum_then_norm_is_compute_advantages_of_the_sum():
  adv = advantages.multi_reward_advantages(
      {'acc': _ACC, 'fmt': _FMT}, {'acc': 1.0, 'fmt': 0.5}, 4, eps=1e-4)
  np.testing.assert_allclose(
      adv, advantages.compute_advantages(_ACC + 0.5 * _FMT, 4, eps=1e-4),
      rtol=1e-6)
  # TRL sum_then_normalize on the same rewards (group scale, eps 1e-4).
  np.testing.assert_allclose(
      adv, [1.16171503, -0.38723834, 0.38723834, -1.16171503, -0.86572551,
            0.86572551, -0.86572551, 0.86572551], rtol=1e-5)


def test_gdpo_keeps_reward_combinations_apart():
  # Group: acc (1, 0, 0, 1), fmt (0, 1, 1, 1). Summed: (1, 1, 1, 2): the
  # completions (1, 0) and (0, 1) get the same advantage; decoupled they
  # do not, since fmt's single 0 is rarer than acc's two 0s.
  acc = jnp.array([1.0, 0.0, 0.0, 1.0])
  fmt = jnp.array([0.0, 1.0, 1.0, 1.0])
  summed = advantages.multi_reward_advantages({'a': acc, 'f': fmt}, None, 4)
  assert float(summed[0]) == float(summed[1])
  dec = advantages.multi_reward_advantages({'a': acc, 'f': fmt}, None, 4,
                                           normalize='norm_then_sum')
  assert float(dec[0]) != float(dec[1])
  np.testing.assert_allclose(np.std(np.asarray(dec), ddof=1), 1.0, rtol=1e-4)


def test_multi_reward_zero_spread_and_errors():
  const = jnp.ones(4)
  adv = advantages.multi_reward_advantages(
      {'a': jnp.concatenate([const, _ACC[:4]]),
       'b': jnp.concatenate([const * 0, _FMT[:4]])}, None, 4,
      normalize='norm_then_sum')
  np.testing.assert_array_equal(adv[:4], np.zeros(4))
  with pytest.raises(ValueError, match='normalize'):
    advantages.multi_reward_advantages({'a': const}, None, 4, normalize='x')
  with pytest.raises(ValueError, match='absent'):
    advantages.multi_reward_advantages({'a': const}, {'b': 1.0}, 4)
  # jit with the names and options static.
  f = jax.jit(lambda a, b: advantages.multi_reward_advantages(
      {'a': a, 'b': b}, {'a': 1.0, 'b': 0.5}, 4, normalize='norm_then_sum',
      eps=1e-4))
  np.testing.assert_allclose(f(_ACC, _FMT), advantages.multi_reward_advantages(
      {'a': _ACC, 'b': _FMT}, {'a': 1.0, 'b': 0.5}, 4,
      normalize='norm_then_sum', eps=1e-4), rtol=1e-6)
