"""One sampling distribution: the GRPO trainer scores the tokens under the
distribution the sampler drew them from (and recorded the log-probs of).

At temperature T the sampler records log_softmax(logits / T); with
sampling.logprobs_nucleus, the top-p distribution renormalised over its kept
tokens. The trainer's reference pass (`make_logprobs_fn`) and the loss's
policy pass (`make_update_fn`) must give the same numbers for the params
that sampled: within 1e-5 (float32), so the first update's importance ratio
is 1 and its KL to an identical reference 0.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from experiments import zero
from r1jax import parallel
from r1jax import rl
from r1jax.model import get_config, init
from r1jax.sampling import Sampler
from r1jax.stages import grpo
from r1jax.stages import grpo_update
from r1jax.stages.grpo_update import Scoring

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [20], [30, 31]]
N = 4
NEW = 16

# (sampler settings, the trainer's Scoring of them)
CASES = {
    't1': (dict(temperature=1.0), Scoring()),
    't0.7_p0.9': (dict(temperature=0.7, top_p=0.9),
                  Scoring(temperature=0.7, top_p=0.9)),
    't0.7_p0.9_nucleus': (dict(temperature=0.7, top_p=0.9,
                               logprobs_nucleus=True),
                          Scoring(temperature=0.7, top_p=0.9, nucleus=True)),
}


@functools.lru_cache(maxsize=None)
def _model():
  cfg = get_config('tiny-test')
  graphdef, params = init(cfg, seed=0)
  # 3x the init scale: peaked, varied next-token distributions (as in
  # test_sampling), so top-p 0.9 keeps a few tokens, not the whole vocab.
  return cfg, graphdef, jax.tree.map(lambda x: x * 3.0, params)


@functools.lru_cache(maxsize=None)
def _rollout(case: str):
  cfg, graphdef, params = _model()
  sampler = Sampler(graphdef, cfg, pad_id=0, eos_ids=[1])
  out = jax.device_get(sampler.generate(params, PROMPTS, max_new_tokens=NEW,
                                        n=N, seed=2, **CASES[case][0]))
  batch = grpo_update.Batch(
      completions=grpo_update.Completions(
          prompt_tokens=out.prompt_tokens, prompt_mask=out.prompt_mask,
          tokens=out.tokens, mask=out.mask),
      loss_mask=out.mask, old_logp=out.logprobs, ref_logp=out.logprobs,
      adv=np.linspace(-1, 1, len(out.tokens)).astype(np.float32))
  return out, batch


def _max_diff(a, b, mask):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))[mask]))


@pytest.mark.parametrize('case', sorted(CASES))
def test_reference_pass_equals_sampler_logprobs(case):
  _, graphdef, params = _model()
  out, batch = _rollout(case)
  scoring = CASES[case][1]
  got = grpo_update.make_logprobs_fn(graphdef, scoring=scoring)(
      params, batch.completions)
  diff = _max_diff(got, out.logprobs, out.mask)
  print(f'{case}: max |trainer - sampler| log-prob = {diff:.3g}')
  assert diff <= 1e-5
  assert np.all(np.asarray(got)[~out.mask] == 0)
  if case != 't1':
    # Control: temperature-1, full-vocabulary scoring (the trainer before
    # it scored the sampled distribution) is far off.
    plain = grpo_update.make_logprobs_fn(graphdef)(params, batch.completions)
    assert _max_diff(plain, out.logprobs, out.mask) > 1e-2
  if scoring.nucleus:  # and so is the tempered full-vocabulary one
    tempered = grpo_update.make_logprobs_fn(
        graphdef, scoring=Scoring(temperature=0.7))(params, batch.completions)
    assert _max_diff(tempered, out.logprobs, out.mask) > 1e-2


@pytest.mark.parametrize('case', ['t0.7_p0.9', 't0.7_p0.9_nucleus'])
def test_first_update_sees_ratio_one(case):
  """The loss's own forward pass (with gradients) scores the same way: on the
  sampling params the importance ratio is 1 and the KL to a reference equal
  to the sampler's log-probs is 0; the gradient is finite."""
  _, graphdef, params = _model()
  out, batch = _rollout(case)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  optimizer = optax.adamw(1e-3)
  update = grpo_update.make_update_fn(
      graphdef, optimizer, loss_config=rl.LossConfig(beta=0.001),
      num_iterations=1, num_minibatches=1, grad_accum=1, mesh=mesh, scoring=CASES[case][1])
  params = grpo_update.copy_tree(params)  # the state is donated
  state = dict(params=params, opt_state=optimizer.init(params),
               step=jnp.zeros((), jnp.int32))
  _, m = update(state, batch)
  m = {k: float(v) for k, v in jax.device_get(m).items()}
  print(f'{case}: ratio [{m["ratio_min"] - 1:.2g}, {m["ratio_max"] - 1:.2g}]'
        f' - 1, kl {m["kl"]:.2g}')
  assert abs(m['ratio_min'] - 1) <= 2e-5 and abs(m['ratio_max'] - 1) <= 2e-5
  assert abs(m['kl']) <= 1e-6
  assert m['loss_finite'] == 1 and 0 < m['grad_norm'] < np.inf
  assert np.isfinite(m['entropy']) and m['entropy'] > 0


def test_logprobs_nucleus_must_be_a_bool():
  """A hand-written config (ConfigDict's type check only guards overrides)."""
  config = zero.get_config('runlocal')
  assert config.sampling.logprobs_nucleus is False
  grpo.validate_config(config)
  d = config.to_dict()
  d['sampling']['logprobs_nucleus'] = 'yes'
  with pytest.raises(ValueError, match="config.sampling.logprobs_nucleus='yes' "
                     'must be True or False') as e:
    grpo.validate_config(ml_collections.ConfigDict(d))
  assert type(e.value).__name__ == 'ConfigError'
  assert Scoring.from_config(config.sampling) == Scoring()
