"""DAPO dynamic sampling: which groups of a round have reward spread (host).

A group whose G rewards are all equal has zero advantage and adds no policy
gradient. DAPO (Yu et al. 2025) drops such groups and samples more prompts
until the batch holds enough informative ones. `has_spread` decides; the GRPO
stage's rollout (`stages/grpo_rollout.Rollout`, switch `rl.dynamic_sampling`)
samples rounds, keeps the groups with spread, and stops when it has
`rl.prompts_per_step` of them or after `rl.max_sampling_rounds`.
"""

import numpy as np


def has_spread(rewards_PxG, atol: float = 0.0) -> np.ndarray:
  """[P] bool: True where a group's rewards differ (max - min > atol)."""
  r_PxG = np.asarray(rewards_PxG, dtype=np.float64)
  if r_PxG.ndim != 2:
    raise ValueError(f'rewards must have shape [P, G]; got {r_PxG.shape}.')
  return np.ptp(r_PxG, axis=1) > atol
