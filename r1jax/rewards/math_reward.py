"""The math accuracy reward: extract, decide fast, fall back to math-verify."""

from typing import Any, Mapping, Sequence

import numpy as np

from r1jax.rewards import math_answer
from r1jax.rewards import math_verify_pool
from r1jax.rewards.registry import check_batch
from r1jax.rewards.registry import REWARDS


def verify_answers(
    preds: Sequence[str | None],
    golds: Sequence[str],
    *,
    use_math_verify: bool = True,
    timeout_s: float | None = None,
    num_workers: int | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
  """Equivalence of extracted answers with gold answers, as a bool array.

  The fast path (`math_answer.fast_equal`) settles exact strings and numbers;
  only the undecided pairs go to the math-verify process pool (or count as
  wrong when `use_math_verify` is False). Returns `(ok_B, counters)` where the
  counters are `fast_decided`, `pool_items`, `timeouts`, `crashes`.
  """
  ok_B = np.zeros(len(preds), bool)
  undecided: list[int] = []
  for i, (pred, gold) in enumerate(zip(preds, golds)):
    decided = math_answer.fast_equal(pred, gold)
    if decided is None:
      undecided.append(i)
    else:
      ok_B[i] = decided
  counters = {
      'fast_decided': float(len(preds) - len(undecided)),
      'pool_items': 0.0,
      'timeouts': 0.0,
      'crashes': 0.0,
  }
  if undecided and use_math_verify:
    pool = math_verify_pool.get_pool(num_workers, timeout_s)
    pairs = [(preds[i], math_answer.gold_answer(golds[i])) for i in undecided]
    results, stats = pool.verify(pairs)
    for i, r in zip(undecided, results):
      ok_B[i] = r
    counters['pool_items'] = float(len(undecided))
    counters['timeouts'] = float(stats.timeouts)
    counters['crashes'] = float(stats.crashes)
  return ok_B, counters


@REWARDS.register('math')
def math_accuracy(
    completions: Sequence[str],
    examples: Sequence[Mapping[str, Any]],
    *,
    fallback_last_number: bool = True,
    use_math_verify: bool = True,
    timeout_s: float | None = None,
    num_workers: int | None = None,
    answer_key: str = 'answer',
    metrics: dict[str, float] | None = None,
) -> np.ndarray:
  """1.0 when a completion's final answer equals `example[answer_key]`, else 0.

  Options:
    fallback_last_number: when no `<answer>`, `\\boxed{}` or `####` answer is
      found, use the last number in the completion (off: such completions
      score 0).
    use_math_verify: send answers the fast path cannot decide to the
      math-verify pool (off: they score 0).
    timeout_s: hard wall-clock limit per symbolic check (default 5 s); a
      timeout scores 0 and is counted in `metrics['timeouts']`.
    num_workers: pool size (default: half the CPUs).
    answer_key: the example field holding the gold answer (a bare answer or
      a solution ending in `#### N` / `\\boxed{}`).
    metrics: filled with `no_answer`, `fast_decided`, `pool_items`,
      `timeouts`, `crashes` (counts over the batch).
  """
  check_batch(completions, examples)
  preds = [
      math_answer.extract_answer(c, fallback_last_number=fallback_last_number)
      for c in completions
  ]
  golds = [str(ex[answer_key]) for ex in examples]
  ok_B, counters = verify_answers(
      preds, golds, use_math_verify=use_math_verify, timeout_s=timeout_s,
      num_workers=num_workers)
  if metrics is not None:
    metrics['no_answer'] = float(sum(p is None for p in preds))
    metrics.update(counters)
  return ok_B.astype(np.float32)
