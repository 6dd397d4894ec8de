"""Hugging Face import / export: exact round trips, parity, clear errors.

The parity fixtures are genuine transformers checkpoints with reference logits
from transformers' PyTorch models, written by scripts/make_parity_fixtures.py.
"""

import functools
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from safetensors.numpy import load_file, save_file

from r1jax.model import functional, get_config, hf
from r1jax.model.config import PRESETS, RopeScaling
from r1jax.tokenizer import train_bpe

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'parity'


def _tensors(folder) -> dict[str, np.ndarray]:
  out = {}
  for f in sorted(pathlib.Path(folder).glob('*.safetensors')):
    out.update(load_file(f))
  return out


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, params, tokens, mask):
  logits, _ = functional.apply(graphdef, params, tokens,
                               functional.positions_from_mask(mask),
                               functional.causal_mask(mask))
  return logits


def _logits(cfg, graphdef, params, tokens, mask):
  del cfg  # in graphdef
  return np.asarray(_forward(graphdef, params, tokens, mask))


def _leaves(params):
  return jax.tree.leaves(params.to_pure_dict())


# ----------------------------------------------------------------- parity
@pytest.mark.parametrize('name', ['qwen2', 'llama'])
def test_logits_match_transformers(name):
  ref = np.load(FIXTURES / name / 'reference.npz')
  mask = ref['mask_BxT']
  assert not mask.all(), 'the fixture batch should be left-padded'
  cfg, graphdef, params = hf.load_pretrained(FIXTURES / name)
  got = _logits(cfg, graphdef, params, ref['tokens_BxT'], mask)
  diff = np.abs(got - ref['logits_BxTxV'])[mask]
  assert diff.max() < 1e-4, diff.max()


def test_fixture_configs_cover_the_features():
  q, _, _ = hf.load_pretrained(FIXTURES / 'qwen2')
  assert (q.family, q.qkv_bias, q.tie_embeddings) == ('qwen2', True, True)
  assert q.num_heads // q.num_kv_heads == 2
  l, _, _ = hf.load_pretrained(FIXTURES / 'llama')
  assert (l.family, l.qkv_bias, l.tie_embeddings) == ('llama', False, False)
  assert l.rope_scaling == RopeScaling(
      kind='llama3', factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
      original_max_position_embeddings=32)
  assert l.param_dtype == jnp.float32 and l.dtype == jnp.float32


def test_parity_fixture_detects_missing_rope_scaling():
  # Without this the parity test above could pass with scaling ignored.
  ref = np.load(FIXTURES / 'llama' / 'reference.npz')
  cfg, _, params = hf.load_pretrained(FIXTURES / 'llama')
  graphdef, _ = functional.abstract(cfg.replace(rope_scaling=None))
  got = _logits(cfg, graphdef, params, ref['tokens_BxT'], ref['mask_BxT'])
  diff = np.abs(got - ref['logits_BxTxV'])[ref['mask_BxT']]
  assert diff.max() > 1e-2


# ------------------------------------------------------------ round trips
@pytest.mark.parametrize('name', ['qwen2', 'llama', 'qwen2_bf16'])
@pytest.mark.parametrize('max_shard_bytes', [hf.DEFAULT_MAX_SHARD_BYTES,
                                             40_000])
def test_import_export_is_bit_exact(tmp_path, name, max_shard_bytes):
  cfg, _, params = hf.load_pretrained(FIXTURES / name)
  hf.save_pretrained(tmp_path, cfg, params, max_shard_bytes=max_shard_bytes)
  original, written = _tensors(FIXTURES / name), _tensors(tmp_path)
  assert sorted(written) == sorted(original)
  for key, x in original.items():
    y = written[key]
    assert (y.dtype, y.shape) == (x.dtype, x.shape), key
    assert x.tobytes() == y.tobytes(), key

  index_path = tmp_path / hf.INDEX_FILE
  if max_shard_bytes == hf.DEFAULT_MAX_SHARD_BYTES:
    assert not index_path.exists()
    assert [p.name for p in tmp_path.glob('*.safetensors')] == [hf.SINGLE_FILE]
  else:
    index = json.loads(index_path.read_text())
    shards = sorted(tmp_path.glob('model-*-of-*.safetensors'))
    assert len(shards) > 2
    assert set(index['weight_map'].values()) == {p.name for p in shards}
    assert sorted(index['weight_map']) == sorted(original)
    nbytes = sum(x.nbytes for x in original.values())
    assert index['metadata']['total_size'] == nbytes
    for shard in shards:  # no shard over the limit unless a lone tensor is
      tensors = load_file(shard)
      assert (len(tensors) == 1 or
              sum(x.nbytes for x in tensors.values()) <= max_shard_bytes)

  cfg2, _, params2 = hf.load_pretrained(tmp_path)
  assert cfg2 == cfg
  for a, b in zip(_leaves(params), _leaves(params2), strict=True):
    assert a.dtype == b.dtype and np.array_equal(a, b)


