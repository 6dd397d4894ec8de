"""LoRA (config.model.lora): only the adapters train, the base stays bit for
bit, step 0 is the base, merged equals unmerged, the sampler's log-probs are
the trainer's, the reference is the base, PEFT's layout, and every bad input
refused in one line naming the key or file. The stages' LoRA runs (exports,
resume checks): test_lora_runs.py."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors import safe_open

from experiments import cold_start
from experiments import common
from experiments import zero
from r1jax import config_checks
from r1jax import errors
from r1jax import memory
from r1jax import parallel
from r1jax import rl
from r1jax.model import config as model_config
from r1jax.model import functional as fn
from r1jax.model import lora
from r1jax.model import peft
from r1jax.run import file_checks
from r1jax.run import train_state
from r1jax.sampling import Sampler
from r1jax.stages import grpo
from r1jax.stages import grpo_update
from r1jax.stages import sft
from r1jax.stages import distill_teacher
from r1jax.stages import sft_update


FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'peft'
LCFG = lora.LoRAConfig(rank=4, alpha=8.0)


@functools.lru_cache(maxsize=None)
def _models(targets=LCFG.targets):
  """(cfg, plain graphdef, base params, LoRA graphdef, adapters, lcfg) with
  adapters moved off zero (B random), so the delta is not trivially 0."""
  cfg = model_config.get_config('tiny-test')
  graphdef, base = fn.init(cfg, seed=0)
  base = jax.tree.map(lambda x: x * 3.0, base)  # peaked distributions
  lcfg = lora.LoRAConfig(rank=4, alpha=8.0, targets=targets)
  lgraphdef, abstract = fn.abstract_lora(cfg, lcfg)
  adapters = lora.init_adapters(abstract, jax.random.key(1))
  adapters = jax.tree.map(
      lambda x: x + 0.01 * jax.random.normal(jax.random.key(2), x.shape),
      adapters)
  return cfg, graphdef, base, lgraphdef, adapters, lcfg


def _inputs(b=3, t=12, vocab=256):
  tokens = jax.random.randint(jax.random.key(0), (b, t), 0, vocab)
  mask = jnp.ones((b, t), bool).at[0, :4].set(False)
  return tokens, fn.positions_from_mask(mask), fn.causal_mask(mask)


def _host(tree):
  return [np.array(x) for x in jax.tree.leaves(tree)]


# ================================================================ the model


def test_fresh_adapters_are_the_base_exactly():
  """B starts at zero: step 0 is the base model, bit for bit; and the plain
  model's init is unchanged by the LoRA layers (they draw no numbers)."""
  cfg, graphdef, base, lgraphdef, _, lcfg = _models()
  _, abstract = fn.abstract_lora(cfg, lcfg)
  fresh = lora.init_adapters(abstract, jax.random.key(0))
  for path, x in jax.tree_util.tree_leaves_with_path(fresh):
    name = jax.tree_util.keystr(path)
    if 'lora_b' in name:
      assert not np.any(np.asarray(x)), name
    else:
      assert np.std(np.asarray(x)) > 0, name
  args = _inputs()
  want, _ = fn.apply(graphdef, base, *args)
  got, _ = fn.apply(lgraphdef, fresh, *args, frozen=base)
  np.testing.assert_array_equal(got, want)
  # The frozen tree is the plain model's, path for path.
  assert (jax.tree.structure(nnx.split(fn.build(cfg, 0))[1]) ==
          jax.tree.structure(base))


@pytest.mark.parametrize('targets', [LCFG.targets, ('q', 'v'), ('down',)])
def test_merged_and_unmerged_forward_agree(targets):
  cfg, graphdef, base, lgraphdef, adapters, lcfg = _models(targets)
  args = _inputs()
  unmerged, _ = fn.apply(lgraphdef, adapters, *args, frozen=base)
  merged = lora.merged_params(adapters, base, lcfg)
  state = jax.tree.map(lambda x: x, base)
  nnx.replace_by_pure_dict(state, merged)
  got, _ = fn.apply(graphdef, state, *args)
  plain, _ = fn.apply(graphdef, base, *args)
  logp = lambda x: jax.nn.log_softmax(x, axis=-1)
  diff = float(jnp.max(jnp.abs(logp(got) - logp(unmerged))))
  print(f'{targets}: max |merged - unmerged| log-prob = {diff:.3g}, logit '
        f'{float(jnp.max(jnp.abs(got - unmerged))):.3g} (of |logit| <= '
        f'{float(jnp.max(jnp.abs(got))):.3g})')
  assert diff <= 1e-5
  np.testing.assert_allclose(got, unmerged, rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(plain - unmerged))) > 1e-2  # adapters matter


