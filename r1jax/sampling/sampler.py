"""Batched sampling over a KV cache: one prefill, then segmented while_loops.

    sampler = Sampler(graphdef, cfg, pad_id=tok.pad_id, eos_ids=[tok.eos_id])
    out = sampler.generate(params, prompt_ids, max_new_tokens=256, n=16,
                           temperature=1.0, seed=step)
    # out.tokens [B*n, L], out.mask, out.logprobs (old-policy values), ...

Two jitted programs run per call:
  * prefill: the B left-padded prompts through the model once, writing a
    [B, P] cache; the cache and the last logits are then repeated n times
    along the batch (the GRPO group shares its prompt's prefill), and the
    first token is sampled;
  * decode: `lax.while_loop`s of one token per step that stop when every row
    has produced a stop token or max_new_tokens are out. The budget L is
    split into `decode_segments` segments (`segment_ends`); the segment
    ending at token e runs over a cache of P + e slots, grown once when it
    starts, so a step attends over at most one segment of empty slots rather
    than over all P + L (the cache is read in full by every step, and on CPU
    that read costs about as much as the step's attention arithmetic). The
    loop carry (cache and output buffers) is updated in place.

Shapes are bucketed so that steady-state calls never recompile: the prompt
width P to `prompt_buckets`, the budget L to `budget_bucket(max_new_tokens)`
(the loop still stops at exactly max_new_tokens), and the batch to a multiple
of the mesh's batch shards. The values of temperature, top_p, min_p, the
seed, max_new_tokens and the stop ids are traced arguments; only which
filters run (and top_k's value), whether the temperature is exactly 1 and
`logprobs_nucleus` are static.

The recorded log-probs are those of the distribution sampled: the policy at
the sampling temperature (as TRL's and verl's trainers score it), or with
`logprobs_nucleus` the renormalised top-k / top-p / min-p distribution; a
trainer scores its own forward pass the same way with
`controls.policy_logits`.
"""

import collections
from collections.abc import Sequence
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from r1jax import parallel
from r1jax.model.config import ModelConfig
from r1jax.model.functional import causal_mask, positions_from_mask
from r1jax.model.transformer import Cache, cache_slots, grow_cache, init_cache
from r1jax.sampling import controls

FINISH_STOP = 0    # the row produced one of the stop ids
FINISH_LENGTH = 1  # the row ran out of budget
DECODE_SEGMENTS = 4  # Sampler's default (see segment_ends)


class SampleOutput(NamedTuple):
  """The sampled completions, rows prompt-major (prompt 0's n samples first).

  Arrays stay on device (batch-sharded with a mesh). L is max_new_tokens
  rounded up to its bucket and P the prompt bucket, so a training step fed
  with these keeps fixed shapes.

  Attributes:
    tokens: [B*n, L] int32 completion ids; pad_id where `mask` is False.
    mask: [B*n, L] bool, True for generated tokens up to and including the
      stop token.
    logprobs: [B*n, L] float32 log-probability of each sampled token under
      the distribution it was sampled from: log_softmax(logits / temperature)
      (temperature 1 when greedy); with `logprobs_nucleus`, under the
      top-k / top-p / min-p distribution renormalised over the kept tokens.
      0 where `mask` is False. Equal to a teacher-forced forward pass of the
      same params scored the same way (`controls.policy_logits`).
    lengths: [B*n] int32, number of True entries of `mask`.
    finish_reason: [B*n] int32, FINISH_STOP (0) or FINISH_LENGTH (1).
    prompt_tokens: [B*n, P] int32 left-padded prompt ids (repeated n times).
    prompt_mask: [B*n, P] bool, True on real prompt tokens.
  """
  tokens: jax.Array
  mask: jax.Array
  logprobs: jax.Array
  lengths: jax.Array
  finish_reason: jax.Array
  prompt_tokens: jax.Array
  prompt_mask: jax.Array


class _State(NamedTuple):
  """The decode loop's carry; `step` tokens of every row are written."""
  step: jax.Array          # int32 scalar
  tokens_BxL: jax.Array    # int32, column i = token i of each row
  logprobs_BxL: jax.Array  # float32
  length_B: jax.Array      # int32, tokens up to and including a stop token
  done_B: jax.Array        # bool, a stop token was produced
  cache: Cache             # per layer; P + (segment end) slots


