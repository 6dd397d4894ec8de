"""Sampling controls: temperature, top-k, top-p, min-p and a cheap draw.

Everything here maps one row of logits to one token, per row, so a batch
sharded over devices needs no communication.

Two choices keep a decode step cheap on CPU (64 x 8192 logits, 2 shared
cores):
  * The draw is inverse-CDF sampling with one uniform number per row, not
    Gumbel-max / `jax.random.categorical`, which need a random number and two
    logs per vocabulary entry (7-20 ms per step with threefry here; still ~7 ms
    with a hash RNG). The cumulative sum is two-level (blocks of ~sqrt(V)
    tokens, each level one small matmul with a triangular matrix), so no scan
    runs over the vocabulary: ~0.5 ms per step, log-probability included.
  * Top-p finds its probability threshold by bisection on the float32 bit
    pattern (31 masked sums over the vocabulary, ~6 ms per step) instead of
    sorting it (~100 ms for a full sort on XLA:CPU). The threshold is exact,
    so the kept set is the nucleus; tokens tied with the last one kept are
    all kept.

Which filters run is static (`Mode`): a disabled filter costs nothing.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Mode:
  """The static part of the sampling settings (part of the compile key).

  Attributes:
    greedy: take the argmax (temperature 0); the other fields are ignored.
    unit_temperature: temperature is exactly 1 (skip the division).
    top_k: keep the k most likely tokens; 0 disables. Static because
      `lax.top_k` needs a static k.
    top_p: whether the nucleus filter runs (its value is dynamic).
    min_p: whether the min-p filter runs (its value is dynamic).
  """
  greedy: bool = False
  unit_temperature: bool = True
  top_k: int = 0
  top_p: bool = False
  min_p: bool = False

  @classmethod
  def from_settings(cls, temperature: float, top_k: int, top_p: float,
                    min_p: float, vocab_size: int) -> 'Mode':
    """Validates user settings and keeps only the filters that do something."""
    if temperature < 0:
      raise ValueError(f'temperature must be >= 0, got {temperature}')
    if top_k < 0:
      raise ValueError(f'top_k must be >= 0 (0 disables it), got {top_k}')
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f'top_p must be in (0, 1], got {top_p}')
    if not 0.0 <= min_p <= 1.0:
      raise ValueError(f'min_p must be in [0, 1], got {min_p}')
    if temperature == 0:
      return cls(greedy=True)
    return cls(unit_temperature=temperature == 1.0,
               top_k=top_k if 0 < top_k < vocab_size else 0,
               top_p=top_p < 1.0, min_p=min_p > 0.0)


def greedy(logits_BxV: jax.Array) -> jax.Array:
  """Argmax per row, lowest index on ties (as jnp.argmax).

  Written as max + masked min: XLA:CPU's variadic argmax reduction is ~3x
  slower than two plain reductions.
  """
  max_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
  iota_BxV = jax.lax.broadcasted_iota(jnp.int32, logits_BxV.shape, 1)
  v = logits_BxV.shape[-1]
  return jnp.min(jnp.where(logits_BxV >= max_Bx1, iota_BxV, v), axis=-1)


def top_k_filter(logits_BxV: jax.Array, k: int) -> jax.Array:
  """-inf outside the k largest logits per row (ties with the k-th kept)."""
  kth_Bx1 = jax.lax.top_k(logits_BxV, k)[0][:, k - 1:k]
  return jnp.where(logits_BxV >= kth_Bx1, logits_BxV, _NEG_INF)


def top_p_filter(logits_BxV: jax.Array, top_p: jax.Array | float) -> jax.Array:
  """-inf outside the nucleus: the most likely tokens whose mass reaches top_p.

  Keeps token i iff p_i >= t*, where t* is the largest threshold such that the
  tokens with p >= t* hold at least `top_p` of the probability. That is the
  smallest such set of most likely tokens (plus any tied with its least likely
  member), and always holds the argmax.

  t* is found by bisection over the bit patterns of non-negative float32s,
  which are ordered like the floats themselves: 31 halvings of [0, bits(1.0)]
  pin it exactly.
  """
  max_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
  unnorm_BxV = jnp.exp(logits_BxV - max_Bx1)
  probs_BxV = unnorm_BxV / jnp.sum(unnorm_BxV, axis=-1, keepdims=True)
  bits_BxV = jax.lax.bitcast_convert_type(probs_BxV, jnp.int32)
  top_p = jnp.asarray(top_p, jnp.float32)
  b = logits_BxV.shape[0]
  # Invariant: mass(p >= lo) >= top_p > mass(p >= hi) (bits of 1.0 + 1 keeps
  # nothing).
  lo_Bx1 = jnp.zeros((b, 1), jnp.int32)
  hi_Bx1 = jnp.full((b, 1), 0x3F800001, jnp.int32)

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    mass = jnp.sum(jnp.where(bits_BxV >= mid, probs_BxV, 0.0), axis=-1,
                   keepdims=True)
    ok = mass >= top_p
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  lo_Bx1, _ = jax.lax.fori_loop(0, 31, halve, (lo_Bx1, hi_Bx1))
  return jnp.where(bits_BxV >= lo_Bx1, logits_BxV, _NEG_INF)


def min_p_filter(logits_BxV: jax.Array, min_p: jax.Array | float) -> jax.Array:
  """-inf for tokens less likely than min_p times the most likely one."""
  max_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
  floor_Bx1 = max_Bx1 + jnp.log(jnp.asarray(min_p, jnp.float32))
  return jnp.where(logits_BxV >= floor_Bx1, logits_BxV, _NEG_INF)


def _block_size(v: int) -> int:
  return 1 << max(0, math.ceil(math.log2(math.sqrt(v))))


def _exclusive_cumsum(mass_BxM: jax.Array) -> jax.Array:
  """Prefix sums before each entry, as one small matmul with a triangle.

  M is ~sqrt(V), so the [M, M] product is cheap; `jnp.cumsum` lowers to a
  chain of reduce-windows on XLA:CPU, several ops per call.
  """
  m = mass_BxM.shape[-1]
  strictly_upper_MxM = jnp.triu(jnp.ones((m, m), mass_BxM.dtype), k=1)
  return jnp.dot(mass_BxM, strictly_upper_MxM,
                 precision=jax.lax.Precision.HIGHEST)


def draw(key: jax.Array, weights_BxV: jax.Array) -> jax.Array:
  """One index per row with probability proportional to `weights` (>= 0).

  Inverse-CDF sampling: u ~ U[0, 1) per row, and the index whose interval of
  the cumulative weights holds u * total. The cumulative sum is two-level:
  over blocks of ~sqrt(V) entries, then inside the chosen block. Entries of
  zero weight are never returned, also when rounding pushes u * total past
  the last interval.
  """
  b, v = weights_BxV.shape
  bs = _block_size(v)
  nb = -(-v // bs)
  if nb * bs != v:
    weights_BxV = jnp.pad(weights_BxV, ((0, 0), (0, nb * bs - v)))
  weights_BxNxS = weights_BxV.reshape(b, nb, bs)

  def pick(mass_BxM, target_B):
    """Last index whose exclusive prefix sum <= target, among nonzero ones."""
    excl_BxM = _exclusive_cumsum(mass_BxM)
    ok_BxM = (excl_BxM <= target_B[:, None]) & (mass_BxM > 0)
    iota_BxM = jax.lax.broadcasted_iota(jnp.int32, mass_BxM.shape, 1)
    idx_B = jnp.max(jnp.where(ok_BxM, iota_BxM, 0), axis=-1)
    excl_B = jnp.take_along_axis(excl_BxM, idx_B[:, None], axis=-1)[:, 0]
    return idx_B, excl_B

  block_mass_BxN = jnp.sum(weights_BxNxS, axis=-1)
  total_B = jnp.sum(block_mass_BxN, axis=-1)
  target_B = jax.random.uniform(key, (b,), jnp.float32) * total_B
  block_B, before_B = pick(block_mass_BxN, target_B)
  row_BxS = jnp.take_along_axis(weights_BxNxS, block_B[:, None, None],
                                axis=1)[:, 0]
  within_B, _ = pick(row_BxS, target_B - before_B)
  return block_B * bs + within_B


def categorical(key: jax.Array, logits_BxV: jax.Array) -> jax.Array:
  """One token per row from softmax(logits) (-inf logits are never drawn)."""
  max_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
  return draw(key, jnp.exp(logits_BxV - max_Bx1))


def filter_logits(logits_BxV: jax.Array, mode: Mode, temperature, top_p,
                  min_p) -> jax.Array:
  """Tempered logits with the enabled filters applied, in the order
  temperature -> top-k -> top-p -> min-p (that of HF's logits warpers)."""
  if not mode.unit_temperature:
    logits_BxV = logits_BxV / jnp.asarray(temperature, jnp.float32)
  if mode.top_k:
    logits_BxV = top_k_filter(logits_BxV, mode.top_k)
  if mode.top_p:
    logits_BxV = top_p_filter(logits_BxV, top_p)
  if mode.min_p:
    logits_BxV = min_p_filter(logits_BxV, min_p)
  return logits_BxV


def sample(key: jax.Array, logits_BxV: jax.Array, mode: Mode, temperature=1.0,
           top_p=1.0, min_p=0.0) -> tuple[jax.Array, jax.Array]:
  """(token_B, logprob_B): a token per row and its policy log-probability.

  The log-probability is that of the unmodified policy, log_softmax(logits)
  at temperature 1 and without filters, whatever the sampling settings: the
  quantity a policy-gradient trainer compares its own forward pass against.
  """
  max_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
  weights_BxV = jnp.exp(logits_BxV - max_Bx1)
  if mode.greedy:
    token_B = greedy(logits_BxV)
  elif mode == Mode():  # plain sampling: draw from the weights just computed
    token_B = draw(key, weights_BxV)
  else:
    token_B = categorical(
        key, filter_logits(logits_BxV, mode, temperature, top_p, min_p))
  picked_B = jnp.take_along_axis(logits_BxV, token_B[:, None], axis=-1)[:, 0]
  log_z_B = jnp.log(jnp.sum(weights_BxV, axis=-1)) + max_Bx1[:, 0]
  return token_B, picked_B - log_z_B
