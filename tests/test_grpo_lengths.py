"""Length-aware passes (`rl.length_buckets`) equal the padded ones.

On a rollout with long-tailed lengths (most completions short, a few at the
budget, prompts of several lengths), the reference pass and the update over
trimmed, length-sorted micro-batches give the padded pass's log-probs, loss,
gradient and every logged metric within 1e-5 (float32), for each aggregation
that depends on lengths, on 1 device and on 8; and on a GRPO rollout (groups
of rows with one prompt), whose prompts the trimmed passes compute once.
"""

import jax
import ml_collections
import numpy as np
import optax
import pytest

from experiments import zero
from r1jax import errors
from r1jax import parallel
from r1jax import rl
from r1jax.model import get_config, init
from r1jax.stages import grpo
from r1jax.stages import grpo_lengths
from r1jax.stages import grpo_update

B, P, L, V = 32, 12, 24, 64


def _rollout(seed=0, group=1):
  """Rows of random lengths; every `group` consecutive rows share a prompt."""
  rng = np.random.default_rng(seed)
  # 70% of completions under L/4, 10% at L, the rest in between.
  u = rng.random(B)
  lengths = np.where(u < 0.7, rng.integers(1, L // 4 + 1, B),
                     np.where(u < 0.9, rng.integers(L // 4, L, B), L))
  prompt_lengths = np.repeat(rng.integers(2, P - 3, B // group), group)
  prompt_mask = np.arange(P)[None] >= (P - prompt_lengths)[:, None]
  mask = np.arange(L)[None] < lengths[:, None]
  prompt_tokens = np.repeat(rng.integers(2, V, (B // group, P)), group, axis=0)
  completions = grpo_update.Completions(
      prompt_tokens=np.where(prompt_mask, prompt_tokens, 0).astype(np.int32),
      prompt_mask=prompt_mask,
      tokens=np.where(mask, rng.integers(2, V, (B, L)), 0).astype(np.int32),
      mask=mask)
  old_logp = np.where(mask, -rng.random((B, L)) * 4, 0).astype(np.float32)
  ref_logp = np.where(mask, old_logp + rng.normal(0, 0.05, (B, L)), 0
                      ).astype(np.float32)
  adv = rng.normal(size=B).astype(np.float32)
  adv[:4] = 0.0
  return grpo_update.Batch(completions=completions, loss_mask=mask,
                           old_logp=old_logp, adv=adv, ref_logp=ref_logp)


def _model():
  graphdef, params = init(get_config('tiny-test', vocab_size=V), seed=0)
  return graphdef, params


def _mesh(devices):
  return parallel.make_mesh({'data': devices, 'fsdp': 1, 'tensor': 1},
                            devices=jax.devices()[:devices])


def test_plan_covers_each_row_once_within_the_budget():
  rng = np.random.default_rng(1)
  lengths = rng.integers(1, 65, 128)
  rows = np.arange(3, 128, 4)
  micros = grpo_lengths.plan(lengths, rows, prompt_width=16, full_len=64,
                             buckets=4, budget_tokens=8 * 80, divisor=2)
  got = np.concatenate([m.rows for m in micros])
  assert sorted(got[got >= 0].tolist()) == rows.tolist()
  for m in micros:
    real = m.rows[m.rows >= 0]
    assert m.completion_width in (16, 32, 48, 64)
    assert lengths[real].max() <= m.completion_width
    n = len(m.rows) // 2
    assert len(m.rows) % 2 == 0 and n & (n - 1) == 0  # 2 x a power of two
    assert len(m.rows) * (16 + m.completion_width) <= 8 * 80 or len(m.rows) == 2
  # Filler rows only in the last micro-batch.
  assert all((m.rows >= 0).all() for m in micros[:-1])
  # Far fewer tokens than the padded pass.
  computed = sum(len(m.rows) * (16 + m.completion_width) for m in micros)
  assert computed < 0.85 * len(rows) * (16 + 64)


def _cost(micros, call_tokens):
  return sum(call_tokens + len(m.rows) * m.completion_width for m in micros)


@pytest.mark.parametrize('call_tokens', [0, 40, 500])
def test_plan_is_the_cheapest_cut(call_tokens):
  """Against every cut of the sorted rows into runs of 2^k rows (the last
  may hold filler rows), found by brute force."""
  rng = np.random.default_rng(call_tokens)
  lengths = rng.integers(1, 33, 11)
  widths = np.sort([grpo_lengths.round_up(int(n), 32, 4) for n in lengths]
                   )[::-1]

  def cheapest(i):
    if i >= len(widths):
      return 0
    costs, r = [], 1
    while True:
      if r * (8 + widths[i]) <= 8 * 40:
        costs.append(call_tokens + r * widths[i] + cheapest(i + r))
      if r >= len(widths) - i:
        return min(costs)
      r *= 2

  micros = grpo_lengths.plan(lengths, np.arange(11), prompt_width=8,
                             full_len=32, buckets=4, budget_tokens=8 * 40,
                             divisor=1, call_tokens=call_tokens)
  got = np.concatenate([m.rows for m in micros])
  assert sorted(got[got >= 0].tolist()) == list(range(11))
  assert _cost(micros, call_tokens) == cheapest(0)
  if call_tokens == 500:  # calls dear: as few as the budget allows
    assert len(micros) == 2


@pytest.mark.parametrize('devices,group', [(1, 1), (8, 1), (1, 4)])
def test_reference_pass_equals_the_padded_one(devices, group):
  graphdef, params = _model()
  mesh = _mesh(devices)
  batch = _rollout(group=group)
  put = lambda x: parallel.host_local_to_global(x, mesh)
  completions = put(batch.completions)
  padded = grpo_update.make_logprobs_fn(graphdef, mesh, num_chunks=4)(
      params, completions)
  la = grpo_lengths.LengthAware(
      graphdef, optax.sgd(1.0), loss_config=rl.LossConfig(),
      num_iterations=1, num_minibatches=2, grad_accum=2, mesh=mesh,
      buckets=4, prompt_len=P, completion_len=L, group_size=group)
  trimmed = la.logprobs(params, completions)
  np.testing.assert_allclose(np.asarray(trimmed), np.asarray(padded),
                             atol=1e-5, rtol=0)
  stats = la.stats.pop_metrics()
  # Each distinct prompt once, and the completions' tokens that exist.
  assert stats['length_aware_token_frac'] < (0.75 if group == 1 else 0.5)
  assert stats['length_aware_shapes'] <= 16


@pytest.mark.parametrize('aggregation,devices,group', [
    pytest.param('token_mean', 1, 4, marks=pytest.mark.slow),
    ('seq_mean_token_mean', 1, 4),
    pytest.param('seq_sum_norm', 1, 4, marks=pytest.mark.slow),
    pytest.param('seq_mean_token_mean', 8, 1, marks=pytest.mark.slow),
    pytest.param('seq_mean_token_mean', 8, 4, marks=pytest.mark.slow)])
def test_update_equals_the_padded_one(aggregation, devices, group):
  """The padded update takes each mini-batch whole (grad_accum 1) and every
  row's prompt, so its metrics are the mini-batch's own; the length-aware
  one splits it into several trimmed micro-batches (the budget of
  grad_accum 4), which attend to each group's prompt computed once."""
  graphdef, params = _model()
  mesh = _mesh(devices)
  loss_config = rl.LossConfig(aggregation=aggregation, beta=0.04)
  optimizer = optax.sgd(0.01)  # params move by the gradient, scaled
  kw = dict(loss_config=loss_config, num_iterations=2, num_minibatches=2,
            mesh=mesh)
  put = lambda x: parallel.host_local_to_global(x, mesh)

  def fresh_state():
    p = jax.tree.map(lambda x: x.copy(), params)
    return {'params': p, 'opt_state': optimizer.init(p), 'step': 0}

  batch = put(_rollout(group=group))
  padded_state, padded_m = grpo_update.make_update_fn(
      graphdef, optimizer, grad_accum=1, **kw)(fresh_state(), batch)
  la = grpo_lengths.LengthAware(graphdef, optimizer, grad_accum=4, buckets=3,
                                prompt_len=P, completion_len=L,
                                group_size=group, **kw)
  state, m = la.update(fresh_state(), batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), atol=1e-5, rtol=0),
               state['params'], padded_state['params'])
  padded_m = {k: float(v) for k, v in jax.device_get(padded_m).items()}
  assert set(padded_m) <= set(m)
  for k, v in padded_m.items():
    np.testing.assert_allclose(m[k], v, atol=1e-5, rtol=1e-5, err_msg=k)
  assert m['length_aware_token_frac'] < 0.8
  assert padded_m['num_tokens'] > 0 and padded_m['loss_finite'] == 1.0


def _config(**rl_kw):
  c = zero.get_config('runlocal')
  c.rl.length_buckets = 4
  for k, v in rl_kw.items():
    c.rl[k] = v
  return c


def test_row_coupled_losses_are_refused():
  with pytest.raises(errors.ConfigError, match='rl.policy_loss'):
    grpo.validate_config(_config(policy_loss='clip_cov'))
  c = _config()
  c.rl.loss_options = ml_collections.ConfigDict({'top_entropy_quantile': 0.2})
  with pytest.raises(errors.ConfigError, match='top_entropy_quantile'):
    grpo.validate_config(c)
  with pytest.raises(errors.ConfigError, match='one process'):
    grpo.validate_config(_config(), process_count=2)
  c = _config()
  c.model.lora.rank = 4
  with pytest.raises(errors.ConfigError, match='model.lora.rank=4'):
    grpo.validate_config(c)
  with pytest.raises(errors.ConfigError, match='length_buckets=-1'):
    grpo.validate_config(_config(length_buckets=-1))
  grpo.validate_config(_config())


def test_a_rollout_at_the_budget_runs_the_padded_program():
  graphdef, params = _model()
  mesh = _mesh(1)
  batch = _rollout()
  full = np.ones((B, L), bool)
  completions = parallel.host_local_to_global(
      grpo_update.Completions(
          prompt_tokens=batch.completions.prompt_tokens,
          prompt_mask=np.ones((B, P), bool),
          tokens=np.where(full, 5, 0).astype(np.int32), mask=full), mesh)
  la = grpo_lengths.LengthAware(
      graphdef, optax.sgd(1.0), loss_config=rl.LossConfig(),
      num_iterations=1, num_minibatches=2, grad_accum=2, mesh=mesh,
      buckets=4, prompt_len=P, completion_len=L)
  got = la.logprobs(params, completions)
  want = grpo_update.make_logprobs_fn(graphdef, mesh, num_chunks=4)(
      params, completions)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  stats = la.stats.pop_metrics()
  assert stats['length_aware_padded_passes'] == 1
  assert stats['length_aware_token_frac'] == 1.0
