"""What a completion does, read from its text: steps, re-checks, reflection.

Plain Python over strings, used by held-out evaluation (`r1jax.evaluate`),
the GRPO stage's per-step metrics and the base model's ability check
(`r1jax.base_ability`).

* Steps. A step is one binary operation written out, 'a op b = c'
  (`STEP_RE`). A completion that writes at least one is "step by step",
  otherwise "direct". A step is right when c equals a op b.
* Re-checks. A completion re-checks a step when it writes the same left-hand
  side 'a op b' twice (the corpus's 'Wait, 37 + 48 = 85, not 84.' does);
  it corrects one when the two results differ.
* Checks. A completion checks a step when the next step it writes undoes
  it: 'a op b = c' then 'c inv b = ...' with inv the inverse operation
  ('3 + 2 = 5, check 5 - 2 = 3'; the corpus's `p_check` documents).
* Reflective words. The DeepSeek-R1 paper (Nature version, Fig. 9 / the
  "aha moment" analysis) tracks how often R1-Zero's outputs use the words
  wait, mistake, however, but, retry, error, verify, wrong, evaluate and
  check. `reflection_rate` is the share of completions that use at least one
  (word-bounded, any case); `reflective_words` the mean count per completion.
"""

import re
from typing import Sequence

import numpy as np

from r1jax.data import synthetic

STEP_RE = re.compile(r'(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)')
REFLECTIVE_WORDS = ('wait', 'mistake', 'however', 'but', 'retry', 'error',
                    'verify', 'wrong', 'evaluate', 'check')
_REFLECTIVE_RE = re.compile(
    r'\b(' + '|'.join(REFLECTIVE_WORDS) + r')\b', re.IGNORECASE)


def steps(text: str) -> list[tuple[int, str, int, int]]:
  """Every 'a op b = c' in `text`, in order, as (a, op, b, c)."""
  return [(int(a), op, int(b), int(c)) for a, op, b, c in STEP_RE.findall(text)]


def step_is_right(a: int, op: str, b: int, c: int) -> bool:
  """Whether c = a op b ('/' only as an exact division)."""
  try:
    return synthetic.apply_op(a, op, b) == c
  except ValueError:  # an inexact or zero division
    return False


def reflective_word_count(text: str) -> int:
  return len(_REFLECTIVE_RE.findall(text))


def rechecks(text: str) -> tuple[bool, bool]:
  """(re-checks a step, corrects a step): a left-hand side written twice,
  and written twice with different results."""
  seen: dict[tuple[int, str, int], set[int]] = {}
  again = False
  for a, op, b, c in steps(text):
    key = (a, op, b)
    if key in seen:
      again = True
    seen.setdefault(key, set()).add(c)
  return again, any(len(cs) > 1 for cs in seen.values())


def checks_a_step(text: str) -> bool:
  """Whether some step is followed by its check by the inverse operation."""
  found = steps(text)
  return any(
      (a2, op2, b2) == (c, synthetic.INVERSE_OP[op], b)
      for (_, op, b, c), (a2, op2, b2, _) in zip(found, found[1:]))


def reflection_stats(texts: Sequence[str]) -> dict[str, float]:
  """Rates over completions: reflection_rate, reflective_words, recheck_rate,
  correction_rate, check_rate (share that check a step by its inverse),
  step_rate (share written step by step)."""
  if not texts:
    return {}
  words = np.asarray([reflective_word_count(t) for t in texts], np.float64)
  checks = np.asarray([rechecks(t) for t in texts], bool).reshape(-1, 2)
  stepped = np.asarray([bool(STEP_RE.search(t)) for t in texts])
  return {
      'reflection_rate': float((words > 0).mean()),
      'reflective_words': float(words.mean()),
      'recheck_rate': float(checks[:, 0].mean()),
      'correction_rate': float(checks[:, 1].mean()),
      'check_rate': float(np.mean([checks_a_step(t) for t in texts])),
      'step_rate': float(stepped.mean()),
  }


def step_accuracy(texts: Sequence[str]) -> tuple[int, int]:
  """(right steps, steps) over all completions: single-step accuracy."""
  right = total = 0
  for t in texts:
    for a, op, b, c in steps(t):
      total += 1
      right += step_is_right(a, op, b, c)
  return right, total
