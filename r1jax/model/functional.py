"""The pure-functional face of the model: split once, merge inside jit.

    graphdef, params = init(cfg, seed=0)
    logits, _ = apply(graphdef, params, tokens_BxT, positions_BxT, mask_BxTxT)

The policy and a frozen reference are two `params` trees of one `graphdef`.
With LoRA (r1jax/model/lora.py) `params` are the adapters and the frozen base
is a second tree, `frozen`, of the LoRA graphdef (`abstract_lora`).
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.model import lora as lora_lib
from r1jax.model.config import ModelConfig
from r1jax.model.transformer import Cache, Transformer

Params = nnx.State


def build(cfg: ModelConfig, seed: int = 0) -> Transformer:
  """A randomly initialised stateful model (for tests and small scripts)."""
  return Transformer(cfg, rngs=nnx.Rngs(seed))


def init(cfg: ModelConfig, seed: int = 0) -> tuple[nnx.GraphDef, Params]:
  """Random parameters and the graph definition they plug into."""
  return nnx.split(build(cfg, seed))


def abstract(cfg: ModelConfig) -> tuple[nnx.GraphDef, Params]:
  """Graph definition and parameter shapes (ShapeDtypeStructs), no memory."""
  return nnx.split(nnx.eval_shape(lambda: build(cfg, 0)))


def abstract_lora(cfg: ModelConfig, lora: lora_lib.LoRAConfig
                  ) -> tuple[nnx.GraphDef, Params]:
  """The LoRA model's graph definition and its adapters' shapes. Its frozen
  tree is the plain model's params (`abstract(cfg)`), path for path."""
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), lora=lora))
  graphdef, adapters, _ = nnx.split(model, lora_lib.LoRAParam, ...)
  return graphdef, adapters


def apply(graphdef: nnx.GraphDef, params: Params, tokens_BxT, positions_BxT,
          mask_BxTxS, cache: Cache | None = None, cache_index: Any = 0, *,
          frozen: Params | None = None, dropout_key: jax.Array | None = None):
  """Forward pass: (logits_BxTxV float32, updated cache or None).

  `frozen`: the base params of a LoRA graphdef (then `params` are the
  adapters); `dropout_key`: LoRA dropout (training only).
  """
  model = lora_lib.merge(graphdef, params, frozen, dropout_key)
  return model(tokens_BxT, positions_BxT, mask_BxTxS, cache, cache_index)


def positions_from_mask(input_mask_BxT: jax.Array) -> jax.Array:
  """Rotary positions: 0 at each row's first real token (left padding)."""
  m = input_mask_BxT.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0)


def causal_mask(input_mask_BxT: jax.Array) -> jax.Array:
  """[B, T, T]: query t sees real keys s <= t.

  Padding queries keep their own diagonal so no softmax row is empty (their
  outputs are ignored downstream).
  """
  t = input_mask_BxT.shape[-1]
  causal_TxT = jnp.tril(jnp.ones((t, t), jnp.bool_))
  keys_Bx1xT = input_mask_BxT.astype(jnp.bool_)[:, None, :]
  eye_TxT = jnp.eye(t, dtype=jnp.bool_)
  return (causal_TxT[None] & keys_Bx1xT) | eye_TxT[None]


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """log p(target) under softmax(logits), float32, [B, T]."""
  logits = logits_BxTxV.astype(jnp.float32)
  logz_BxT = jax.nn.logsumexp(logits, axis=-1)
  picked_BxT = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
  return picked_BxT - logz_BxT


def count_params(params: Params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
