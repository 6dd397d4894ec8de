"""The reward-function registry and the batch signature its entries share."""

import logging
import math
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from r1jax.registry import Registry

# The types of a reward function's batch arguments (`RewardFn`).
Completions = Sequence[str]
Examples = Sequence[Mapping[str, Any]]
Metrics = dict[str, float] | None  # counters a reward reports, when asked


class RewardFn(Protocol):
  """`fn(completions, examples, **options) -> float32[B]`.

  `examples[i]` is the dataset record completion i answers; `options` come
  from the config. A reward registered with `inputs=` also gets, from
  `compute_rewards`: 'metrics', a dict to report counters in (e.g.
  timeouts), and 'lengths_B', the completions' token lengths.

  Host-side reward code runs on whatever a policy writes, so it should be
  linear in the completion's length and must not raise for one bad
  completion: score it 0 and count it (`score_each` does both, reporting
  `metrics['errors']`). Invalid options may raise, before any scoring.
  """

  def __call__(
      self,
      completions: Sequence[str],
      examples: Sequence[Mapping[str, Any]],
      **options: Any,
  ) -> np.ndarray:
    ...


REWARDS: Registry[RewardFn] = Registry('reward function')


def check_batch(completions: Sequence[str], examples: Sequence[Any]) -> None:
  """Raises when completions and examples do not pair up one to one."""
  if len(completions) != len(examples):
    raise ValueError(
        f'{len(completions)} completions but {len(examples)} examples; '
        'pass one example record per completion (repeat it for a group).'
    )


_log = logging.getLogger('r1jax.rewards')
_MAX_LOGGED_CHARS = 300


def score_each(
    score_one: Callable[[int], float],
    n: int,
    *,
    reward: str,
    metrics: dict[str, float] | None = None,
) -> np.ndarray:
  """`[score_one(i) for i in range(n)]` as float32, never raising for one item.

  A completion whose scoring raises an `Exception` (or returns a value that is
  not a finite number) scores 0 and is counted in `metrics['errors']` (added to
  any count already there), so that one degenerate completion cannot kill a
  training run; the first failure of the call is logged as a warning.
  `KeyboardInterrupt` and `SystemExit` still propagate.
  """
  out = np.zeros(n, np.float32)
  errors = 0
  first: str | None = None
  for i in range(n):
    try:
      value = float(score_one(i))
      if not math.isfinite(value):
        raise ValueError(f'non-finite reward {value}')
      out[i] = value
    except Exception as e:  # pylint: disable=broad-except
      errors += 1
      if first is None:
        first = f'completion {i}: {type(e).__name__}: {e}'[:_MAX_LOGGED_CHARS]
  if metrics is not None:
    metrics['errors'] = metrics.get('errors', 0.0) + float(errors)
  if errors:
    _log.warning('reward %r: %d of %d completions failed and scored 0; %s',
                 reward, errors, n, first)
  return out


def call_reward(name: str, completions: Completions, examples: Examples,
                options: Mapping[str, Any] | None = None, *,
                lengths_B: np.ndarray | None = None
                ) -> tuple[np.ndarray, dict[str, float]]:
  """(float32[B] scores, counters) of reward `name` on one batch.

  Passes `options` as keywords, and the inputs the reward declared at
  registration: a counters dict for 'metrics' (returned), `lengths_B` for
  'lengths_B'. The one way every caller (the weighted sum, the `task`
  reward's per-task groups) calls a reward: a reward that returns another
  shape than [B] is a ValueError naming it.
  """
  kwargs = dict(options or {})
  counters: dict[str, float] = {}
  inputs = REWARDS.inputs(name)
  if 'metrics' in inputs:
    kwargs['metrics'] = counters
  if 'lengths_B' in inputs:
    kwargs['lengths_B'] = lengths_B
  reward_B = np.asarray(REWARDS.get(name)(completions, examples, **kwargs),
                        np.float32)
  if reward_B.shape != (len(completions),):
    raise ValueError(f'reward {name!r} returned shape {reward_B.shape}, '
                     f'expected ({len(completions)},)')
  return reward_B, counters
