"""Hugging Face config.json <-> r1jax ModelConfig (Llama and Qwen2 families)."""

from typing import Mapping

import jax.numpy as jnp

from r1jax.model.config import ModelConfig, RopeScaling

# Hugging Face architecture name -> (r1jax family, HF model_type).
ARCHITECTURES = {
    'LlamaForCausalLM': ('llama', 'llama'),
    'Qwen2ForCausalLM': ('qwen2', 'qwen2'),
}
_FAMILY_TO_ARCH = {fam: (arch, mt) for arch, (fam, mt) in ARCHITECTURES.items()}

# Hugging Face's own defaults for keys a config.json may leave out.
_HF_DEFAULTS = {
    'llama': dict(rms_norm_eps=1e-6, max_position_embeddings=2048),
    'qwen2': dict(rms_norm_eps=1e-6, max_position_embeddings=32768),
}


def _rope_from_hf(hf: Mapping) -> tuple[float, RopeScaling | None]:
  """(rope_theta, scaling) from either the legacy keys or `rope_parameters`."""
  # transformers < 5 writes rope_theta + rope_scaling; >= 5 one
  # rope_parameters dict holding both. Either may be present, or both.
  params = dict(hf.get('rope_parameters') or {})
  params.update(hf.get('rope_scaling') or {})
  # As in transformers 5, the dict's theta wins over a top-level one.
  theta = float(params.get('rope_theta', hf.get('rope_theta', 10000.0)))
  kind = params.get('rope_type', params.get('type', 'default'))
  if params.get('partial_rotary_factor', 1.0) != 1.0:
    raise ValueError('partial_rotary_factor != 1 is not supported')
  if kind == 'default':
    return theta, None
  if kind == 'linear':
    return theta, RopeScaling(kind='linear', factor=float(params['factor']))
  if kind == 'llama3':
    return theta, RopeScaling(
        kind='llama3', factor=float(params['factor']),
        low_freq_factor=float(params['low_freq_factor']),
        high_freq_factor=float(params['high_freq_factor']),
        original_max_position_embeddings=int(
            params['original_max_position_embeddings']))
  raise ValueError(f"Unsupported rope scaling type {kind!r}; r1jax supports "
                   "'default', 'linear' and 'llama3'")


def _family(hf: Mapping) -> str:
  archs = hf.get('architectures') or []
  for arch in archs:
    if arch in ARCHITECTURES:
      return ARCHITECTURES[arch][0]
  if archs:
    raise ValueError(f'Unknown architecture {archs}; r1jax loads '
                     f'{sorted(ARCHITECTURES)}')
  model_type = hf.get('model_type')
  for fam, mt in ARCHITECTURES.values():
    if mt == model_type:
      return fam
  raise ValueError(f'config.json names no known architecture (model_type='
                   f'{model_type!r}); r1jax loads {sorted(ARCHITECTURES)}')


def config_from_hf(hf_config: Mapping, **overrides) -> ModelConfig:
  """A ModelConfig from a parsed config.json; `overrides` replace fields.

  param_dtype defaults to the checkpoint's (torch_)dtype and the compute dtype
  to param_dtype. Features the decoder lacks (sliding windows, MLP biases,
  other activations) raise a ValueError instead of loading a different model.
  """
  hf = dict(hf_config)
  fam = _family(hf)
  defaults = _HF_DEFAULTS[fam]
  if hf.get('hidden_act', 'silu') != 'silu':
    raise ValueError(
        f"hidden_act={hf['hidden_act']!r}; only 'silu' is supported")
  if hf.get('mlp_bias', False):
    raise ValueError('mlp_bias=True is not supported')
  if hf.get('use_sliding_window', False):
    raise ValueError('use_sliding_window=True is not supported')
  heads = int(hf['num_attention_heads'])
  head_dim = hf.get('head_dim') or hf['hidden_size'] // heads
  theta, scaling = _rope_from_hf(hf)
  # Qwen2 always has q/k/v biases; for Llama attention_bias also puts one on
  # o_proj, which must then be zero (checked when the tensors are read).
  qkv_bias = True if fam == 'qwen2' else bool(hf.get('attention_bias', False))
  torch_dtype = hf.get('torch_dtype') or hf.get('dtype') or 'float32'
  cfg = ModelConfig(
      vocab_size=int(hf['vocab_size']),
      hidden_size=int(hf['hidden_size']),
      intermediate_size=int(hf['intermediate_size']),
      num_layers=int(hf['num_hidden_layers']),
      num_heads=heads,
      num_kv_heads=int(hf.get('num_key_value_heads') or heads),
      head_dim=int(head_dim),
      rope_theta=theta,
      rope_scaling=scaling,
      rms_norm_eps=float(hf.get('rms_norm_eps', defaults['rms_norm_eps'])),
      qkv_bias=qkv_bias,
      tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
      max_position_embeddings=int(hf.get(
          'max_position_embeddings', defaults['max_position_embeddings'])),
      family=fam,
      param_dtype=jnp.dtype(torch_dtype),
      dtype=jnp.dtype(torch_dtype),
  )
  return cfg.replace(**overrides) if overrides else cfg


def config_to_hf(cfg: ModelConfig) -> dict:
  """The config.json dict transformers needs to rebuild `cfg`.

  Rope settings are written both the transformers<5 way (rope_theta,
  rope_scaling) and the >=5 way (rope_parameters), so either version loads it.
  """
  arch, model_type = _FAMILY_TO_ARCH[cfg.family]
  rope = {'rope_type': 'default', 'rope_theta': cfg.rope_theta}
  scaling = None
  rs = cfg.rope_scaling
  if rs is not None and rs.kind == 'linear':
    scaling = {'rope_type': 'linear', 'factor': rs.factor}
  elif rs is not None and rs.kind == 'llama3':
    scaling = {'rope_type': 'llama3', 'factor': rs.factor,
               'low_freq_factor': rs.low_freq_factor,
               'high_freq_factor': rs.high_freq_factor,
               'original_max_position_embeddings':
                   rs.original_max_position_embeddings}
  elif rs is not None:
    raise ValueError(f'Unknown rope scaling kind {rs.kind!r}')
  if scaling:
    rope = {**scaling, 'rope_theta': cfg.rope_theta}
  dtype_name = jnp.dtype(cfg.param_dtype).name
  hf = {
      'architectures': [arch],
      'model_type': model_type,
      'vocab_size': cfg.vocab_size,
      'hidden_size': cfg.hidden_size,
      'intermediate_size': cfg.intermediate_size,
      'num_hidden_layers': cfg.num_layers,
      'num_attention_heads': cfg.num_heads,
      'num_key_value_heads': cfg.num_kv_heads,
      'head_dim': cfg.head_dim,
      'hidden_act': 'silu',
      'max_position_embeddings': cfg.max_position_embeddings,
      'rms_norm_eps': cfg.rms_norm_eps,
      'rope_theta': cfg.rope_theta,
      'rope_scaling': scaling,
      'rope_parameters': rope,
      'tie_word_embeddings': cfg.tie_embeddings,
      'attention_dropout': 0.0,
      'initializer_range': 0.02,
      'use_cache': True,
      'torch_dtype': dtype_name,
      'dtype': dtype_name,
  }
  if cfg.family == 'llama':
    hf.update(attention_bias=cfg.qkv_bias, mlp_bias=False, pretraining_tp=1)
  else:
    hf.update(use_sliding_window=False, sliding_window=None,
              max_window_layers=cfg.num_layers)
  return hf
