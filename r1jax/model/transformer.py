"""A Llama / Qwen2 decoder in Flax NNX, shared by the sampler and the trainers.

One forward function serves three uses:
  * teacher-forced training:   cache=None, mask_BxTxS with S == T;
  * prefill of a KV cache:     cache given, cache_index=0, T = prompt length;
  * incremental decoding:      cache given, cache_index = slot of the new token.

Positions are explicit (left-padded batches start their real tokens at
position 0), and the attention mask is built by the caller (see `masks.py`), so
exactly the same arithmetic runs while sampling and while training: the
log-probabilities recorded by the sampler are the trainer's.

Parameter names mirror Hugging Face's (q_proj, gate_proj, input_layernorm, ...)
so that conversion is a renaming plus a transpose. Linear kernels are stored
[in, out].
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.model.config import ModelConfig
from r1jax.model.lora import LoRAConfig, LoRALinear

# A per-layer key/value cache over S slots:
#   {'k': [B, K, H, S], 'v': [B, K, S, H]}
# (keys stored transposed; see `_attend_one` for why).
LayerCache = dict[str, jax.Array]
Cache = list[LayerCache]

_INIT = nnx.initializers.normal(stddev=0.02)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
  """Inverse frequencies [H/2] of the rotary embedding, with rope scaling."""
  h = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  rs = cfg.rope_scaling
  if rs is None:
    return inv_freq
  if rs.kind == 'linear':
    return inv_freq / rs.factor
  if rs.kind != 'llama3':
    raise ValueError(f'Unknown rope scaling kind {rs.kind!r}')
  # Llama 3.1: keep high frequencies, divide low ones by `factor`, and blend
  # smoothly in between (by wavelength relative to the original context).
  old_len = rs.original_max_position_embeddings
  low_wavelen = old_len / rs.low_freq_factor
  high_wavelen = old_len / rs.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
  smooth = (old_len / wavelen - rs.low_freq_factor) / (
      rs.high_freq_factor - rs.low_freq_factor)
  smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(is_medium, smoothed, scaled)


def rope_tables(positions_BxT: jax.Array,
                inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sin, cos) float32 [B, T, 1, H/2] of the positions' rotation angles.

  Computed once per forward pass and shared by every layer's q and k.
  """
  angles_BxTxF = (positions_BxT.astype(jnp.float32)[:, :, None] *
                  inv_freq[None, None, :])
  return (jnp.sin(angles_BxTxF)[:, :, None, :],
          jnp.cos(angles_BxTxF)[:, :, None, :])


