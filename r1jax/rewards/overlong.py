"""DAPO's overlong reward shaping and truncation masking (Yu et al., 2025).

These work on token counts, not strings, so they have their own signatures
rather than the batch reward signature.

Soft overlong punishment (DAPO eq. 13), for a completion of L tokens, a
maximum length L_max and a buffer L_cache:

    R(L) = 0                            if L <= L_max - L_cache
         = (L_max - L_cache - L) / L_cache   if L_max - L_cache < L <= L_max
         = -1                           if L > L_max

It is added to the task reward. Overlong filtering instead drops truncated
completions from the loss: `truncation_mask` gives the weights.
"""

import numpy as np

from r1jax.rewards.registry import REWARDS


def overlong_penalty(
    lengths_B: np.ndarray, max_len: int, buffer: int
) -> np.ndarray:
  """DAPO's soft length penalty in [-1, 0], one per completion (float32).

  Args:
    lengths_B: completion lengths in tokens.
    max_len: L_max, the generation budget in tokens.
    buffer: L_cache, the length of the linear ramp before `max_len`
      (0 gives a hard -1 above `max_len` and 0 otherwise).
  """
  if buffer < 0 or buffer > max_len:
    raise ValueError(f'need 0 <= buffer <= max_len, got {buffer=} {max_len=}')
  lengths_B = np.asarray(lengths_B, np.float64)
  start = max_len - buffer
  ramp = (start - lengths_B) / max(buffer, 1)
  penalty = np.where(lengths_B <= start, 0.0, ramp)
  penalty = np.where(lengths_B > max_len, -1.0, penalty)
  return penalty.astype(np.float32)


def truncation_mask(finished_B: np.ndarray) -> np.ndarray:
  """1.0 for completions that ended (EOS / stop), 0.0 for truncated ones.

  Multiply per-sequence loss weights by it to leave truncated completions out
  of the loss (DAPO's overlong filtering).
  """
  return np.asarray(finished_B, bool).astype(np.float32)


@REWARDS.register('overlong', inputs=('lengths_B', 'metrics'))
def overlong_reward(
    completions, examples, *, lengths_B: np.ndarray | None = None,
    max_len: int, buffer: int, metrics: dict[str, float] | None = None,
) -> np.ndarray:
  """The penalty as a registered reward (`'overlong'` in `REWARDS`).

  Token lengths are not in the strings: `compute_rewards(..., lengths_B=...)`
  passes them to rewards that take `lengths_B`. `max_len` and `buffer` come
  from the config options. A length that is not a finite number scores 0 and
  is counted in `metrics['errors']`. Constant time per completion.
  """
  if lengths_B is None:
    raise ValueError(
        "The 'overlong' reward needs token lengths: call "
        'compute_rewards(..., lengths_B=completion_lengths).')
  lengths_B = np.asarray(lengths_B)
  if lengths_B.shape != (len(completions),):
    raise ValueError(
        f'lengths_B has shape {lengths_B.shape}, '
        f'expected ({len(completions)},)')
  del examples
  lengths_B = np.asarray(lengths_B, np.float64)
  bad_B = ~np.isfinite(lengths_B)
  penalty_B = overlong_penalty(np.where(bad_B, 0.0, lengths_B), max_len, buffer)
  if metrics is not None:
    metrics['errors'] = metrics.get('errors', 0.0) + float(bad_B.sum())
  return np.where(bad_B, np.float32(0), penalty_B).astype(np.float32)
