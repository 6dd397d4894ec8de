"""Registered entries declare the keywords they take beyond their registry's
shared signature (`Registry.register(inputs=, options=)`); callers read the
declarations, never the signatures. Here the declarations are held to the
signatures."""

import inspect

import pytest

from r1jax import rewards
from r1jax import rl
from r1jax.registry import Registry

# The keywords every entry of a registry takes.
SHARED = {
    'advantage estimator': {'rewards_PxG', 'eps'},
    'policy loss': {'logp_BxT', 'old_logp_BxT', 'adv_B', 'mask_BxT',
                    'epsilon_low', 'epsilon_high', 'dual_clip'},
}
REGISTRIES = [rl.ADVANTAGES, rl.POLICY_LOSSES]


@pytest.mark.parametrize('registry, name', [(r, n) for r in REGISTRIES
                                            for n in r.names()])
def test_every_extra_keyword_is_declared(registry, name):
  params = set(inspect.signature(registry.get(name)).parameters)
  declared = set(registry.inputs(name)) | set(registry.options(name))
  assert params - SHARED[registry.kind] == declared, name


@pytest.mark.parametrize('name', rewards.REWARDS.names())
def test_rewards_declare_the_inputs_they_take(name):
  params = set(inspect.signature(rewards.REWARDS.get(name)).parameters)
  assert set(rewards.REWARDS.inputs(name)) == params & {'metrics', 'lengths_B'}


def test_declarations_of_an_unknown_name_fail_like_get():
  r = Registry('thing')
  r.add('a', len, inputs=('x',), options=('y',))
  assert (r.inputs('a'), r.options('a')) == (('x',), ('y',))
  with pytest.raises(KeyError, match="Unknown thing 'b'; known: \\['a'\\]"):
    r.inputs('b')