def apply_rope(x_BxTxNxH: jax.Array, rope: tuple[jax.Array, jax.Array]
               ) -> jax.Array:
  """Rotary embedding in the 'rotate half' layout used by HF Llama / Qwen2."""
  sin, cos = rope
  x = x_BxTxNxH.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm computed in float32, as HF does, then cast to the compute dtype."""

  def __init__(self, dim: int, eps: float, param_dtype: Any, dtype: Any):
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.eps)
    # Explicit broadcast: tests run with jax_numpy_rank_promotion='raise'.
    w = self.weight[...].astype(jnp.float32)
    w = w.reshape((1,) * (x.ndim - 1) + (-1,))
    return (y * w).astype(self.dtype)


def _linear(cfg: ModelConfig, d_in: int, d_out: int, bias: bool,
            rngs: nnx.Rngs, lora: LoRAConfig | None = None,
            name: str = '') -> nnx.Linear:
  """A projection; a `LoRALinear` when `lora` targets `name`."""
  kw = dict(use_bias=bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            kernel_init=_INIT, rngs=rngs)
  if lora is not None and lora.targets_projection(name):
    return LoRALinear(d_in, d_out, lora=lora, **kw)
  return nnx.Linear(d_in, d_out, **kw)


class Attention(nnx.Module):
  """Grouped-query attention with rotary positions and an optional KV cache."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs,
               lora: LoRAConfig | None = None):
    d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.cfg = cfg
    self.q_proj = _linear(cfg, d, n * h, cfg.qkv_bias, rngs, lora, 'q_proj')
    self.k_proj = _linear(cfg, d, k * h, cfg.qkv_bias, rngs, lora, 'k_proj')
    self.v_proj = _linear(cfg, d, k * h, cfg.qkv_bias, rngs, lora, 'v_proj')
    self.o_proj = _linear(cfg, n * h, d, False, rngs, lora, 'o_proj')

  def __call__(self, x_BxTxD, rope, mask_BxTxS, cache: LayerCache | None,
               cache_index):
    cfg = self.cfg
    b, t, _ = x_BxTxD.shape
    n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    x_RxD = _rows(x_BxTxD)
    q_BxTxNxH = self.q_proj(x_RxD).reshape(b, t, n, h)
    k_BxTxKxH = self.k_proj(x_RxD).reshape(b, t, k, h)
    v_BxTxKxH = self.v_proj(x_RxD).reshape(b, t, k, h)
    q_BxTxNxH = apply_rope(q_BxTxNxH, rope)
    k_BxTxKxH = apply_rope(k_BxTxKxH, rope)

    if cache is None:
      out_BxTxNxH = attend(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask_BxTxS)
      new_cache = None
    else:
      new_cache = write_cache(cache, k_BxTxKxH, v_BxTxKxH, cache_index)
      k_all, v_all = new_cache['k'], new_cache['v']
      if t == 1:  # a decode step: reductions over the cache in its layout
        out_BxTxNxH = _attend_one(q_BxTxNxH, k_all, v_all, mask_BxTxS,
                                  cfg.dtype)
      else:  # a prefill: the training path's arithmetic
        out_BxTxNxH = attend(
            q_BxTxNxH, jnp.transpose(k_all, (0, 3, 1, 2)).astype(cfg.dtype),
            jnp.transpose(v_all, (0, 2, 1, 3)).astype(cfg.dtype), mask_BxTxS)
    out = self.o_proj(out_BxTxNxH.reshape(b * t, n * h)).reshape(b, t, -1)
    return out, new_cache


def attend(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_BxTxS):
  """Softmax attention with grouped key/value heads; softmax in float32."""
  b, t, n, h = q_BxTxNxH.shape
  kv = k_BxSxKxH.shape[2]
  g = n // kv
  q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, kv, g, h) * (h ** -0.5)
  scores = jnp.einsum('btkgh,bskh->bkgts', q_BxTxKxGxH, k_BxSxKxH,
                      preferred_element_type=jnp.float32)
  big_neg = jnp.finfo(jnp.float32).min
  scores = jnp.where(mask_BxTxS[:, None, None, :, :], scores, big_neg)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxKxH.dtype)
  out = jnp.einsum('bkgts,bskh->btkgh', probs, v_BxSxKxH)
  return out.reshape(b, t, n, h)


def _attend_one(q_Bx1xNxH, k_BxKxHxS, v_BxKxSxH, mask_Bx1xS, dtype):
  """Attention of one query per row (a decode step) over a cache.

  The cache layout makes both reductions read it in place with the
  reduced-over axis not minor, so XLA:CPU vectorises along the minor one:
  scores sum over H of K [B, K, H, S] (vectorised along S), outputs sum over
  S of V [B, K, S, H] (vectorised along H). Dots with batch dims (B, K) run
  as B x K tiny GEMMs instead, 2-3x slower at decode shapes; broadcast
  products reduced over the minor axis are slower still. Float32 arithmetic,
  as `attend`, up to summation order.
  """
  b, _, n, h = q_Bx1xNxH.shape
  kv, s = k_BxKxHxS.shape[1], k_BxKxHxS.shape[3]
  g = n // kv
  f32 = jnp.float32
  q_BxKxGxH = (q_Bx1xNxH.reshape(b, kv, g, h) * (h ** -0.5)).astype(
      q_Bx1xNxH.dtype).astype(f32)
  scores_BxKxGxS = jnp.sum(
      q_BxKxGxH[..., None] * k_BxKxHxS.astype(dtype).astype(f32)[:, :, None],
      axis=3)
  big_neg = jnp.finfo(f32).min
  scores_BxKxGxS = jnp.where(mask_Bx1xS.reshape(b, 1, 1, s), scores_BxKxGxS,
                             big_neg)
  probs_BxKxGxS = jax.nn.softmax(scores_BxKxGxS, axis=-1).astype(
      dtype).astype(f32)
  out_BxKxGxH = jnp.sum(
      probs_BxKxGxS[..., None] *
      v_BxKxSxH.astype(dtype).astype(f32)[:, :, None], axis=3)
  return out_BxKxGxH.astype(dtype).reshape(b, 1, n, h)


