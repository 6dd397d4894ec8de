"""DAPO dynamic sampling: keep only groups whose rewards differ (host side).

A group whose G rewards are all equal has zero advantage and adds no policy
gradient. DAPO (Yu et al. 2025) drops such groups and samples more prompts
until the batch holds `target_num_groups` informative ones. This module only
decides; the trainer samples, calls `filter_groups` on each round's rewards,
and concatenates what it keeps:

  kept = []
  while True:
    rewards_PxG = rollout(prompts)                   # numpy [P, G]
    sel = filter_groups(rewards_PxG, target - len(kept))
    kept += [groups[i] for i in sel.indices]
    if sel.num_missing == 0:
      break
    prompts = next_prompts(sel.num_prompts_to_sample)
"""

from typing import NamedTuple

import numpy as np


class GroupSelection(NamedTuple):
  """indices: rows of rewards_PxG to keep (informative groups, in order, at
    most the target); num_missing: informative groups still needed to reach
    the target; num_prompts_to_sample: how many new prompts to roll out to
    expect to get them, at this round's rate of informative groups."""

  indices: np.ndarray
  num_missing: int
  num_prompts_to_sample: int


def has_spread(rewards_PxG, atol: float = 0.0) -> np.ndarray:
  """[P] bool: True where a group's rewards differ (max - min > atol)."""
  r_PxG = np.asarray(rewards_PxG, dtype=np.float64)
  if r_PxG.ndim != 2:
    raise ValueError(f'rewards must have shape [P, G]; got {r_PxG.shape}.')
  return np.ptp(r_PxG, axis=1) > atol


def filter_groups(
    rewards_PxG, target_num_groups: int, atol: float = 0.0
) -> GroupSelection:
  """Picks the groups with non-zero reward spread, up to the target.

  Args:
    rewards_PxG: rewards of one rollout round, numpy or jax, [P, G].
    target_num_groups: informative groups still wanted (>= 0).
    atol: spreads at or below this count as zero (for noisy float rewards).

  Returns:
    A GroupSelection. num_prompts_to_sample is ceil(num_missing / rate), with
    rate the fraction of informative groups this round, counted as at least
    one group so that a round with none still suggests a finite number.
  """
  if target_num_groups < 0:
    raise ValueError(
        f'target_num_groups must be >= 0; got {target_num_groups}.')
  ok_P = has_spread(rewards_PxG, atol)
  good = np.flatnonzero(ok_P)
  indices = good[:target_num_groups]
  num_missing = target_num_groups - len(indices)
  num_prompts = 0
  if num_missing:
    # ceil(num_missing / rate) in integers, rate = max(#good, 1) / P.
    num_prompts = -(-num_missing * max(len(ok_P), 1) // max(len(good), 1))
  return GroupSelection(indices, num_missing, num_prompts)
