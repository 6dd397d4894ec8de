"""Loss aggregations: how per-token losses [B, T] become one scalar.

Each aggregation is a mean over some unit of the batch (sequences, tokens,
rows), and it is registered in `LOSS_AGGREGATIONS` together with the function
that counts those units in a batch (`Aggregation.units`). Exact gradient
accumulation (`accumulation.py`) needs that count: weighting each
micro-batch's loss by units(micro-batch) / units(mini-batch) makes the
weighted losses sum to the mini-batch's loss. `register` takes both, so an
aggregation cannot be added without its unit count. The names and what each
computes: the table in `r1jax.rl`'s docstring.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from r1jax.registry import Registry


class Aggregation(NamedTuple):
  """A registered loss aggregation.

  aggregate: (loss_BxT, mask_BxT, *, max_len=None) -> float32 scalar, a mean
    of the masked per-token losses over the aggregation's unit.
  units: mask_BxT -> float32 scalar, how many of those units the batch holds.
  """

  aggregate: Callable[..., jax.Array]
  units: Callable[[jax.Array], jax.Array]


LOSS_AGGREGATIONS: Registry[Aggregation] = Registry('loss aggregation')


def register(name: str, *, units: Callable[[jax.Array], jax.Array]):
  """Decorator: register `fn` as aggregation `name` with its unit count."""
  if not callable(units):
    raise TypeError(f'loss aggregation {name!r}: units must be a function of '
                    f'mask_BxT; got {units!r}.')

  def wrap(fn):
    LOSS_AGGREGATIONS.add(name, Aggregation(fn, units))
    return fn
  return wrap


def rows_with_tokens(mask_BxT: jax.Array) -> jax.Array:
  """Units of a mean over sequences: rows with at least one valid token."""
  return jnp.sum((jnp.sum(mask_BxT, axis=1) > 0).astype(jnp.float32))


def tokens(mask_BxT: jax.Array) -> jax.Array:
  """Units of a mean over tokens: the valid tokens."""
  return jnp.sum(mask_BxT.astype(jnp.float32))


def rows(mask_BxT: jax.Array) -> jax.Array:
  """Units of a mean over rows: every row, padding rows included."""
  return jnp.asarray(mask_BxT.shape[0], jnp.float32)


def _masked_loss(loss_BxT, mask_BxT):
  m_BxT = mask_BxT.astype(jnp.float32)
  return jnp.where(m_BxT > 0, loss_BxT.astype(jnp.float32), 0.0) * m_BxT, m_BxT


@register('seq_mean_token_mean', units=rows_with_tokens)
def seq_mean_token_mean(loss_BxT, mask_BxT, *, max_len=None):
  """Mean over sequences of each sequence's token mean (DeepSeekMath eq. 3).

  Every sequence weighs the same, so a token of a long answer weighs less than
  one of a short answer. Rows without any completion token (batch padding) are
  left out of the mean over sequences.
  """
  del max_len
  l_BxT, m_BxT = _masked_loss(loss_BxT, mask_BxT)
  len_B = jnp.sum(m_BxT, axis=1)
  seq_B = jnp.sum(l_BxT, axis=1) / jnp.maximum(len_B, 1.0)
  num_seqs = jnp.sum((len_B > 0).astype(jnp.float32))
  return jnp.sum(seq_B) / jnp.maximum(num_seqs, 1.0)


@register('token_mean', units=tokens)
def token_mean(loss_BxT, mask_BxT, *, max_len=None):
  """Mean over all completion tokens of the batch (DAPO); tokens weigh alike."""
  del max_len
  l_BxT, m_BxT = _masked_loss(loss_BxT, mask_BxT)
  return jnp.sum(l_BxT) / jnp.maximum(jnp.sum(m_BxT), 1.0)


@register('seq_sum_norm', units=rows)
def seq_sum_norm(loss_BxT, mask_BxT, *, max_len=None):
  """Dr. GRPO: sum over tokens / max_len, mean over the B rows.

  The normaliser B * max_len is a constant (max_len defaults to T), so no
  length bias enters through it.
  """
  l_BxT, _ = _masked_loss(loss_BxT, mask_BxT)
  b, t = l_BxT.shape
  return jnp.sum(l_BxT) / (b * (t if max_len is None else max_len))