def _rows(x: jax.Array) -> jax.Array:
  """[..., D] -> [tokens, D]: every linear layer runs on a 2-D operand.

  With [B, T, D] activations the weight gradient contracts over two axes
  (B and T), and XLA:CPU then writes the backward's SwiGLU gradient
  transposed through a strided loop (measured: 41 ms for a [3296, 512]
  tensor, a third of a 4-layer update step). On [B*T, D] rows the same
  gradients are plain matmuls; the arithmetic is unchanged.
  """
  return x.reshape(-1, x.shape[-1])


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs,
               lora: LoRAConfig | None = None):
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.gate_proj = _linear(cfg, d, f, False, rngs, lora, 'gate_proj')
    self.up_proj = _linear(cfg, d, f, False, rngs, lora, 'up_proj')
    self.down_proj = _linear(cfg, f, d, False, rngs, lora, 'down_proj')

  def __call__(self, x_BxTxD):
    x = _rows(x_BxTxD)
    out = self.down_proj(nnx.silu(self.gate_proj(x)) * self.up_proj(x))
    return out.reshape(x_BxTxD.shape)


class Block(nnx.Module):
  """Pre-norm decoder block."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs,
               lora: LoRAConfig | None = None):
    eps, pd, dt = cfg.rms_norm_eps, cfg.param_dtype, cfg.dtype
    self.input_layernorm = RMSNorm(cfg.hidden_size, eps, pd, dt)
    self.self_attn = Attention(cfg, rngs, lora)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps, pd, dt)
    self.mlp = MLP(cfg, rngs, lora)

  def __call__(self, x_BxTxD, rope, mask_BxTxS, cache, cache_index):
    attn_out, new_cache = self.self_attn(
        self.input_layernorm(x_BxTxD), rope, mask_BxTxS, cache, cache_index)
    x_BxTxD = x_BxTxD + attn_out
    x_BxTxD = x_BxTxD + self.mlp(self.post_attention_layernorm(x_BxTxD))
    return x_BxTxD, new_cache


def _run_block(block, x, rope, mask, cache, cache_index):
  return block(x, rope, mask, cache, cache_index)


# The block never mutates its variables, so no graph updates need to flow out
# of the checkpointed function; with them on, a remat model cannot run inside
# the sampler's while_loop (nnx raises a TraceContextError).
_run_block_remat = nnx.remat(_run_block, graph_updates=False)


class Transformer(nnx.Module):
  """The decoder: embed -> blocks -> final norm -> logits (float32).

  With `lora`, the projections it targets carry adapters (r1jax/model/lora.py).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs,
               lora: LoRAConfig | None = None):
    self.cfg = cfg
    self.embed_tokens = nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype,
        param_dtype=cfg.param_dtype, embedding_init=_INIT, rngs=rngs)
    self.layers = nnx.List([Block(cfg, rngs, lora)
                            for _ in range(cfg.num_layers)])
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype,
                        cfg.dtype)
    if not cfg.tie_embeddings:
      self.lm_head = _linear(cfg, cfg.hidden_size, cfg.vocab_size, False, rngs)

  def __call__(
      self,
      tokens_BxT: jax.Array,
      positions_BxT: jax.Array,
      mask_BxTxS: jax.Array,
      cache: Cache | None = None,
      cache_index: jax.Array | int = 0,
  ) -> tuple[jax.Array, Cache | None]:
    """Logits [B, T, V] in float32 and the updated cache (None without one).

    Args:
      tokens_BxT: token ids.
      positions_BxT: rotary position of each token (0 at the first real token).
      mask_BxTxS: True where query t may attend key slot s. Without a cache
        S == T; with a cache S is the cache length.
      cache: per-layer {'k' [B, K, H, S], 'v' [B, K, S, H]} arrays, or None.
      cache_index: first cache slot written by these T tokens.
    """
    hidden_BxTxD, new_cache = self.hidden_states(
        tokens_BxT, positions_BxT, mask_BxTxS, cache, cache_index)
    return self.logits(hidden_BxTxD), new_cache

  def hidden_states(self, tokens_BxT, positions_BxT, mask_BxTxS, cache=None,
                    cache_index=0):
    """Final-norm hidden states [B, T, D] and the updated cache."""
    rope = rope_tables(positions_BxT, rope_inv_freq(self.cfg))
    x = self.embed_tokens(tokens_BxT)
    run = _run_block_remat if self.cfg.remat else _run_block
    new_cache = [] if cache is not None else None
    for i, block in enumerate(self.layers):
      layer_cache = cache[i] if cache is not None else None
      x, c = run(block, x, rope, mask_BxTxS, layer_cache, cache_index)
      if new_cache is not None:
        new_cache.append(c)
    return self.norm(x), new_cache

  def logits(self, hidden_BxTxD: jax.Array) -> jax.Array:
    x = _rows(hidden_BxTxD)
    if self.cfg.tie_embeddings:
      logits = self.embed_tokens.attend(x)
    else:
      logits = self.lm_head(x)
    return logits.reshape(*hidden_BxTxD.shape[:-1], -1).astype(jnp.float32)