def test_adapters_off_is_the_base_and_dropout_only_with_a_key():
  cfg, graphdef, base, lgraphdef, adapters, _ = _models()
  args = _inputs()
  want, _ = fn.apply(graphdef, base, *args)
  got, _ = fn.apply(lgraphdef, lora.combine(lora.off(adapters), base), *args)
  np.testing.assert_array_equal(got, want)
  dropped = lora.LoRAConfig(rank=4, alpha=8.0, dropout=0.5)
  dgraphdef, _ = fn.abstract_lora(cfg, dropped)
  no_key, _ = fn.apply(dgraphdef, adapters, *args, frozen=base)
  same, _ = fn.apply(lgraphdef, adapters, *args, frozen=base)
  np.testing.assert_array_equal(no_key, same)  # no key: no dropout
  k1, _ = fn.apply(dgraphdef, adapters, *args, frozen=base,
                   dropout_key=jax.random.key(3))
  k1b, _ = fn.apply(dgraphdef, adapters, *args, frozen=base,
                    dropout_key=jax.random.key(3))
  np.testing.assert_array_equal(k1, k1b)
  assert float(jnp.max(jnp.abs(k1 - same))) > 1e-3


# ============================================================ the trainers


def _opt():
  return optax.adamw(1e-2)


@pytest.mark.parametrize('distill', [False, True], ids=['sft', 'distill'])
def test_sft_step_changes_only_the_adapters(distill):
  """One SFT step (with a frozen teacher: token-level distillation): the
  adapters move, the base is bit-identical (and not donated), the optimizer
  state is the adapters' shape only."""
  cfg, _, base, lgraphdef, adapters, _ = _models()
  teacher = None
  if distill:
    t_graphdef, t_params = fn.init(cfg.replace(num_layers=3), seed=1)
    teacher = distill_teacher.Teacher(
        graphdef=t_graphdef, params=t_params, kind='forward', weight=0.5,
        temperature=1.0, vocab_size=cfg.vocab_size)
  base_before, ad_before = _host(base), _host(adapters)
  opt = _opt()
  state = {'params': jax.tree.map(jnp.copy, adapters),
           'opt_state': opt.init(adapters), 'step': jnp.zeros((), jnp.int32),
           'rng': jax.random.key_data(jax.random.key(0))}
  assert (jax.tree.structure(state['opt_state'][0].mu) ==
          jax.tree.structure(adapters))
  tokens, positions, _ = _inputs(b=4, t=16)
  batch = {'tokens': tokens, 'positions': positions,
           'segment_ids': jnp.ones((4, 16), jnp.int32),
           'loss_mask': jnp.ones((4, 16), bool)}
  step = sft_update.make_train_step(lgraphdef, opt, 2, teacher, frozen=base)
  new, m = step(state, batch)
  assert np.isfinite(float(m['loss']))
  if distill:
    assert float(m['distill/kl']) > 0
  for a, b in zip(base_before, _host(base)):
    np.testing.assert_array_equal(a, b)
  moved = [not np.array_equal(a, b)
           for a, b in zip(ad_before, _host(new['params']))]
  assert all(moved)


