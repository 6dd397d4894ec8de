"""Rewards for the synthetic reasoning tasks (generated in r1jax/data).

* `countdown`: example `{'numbers': [int, ...], 'target': int}`; the answer
  (the `<answer>` block, else the last `\\boxed{}`) must be an arithmetic
  expression that uses each given number exactly once, with `+ - * /` and
  parentheses only, and equals the target exactly. It is parsed with `ast`
  and evaluated on `Fraction`s, never with `eval`. A trailing `= target` is
  allowed; `x`, `×`, `\\times`, `÷` are read as `*` and `/`, `−` as `-`.
* `arithmetic`: example `{'answer': '<integer>'}`; the extracted answer must
  be that integer (`1,234`, `+5`, `5.0` and `$5` are accepted; `5.5` is not).
"""

import ast
from fractions import Fraction
from typing import Sequence

import numpy as np

from r1jax.rewards import math_answer
from r1jax.rewards.registry import Completions, Examples, Metrics, check_batch
from r1jax.rewards.registry import REWARDS
from r1jax.rewards.registry import score_each

_MAX_EXPR_CHARS = 512  # a countdown answer is short; long input is rejected
_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


class _Invalid(Exception):
  """The expression uses something other than numbers and + - * /."""


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
  if isinstance(node, ast.Expression):
    return _evaluate(node.body, used)
  if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
    left = _evaluate(node.left, used)
    right = _evaluate(node.right, used)
    if isinstance(node.op, ast.Div) and right == 0:
      raise _Invalid('division by zero')
    return _BINOPS[type(node.op)](left, right)
  if (isinstance(node, ast.Constant) and type(node.value) is int
      and node.value >= 0):
    used.append(node.value)
    return Fraction(node.value)
  raise _Invalid(f'{type(node).__name__} is not allowed')


def countdown_equation(text: str) -> str | None:
  """The expression part of a countdown answer (before any `=`), or None."""
  expr = text.strip().strip('$').strip()
  for a, b in (('\\times', '*'), ('\\cdot', '*'), ('\\div', '/'), ('×', '*'),
               ('x', '*'), ('÷', '/'), ('−', '-'), ('\\left', ''),
               ('\\right', '')):
    expr = expr.replace(a, b)
  if '=' in expr:
    expr = expr.split('=')[0]
  expr = expr.strip()
  return expr or None


def check_countdown(
    expression: str, numbers: Sequence[int], target: int
) -> bool:
  """Whether `expression` uses each of `numbers` once and equals `target`."""
  if len(expression) > _MAX_EXPR_CHARS:
    return False
  try:
    tree = ast.parse(expression, mode='eval')
    used: list[int] = []
    value = _evaluate(tree, used)
  except (SyntaxError, ValueError, _Invalid, RecursionError, MemoryError,
          OverflowError, ZeroDivisionError):
    return False
  return sorted(used) == sorted(int(n) for n in numbers) and value == target


def _answer_text(completion: str) -> str | None:
  return math_answer.extract_answer(completion, fallback_last_number=False)


@REWARDS.register('countdown', inputs=('metrics',))
def countdown_reward(
    completions: Completions, examples: Examples, *,
    format_score: float = 0.0,
    metrics: Metrics = None,
) -> np.ndarray:
  """1.0 for a correct countdown equation, `format_score` for a wrong one.

  `format_score` (default 0) is given when an answer was found but is wrong
  (TinyZero used 0.1); a completion without an answer scores 0. A completion
  whose check fails (e.g. a malformed example) scores 0 and is counted in
  `metrics['errors']`.
  """
  check_batch(completions, examples)

  def score(i: int) -> float:
    answer = _answer_text(completions[i])
    expr = countdown_equation(answer) if answer is not None else None
    if expr is None:
      return 0.0
    ex = examples[i]
    if check_countdown(expr, ex['numbers'], int(ex['target'])):
      return 1.0
    return format_score

  return score_each(score, len(completions), reward='countdown',
                    metrics=metrics)


def parse_integer(text: str | None) -> int | None:
  """An integer answer (`-12`, `1,234`, `$5`, `5.0`), or None if not one."""
  if text is None:
    return None
  num = math_answer.parse_number(math_answer.normalize_answer(text))
  if num is None or num.percent or num.value.denominator != 1:
    return None
  return int(num.value)


@REWARDS.register('arithmetic', inputs=('metrics',))
def arithmetic_reward(
    completions: Completions, examples: Examples, *,
    fallback_last_number: bool = True,
    answer_key: str = 'answer',
    metrics: Metrics = None,
) -> np.ndarray:
  """1.0 when the extracted answer is exactly the integer `example['answer']`.

  Options:
    fallback_last_number: read the last number of the completion when it has
      no `<answer>`, `\\boxed{}` or `####` answer (default on, as for `math`,
      so that a tiny model gets a signal before it learns the format).
    metrics: filled with `errors`, the completions whose check raised (e.g. a
      gold answer that is not an integer); they score 0.
  An answer longer than `math_answer.MAX_NUMBER_CHARS` is not a number here
  (scores 0).
  """
  check_batch(completions, examples)

  def score(i: int) -> float:
    pred = parse_integer(math_answer.extract_answer(
        completions[i], fallback_last_number=fallback_last_number))
    if pred is None:
      return 0.0
    gold = int(str(examples[i][answer_key]).strip())
    return float(pred == gold)

  return score_each(score, len(completions), reward='arithmetic',
                    metrics=metrics)
