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
from r1jax.model.transformer import Cache, Transformer, grow_cache, init_cache

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


def completion_hidden(model: Transformer, prompt_BxP, prompt_mask_BxP,
                      tokens_BxL, mask_BxL, *, prompt_group: int = 1):
  """Final hidden states [B, L, D] at the positions that predict the
  completion tokens: those of [prompt, completion[:-1]] (left-padded prompts)
  from the prompt's last token on; the LM head of them gives the
  completion's teacher-forced logits.

  prompt_group = 1: one forward pass over the whole rows. prompt_group = g
  > 1: every g consecutive rows share their prompt (a GRPO group, or its
  rows in one strided part), and the prompt's first P - 1 tokens go through
  the model once per g rows (`prompt_cache`): their keys and values fill a
  cache that each of the g rows' own L tokens then attend to
  (`cached_completion_hidden`; the gradient reaches the shared keys and
  values from all g rows). Same arithmetic up to summation order; it saves
  (g - 1) / g of the prompt's work, e.g. 31% of the tokens of the main
  job's update (P = 48, L = 64, g = 4).
  """
  b, p = prompt_BxP.shape
  if prompt_group == 1 or p == 1:
    tokens_BxS = jnp.concatenate([prompt_BxP, tokens_BxL[:, :-1]], axis=1)
    mask_BxS = jnp.concatenate([prompt_mask_BxP, mask_BxL[:, :-1]], axis=1)
    hidden_BxSxD, _ = model.hidden_states(
        tokens_BxS, positions_from_mask(mask_BxS), causal_mask(mask_BxS))
    return hidden_BxSxD[:, p - 1:]
  if b % prompt_group:
    raise ValueError(f'{b} rows do not split into groups of {prompt_group}')
  head = slice(None, None, prompt_group)  # the first row of every group
  cache = prompt_cache(model, prompt_BxP[head], prompt_mask_BxP[head])
  cache = [{k: jnp.repeat(x, prompt_group, axis=0) for k, x in layer.items()}
           for layer in cache]
  return cached_completion_hidden(model, cache, prompt_BxP, prompt_mask_BxP,
                                  tokens_BxL, mask_BxL)


def prompt_cache(model: Transformer, prompt_NxP, prompt_mask_NxP) -> Cache:
  """The KV cache [N rows, P - 1 slots] of the prompts' first P - 1 tokens
  (left-padded prompts, one row per distinct prompt): what
  `cached_completion_hidden` attends to."""
  n, p = prompt_NxP.shape
  mask = prompt_mask_NxP[:, :p - 1]
  _, cache = model.hidden_states(
      prompt_NxP[:, :p - 1], positions_from_mask(mask), causal_mask(mask),
      init_cache(model.cfg, n, p - 1), 0)
  return cache


def gather_cache(cache: Cache, rows_B: jax.Array) -> Cache:
  """The cache's rows `rows_B` (int [B]), e.g. each completion's prompt."""
  return [{k: jnp.take(x, rows_B, axis=0) for k, x in layer.items()}
          for layer in cache]


def cached_completion_hidden(model: Transformer, cache_BxP1: Cache,
                             prompt_BxP, prompt_mask_BxP, tokens_BxL,
                             mask_BxL):
  """`completion_hidden` of B rows whose prompts' first P - 1 tokens are
  already in `cache_BxP1` (`prompt_cache`, one row per completion, e.g.
  `gather_cache` of the distinct prompts' cache): only the L tokens
  [prompt[-1], completion[:-1]] go through the model."""
  p = prompt_BxP.shape[1]
  tokens_BxS = jnp.concatenate([prompt_BxP, tokens_BxL[:, :-1]], axis=1)
  mask_BxS = jnp.concatenate([prompt_mask_BxP, mask_BxL[:, :-1]], axis=1)
  positions_BxS = positions_from_mask(mask_BxS)
  hidden_BxLxD, _ = model.hidden_states(
      tokens_BxS[:, p - 1:], positions_BxS[:, p - 1:],
      causal_mask(mask_BxS)[:, p - 1:],
      grow_cache(cache_BxP1, tokens_BxL.shape[1]), p - 1)
  return hidden_BxLxD


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """log p(target) under softmax(logits), float32, [B, T]."""
  logits = logits_BxTxV.astype(jnp.float32)
  logz_BxT = jax.nn.logsumexp(logits, axis=-1)
  picked_BxT = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
  return picked_BxT - logz_BxT


def count_params(params: Params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