def test_resave_removes_stale_shards(tmp_path):
  cfg, _, params = hf.load_pretrained(FIXTURES / 'qwen2')
  hf.save_pretrained(tmp_path, cfg, params, max_shard_bytes=40_000)
  hf.save_pretrained(tmp_path, cfg, params)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'config.json', hf.SINGLE_FILE]


def test_export_config_loads_back_for_every_preset():
  for name in PRESETS:
    cfg = get_config(name, param_dtype='bfloat16', dtype='bfloat16')
    back = hf.config_from_hf(json.loads(json.dumps(hf.config_to_hf(cfg))))
    assert back == cfg, name


# Published config.json files (transformers 4.x layout: rope_theta and
# rope_scaling at top level, torch_dtype).
QWEN25_05B = {
    'architectures': ['Qwen2ForCausalLM'], 'attention_dropout': 0.0,
    'bos_token_id': 151643, 'eos_token_id': 151643, 'hidden_act': 'silu',
    'hidden_size': 896, 'initializer_range': 0.02, 'intermediate_size': 4864,
    'max_position_embeddings': 32768, 'max_window_layers': 24,
    'model_type': 'qwen2', 'num_attention_heads': 14, 'num_hidden_layers': 24,
    'num_key_value_heads': 2, 'rms_norm_eps': 1e-06, 'rope_theta': 1000000.0,
    'sliding_window': 32768, 'tie_word_embeddings': True,
    'torch_dtype': 'bfloat16', 'use_cache': True, 'use_sliding_window': False,
    'vocab_size': 151936}
LLAMA31_8B = {
    'architectures': ['LlamaForCausalLM'], 'attention_bias': False,
    'attention_dropout': 0.0, 'bos_token_id': 128000, 'eos_token_id': 128001,
    'hidden_act': 'silu', 'hidden_size': 4096, 'initializer_range': 0.02,
    'intermediate_size': 14336, 'max_position_embeddings': 131072,
    'mlp_bias': False, 'model_type': 'llama', 'num_attention_heads': 32,
    'num_hidden_layers': 32, 'num_key_value_heads': 8, 'pretraining_tp': 1,
    'rms_norm_eps': 1e-05,
    'rope_scaling': {'factor': 8.0, 'low_freq_factor': 1.0,
                     'high_freq_factor': 4.0,
                     'original_max_position_embeddings': 8192,
                     'rope_type': 'llama3'},
    'rope_theta': 500000.0, 'tie_word_embeddings': False,
    'torch_dtype': 'bfloat16', 'use_cache': True, 'vocab_size': 128256}


@pytest.mark.parametrize('hf_config,preset', [(QWEN25_05B, 'qwen2.5-0.5b'),
                                              (LLAMA31_8B, 'llama3.1-8b')])
def test_published_configs_give_the_presets(hf_config, preset):
  cfg = hf.config_from_hf(hf_config, dtype='float32')
  assert cfg == get_config(preset, param_dtype='bfloat16')


def test_config_overrides_and_linear_rope():
  hf_config = dict(LLAMA31_8B, rope_scaling={'type': 'linear', 'factor': 2.0})
  del hf_config['num_key_value_heads']  # absent means MHA
  cfg = hf.config_from_hf(hf_config, remat=True)
  assert cfg.rope_scaling == RopeScaling(kind='linear', factor=2.0)
  assert cfg.num_kv_heads == 32 and cfg.remat
  assert cfg.head_dim == 4096 // 32


# ------------------------------------------------------------------ errors
def test_unknown_architecture_is_named():
  with pytest.raises(ValueError, match='GPT2LMHeadModel'):
    hf.config_from_hf(dict(QWEN25_05B, architectures=['GPT2LMHeadModel']))
  with pytest.raises(ValueError, match='yarn'):
    hf.config_from_hf(dict(QWEN25_05B, rope_scaling={'rope_type': 'yarn',
                                                     'factor': 4.0}))
  with pytest.raises(ValueError, match='sliding'):
    hf.config_from_hf(dict(QWEN25_05B, use_sliding_window=True))


def test_mismatched_config_names_tensor_and_shapes(tmp_path):
  shutil.copytree(FIXTURES / 'qwen2', tmp_path, dirs_exist_ok=True)
  config = json.loads((tmp_path / 'config.json').read_text())
  config['intermediate_size'] = 100
  (tmp_path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError) as err:
    hf.load_pretrained(tmp_path)
  msg = str(err.value)
  assert 'model.layers.0.mlp.gate_proj.weight' in msg
  assert '(128, 64)' in msg and '(100, 64)' in msg