def write_cache(cache: LayerCache, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                cache_index) -> LayerCache:
  """The layer cache with T new keys / values written from slot cache_index."""
  zero = jnp.zeros((), jnp.int32)
  i = jnp.asarray(cache_index, jnp.int32)
  k_BxKxHxT = jnp.transpose(k_BxTxKxH, (0, 2, 3, 1)).astype(cache['k'].dtype)
  v_BxKxTxH = jnp.transpose(v_BxTxKxH, (0, 2, 1, 3)).astype(cache['v'].dtype)
  return {'k': jax.lax.dynamic_update_slice(cache['k'], k_BxKxHxT,
                                            (zero, zero, zero, i)),
          'v': jax.lax.dynamic_update_slice(cache['v'], v_BxKxTxH,
                                            (zero, zero, i, zero))}


def init_cache(cfg: ModelConfig, batch: int, length: int,
               dtype: Any = None) -> Cache:
  """An empty KV cache of `length` slots per sequence (layout: `Cache`)."""
  dtype = dtype or cfg.dtype
  k, h = cfg.num_kv_heads, cfg.head_dim
  return [{'k': jnp.zeros((batch, k, h, length), dtype),
           'v': jnp.zeros((batch, k, length, h), dtype)}
          for _ in range(cfg.num_layers)]


def grow_cache(cache: Cache, extra: int) -> Cache:
  """`cache` with `extra` empty slots appended to every sequence."""
  def grow(layer):
    return {'k': jnp.pad(layer['k'], ((0, 0),) * 3 + ((0, extra),)),
            'v': jnp.pad(layer['v'], ((0, 0), (0, 0), (0, extra), (0, 0)))}
  return [grow(layer) for layer in cache]


def cache_slots(cache: Cache) -> int:
  """Slots per sequence of a cache (S in the `Cache` layout)."""
  return cache[0]['v'].shape[2]
