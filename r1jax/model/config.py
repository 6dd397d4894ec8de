"""Model hyper-parameters and the named presets (shapes as published)."""

import dataclasses
from typing import Any

import jax.numpy as jnp

from r1jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Rotary-embedding frequency scaling.

  kind='llama3' is Llama-3.1's piecewise rescaling (factor, low/high frequency
  factors, original context length); kind='linear' divides every frequency by
  `factor` (position interpolation).
  """
  kind: str = 'llama3'
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A decoder-only transformer of the Llama / Qwen2 families."""
  vocab_size: int
  hidden_size: int           # D
  intermediate_size: int     # F, SwiGLU hidden width
  num_layers: int
  num_heads: int             # N query heads
  num_kv_heads: int          # K key/value heads (GQA: N % K == 0)
  head_dim: int              # H
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-6
  qkv_bias: bool = False     # Qwen2 has biases on q, k, v projections
  tie_embeddings: bool = False
  max_position_embeddings: int = 4096
  # 'llama' or 'qwen2': which Hugging Face architecture this maps to.
  family: str = 'llama'
  param_dtype: Any = jnp.float32
  dtype: Any = jnp.float32   # compute dtype of activations and matmuls
  remat: bool = False        # rematerialise each block in the backward pass

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f'num_heads={self.num_heads} is not a multiple of '
          f'num_kv_heads={self.num_kv_heads}')
    if self.head_dim % 2:
      raise ValueError(f'head_dim={self.head_dim} must be even for RoPE')
    if self.family not in ('llama', 'qwen2'):
      raise ValueError(f"family must be 'llama' or 'qwen2', got {self.family!r}")

  def replace(self, **kwargs) -> 'ModelConfig':
    if isinstance(kwargs.get('rope_scaling'), dict):
      kwargs['rope_scaling'] = RopeScaling(**kwargs['rope_scaling'])
    for key in ('param_dtype', 'dtype'):
      if isinstance(kwargs.get(key), str):
        kwargs[key] = jnp.dtype(kwargs[key])
    return dataclasses.replace(self, **kwargs)

  def num_params(self) -> int:
    d, f, v, h = (self.hidden_size, self.intermediate_size, self.vocab_size,
                  self.head_dim)
    attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
    if self.qkv_bias:
      attn += h * (self.num_heads + 2 * self.num_kv_heads)
    block = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_embeddings else v * d
    return v * d + self.num_layers * block + d + head


PRESETS: Registry[ModelConfig] = Registry('model preset')

_QWEN = dict(family='qwen2', qkv_bias=True, rms_norm_eps=1e-6)

# Test sizes: small enough that a forward pass compiles and runs in well under a
# second on a laptop CPU.
PRESETS.add('tiny-test', ModelConfig(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
    num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
    max_position_embeddings=512, tie_embeddings=True, **_QWEN))
PRESETS.add('tiny-test-llama', ModelConfig(
    vocab_size=256, hidden_size=64, intermediate_size=160, num_layers=2,
    num_heads=4, num_kv_heads=1, head_dim=16, rope_theta=500000.0,
    rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0,
                             original_max_position_embeddings=64),
    rms_norm_eps=1e-5, max_position_embeddings=512, family='llama'))
# The CPU base model of the R1-Zero experiments (~1.7M parameters with a
# 512-token vocabulary); pretrained by experiments/pretrain_tiny.py. Sized so
# that a few minutes on 2 CPU cores learn the synthetic arithmetic corpus.
PRESETS.add('tiny-cpu', ModelConfig(
    vocab_size=512, hidden_size=192, intermediate_size=512, num_layers=4,
    num_heads=6, num_kv_heads=2, head_dim=32, rope_theta=10000.0,
    max_position_embeddings=1024, tie_embeddings=True, **_QWEN))

# Published models. Shapes from each model's config.json on the HF hub.
PRESETS.add('smollm2-135m', ModelConfig(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
    num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0,
    rms_norm_eps=1e-5, tie_embeddings=True, max_position_embeddings=8192,
    family='llama'))
PRESETS.add('qwen2.5-0.5b', ModelConfig(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24,
    num_heads=14, num_kv_heads=2, head_dim=64, rope_theta=1000000.0,
    tie_embeddings=True, max_position_embeddings=32768, **_QWEN))
PRESETS.add('qwen2.5-1.5b', ModelConfig(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
    num_heads=12, num_kv_heads=2, head_dim=128, rope_theta=1000000.0,
    tie_embeddings=True, max_position_embeddings=131072, **_QWEN))
PRESETS.add('qwen2.5-7b', ModelConfig(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944,
    num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
    rope_theta=1000000.0, tie_embeddings=False,
    max_position_embeddings=131072, **_QWEN))
PRESETS.add('qwen2.5-math-1.5b', ModelConfig(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
    num_heads=12, num_kv_heads=2, head_dim=128, rope_theta=10000.0,
    tie_embeddings=True, max_position_embeddings=4096, **_QWEN))
PRESETS.add('qwen2.5-math-7b', ModelConfig(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944,
    num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
    rope_theta=10000.0, tie_embeddings=False, max_position_embeddings=4096,
    **_QWEN))
PRESETS.add('llama3.1-8b', ModelConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336,
    num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
    rope_theta=500000.0, rope_scaling=RopeScaling(), rms_norm_eps=1e-5,
    tie_embeddings=False, max_position_embeddings=131072, family='llama'))


def get_config(name: str, **overrides) -> ModelConfig:
  """A preset by name, with fields replaced (e.g. dtype='bfloat16')."""
  cfg = PRESETS.get(name)
  return cfg.replace(**overrides) if overrides else cfg