def test_grpo_update_changes_only_the_adapters_and_sampler_logprobs_match():
  """The sampler runs the LoRA forward: its log-probs equal the trainer's
  (reference pass and the loss's own) within 1e-5; the first update sees a
  ratio of 1, moves every adapter and leaves the base bit for bit."""
  cfg, _, base, lgraphdef, adapters, _ = _models()
  policy = lora.combine(adapters, base)
  sampler = Sampler(lgraphdef, cfg, pad_id=0, eos_ids=[1])
  out = jax.device_get(sampler.generate(
      policy, [[5, 6, 7], [8, 9, 10, 11], [20], [30, 31]], max_new_tokens=12,
      n=4, seed=2, temperature=1.0))
  completions = grpo_update.Completions(
      prompt_tokens=out.prompt_tokens, prompt_mask=out.prompt_mask,
      tokens=out.tokens, mask=out.mask)
  got = grpo_update.make_logprobs_fn(lgraphdef)(policy, completions)
  diff = float(np.max(np.abs(np.asarray(got) - out.logprobs)[out.mask]))
  print(f'LoRA: max |trainer - sampler| log-prob = {diff:.3g}')
  assert diff <= 1e-5
  batch = grpo_update.Batch(
      completions=completions, loss_mask=out.mask, old_logp=out.logprobs,
      ref_logp=out.logprobs,
      adv=np.linspace(-1, 1, len(out.tokens)).astype(np.float32))
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  opt = _opt()
  base_before, ad_before = _host(base), _host(adapters)
  update = grpo_update.make_update_fn(
      lgraphdef, opt, loss_config=rl.LossConfig(beta=0.001),
      num_iterations=1, num_minibatches=1, grad_accum=2, mesh=mesh,
      frozen=base, lora_dropout=False)
  state = dict(params=jax.tree.map(jnp.copy, adapters),
               opt_state=opt.init(adapters), step=jnp.zeros((), jnp.int32),
               rng=jax.random.key_data(jax.random.key(0)))
  new, m = update(state, batch)
  m = jax.device_get(m)
  assert abs(m['ratio_min'] - 1) <= 2e-5 and abs(m['ratio_max'] - 1) <= 2e-5
  assert m['loss_finite'] == 1 and 0 < m['grad_norm'] < np.inf
  for a, b in zip(base_before, _host(base)):
    np.testing.assert_array_equal(a, b)
  assert all(not np.array_equal(a, b)
             for a, b in zip(ad_before, _host(new['params'])))


# =============================================================== the config


def _model_section(**lora_kw):
  m = zero.get_config('runlocal').model
  for k, v in lora_kw.items():
    m.lora[k] = v
  return m


def test_experiment_defaults_are_the_module_defaults():
  section = common.model_section('').lora.to_dict()
  assert section == lora.DEFAULTS
  assert lora.from_config(_model_section()) is None  # rank 0: off


@pytest.mark.parametrize('kw, needle', [
    (dict(alpha=32.0), "config.model.lora.alpha=32.0 is set but "
                       'config.model.lora.rank=0 means LoRA is off'),
    (dict(targets=('q', 'v')), "config.model.lora.targets=('q', 'v') is set "
                               'but config.model.lora.rank=0'),
    (dict(rank=-1), 'config.model.lora.rank=-1 must be an int >= 0'),
    (dict(rank=4, targets=('q', 'lm_head')),
     "config.model.lora.targets has 'lm_head', which this architecture does "
     'not have'),
    (dict(rank=4, alpha=0.0), 'config.model.lora.alpha=0.0 must be > 0'),
    (dict(rank=4, dropout=1.0), 'config.model.lora.dropout=1.0 must be in'),
])
def test_bad_lora_config_is_refused_naming_the_key(kw, needle):
  for stage, config in ((grpo, zero.get_config('runlocal')),
                        (sft, cold_start.get_config('runlocal'))):
    for k, v in kw.items():
      config.model.lora[k] = v
    with pytest.raises(errors.ConfigError) as e:
      stage.validate_config(config)
    assert needle in str(e.value)
    assert '\n' not in str(e.value)


def test_a_run_saved_before_lora_resumes_as_rank_zero():
  """run_config.json of a run from before config.model.lora: the same
  config with LoRA off resumes it; with a rank it is another config."""
  old = zero.get_config('runlocal')
  del old.model['lora']
  new = zero.get_config('runlocal')
  assert config_checks.run_config_diff(old, new) == []
  new.model.lora.rank = 4
  assert [k for k, _, _ in config_checks.run_config_diff(old, new)] == [
      'model.lora.rank']


