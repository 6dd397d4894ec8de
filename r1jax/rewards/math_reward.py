"""The math accuracy reward: extract, decide fast, fall back to math-verify."""

import logging
from typing import Sequence

import numpy as np

from r1jax.rewards import math_answer
from r1jax.rewards import math_verify_pool
from r1jax.rewards.registry import Completions, Examples, Metrics, check_batch
from r1jax.rewards.registry import REWARDS

_log = logging.getLogger('r1jax.rewards')


def _warn_errors(what: str, errors: int, n: int, first: Exception) -> None:
  _log.warning('math reward: %s failed on %d of %d completions (scored 0); '
               'first: %s', what, errors, n,
               f'{type(first).__name__}: {first}'[:300])


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
  counters are `fast_decided`, `pool_items`, `timeouts`, `crashes` and
  `errors` (pairs whose fast check raised: they count as wrong and are not
  sent to the pool). Host-side work is linear in the answers' lengths.
  """
  ok_B = np.zeros(len(preds), bool)
  undecided: list[tuple[int, tuple[str, str]]] = []  # (index, pool pair)
  errors, first = 0, None
  for i, (pred, gold) in enumerate(zip(preds, golds)):
    try:
      decided = math_answer.fast_equal(pred, gold)
      pair = (None if decided is not None
              else (pred, math_answer.gold_answer(gold)))
    except Exception as e:  # pylint: disable=broad-except
      errors += 1
      first = e if first is None else first
      continue
    if decided is None:
      undecided.append((i, pair))
    else:
      ok_B[i] = decided
  if errors:
    _warn_errors('the fast answer check', errors, len(preds), first)
  counters = {
      'fast_decided': float(len(preds) - len(undecided) - errors),
      'pool_items': 0.0,
      'timeouts': 0.0,
      'crashes': 0.0,
      'errors': float(errors),
  }
  if undecided and use_math_verify:
    pool = math_verify_pool.get_pool(num_workers, timeout_s)
    results, stats = pool.verify([pair for _, pair in undecided])
    for (i, _), r in zip(undecided, results):
      ok_B[i] = r
    counters['pool_items'] = float(len(undecided))
    counters['timeouts'] = float(stats.timeouts)
    counters['crashes'] = float(stats.crashes)
  return ok_B, counters


@REWARDS.register('math', inputs=('metrics',))
def math_accuracy(
    completions: Completions, examples: Examples, *,
    fallback_last_number: bool = True,
    use_math_verify: bool = True,
    timeout_s: float | None = None,
    num_workers: int | None = None,
    answer_key: str = 'answer',
    metrics: Metrics = None,
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
      `timeouts`, `crashes` and `errors` (counts over the batch; a completion
      whose extraction or check raised scores 0 and counts in `errors`).
  """
  check_batch(completions, examples)
  preds: list[str | None] = []
  golds: list[str] = []
  failed: list[int] = []
  first = None
  for i, (c, ex) in enumerate(zip(completions, examples)):
    try:
      pred = math_answer.extract_answer(
          c, fallback_last_number=fallback_last_number)
      gold = str(ex[answer_key])
    except Exception as e:  # pylint: disable=broad-except
      failed.append(i)
      first = e if first is None else first
      continue
    preds.append(pred)
    golds.append(gold)
  if failed:
    _warn_errors('answer extraction', len(failed), len(completions), first)
  keep = np.ones(len(completions), bool)
  keep[failed] = False
  ok_kept, counters = verify_answers(
      preds, golds, use_math_verify=use_math_verify, timeout_s=timeout_s,
      num_workers=num_workers)
  ok_B = np.zeros(len(completions), bool)
  ok_B[keep] = ok_kept
  if metrics is not None:
    metrics['no_answer'] = float(sum(p is None for p in preds))
    metrics.update(counters)
    metrics['errors'] = counters['errors'] + float(len(failed))
  return ok_B.astype(np.float32)
