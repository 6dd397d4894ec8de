"""DAPO dynamic sampling: which groups to keep and how many more to sample."""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import dynamic_sampling as ds

REWARDS = np.array([
    [1.0, 1.0],  # 0: all right, no spread
    [0.0, 1.0],  # 1: keep
    [0.0, 0.0],  # 2: all wrong, no spread
    [1.0, 0.0],  # 3: keep
    [0.5, 0.2],  # 4: keep
])


def test_enough_groups():
  sel = ds.filter_groups(REWARDS, target_num_groups=2)
  np.testing.assert_array_equal(sel.indices, [1, 3])
  assert sel.num_missing == 0 and sel.num_prompts_to_sample == 0


def test_too_few_groups():
  sel = ds.filter_groups(REWARDS, target_num_groups=5)
  np.testing.assert_array_equal(sel.indices, [1, 3, 4])
  # 2 missing; 3 of 5 groups were informative: ceil(2 / (3/5)) = ceil(10/3) = 4.
  assert sel.num_missing == 2 and sel.num_prompts_to_sample == 4


def test_no_informative_group_still_suggests_a_finite_number():
  # Rate counted as 1 of 2 groups: ceil(3 / (1/2)) = 6.
  sel = ds.filter_groups(np.array([[0.0, 0.0], [1.0, 1.0]]), 3)
  assert sel.indices.size == 0
  assert sel.num_missing == 3 and sel.num_prompts_to_sample == 6


def test_exact_integer_rounding():
  # 3 informative of 10, 3 missing: 3 / (3/10) = 10 exactly (not 11).
  rewards = np.zeros((10, 2))
  rewards[:3, 0] = 1.0
  sel = ds.filter_groups(rewards, 6)
  assert sel.num_missing == 3 and sel.num_prompts_to_sample == 10


def test_atol_and_jax_input():
  rewards = jnp.array([[0.0, 1e-9], [0.0, 1.0]])
  np.testing.assert_array_equal(ds.has_spread(rewards), [True, True])
  np.testing.assert_array_equal(ds.has_spread(rewards, atol=1e-6),
                                [False, True])


def test_bad_inputs():
  with pytest.raises(ValueError, match=r'\[P, G\]'):
    ds.filter_groups(np.zeros(4), 2)
  with pytest.raises(ValueError, match='target_num_groups'):
    ds.filter_groups(REWARDS, -1)


@settings(max_examples=50, deadline=None)
@given(
    rewards=hnp.arrays(np.float32, st.tuples(st.integers(1, 8),
                                             st.integers(1, 4)),
                       elements=st.sampled_from([0.0, 0.5, 1.0])),
    target=st.integers(0, 10),
)
def test_selection_properties(rewards, target):
  sel = ds.filter_groups(rewards, target)
  kept = rewards[sel.indices]
  assert np.all(kept.max(1) > kept.min(1))  # every kept group has spread
  assert np.all(np.diff(sel.indices) > 0)  # in order, no repeats
  n_good = int(np.sum(rewards.max(1) > rewards.min(1)))
  assert len(sel.indices) == min(target, n_good)
  assert sel.num_missing == target - len(sel.indices)
  # The suggestion would fill the gap at this round's informative rate.
  assert (sel.num_prompts_to_sample == 0) == (sel.num_missing == 0)
  rate = max(n_good, 1) / len(rewards)
  assert sel.num_prompts_to_sample * rate >= sel.num_missing - 1e-9
  assert (sel.num_prompts_to_sample - 1) * rate < sel.num_missing