def test_peft_names_accepted_as_targets():
  lcfg = lora.from_config(_model_section(rank=2, targets=('q_proj', 'v')))
  assert lcfg.targets == ('q', 'v') and lcfg.scaling == 8.0


# ==================================================================== PEFT


def test_peft_layout_matches_peft(tmp_path):
  """The names and shapes peft.get_peft_model gives a tiny Qwen2 (fixture
  written by scripts/check_peft.py --write_fixture), and the config keys
  PeftModel.from_pretrained reads."""
  fixture = json.loads((FIXTURES / 'qwen2_tiny_r2_qv.json').read_text())
  cfg = model_config.ModelConfig(**fixture['r1jax_model'])
  lcfg = lora.LoRAConfig(rank=2, alpha=4.0, targets=('q', 'v'))
  _, abstract = fn.abstract_lora(cfg, lcfg)
  adapters = lora.init_adapters(abstract, jax.random.key(0))
  out = tmp_path
  peft.save_adapters(out / 'a', cfg, lcfg, adapters)
  with safe_open(str(out / 'a' / peft.WEIGHTS_FILE), 'numpy') as f:
    shapes = {k: list(f.get_tensor(k).shape) for k in f.keys()}
  assert shapes == fixture['tensors']
  written = json.loads((out / 'a' / peft.CONFIG_FILE).read_text())
  for key in ('peft_type', 'r', 'lora_alpha'):
    assert written[key] == fixture['adapter_config'][key], key
  assert (sorted(written['target_modules']) ==
          sorted(fixture['adapter_config']['target_modules']))


def test_peft_round_trip_and_refusals(tmp_path):
  cfg, _, _, _, adapters, lcfg = _models()
  _, abstract = fn.abstract_lora(cfg, lcfg)
  peft.save_adapters(tmp_path / 'a', cfg, lcfg, adapters,
                     base_fingerprint='abc')
  back = peft.load_adapters(tmp_path / 'a', cfg, lcfg, abstract,
                            base_fingerprint='abc')
  for x, y in zip(_host(adapters), _host(back)):
    np.testing.assert_array_equal(x, y)
  cases = [
      (dict(lcfg=lora.LoRAConfig(rank=8, alpha=8.0)),
       'adapter_config.json holds adapters of rank r=4 but '
       'config.model.lora.rank=8'),
      (dict(lcfg=lora.LoRAConfig(rank=4, alpha=16.0)),
       'has lora_alpha=8 but config.model.lora.alpha=16.0'),
      (dict(fingerprint='xyz'), 'was trained on another base model'),
      (dict(cfg=model_config.get_config('tiny-test', num_layers=3)),
       'is for another base model: it has no base_model.model.model.layers.2'),
      (dict(cfg=model_config.get_config('tiny-test', hidden_size=96)),
       'is for another base model: base_model.model.model.layers.0.self_attn.'
       'q_proj.lora_A.weight has shape (4, 64), this base needs (4, 96)'),
  ]
  for kw, needle in cases:
    c, l = kw.get('cfg', cfg), kw.get('lcfg', lcfg)
    _, ab = fn.abstract_lora(c, l)
    with pytest.raises(errors.ConfigError) as e:
      peft.load_adapters(tmp_path / 'a', c, l, ab,
                         base_fingerprint=kw.get('fingerprint', 'abc'))
    assert needle in str(e.value), str(e.value)
  with pytest.raises(errors.MissingFileError, match='is not a PEFT adapter'):
    peft.load_adapters(tmp_path, cfg, lcfg, abstract)