def test_wrong_tensor_shape_and_missing_tensor():
  cfg, _, _ = hf.load_pretrained(FIXTURES / 'llama')
  tensors = _tensors(FIXTURES / 'llama')
  hf.params_from_hf(tensors, cfg)  # the unmodified dict loads
  bad = dict(tensors)
  bad['model.layers.1.self_attn.k_proj.weight'] = np.zeros((32, 64), np.float32)
  shapes = r'k_proj.weight.*\(32, 64\).*\(16, 64\)'
  with pytest.raises(ValueError, match=shapes):
    hf.params_from_hf(bad, cfg)
  missing = dict(tensors)
  del missing['lm_head.weight']
  with pytest.raises(ValueError, match='missing tensors.*lm_head.weight'):
    hf.params_from_hf(missing, cfg)
  extra = dict(tensors, **{'model.layers.2.mlp.up_proj.weight': np.zeros(3)})
  with pytest.raises(ValueError, match='unexpected tensors.*layers.2'):
    hf.params_from_hf(extra, cfg)


# ------------------------------------------------------------------- bf16
def test_bf16_checkpoint_holds_the_rounded_float32_weights():
  cfg, _, params = hf.load_pretrained(FIXTURES / 'qwen2_bf16')
  assert cfg.param_dtype == jnp.bfloat16 and cfg.dtype == jnp.bfloat16
  _, _, params32 = hf.load_pretrained(FIXTURES / 'qwen2')
  for a, b in zip(_leaves(params), _leaves(params32), strict=True):
    assert a.dtype == jnp.bfloat16
    # torch rounds to nearest even, as ml_dtypes does.
    np.testing.assert_array_equal(
        np.asarray(a), np.asarray(b).astype(ml_dtypes.bfloat16))


def test_bf16_loaded_as_float32_on_request():
  cfg, graphdef, params = hf.load_pretrained(
      FIXTURES / 'qwen2_bf16', param_dtype='float32')
  assert cfg.param_dtype == jnp.float32 and cfg.dtype == jnp.float32
  assert {x.dtype for x in _leaves(params)} == {np.dtype('float32')}
  ref = np.load(FIXTURES / 'qwen2' / 'reference.npz')
  got = _logits(cfg, graphdef, params, ref['tokens_BxT'], ref['mask_BxT'])
  assert np.isfinite(got).all()


# ------------------------------------------------------ sharding, extras
def test_load_with_shardings_places_each_tensor():
  mesh = jax.make_mesh((8,), ('x',))
  rows = NamedSharding(mesh, P('x'))
  cfg, _, params = hf.load_pretrained(FIXTURES / 'qwen2', shardings=rows)
  _, _, plain = hf.load_pretrained(FIXTURES / 'qwen2')
  for a, b in zip(_leaves(params), _leaves(plain), strict=True):
    assert a.sharding == rows
    assert a.addressable_shards[0].data.shape[0] == a.shape[0] // 8
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A pytree of shardings: replicate everything but the embedding.
  _, abstract_params = functional.abstract(cfg)
  tree = jax.tree.map(lambda _: NamedSharding(mesh, P()),
                      abstract_params.to_pure_dict())
  tree['embed_tokens']['embedding'] = rows
  _, _, params = hf.load_pretrained(FIXTURES / 'qwen2', shardings=tree)
  pure = params.to_pure_dict()
  assert pure['embed_tokens']['embedding'].sharding == rows
  assert pure['norm']['weight'].sharding == NamedSharding(mesh, P())


def test_llama_qkv_bias_round_trips_with_a_zero_o_proj_bias(tmp_path):
  # HF Llama's attention_bias also biases o_proj; r1jax has none, so export
  # writes zeros there and import insists on zeros.
  cfg, _, _ = hf.load_pretrained(FIXTURES / 'llama')
  cfg = cfg.replace(qkv_bias=True)
  tensors = _tensors(FIXTURES / 'llama')
  rng = np.random.default_rng(0)
  for i in range(cfg.num_layers):
    for proj, width in (('q', 64), ('k', 16), ('v', 16), ('o', 64)):
      bias = rng.normal(size=width) if proj != 'o' else np.zeros(width)
      tensors[f'model.layers.{i}.self_attn.{proj}_proj.bias'] = (
          bias.astype(np.float32))
  hf.save_pretrained(tmp_path, cfg, hf.params_from_hf(tensors, cfg))
  assert json.loads((tmp_path / 'config.json').read_text())['attention_bias']
  written = load_file(tmp_path / hf.SINGLE_FILE)
  assert sorted(written) == sorted(tensors)
  for key, x in tensors.items():
    assert x.tobytes() == written[key].tobytes(), key
  assert hf.load_pretrained(tmp_path)[0] == cfg
  written['model.layers.1.self_attn.o_proj.bias'][3] = 1.0
  save_file(written, tmp_path / hf.SINGLE_FILE)
  with pytest.raises(ValueError, match='layers.1.self_attn.o_proj.bias'):
    hf.load_pretrained(tmp_path)


def test_save_with_tokenizer(tmp_path):
  tok = train_bpe(['1 + 1 = 2', 'hello world'] * 10, vocab_size=300)
  cfg, _, params = hf.load_pretrained(FIXTURES / 'qwen2')
  hf.save_pretrained(tmp_path, cfg, params, tokenizer=tok)
  config = json.loads((tmp_path / 'config.json').read_text())
  assert config['eos_token_id'] == tok.eos_id is not None
  assert (tmp_path / 'tokenizer.json').exists()
