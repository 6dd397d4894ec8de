"""DAPO dynamic sampling: which groups have reward spread (the stage keeps
those; tests/test_grpo.py runs the stage's resampling loop)."""

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


def test_groups_with_spread():
  np.testing.assert_array_equal(ds.has_spread(REWARDS),
                                [False, True, False, True, True])


def test_atol_and_jax_input():
  rewards = jnp.array([[0.0, 1e-9], [0.0, 1.0]])
  np.testing.assert_array_equal(ds.has_spread(rewards), [True, True])
  np.testing.assert_array_equal(ds.has_spread(rewards, atol=1e-6),
                                [False, True])


def test_bad_inputs():
  with pytest.raises(ValueError, match=r'\[P, G\]'):
    ds.has_spread(np.zeros(4))


@settings(max_examples=50, deadline=None)
@given(rewards=hnp.arrays(np.float32, st.tuples(st.integers(1, 8),
                                                st.integers(1, 4)),
                          elements=st.sampled_from([0.0, 0.5, 1.0])))
def test_spread_is_max_above_min(rewards):
  np.testing.assert_array_equal(ds.has_spread(rewards),
                                rewards.max(1) > rewards.min(1))
