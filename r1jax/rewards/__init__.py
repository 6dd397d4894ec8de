"""Rule-based rewards: plain Python over completion strings.

Every reward is registered by name in `REWARDS` with the batch signature

    fn(completions: Sequence[str], examples: Sequence[Mapping], **options)
        -> np.ndarray  # float32, one per completion

where `examples[i]` is the dataset record completion i answers. Registered:

  name            example fields      score
  'math'          answer              1 if the final answer is right
  'format'        -                   1 for exactly <think>..</think><answer>..
  'format_lenient' -                  1 if a think block precedes an answer
  'language'      (target_language)   share of CoT words in the target language
  'code'          tests (code_prefix) 1 if all tests pass (or the fraction)
  'code_format'   -                   1 if the answer is a ```python block
                                      that parses
  'countdown'     numbers, target     1 for a valid equation equal to target
  'arithmetic'    answer              1 for the exact integer
  'overlong'      - (token lengths)   DAPO soft length penalty in [-1, 0]
  'task'          task (+ its fields)  the reward `task` names (mixed pools:
                                      math and code in one run)

`compute_rewards` combines them by weights from the config. Symbolic math
checks run in a process pool (`math_verify_pool`) and programs in a sandbox
(`code_sandbox`), so neither can hang or crash the trainer. The host-side
rest (extraction, normalisation, fast equality, format, language, overlong)
is linear in the completion's length, and a completion on which a reward
raises scores 0 and is counted in `reward/<name>/errors` (see
`registry.score_each`); only invalid options raise. tests/test_rewards_fuzz.py
holds them to that on adversarial completions of up to 200k characters.
"""

from typing import Any, Mapping, Sequence

import numpy as np

# Importing the modules registers their rewards.
from r1jax.rewards import by_task
from r1jax.rewards import code_sandbox
from r1jax.rewards import format as format_rewards
from r1jax.rewards import language
from r1jax.rewards import math_reward
from r1jax.rewards import overlong
from r1jax.rewards import synthetic
from r1jax.rewards.math_answer import answers_equal
from r1jax.rewards.math_answer import extract_answer
from r1jax.rewards.math_answer import fast_equal
from r1jax.rewards.math_reward import verify_answers
from r1jax.rewards.math_verify_pool import shutdown_pool
from r1jax.rewards.overlong import overlong_penalty
from r1jax.rewards.overlong import truncation_mask
from r1jax.rewards.registry import REWARDS
from r1jax.rewards.registry import RewardFn
from r1jax.rewards.registry import call_reward

__all__ = [
    'REWARDS', 'RewardFn', 'call_reward', 'compute_rewards', 'extract_answer',
    'by_task', 'code_sandbox',
    'format_rewards', 'language', 'math_reward', 'overlong', 'synthetic',
    'answers_equal', 'fast_equal', 'verify_answers', 'overlong_penalty',
    'truncation_mask', 'shutdown_pool',
]


def compute_rewards(
    completions: Sequence[str],
    examples: Sequence[Mapping[str, Any]],
    weights: Mapping[str, float],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    lengths_B: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
  """Weighted sum of registered rewards.

  Args:
    completions: B completion strings (without the prompt).
    examples: B dataset records, `examples[i]` for `completions[i]`.
    weights: reward name -> weight; a weight of 0 still computes the reward
      (useful to log it) but adds nothing.
    options: reward name -> keyword options for that reward.
    lengths_B: completion lengths in tokens, for the rewards registered with
      the input 'lengths_B' (`'overlong'`).

  Returns:
    total_B: float32 sum of weight * reward.
    per_reward: name -> float32[B] unweighted reward.
    metrics: `reward/total`, `reward/<name>` (batch means) and counters a
      reward reports, as `reward/<name>/<counter>` (e.g. math-verify
      `timeouts`; `errors`: completions the reward failed on, scored 0).
  """
  if len(completions) != len(examples):
    raise ValueError(
        f'{len(completions)} completions but {len(examples)} examples')
  options = options or {}
  unknown = set(options) - set(weights)
  if unknown:
    raise ValueError(
        f'options given for rewards without a weight: {sorted(unknown)}')
  total_B = np.zeros(len(completions), np.float32)
  per_reward: dict[str, np.ndarray] = {}
  metrics: dict[str, float] = {}
  for name, weight in weights.items():
    reward_B, counters = call_reward(name, completions, examples,
                                     options.get(name), lengths_B=lengths_B)
    per_reward[name] = reward_B
    total_B += np.float32(weight) * reward_B
    metrics[f'reward/{name}'] = float(reward_B.mean()) if len(reward_B) else 0.0
    for key, value in counters.items():
      metrics[f'reward/{name}/{key}'] = float(value)
  metrics['reward/total'] = float(total_B.mean()) if len(total_B) else 0.0
  return total_B, per_reward, metrics