def test_adapter_dir_of_another_rank_refused_at_start_up(tmp_path):
  """r1jax.train's file checks read adapter_config.json before any weight
  loads: a missing directory, another rank, another target set."""
  cfg, _, _, _, adapters, lcfg = _models()
  peft.save_adapters(tmp_path / 'run' / 'peft', cfg, lcfg, adapters)
  config = zero.get_config('runlocal')
  config.model.pretrain_if_missing = True  # no base to look at here
  config.model.lora.rank, config.model.lora.alpha = 4, 8.0
  config.model.lora.adapter_path = str(tmp_path / 'run')  # a workdir: its peft/
  file_checks.check_files(config)
  config.model.lora.rank = 8
  with pytest.raises(errors.ConfigError) as e:
    file_checks.check_files(config)
  assert (f'{tmp_path}/run/peft/adapter_config.json holds adapters of rank '
          'r=4 but config.model.lora.rank=8') in str(e.value)
  config.model.lora.rank, config.model.lora.targets = 4, ('q', 'v')
  with pytest.raises(errors.ConfigError, match='targets .* but '
                     r'config.model.lora.targets names'):
    file_checks.check_files(config)
  config.model.lora.adapter_path = str(tmp_path / 'nowhere')
  with pytest.raises(errors.MissingFileError,
                     match='config.model.lora.adapter_path=.* is not a PEFT'):
    file_checks.check_files(config)


# ============================================================ the estimate


@pytest.mark.parametrize('targets', [LCFG.targets, ('q', 'v')])
def test_memory_estimate_knows_lora(targets):
  """Adapters, their AdamW moments, gradients and reference are exact (real
  arrays); the base stays in the parameter row; the LoRA update's temp
  bytes in XLA's accounting are within 2.5x of the estimate, which keeps
  the full model's activations (measured 1.7x with all seven targets, 1.9x
  with q, v: a frozen projection's input is not kept for a weight gradient,
  so the estimate errs high, the safe side for a start-up check)."""
  cfg = model_config.get_config(
      'tiny-test', hidden_size=128, intermediate_size=384, num_heads=4,
      num_kv_heads=2, head_dim=32, vocab_size=2048, num_layers=1)
  lcfg = lora.LoRAConfig(rank=8, targets=targets)
  graphdef, base = fn.init(cfg)
  lgraphdef, abstract = fn.abstract_lora(cfg, lcfg)
  adapters = lora.init_adapters(abstract, jax.random.key(0))
  nbytes = lambda t: sum(x.nbytes for x in jax.tree.leaves(t))
  assert memory.adapter_bytes(cfg, lcfg) == nbytes(adapters)
  opt = train_state.make_optimizer(ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=2, steps=10, min_lr_ratio=0.1, clip_norm=1.0,
      b1=0.9, b2=0.99, weight_decay=0.1)))
  state = dict(params=adapters, opt_state=opt.init(adapters),
               step=jnp.zeros((), jnp.int32),
               rng=jax.random.key_data(jax.random.key(0)))
  b, p, l = 16, 32, 64
  kw = dict(prompts_per_step=4, group_size=4, prompt_tokens=p,
            max_new_tokens=l, num_minibatches=1, grad_accum=2,
            use_reference=True)
  full, est = (memory.grpo_estimate(cfg, **kw),
               memory.grpo_estimate(cfg, lora=lcfg, **kw))
  assert est.params == full.params == nbytes(base)
  assert est.adapters == nbytes(adapters) == est.reference
  assert est.optimizer == nbytes(state['opt_state'])
  assert est.gradients == 2 * nbytes(adapters)
  assert est.resident < full.resident / 2
  assert 'LoRA adapters' in est.table()
  ones = lambda *s: jnp.ones(s, bool)
  batch = grpo_update.Batch(
      completions=grpo_update.Completions(
          prompt_tokens=jnp.zeros((b, p), jnp.int32), prompt_mask=ones(b, p),
          tokens=jnp.zeros((b, l), jnp.int32), mask=ones(b, l)),
      loss_mask=ones(b, l), old_logp=jnp.zeros((b, l)),
      ref_logp=jnp.zeros((b, l)), adv=jnp.zeros((b,)))
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  update = grpo_update.make_update_fn(
      lgraphdef, opt, loss_config=rl.LossConfig(beta=0.001), num_iterations=1,
      num_minibatches=1, grad_accum=2, mesh=mesh)
  xla = update.lower(state, batch, frozen=base).compile().memory_analysis()
  ratio = est.phases['update'] / xla.temp_size_in_bytes
  print(f'{targets}: LoRA update estimate / XLA temp bytes = {ratio:.2f}')
  assert 0.5 < ratio < 2.5, ratio
