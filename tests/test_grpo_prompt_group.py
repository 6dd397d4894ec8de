"""The GRPO passes compute a group's shared prompt once (`prompt_group`).

A rollout's G rows of one prompt carry the same prompt tokens; the reference
pass and the update run the prompt's first P - 1 tokens once per group (per
strided part) and let each row's completion attend to their keys and values.
Log-probs, entropies, the loss, its gradient and every metric must equal the
full-row computation within float32 rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax import parallel
from r1jax import rl
from r1jax.model import get_config, init
from r1jax.stages import grpo_update

G = 4


def _rollout(groups=4, p=9, l=12, seed=0):
  """Left-padded prompts of different lengths (one of them full width),
  completions of different lengths (one at the budget, one of 1 token)."""
  rng = np.random.default_rng(seed)
  plen = np.array([p, 3, 1, 6][:groups])
  prompt = np.zeros((groups, p), np.int32)
  pmask = np.zeros((groups, p), bool)
  for i, n in enumerate(plen):
    prompt[i, p - n:] = rng.integers(2, 64, n)
    pmask[i, p - n:] = True
  clen = rng.integers(1, l + 1, groups * G)
  clen[0], clen[1] = l, 1
  cmask = np.arange(l)[None] < clen[:, None]
  tokens = np.where(cmask, rng.integers(2, 64, (groups * G, l)), 0)
  return grpo_update.Completions(
      prompt_tokens=jnp.asarray(np.repeat(prompt, G, 0)),
      prompt_mask=jnp.asarray(np.repeat(pmask, G, 0)),
      tokens=jnp.asarray(tokens, jnp.int32), mask=jnp.asarray(cmask))


def _model():
  cfg = get_config('tiny-test')
  graphdef, params = init(cfg, seed=0)
  return graphdef, jax.tree.map(lambda x: x * 3.0, params)


@pytest.mark.parametrize('group', [2, G])
def test_logprobs_entropy_and_gradient_equal_the_full_rows(group):
  graphdef, params = _model()
  comp = _rollout()
  mask = np.asarray(comp.mask)

  def run(prompt_group):
    def f(params):
      logp, ent = grpo_update.completion_logprobs(
          graphdef, params, comp, with_entropy=True,
          prompt_group=prompt_group)
      w = jnp.linspace(-1.0, 1.0, logp.size).reshape(logp.shape)
      return jnp.sum(jnp.where(comp.mask, logp * w, 0.0)), (logp, ent)
    return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

  (v1, (lp1, e1)), g1 = run(1)
  (v2, (lp2, e2)), g2 = run(group)
  np.testing.assert_allclose(np.asarray(lp2)[mask], np.asarray(lp1)[mask],
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(e2)[mask], np.asarray(e1)[mask],
                             atol=1e-5)
  np.testing.assert_allclose(float(v2), float(v1), rtol=1e-5, atol=1e-5)
  for path, a, b in zip(jax.tree_util.tree_leaves_with_path(g1),
                        jax.tree.leaves(g1), jax.tree.leaves(g2)):
    scale = max(float(jnp.max(jnp.abs(a))), 1.0)
    np.testing.assert_allclose(np.asarray(b) / scale, np.asarray(a) / scale,
                               atol=1e-5, err_msg=str(path[0]))


@pytest.mark.parametrize('chunks', [1, 2, 4])
def test_reference_pass_equals_the_full_rows(chunks):
  graphdef, params = _model()
  comp = _rollout()
  full = grpo_update.make_logprobs_fn(graphdef, num_chunks=chunks)(params, comp)
  shared = grpo_update.make_logprobs_fn(graphdef, num_chunks=chunks,
                                        group_size=G)(params, comp)
  np.testing.assert_allclose(np.asarray(shared), np.asarray(full), atol=1e-5)
  assert np.all(np.asarray(shared)[~np.asarray(comp.mask)] == 0)


@pytest.mark.parametrize('minibatches,accum,aggregation', [
    (1, 1, 'token_mean'), (2, 1, 'seq_mean_token_mean'),
    (2, 2, 'seq_sum_norm'), (3, 1, 'token_mean')])
def test_update_equals_the_full_rows(minibatches, accum, aggregation):
  """Params after the update and every metric. (3 mini-batches of 4-row
  groups: the rows of a group land in different parts unevenly, so the
  update computes full rows; it must say so by giving the same numbers.)"""
  graphdef, params = _model()
  groups = 6 if minibatches == 3 else 4
  comp = _rollout(groups=groups)
  b, l = comp.tokens.shape
  rng = np.random.default_rng(1)
  logp = grpo_update.make_logprobs_fn(graphdef)(params, comp)
  noise = lambda s: jnp.where(comp.mask, logp + s * rng.standard_normal((b, l)),
                              0.0).astype(jnp.float32)
  batch = grpo_update.Batch(
      completions=comp, loss_mask=comp.mask, old_logp=noise(0.05),
      ref_logp=noise(0.1),
      adv=jnp.asarray(rng.standard_normal(b), jnp.float32))
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  # SGD: the params move by lr x the gradient (AdamW's first step moves an
  # element whose gradient is near its eps by a share of lr that rounding
  # decides).
  optimizer = optax.sgd(1e-2)
  config = rl.LossConfig(beta=0.01, aggregation=aggregation,
                         max_len=l if aggregation == 'seq_sum_norm' else None)
  out = {}
  for group_size in (1, G):
    update = grpo_update.make_update_fn(
        graphdef, optimizer, loss_config=config, num_iterations=1,
        num_minibatches=minibatches, grad_accum=accum, mesh=mesh,
        group_size=group_size)
    p = grpo_update.copy_tree(params)
    state = dict(params=p, opt_state=optimizer.init(p),
                 step=jnp.zeros((), jnp.int32))
    out[group_size] = jax.device_get(update(state, batch))
  (s1, m1), (s2, m2) = out[1], out[G]
  assert m1.keys() == m2.keys()
  for k in m1:
    np.testing.assert_allclose(m2[k], m1[k], rtol=1e-5, atol=1e-5, err_msg=k)
  for a, b in zip(jax.tree.leaves(s1['params']), jax.tree.leaves(s2['params'])):
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_part_prompt_group():
  assert grpo_update.part_prompt_group(8, 1) == 8
  assert grpo_update.part_prompt_group(8, 2) == 4
  assert grpo_update.part_prompt_group(8, 8) == 1
  assert grpo_update.part_prompt_group(8, 16) == 1
  assert grpo_update.part_prompt_group(6, 4) == 1


def test_rows_of_a_group_with_different_prompts_are_refused():
  comp = _rollout()
  prompt, mask = np.asarray(comp.prompt_tokens), np.asarray(comp.prompt_mask)
  grpo_update.check_groups(prompt, mask, G)
  bad = prompt.copy()
  bad[G + 2, -1] += 1
  with pytest.raises(ValueError, match=r'group 1 \(rows 4-7\).*prompt tokens'):
    grpo_update.check_groups(bad, mask, G)
  with pytest.raises(ValueError, match='not groups of 5'):
    grpo_update.check_groups(prompt, mask, 5)