class _Knobs(NamedTuple):
  """Traced (non-static) settings of one call."""
  key: jax.Array
  temperature: jax.Array
  top_p: jax.Array
  min_p: jax.Array
  max_new_tokens: jax.Array  # int32 scalar <= L
  stop_ids: jax.Array        # int32 [multiple of 8], padded with -1


def budget_bucket(n: int, minimum: int = 32) -> int:
  """The smallest of 32, 48, 64, 96, 128, 192, ... (2^k and 3 * 2^(k-1)) >= n.

  Steps of at most 1.5x keep the cache and the attention span (which every
  step reads in full) within 50% of what the budget needs, with two
  programs per octave.
  """
  size = minimum
  while size < n:
    size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
  return size


def segment_ends(budget: int, segments: int) -> tuple[int, ...]:
  """Where the decode loop's segments end (token counts); the last = budget.

  Each segment is its own while_loop over a cache of P + end slots, so a
  step reads (and attends over) only the slots its segment can have
  written, not the whole budget's; each compiles its own loop body. Ends are
  multiples of 8, at most `segments` of them, none shorter than 32 tokens.
  """
  size = max(32, -(-budget // segments))
  size = -(-size // 8) * 8
  return tuple(range(size, budget, size)) + (budget,)


def _is_array_pair(prompts) -> bool:
  """True for (ids_BxP, mask_BxP) arrays, False for a list of id lists."""
  return (isinstance(prompts, tuple) and len(prompts) == 2 and
          np.ndim(prompts[0]) == 2)


def _stop_array(ids: Sequence[int]) -> np.ndarray:
  ids = sorted({int(i) for i in ids})
  width = max(8, -(-len(ids) // 8) * 8)
  return np.array(ids + [-1] * (width - len(ids)), np.int32)


@dataclasses.dataclass(frozen=True)
class _Static:
  """Static arguments of the prefill (hashable)."""
  n: int
  budget: int
  mode: controls.Mode


class Sampler:
  """Prefill + while_loop sampler over one graph definition.

  `traces` counts how often each program was traced (compiled); a steady
  state shows no growth. `trace_shapes` logs the prompt batch shape of each
  prefill trace (B, not B * n). `decode_segments` (see `segment_ends`)
  trades compile time (one loop body per segment) for steps that skip the
  empty end of the cache; 1 gives a single loop over all P + L slots.
  """

  def __init__(self, graphdef: nnx.GraphDef, cfg: ModelConfig, *, pad_id: int,
               eos_ids: Sequence[int], cache_dtype: Any = None,
               prompt_buckets: Sequence[int] = (32, 64, 128, 256, 512, 1024),
               mesh: Mesh | None = None,
               decode_segments: int = DECODE_SEGMENTS):
    self.graphdef = graphdef
    self.cfg = cfg
    self.pad_id = int(pad_id)
    self.eos_ids = tuple(int(i) for i in eos_ids)
    self.cache_dtype = jnp.dtype(cache_dtype or cfg.dtype)
    self.prompt_buckets = tuple(sorted(prompt_buckets))
    self.mesh = mesh
    if decode_segments < 1:
      raise ValueError(f'decode_segments must be >= 1, got {decode_segments}')
    self.decode_segments = int(decode_segments)
    self.traces = collections.Counter()
    self.trace_shapes: list[tuple[str, tuple[int, ...]]] = []
    self._prefill = jax.jit(self._prefill_fn, static_argnames=('static',))
    self._decode = jax.jit(self._decode_fn, static_argnames=('mode',))

  # ------------------------------------------------------------ sharding
  @property
  def batch_multiple(self) -> int:
    """This process's batch of prompts is padded to a multiple of this.

    In a multi-process run each process passes its own prompts, which
    together form one global batch over the mesh.
    """
    if self.mesh is None:
      return 1
    return max(1, parallel.batch_size_divisor(self.mesh) // jax.process_count())

  def _constrain(self, x: jax.Array, heads_dim: int | None = None) -> jax.Array:
    """Pins x's leading (batch) dim to the mesh's batch axes."""
    if self.mesh is None:
      return x
    batch_spec = parallel.batch_spec(self.mesh)
    spec = [batch_spec[0] if len(batch_spec) else None] + [None] * (x.ndim - 1)
    tensor = self.mesh.shape.get('tensor', 1)
    if heads_dim is not None and tensor > 1 and x.shape[heads_dim] % tensor == 0:
      spec[heads_dim] = 'tensor'
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(self.mesh, P(*spec)))

  def _constrain_cache(self, cache: Cache) -> Cache:
    return [{name: self._constrain(x, heads_dim=1) for name, x in layer.items()}
            for layer in cache]

  # -------------------------------------------------------------- prefill
  def _prefill_fn(self, params, ids_BxP, mask_BxP, knobs: _Knobs, *,
                  static: _Static):
    self.traces['prefill'] += 1
    self.trace_shapes.append(('prefill', tuple(ids_BxP.shape)))
    model = nnx.merge(self.graphdef, params)
    b, p = ids_BxP.shape
    n, budget = static.n, static.budget
    cache = init_cache(self.cfg, b, p, self.cache_dtype)
    hidden_BxPxD, cache = model.hidden_states(
        ids_BxP, positions_from_mask(mask_BxP), causal_mask(mask_BxP), cache, 0)
    # Left padding puts every prompt's last token in the last column.
    logits_BxV = model.logits(hidden_BxPxD[:, -1:])[:, 0]

    # Share the prefill across the group (the decode opens the new slots).
    cache = self._constrain_cache(
        jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), cache))
    logits_BxV = self._constrain(jnp.repeat(logits_BxV, n, axis=0))
    prompt_ids = self._constrain(jnp.repeat(ids_BxP, n, axis=0))
    prompt_mask = self._constrain(jnp.repeat(mask_BxP, n, axis=0))

    token_B, logprob_B = self._choose(logits_BxV, knobs, 0, static.mode)
    bn = b * n
    tokens_BxL = jnp.full((bn, budget), self.pad_id, jnp.int32)
    logprobs_BxL = jnp.zeros((bn, budget), jnp.float32)
    state = _State(
        step=jnp.ones((), jnp.int32),
        tokens_BxL=self._constrain(tokens_BxL.at[:, 0].set(token_B)),
        logprobs_BxL=self._constrain(logprobs_BxL.at[:, 0].set(logprob_B)),
        length_B=jnp.ones((bn,), jnp.int32),
        done_B=self._is_stop(token_B, knobs.stop_ids),
        cache=cache)
    return state, prompt_ids, prompt_mask

  # --------------------------------------------------------------- decode
  def _decode_fn(self, params, state: _State, prompt_mask_BxP, knobs: _Knobs,
                 *, mode: controls.Mode):
    self.traces['decode'] += 1
    model = nnx.merge(self.graphdef, params)
    bn, p = prompt_mask_BxP.shape
    budget = state.tokens_BxL.shape[1]
    prompt_len_B = jnp.sum(prompt_mask_BxP, axis=-1, dtype=jnp.int32)

    def run_segment(st: _State, end: int) -> _State:
      """Steps up to token `end` over a cache of P + end slots."""
      slots = p + end
      # Keys visible to every step: the real prompt tokens, then (per step)
      # the generated slots written so far.
      prompt_keys_BxS = jnp.pad(prompt_mask_BxP, ((0, 0), (0, end)))
      slot_1xS = jnp.arange(slots, dtype=jnp.int32)[None, :]

      def cond(st: _State):
        return ((st.step < jnp.minimum(knobs.max_new_tokens, end)) &
                ~jnp.all(st.done_B))

      def body(st: _State):
        i = st.step
        slot = p + i - 1  # cache slot of token i - 1, fed now
        last_Bx1 = jax.lax.dynamic_slice_in_dim(st.tokens_BxL, i - 1, 1, axis=1)
        positions_Bx1 = (prompt_len_B + i - 1)[:, None]
        mask_Bx1xS = (prompt_keys_BxS | ((slot_1xS >= p) & (slot_1xS <= slot))
                      )[:, None, :]
        logits_Bx1xV, cache = model(last_Bx1, positions_Bx1, mask_Bx1xS,
                                    st.cache, slot)
        token_B, logprob_B = self._choose(logits_Bx1xV[:, 0], knobs, i, mode)
        alive_B = ~st.done_B
        return _State(
            step=i + 1,
            tokens_BxL=jax.lax.dynamic_update_slice_in_dim(
                st.tokens_BxL, token_B[:, None], i, axis=1),
            logprobs_BxL=jax.lax.dynamic_update_slice_in_dim(
                st.logprobs_BxL, logprob_B[:, None], i, axis=1),
            length_B=st.length_B + alive_B.astype(jnp.int32),
            done_B=st.done_B | self._is_stop(token_B, knobs.stop_ids),
            cache=cache)

      st = st._replace(cache=self._constrain_cache(
          grow_cache(st.cache, slots - cache_slots(st.cache))))
      return jax.lax.while_loop(cond, body, st)

    for end in segment_ends(budget, self.decode_segments):
      state = run_segment(state, end)
    valid_BxL = (jnp.arange(budget, dtype=jnp.int32)[None, :] <
                 state.length_B[:, None])
    # `done` can only be set by a token inside the length, so it tells why the
    # row ended.
    out = (jnp.where(valid_BxL, state.tokens_BxL, self.pad_id),
           valid_BxL,
           jnp.where(valid_BxL, state.logprobs_BxL, 0.0),
           state.length_B,
           jnp.where(state.done_B, FINISH_STOP, FINISH_LENGTH).astype(jnp.int32))
    return out

  # -------------------------------------------------------------- helpers
  def _choose(self, logits_BxV, knobs: _Knobs, step, mode: controls.Mode):
    key = jax.random.fold_in(knobs.key, step)
    return controls.sample(key, logits_BxV, mode, knobs.temperature,
                           knobs.top_p, knobs.min_p)

  @staticmethod
  def _is_stop(token_B, stop_ids):
    return jnp.any(token_B[:, None] == stop_ids[None, :], axis=-1)

  def prompt_bucket(self, length: int) -> int:
    """The prompt width used for prompts of at most `length` tokens."""
    for b in self.prompt_buckets:
      if b >= length:
        return b
    raise ValueError(
        f'A prompt of {length} tokens exceeds the largest prompt bucket '
        f'{self.prompt_buckets[-1]}; add a bucket to Sampler(prompt_buckets=).')

  def _pad_prompts(self, prompts) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (ids, mask) at a bucket width and a batch multiple."""
    if _is_array_pair(prompts):
      ids, mask = (np.asarray(x) for x in prompts)
      if ids.shape != mask.shape or ids.ndim != 2:
        raise ValueError(f'Prompt ids {ids.shape} and mask {mask.shape} must '
                         'be two [B, P] arrays.')
      mask = mask.astype(bool)
      if not mask[:, -1].all():
        raise ValueError('Prompts must be left-padded (mask True in the last '
                         'column).')
      seqs = [row[m] for row, m in zip(ids, mask)]
    else:
      seqs = [np.asarray(s, np.int32) for s in prompts]
    if not seqs:
      raise ValueError('No prompts given.')
    if min(len(s) for s in seqs) == 0:
      raise ValueError('Every prompt needs at least one token.')
    width = self.prompt_bucket(max(len(s) for s in seqs))
    rows = -(-len(seqs) // self.batch_multiple) * self.batch_multiple
    ids = np.full((rows, width), self.pad_id, np.int32)
    mask = np.zeros((rows, width), bool)
    for r, s in enumerate(seqs):
      ids[r, width - len(s):] = s
      mask[r, width - len(s):] = True
    mask[len(seqs):, -1] = True  # batch-padding rows: one pad token each
    return ids, mask

  def _device_put(self, x):
    if self.mesh is None:
      return jnp.asarray(x)
    # Each process's rows of the global batch (a device_put with one process).
    return parallel.host_local_to_global(x, self.mesh)

  def cache_bytes(self, batch: int, prompt_len: int, max_new_tokens: int) -> int:
    """Bytes of the decode KV cache for `batch` rows (all samples)."""
    cfg = self.cfg
    slots = self.prompt_bucket(prompt_len) + budget_bucket(max_new_tokens)
    return (2 * cfg.num_layers * batch * slots * cfg.num_kv_heads *
            cfg.head_dim * self.cache_dtype.itemsize)

  # ------------------------------------------------------------------ API
  def generate(self, params, prompt_ids, *, max_new_tokens: int, n: int = 1,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               min_p: float = 0.0, seed: int | jax.Array = 0,
               stop_ids: Sequence[int] = (),
               logprobs_nucleus: bool = False) -> SampleOutput:
    """Samples n completions of each prompt.

    Args:
      params: model parameters of this sampler's graphdef (sharded or not).
      prompt_ids: a list of token-id lists, or left-padded (ids_BxP, mask_BxP)
        numpy arrays; re-padded to the prompt bucket either way.
      max_new_tokens: the exact budget per row (the loop stops there).
      n: samples per prompt (GRPO group size); they share one prefill.
      temperature: 0 is greedy decoding.
      top_k: keep the k most likely tokens (0: off). Static: each value used
        compiles its own program.
      top_p: nucleus mass (1: off).
      min_p: drop tokens below min_p * max probability (0: off).
      seed: int, or a jax PRNG key (typed or raw uint32). A call is a pure
        function of (params, prompts, settings, seed).
      stop_ids: stop tokens in addition to the sampler's eos_ids.
      logprobs_nucleus: record log-probs under the truncated (top-k / top-p /
        min-p) distribution renormalised over its kept tokens, rather than
        under the full tempered one. No effect without a filter or when
        greedy. Static (compiles its own program).

    Returns:
      A SampleOutput with B * n rows.
    """
    if max_new_tokens < 1:
      raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
    if n < 1:
      raise ValueError(f'n must be >= 1, got {n}')
    mode = controls.Mode.from_settings(temperature, top_k, top_p, min_p,
                                       self.cfg.vocab_size, logprobs_nucleus)
    num_prompts = len(prompt_ids[0] if _is_array_pair(prompt_ids)
                      else prompt_ids)
    ids_BxP, mask_BxP = self._pad_prompts(prompt_ids)
    if isinstance(seed, (int, np.integer)):
      key = jax.random.key(seed)
    elif jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
      key = seed
    else:
      key = jax.random.wrap_key_data(seed)
    knobs = _Knobs(
        key=key,
        temperature=np.float32(temperature),
        top_p=np.float32(top_p),
        min_p=np.float32(min_p),
        max_new_tokens=np.int32(max_new_tokens),
        stop_ids=_stop_array(self.eos_ids + tuple(stop_ids)))
    static = _Static(n=n, budget=budget_bucket(max_new_tokens), mode=mode)
    state, prompt_ids, prompt_mask = self._prefill(
        params, self._device_put(ids_BxP), self._device_put(mask_BxP), knobs,
        static=static)
    tokens, mask, logprobs, lengths, finish = self._decode(
        params, state, prompt_mask, knobs, mode=mode)
    out = SampleOutput(tokens, mask, logprobs, lengths, finish, prompt_ids,
                       prompt_mask)
    if ids_BxP.shape[0] != num_prompts:  # drop the batch-padding rows
      if jax.process_count() > 1:
        raise ValueError(
            f'{num_prompts} prompts on this process are not a multiple of '
            f'{self.batch_multiple} (its share of the mesh batch axes); a '
            'multi-process call must not need batch padding.')
      out = jax.tree.map(lambda x: x[:num_prompts * n], out)
    return out


def generate_text(sampler: Sampler, params, tokenizer, prompts: Sequence[str],
                  **kwargs) -> list[str]:
  """Completions as text (stop token removed), n per prompt, prompt-major.

  `kwargs` go to `Sampler.generate` (max_new_tokens is required).
  """
  ids = [tokenizer.encode(p) for p in prompts]
  out = jax.device_get(sampler.generate(params, ids, **kwargs))
  texts = []
  for row, length, finish in zip(out.tokens, out.lengths, out.finish_reason):
    keep = int(length) - (1 if finish == FINISH_STOP else 0)
    texts.append(tokenizer.decode(row[:keep]))
  return texts
