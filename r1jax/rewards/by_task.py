"""The `task` reward: each completion scored by its own task's reward.

R1-Zero mixed math and code prompts in one RL run, each checked by its own
rule (the answer against the reference; the program against its tests). A
record's `task` field ('arithmetic', 'countdown', 'code', 'math') names the
reward that checks it, so a mixed prompt pool needs one entry:

    rewards.weights = {'task': 1.0, 'format': 0.5}
    rewards.accuracy = 'task'       # logged per task: reward/task/<task>
    rewards.options = {'task': {'options': {'code': {'timeout_s': 2.0}}}}

The evaluation (r1jax/evaluate) scores each task's held-out records by that
task's own reward in the same way.
"""

from typing import Any, Mapping

import numpy as np

from r1jax.rewards.registry import Completions, Examples, Metrics, check_batch
from r1jax.rewards.registry import REWARDS
from r1jax.rewards.registry import call_reward

NAME = 'task'


@REWARDS.register(NAME, inputs=('metrics',))
def task_reward(
    completions: Completions, examples: Examples, *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    metrics: Metrics = None,
) -> np.ndarray:
  """Completion i scored by the reward `examples[i]['task']` names.

  Options:
    options: task -> keyword options of that task's reward.
    metrics: filled with `<task>` (the mean reward of that task's
      completions in this batch), `<task>/<counter>` for the counters its
      reward reports, and `count/<task>` (how many completions it scored).
  Raises ValueError naming the record when a `task` is missing or names no
  reward (a data set that cannot be scored is an error in the data, found
  at the first step, not a run of zeros).
  """
  check_batch(completions, examples)
  options = dict(options or {})
  groups: dict[str, list[int]] = {}
  for i, ex in enumerate(examples):
    task = ex.get('task')
    if not task or task == NAME or task not in REWARDS:
      raise ValueError(
          f'reward {NAME!r}: record {ex.get("id", i)!r} has task={task!r}, '
          f'which names no reward to score it by; known: '
          f'{", ".join(n for n in REWARDS.names() if n != NAME)}')
    groups.setdefault(task, []).append(i)
  unused = set(options) - set(REWARDS.names())  # every group's task is one
  if unused:
    raise ValueError(f'reward {NAME!r}: options for {sorted(unused)}, which '
                     'name no reward')
  out = np.zeros(len(completions), np.float32)
  for task, idx in groups.items():
    scores, counters = call_reward(task, [completions[i] for i in idx],
                                   [examples[i] for i in idx],
                                   options.get(task))
    out[idx] = scores
    if metrics is not None:
      metrics[task] = float(scores.mean())
      metrics[f'count/{task}'] = float(len(idx))
      for key, value in counters.items():
        metrics[f'{task}/{key}'] = float(value)
  if metrics is not None:
    metrics.setdefault('errors', 0.0)
    metrics['errors'] += sum(v for k, v in metrics.items()
                             if k.endswith('/errors'))
  return out
