"""r1jax.memory: exact parts against real arrays, the estimate against XLA's
own accounting, and the start-up check's failure message."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from r1jax import memory
from r1jax import parallel
from r1jax import rl
from r1jax.model import config as model_config
from r1jax.model import functional as fn
from r1jax.model.transformer import init_cache
from r1jax.sampling import Sampler
from r1jax.sampling.sampler import budget_bucket
from r1jax.run import console
from r1jax.run import loading
from r1jax.run import train_state
from r1jax.stages import grpo_update

import grpo_helpers as H


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _train_cfg():
  return ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=2, steps=10, min_lr_ratio=0.1, clip_norm=1.0,
      b1=0.9, b2=0.99, weight_decay=0.1))


CONFIGS = [
    model_config.get_config('tiny-test'),  # tied, qkv biases
    model_config.get_config('tiny-test-llama'),  # untied, no biases
    model_config.get_config('tiny-test', param_dtype=jnp.bfloat16,
                            dtype=jnp.bfloat16),
]


@pytest.mark.parametrize('cfg', CONFIGS, ids=['qwen2', 'llama', 'bf16'])
def test_params_and_optimizer_bytes_are_exact(cfg):
  _, params = fn.abstract(cfg)  # the shapes and dtypes of fn.init's arrays
  assert memory.param_bytes(cfg) == _nbytes(params)
  opt_state = jax.eval_shape(train_state.make_optimizer(_train_cfg()).init, params)
  assert memory.adamw_bytes(cfg) == _nbytes(opt_state)


@pytest.mark.parametrize('cfg', CONFIGS, ids=['qwen2', 'llama', 'bf16'])
@pytest.mark.parametrize('rows, prompt, new', [(8, 32, 16), (12, 64, 100)])
def test_kv_cache_bytes_are_exact(cfg, rows, prompt, new):
  est = memory.kv_cache_bytes(cfg, rows, prompt, new)
  cache = jax.eval_shape(
      lambda: init_cache(cfg, rows, prompt + budget_bucket(new)))
  assert est == _nbytes(cache)
  graphdef, _ = fn.abstract(cfg)
  sampler = Sampler(graphdef, cfg, pad_id=0, eos_ids=(),
                    prompt_buckets=(prompt,))
  assert est == sampler.cache_bytes(rows, prompt, new)


def test_estimate_parts_follow_the_config():
  cfg = model_config.get_config('tiny-test')
  kw = dict(prompts_per_step=8, group_size=4, prompt_tokens=32,
            max_new_tokens=16, num_minibatches=2, grad_accum=2,
            use_reference=True)
  est = memory.grpo_estimate(cfg, **kw)
  p = memory.param_bytes(cfg)
  assert (est.params, est.optimizer, est.reference) == (
      p, memory.adamw_bytes(cfg), p)
  assert est.kv_cache == memory.kv_cache_bytes(cfg, 32, 32, 16)
  assert est.total == est.resident + max(est.phases.values())
  # Rows split over 4 devices, parameters over 2.
  split = memory.grpo_estimate(cfg, batch_devices=4, param_shards=2, **kw)
  assert split.kv_cache == est.kv_cache // 4
  assert split.params == -(-p // 2)
  # No KL term: no reference tree, no reference pass.
  no_ref = memory.grpo_estimate(cfg, **{**kw, 'use_reference': False})
  assert no_ref.reference == no_ref.reference_pass == 0
  # More micro-batches or remat: fewer activation bytes.
  finer = memory.grpo_estimate(cfg, **{**kw, 'grad_accum': 4})
  assert finer.activations < est.activations
  remat = memory.grpo_estimate(cfg, remat=True, **kw)
  assert remat.activations < est.activations
  # A bigger budget: a bigger cache.
  longer = memory.grpo_estimate(cfg, **{**kw, 'max_new_tokens': 200})
  assert longer.kv_cache > est.kv_cache
  # Decode segments (budget 256: ends 64, ..., 256): the last one's grow
  # copies the 192-token cache; one segment copies nothing.
  one = memory.grpo_estimate(cfg, decode_segments=1,
                             **{**kw, 'max_new_tokens': 200})
  assert longer.sample_other - one.sample_other == memory.kv_cache_bytes(
      cfg, 32, 32, 192, exact_slots=True)
  assert 'peak' in est.table() and 'kv cache' in est.table()


def test_update_and_reference_estimates_near_xla_accounting():
  """XLA's temp bytes of the compiled programs are within 2x of the estimate
  (activations are an estimate; the check must not be off by multiples)."""
  cfg = model_config.get_config(
      'tiny-test', hidden_size=128, intermediate_size=384, num_heads=4,
      num_kv_heads=2, head_dim=32, vocab_size=2048, num_layers=1)
  graphdef, params = fn.init(cfg)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  opt = train_state.make_optimizer(_train_cfg())
  state = dict(params=params, opt_state=opt.init(params),
               step=jnp.zeros((), jnp.int32),
               rng=jax.random.key_data(jax.random.key(0)))
  b, p, l = 16, 32, 64
  ones = lambda *s: jnp.ones(s, bool)
  batch = grpo_update.Batch(
      completions=grpo_update.Completions(
          prompt_tokens=jnp.zeros((b, p), jnp.int32), prompt_mask=ones(b, p),
          tokens=jnp.zeros((b, l), jnp.int32), mask=ones(b, l)),
      loss_mask=ones(b, l), old_logp=jnp.zeros((b, l)),
      ref_logp=jnp.zeros((b, l)), adv=jnp.zeros((b,)))
  update = grpo_update.make_update_fn(
      graphdef, opt, loss_config=rl.LossConfig(beta=0.001), num_iterations=1,
      num_minibatches=1, grad_accum=2, mesh=mesh)
  xla_update = update.lower(state, batch).compile().memory_analysis()
  xla_ref = grpo_update.make_logprobs_fn(graphdef, mesh, num_chunks=2).lower(
      params, batch.completions).compile().memory_analysis()
  est = memory.grpo_estimate(
      cfg, prompts_per_step=4, group_size=4, prompt_tokens=p,
      max_new_tokens=l, num_minibatches=1, grad_accum=2, use_reference=True)
  ratio_update = est.phases['update'] / xla_update.temp_size_in_bytes
  ratio_ref = est.reference_pass / xla_ref.temp_size_in_bytes
  assert 0.5 < ratio_update < 2, ratio_update
  assert 0.5 < ratio_ref < 2, ratio_ref


# ------------------------------------------------------------- the check


def _big_config():
  c = H.grpo_config('/nonexistent')
  c.model.hf_path = ''
  c.model.preset = 'tiny-test'
  return c


def _mesh():
  return parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])


def test_check_fails_naming_the_knobs(monkeypatch):
  monkeypatch.setattr(memory, 'device_memory_limit', lambda device=None: 10**5)
  monkeypatch.delenv('R1JAX_MEMORY_CHECK', raising=False)
  c = _big_config()
  lines = []
  with pytest.raises(memory.MemoryBudgetError) as e:
    memory.check_grpo(c, loading.model_config_of(c), _mesh(), lines.append)
  msg = str(e.value)
  for knob in ('rl.group_size', 'rl.num_minibatches', 'rl.grad_accum',
               'sampling.max_new_tokens', 'model.remat'):
    assert knob in msg
  assert 'exceeds the device memory' in msg and 'peak' in msg
  assert 'memory estimate per device' in lines[0]


def test_check_passes_within_the_limit_and_warns_when_disabled(monkeypatch):
  c = _big_config()
  cfg = loading.model_config_of(c)
  monkeypatch.setattr(memory, 'device_memory_limit', lambda device=None: 2**40)
  est = memory.check_grpo(c, cfg, _mesh(), lambda s: None)
  assert est.total < 2**40
  monkeypatch.setattr(memory, 'device_memory_limit', lambda device=None: 10**5)
  monkeypatch.setenv('R1JAX_MEMORY_CHECK', '0')
  lines = []
  memory.check_grpo(c, cfg, _mesh(), lines.append)
  assert lines[-1].startswith('warning: estimated peak memory')


def test_cpu_compares_with_host_memory_and_only_warns(monkeypatch):
  monkeypatch.setattr(memory, 'device_memory_limit', lambda device=None: None)
  monkeypatch.setattr(memory, 'host_available_bytes', lambda: 10**5)
  monkeypatch.delenv('R1JAX_MEMORY_CHECK', raising=False)
  lines = []
  c = _big_config()
  memory.check_grpo(c, loading.model_config_of(c), _mesh(), lines.append)
  assert 'host memory available' in lines[-1] and 'warning' in lines[-1]


def test_device_memory_limit_on_cpu_is_none():
  assert jax.devices()[0].platform == 'cpu'
  assert memory.device_memory_limit() is None
  assert memory.host_available_bytes() > 0


def test_grpo_stage_fails_before_any_compile(tmp_path, monkeypatch):
  from r1jax.stages import grpo
  base = H.make_tiny_base(tmp_path / 'base')
  monkeypatch.setattr(memory, 'device_memory_limit', lambda device=None: 10**5)
  monkeypatch.delenv('R1JAX_MEMORY_CHECK', raising=False)
  console.CompileCounter.install()
  before = console.CompileCounter.count()
  with pytest.raises(memory.MemoryBudgetError, match='rl.group_size'):
    grpo.train_and_evaluate(H.grpo_config(base), str(tmp_path / 'run'))
  assert console.CompileCounter.count() == before
  # The model config the check used is the checkpoint's.
  cfg = loading.model_config_of(H.grpo_config(base))
  assert cfg.hidden_size == H.SMALL_MODEL['hidden_size']
  assert np.dtype(cfg.dtype) == np.float32
