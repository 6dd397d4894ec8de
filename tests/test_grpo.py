"""The GRPO stage end to end on a tiny model: runs, never recompiles, guards
non-finite losses, and fails early on bad configs. Runs in other processes
(SIGKILL and resume, 8 devices, two processes): test_grpo_processes.py."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from r1jax import checkpoint as ckpt_lib
from r1jax import errors
from r1jax import rl
from r1jax.stages import grpo

import grpo_helpers as H

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def base_dir(tmp_path_factory):
  return H.make_tiny_base(tmp_path_factory.mktemp('base') / 'tiny')


def test_two_step_run_writes_metrics_checkpoint_and_eval(base_dir, tmp_path):
  c = H.grpo_config(base_dir, eval__at_start=True)
  out = grpo.train_and_evaluate(c, str(tmp_path))
  rows = H.read_rows(tmp_path)
  assert out['step'] == 2
  for step in (1, 2):
    r = rows[step]
    for key in ('train/loss', 'train/reward', 'train/accuracy', 'train/format',
                'train/response_length_mean', 'train/response_length_max',
                'train/frac_truncated', 'train/kl', 'train/clip_frac_low',
                'train/clip_frac_high', 'train/entropy', 'train/grad_norm',
                'train/frac_zero_spread_groups', 'train/tokens_per_s',
                'train/reward/arithmetic', 'train/reward/format',
                'time/sample', 'time/reward', 'time/reference',
                'time/update', 'time/step'):
      assert key in r, (step, key)
      assert np.isfinite(r[key]), (step, key, r[key])
  for step in (0, 2):  # base model and end of run
    for key in ('eval/pass@1', 'eval/pass@2', 'eval/cons@2',
                'eval/greedy_accuracy', 'eval/format_rate',
                'eval/mean_length'):
      assert key in rows[step], (step, key)
  assert 'base/pass@1' in out and 'eval/pass@1' in out
  with ckpt_lib.Checkpointer(tmp_path / 'checkpoints') as ck:
    assert ck.latest_step() == 2
    saved = ck.restore()
  assert set(saved) == {'params', 'opt_state', 'step', 'rng', 'ref_params',
                        'data_state'}
  assert int(saved['step']) == 2
  assert (tmp_path / 'tensorboard').is_dir()


def test_length_aware_run(base_dir, tmp_path):
  """rl.length_buckets: the stage runs its reference pass and update over
  the tokens that exist (tests/test_grpo_lengths.py: equal to padded)."""
  c = H.grpo_config(base_dir, rl__length_buckets=4,
                    sampling__max_new_tokens=32, eval__num_problems=0)
  grpo.train_and_evaluate(c, str(tmp_path))
  rows = H.read_rows(tmp_path)
  for step in (1, 2):
    r = rows[step]
    assert np.isfinite(r['train/loss']) and np.isfinite(r['train/grad_norm'])
    assert 0 < r['train/length_aware_token_frac'] <= 1
    # Trimmed micro-batches, or the padded program where trimming saves little.
    assert (1 <= r['train/length_aware_shapes'] <= 32 or
            r['train/length_aware_padded_passes'] >= 1)


def test_no_recompilation_after_step_one(base_dir, tmp_path):
  """Across a reference reset (every 2 steps), evals (0, 2, 4) and
  checkpoints (every step). A program first built after step 1's row (the
  first checkpoint save's, counted in step 2's) is allowed once; from step
  2 on nothing is built."""
  c = H.grpo_config(base_dir, train__steps=5, rl__ref_reset_every=2,
                    eval__every=2, eval__at_start=True, train__checkpoint_every=1)
  grpo.train_and_evaluate(c, str(tmp_path))
  rows = H.read_rows(tmp_path)
  counts = [rows[s]['train/compiles'] for s in range(2, 6)]
  assert counts == [counts[0]] * 4, counts


@pytest.mark.slow
def test_beta_zero_skips_the_reference(base_dir, tmp_path, monkeypatch):
  calls = []
  real = grpo.grpo_update.make_logprobs_fn

  def counting(*args, **kwargs):
    fn = real(*args, **kwargs)
    def wrapped(*a):
      calls.append(1)
      return fn(*a)
    return wrapped

  monkeypatch.setattr(grpo.grpo_update, 'make_logprobs_fn', counting)
  grpo.train_and_evaluate(H.grpo_config(base_dir, rl__beta=0.0), str(tmp_path))
  rows = H.read_rows(tmp_path)
  assert not calls
  assert 'time/reference' not in rows[1] and 'train/kl' not in rows[1]
  with ckpt_lib.Checkpointer(tmp_path / 'checkpoints') as ck:
    assert 'ref_params' not in ck.restore()
  # With beta > 0 the same wrapper is called once per step.
  grpo.train_and_evaluate(H.grpo_config(base_dir), str(tmp_path / 'kl'))
  assert len(calls) == 2


def test_constant_reward_gives_zero_advantage_and_no_update(base_dir, tmp_path):
  c = H.grpo_config(base_dir, rl__beta=0.0, train__weight_decay=0.0)
  c.rewards.weights = {'test_constant': 1.0}
  c.rewards.accuracy = ''
  grpo.train_and_evaluate(c, str(tmp_path))
  rows = H.read_rows(tmp_path)
  for s in (1, 2):
    assert rows[s]['train/frac_zero_spread_groups'] == 1.0
    assert rows[s]['train/adv_mean'] == 0.0 and rows[s]['train/adv_max'] == 0.0
    assert rows[s]['train/grad_norm'] == 0.0
    assert rows[s]['train/policy_loss'] == 0.0
  base = H.base_params(base_dir)
  after = H.final_params(tmp_path)
  assert base.keys() == after.keys()
  for k in base:
    np.testing.assert_array_equal(base[k], after[k], err_msg=k)


def test_nan_loss_stops_and_keeps_last_checkpoint(base_dir, tmp_path,
                                                  monkeypatch):
  H.inject_nan(monkeypatch, at_step=3)
  c = H.grpo_config(base_dir, train__steps=4, train__checkpoint_every=2)
  with pytest.raises(FloatingPointError, match='step 3'):
    grpo.train_and_evaluate(c, str(tmp_path))
  with ckpt_lib.Checkpointer(tmp_path / 'checkpoints') as ck:
    assert ck.all_steps() == [2]
    state = ck.restore()
  assert int(state['step']) == 2
  leaves = jax.tree.leaves(state['params'])
  assert all(np.isfinite(np.asarray(x)).all() for x in leaves)


def test_dapo_config_runs_dynamic_sampling_and_overlong(base_dir, tmp_path):
  """experiments/dapo.py's switches on the tiny base: dynamic sampling
  resamples until groups have spread, overlong shaping and filtering."""
  from experiments import dapo
  c = dapo.get_config('runlocal')
  ref = H.grpo_config(base_dir)
  for section in ('model', 'data', 'sampling', 'eval', 'train'):
    c[section] = ref[section]
  c.rl.prompts_per_step, c.rl.group_size = 8, 4
  c.rl.num_minibatches, c.rl.grad_accum = 2, 2
  c.rl.mask_truncated = True
  c.rewards.weights = {'arithmetic': 1.0, 'test_length': 1.0, 'overlong': 1.0}
  c.rewards.options = {'overlong': {'max_len': 16, 'buffer': 4}}
  c.rewards.accuracy = 'arithmetic'
  grpo.train_and_evaluate(c, str(tmp_path))
  rows = H.read_rows(tmp_path)
  for s in (1, 2):
    assert rows[s]['train/sampling_rounds'] >= 1
    assert 'train/reward/overlong' in rows[s]
    assert 'train/kl' not in rows[s]  # beta = 0
    assert np.isfinite(rows[s]['train/loss'])


@pytest.mark.parametrize('estimator', ['remax', 'opo', 'reinforce_pp'])
def test_estimators_that_need_the_trainer(base_dir, tmp_path, estimator):
  """remax gets the greedy answer's reward as its baseline, opo and
  reinforce_pp the completion lengths."""
  c = H.grpo_config(base_dir, rl__advantage=estimator, train__steps=1,
                    eval__num_problems=0)
  grpo.train_and_evaluate(c, str(tmp_path))
  row = H.read_rows(tmp_path)[1]
  assert np.isfinite(row['train/loss']) and row['train/adv_std'] > 0


def test_unknown_loss_option_fails_naming_it(base_dir, tmp_path):
  c = H.grpo_config(base_dir)
  c.rl.loss_options = {'entropy_cof': 0.01}
  with pytest.raises(errors.ConfigError, match='config.rl.loss_options.entropy_cof'):
    grpo.train_and_evaluate(c, str(tmp_path))


def test_rollout_correction_recomputes_the_old_policy(base_dir, tmp_path):
  """rl.loss_options.rollout_correction: the trainer's own pass is pi_old,
  the sampler's log-probs the behaviour policy. Both score the same params
  the same way, so TIS weighs every token ~1; MIS with the window [2, 3],
  which excludes 1, masks every token: no policy loss, no gradient."""
  c = H.grpo_config(base_dir, rl__beta=0.0, eval__num_problems=0)
  c.rl.loss_options = {'rollout_correction': 'tis_token'}
  grpo.train_and_evaluate(c, str(tmp_path / 'tis'))
  rows = H.read_rows(tmp_path / 'tis')
  for s in (1, 2):
    assert rows[s]['train/rollout_logp_gap_max'] < 1e-4, rows[s]
    assert abs(rows[s]['train/rollout_is_weight_mean'] - 1) < 1e-5
    assert rows[s]['train/rollout_is_masked_frac'] == 0.0
    assert rows[s]['time/old_logp'] > 0 and rows[s]['train/grad_norm'] > 0
  c = H.grpo_config(base_dir, rl__beta=0.0, eval__num_problems=0,
                    train__steps=1)
  c.rl.loss_options = {'rollout_correction': 'mis_token',
                       'rollout_correction_threshold': 3.0,
                       'rollout_correction_threshold_low': 2.0}
  grpo.train_and_evaluate(c, str(tmp_path / 'mis'))
  row = H.read_rows(tmp_path / 'mis')[1]
  assert row['train/rollout_is_masked_frac'] == 1.0
  assert row['train/policy_loss'] == 0.0 and row['train/grad_norm'] == 0.0


def test_kl_in_reward_moves_the_penalty_into_the_advantages(
    base_dir, tmp_path, monkeypatch):
  """rl.kl_in_reward: each reward loses beta * sum_t k3(pi_old, ref) before
  the advantages, and the loss has no KL term (it still reports it)."""
  seen = H.record_batches(monkeypatch)
  c = H.grpo_config(base_dir, rl__kl_in_reward=True, rl__beta=0.5,
                    eval__num_problems=0)
  grpo.train_and_evaluate(c, str(tmp_path))
  rows = H.read_rows(tmp_path)
  # Step 1: the reference is the policy (a KL of rounding error); step 2:
  # the policy has moved.
  assert rows[1]['train/kl_in_reward'] < 1e-6
  assert rows[2]['train/kl_in_reward'] > 1e-3 and rows[2]['train/kl'] > 1e-3
  for s in (1, 2):  # 0.5 * kl would show if it were in the loss
    assert abs(rows[s]['train/loss'] - rows[s]['train/policy_loss']) < 1e-7
  host, batch = seen[1]
  penalized, kl_B = rl.kl_penalized_rewards(
      host.rewards, batch.old_logp, batch.ref_logp, batch.completions.mask,
      beta=0.5, kl_estimator='k3')
  np.testing.assert_allclose(float(np.mean(kl_B)),
                             rows[2]['train/kl_in_reward'], rtol=1e-5)
  np.testing.assert_allclose(batch.adv, rl.compute_advantages(penalized, 4),
                             rtol=1e-5, atol=1e-6)
  assert np.abs(batch.adv - rl.compute_advantages(host.rewards, 4)).max() > 1e-3


def test_gdpo_normalises_each_reward_in_its_group(base_dir, tmp_path,
                                                   monkeypatch):
  """rl.multi_reward='norm_then_sum': the advantages are GDPO's, from the
  per-reward scores, not the estimator of the weighted total."""
  seen = H.record_batches(monkeypatch)
  c = H.grpo_config(base_dir, rl__multi_reward='norm_then_sum',
                    eval__num_problems=0)
  grpo.train_and_evaluate(c, str(tmp_path))
  rows = H.read_rows(tmp_path)
  assert all(np.isfinite(rows[s]['train/loss']) for s in (1, 2))
  for host, batch in seen:
    want = rl.multi_reward_advantages(
        host.per_reward, c.rewards.weights.to_dict(), 4, 'grpo',
        'norm_then_sum', eps=1e-6)
    np.testing.assert_allclose(batch.adv, want, rtol=1e-5, atol=1e-6)
    plain = rl.compute_advantages(host.rewards, 4)
    assert np.abs(batch.adv - plain).max() > 1e-3


def test_unknown_advantage_option_fails_naming_it(base_dir, tmp_path):
  c = H.grpo_config(base_dir)
  c.rl.advantage_options = {'scal': 'batch'}
  with pytest.raises(errors.ConfigError,
                     match="config.rl.advantage_options.scal: the 'grpo'"):
    grpo.train_and_evaluate(c, str(tmp_path))


# ------------------------------------------------------------ bad configs


@pytest.mark.parametrize('edit, needle', [
    (dict(rl__group_size=1), 'config.rl.group_size=1'),
    (dict(rl__prompts_per_step=6), 'config.rl.prompts_per_step=6'),
    (dict(rl__advantage='grpo_typo'), 'config.rl.advantage'),
    (dict(rl__policy_loss='nope'), 'config.rl.policy_loss'),
    (dict(sampling__max_prompt_tokens=8), 'config.sampling.max_prompt_tokens=8'),
    (dict(rl__num_minibatches=3), 'config.rl.num_minibatches=3'),
    (dict(rl__kl_in_reward=True, rl__beta=0.0),
     'config.rl.kl_in_reward=True needs rl.beta > 0'),
    (dict(rl__multi_reward='norm_then_sum', rl__advantage='remax'),
     "config.rl.multi_reward='norm_then_sum' normalises each reward"),
    (dict(rl__multi_reward='sum'), "config.rl.multi_reward='sum' must be"),
])
def test_bad_config_fails_before_any_compile(base_dir, tmp_path, edit, needle):
  from r1jax.run import console
  console.CompileCounter.install()
  before = console.CompileCounter.count()
  with pytest.raises(ValueError, match=needle.replace('.', r'\.').replace('(', r'\(')):
    grpo.train_and_evaluate(H.grpo_config(base_dir, **edit), str(tmp_path))
  assert console.CompileCounter.count() == before


def test_unknown_reward_fails_naming_it(base_dir, tmp_path):
  c = H.grpo_config(base_dir)
  c.rewards.weights = {'arithmetic': 1.0, 'fromat': 0.5}
  with pytest.raises(errors.ConfigError, match="'fromat', which is not a known reward"):
    grpo.train_and_evaluate(c, str(tmp_path))


def test_base_of_another_architecture_fails_naming_the_file(base_dir, tmp_path):
  c = H.grpo_config(base_dir, model__preset='qwen2.5-0.5b')
  with pytest.raises(ValueError, match=f"{base_dir} is not a 'qwen2.5-0.5b'"):
    grpo.train_and_evaluate(c, str(tmp_path))


def test_unknown_config_key_on_the_command_line_fails(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'r1jax.train', '--config=experiments/zero.py:runlocal',
       f'--workdir={tmp_path}', '--config.rl.group_sise=4'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert 'group_sise' in proc.stderr


def test_reference_pass_in_chunks_equals_one_pass():
  """The stage scores the rollout one update micro-batch at a time; the
  strided chunks come back in row order and change nothing."""
  from r1jax import parallel
  from r1jax.model import config as model_config
  from r1jax.model import functional as fn
  cfg = model_config.get_config('tiny-test', vocab_size=64)
  graphdef, params = fn.init(cfg, seed=0)
  mesh = parallel.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  rng = np.random.default_rng(0)
  b, p, l = 32, 6, 5
  sample_mask = np.arange(l)[None] < rng.integers(1, l + 1, (b, 1))
  batch = parallel.host_local_to_global(grpo.grpo_update.Completions(
      prompt_tokens=rng.integers(1, 64, (b, p)).astype(np.int32),
      prompt_mask=np.arange(p)[None] >= rng.integers(0, 3, (b, 1)),
      tokens=rng.integers(1, 64, (b, l)).astype(np.int32), mask=sample_mask),
      mesh)
  whole = grpo.grpo_update.make_logprobs_fn(graphdef)(params, batch)
  chunked = grpo.grpo_update.make_logprobs_fn(graphdef, mesh, num_chunks=4)(
      params, batch)
  assert chunked.shape == (b, l)
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole),
                             rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(whole)[~sample_mask] == 0)
