"""The reward-function registry and the batch signature its entries share."""

from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from r1jax.registry import Registry


class RewardFn(Protocol):
  """`fn(completions, examples, **options) -> float32[B]`.

  `examples[i]` is the dataset record completion i answers; `options` come
  from the config. A function may also accept `metrics: dict`, which
  `compute_rewards` passes so that it can report counters (e.g. timeouts).
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
