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

The log-probability `sample` records is that of the distribution sampled
(the one a policy-gradient trainer must score, `policy_logits`):
log_softmax(logits / T) by default, as TRL's and verl's trainers score the
policy at the sampling temperature; with `Mode.nucleus_logprobs`, the
renormalised distribution left by top-k / top-p / min-p (what is actually
drawn from). Greedy decoding (T = 0) records temperature-1 log-probs: its
distribution is a point mass, whose log-prob (0) says nothing.
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
    nucleus_logprobs: log-probs are those of the truncated distribution
      (renormalised over the tokens the filters keep), not of the full
      tempered one. Only set when a filter runs.
  """
  greedy: bool = False
  unit_temperature: bool = True
  top_k: int = 0
  top_p: bool = False
  min_p: bool = False
  nucleus_logprobs: bool = False

  @property
  def truncates(self) -> bool:
    """Whether a filter (top-k, top-p, min-p) runs."""
    return bool(self.top_k or self.top_p or self.min_p)

  @classmethod
  def from_settings(cls, temperature: float, top_k: int, top_p: float,
                    min_p: float, vocab_size: int,
                    nucleus_logprobs: bool = False) -> 'Mode':
    """Validates user settings and keeps only the filters that do something
    (and `nucleus_logprobs` only when one does; it is ignored when greedy)."""
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
    mode = cls(unit_temperature=temperature == 1.0,
               top_k=top_k if 0 < top_k < vocab_size else 0,
               top_p=top_p < 1.0, min_p=min_p > 0.0)
    if nucleus_logprobs and mode.truncates:
      mode = dataclasses.replace(mode, nucleus_logprobs=True)
    return mode


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


def temper(logits_BxV: jax.Array, mode: Mode, temperature) -> jax.Array:
  """logits / temperature; the logits themselves (no float op) when the
  temperature is exactly 1 or the mode is greedy."""
  if mode.greedy or mode.unit_temperature:
    return logits_BxV
  return logits_BxV / jnp.asarray(temperature, jnp.float32)


def truncate(tempered_BxV: jax.Array, mode: Mode, top_p, min_p) -> jax.Array:
  """The enabled filters on tempered logits, in the order top-k -> top-p ->
  min-p (that of HF's logits warpers): -inf outside the kept tokens."""
  if mode.top_k:
    tempered_BxV = top_k_filter(tempered_BxV, mode.top_k)
  if mode.top_p:
    tempered_BxV = top_p_filter(tempered_BxV, top_p)
  if mode.min_p:
    tempered_BxV = min_p_filter(tempered_BxV, min_p)
  return tempered_BxV


def filter_logits(logits_BxV: jax.Array, mode: Mode, temperature, top_p,
                  min_p) -> jax.Array:
  """Tempered logits with the enabled filters applied (what is drawn from)."""
  return truncate(temper(logits_BxV, mode, temperature), mode, top_p, min_p)


def policy_logits(logits_NxV: jax.Array, mode: Mode, temperature, top_p,
                  min_p, targets_N: jax.Array) -> jax.Array:
  """Logits whose log_softmax at `targets` is what `sample` records.

  For a trainer's teacher-forced pass over sampled tokens (any leading
  shape; `targets` has it without V). Tempered logits; with
  `mode.nucleus_logprobs`, -inf outside the tokens the filters keep.

  The kept set is recomputed from these logits (under no gradient), not
  replayed from the sampler: recording it would cost a [B, L, V] mask. Under
  the params that sampled, it is the sampler's set (up to a token within
  float noise of the threshold); under others (the policy being updated,
  the reference) it is the same rule applied to their own logits, so every
  log-prob is that of "sample at this temperature, truncated this way" as a
  function of the params. The target token is always kept (as the sampled
  token always is in the sampler), so a log-prob is never -inf.
  """
  tempered = temper(logits_NxV, mode, temperature)
  if not mode.nucleus_logprobs:
    return tempered
  shape = tempered.shape
  flat_NxV = tempered.reshape(-1, shape[-1])
  filtered = truncate(jax.lax.stop_gradient(flat_NxV), mode, top_p, min_p)
  iota_NxV = jax.lax.broadcasted_iota(jnp.int32, flat_NxV.shape, 1)
  kept_NxV = (jnp.isfinite(filtered) |
              (iota_NxV == targets_N.reshape(-1, 1).astype(jnp.int32)))
  return jnp.where(kept_NxV, flat_NxV, _NEG_INF).reshape(shape)


def _logprob(logits_BxV, token_B, max_Bx1, weights_BxV):
  """log softmax(logits)[token], from the row max and exp(logits - max)."""
  picked_B = jnp.take_along_axis(logits_BxV, token_B[:, None], axis=-1)[:, 0]
  log_z_B = jnp.log(jnp.sum(weights_BxV, axis=-1)) + max_Bx1[:, 0]
  return picked_B - log_z_B


def sample(key: jax.Array, logits_BxV: jax.Array, mode: Mode, temperature=1.0,
           top_p=1.0, min_p=0.0) -> tuple[jax.Array, jax.Array]:
  """(token_B, logprob_B): a token per row and its log-probability under the
  distribution sampled.

  That is log_softmax(logits / temperature) (the filters do not change it),
  or with `mode.nucleus_logprobs` the log-probability under the filtered
  distribution renormalised over the kept tokens. Greedy: log_softmax(logits)
  at temperature 1. At temperature 1 without filters the tokens and
  log-probs are computed exactly as before temperature scoring existed.
  """
  tempered_BxV = temper(logits_BxV, mode, temperature)
  max_Bx1 = jnp.max(tempered_BxV, axis=-1, keepdims=True)
  weights_BxV = jnp.exp(tempered_BxV - max_Bx1)
  if mode.greedy:
    token_B = greedy(logits_BxV)
  elif not mode.truncates:  # plain sampling: draw from the weights computed
    token_B = draw(key, weights_BxV)
  else:
    filtered_BxV = truncate(tempered_BxV, mode, top_p, min_p)
    token_B = categorical(key, filtered_BxV)
    if mode.nucleus_logprobs:
      f_max_Bx1 = jnp.max(filtered_BxV, axis=-1, keepdims=True)
      return token_B, _logprob(filtered_BxV, token_B, f_max_Bx1,
                               jnp.exp(filtered_BxV - f_max_Bx1))
  return token_B, _logprob(tempered_BxV, token_B, max_Bx1, weights_BxV)
