"""Math answer extraction, equivalence and the `math` reward, on real data.

Real-data checks (need ../shared/data, `shared_data` fixture):
  * GSM8K: all 7473 train + 1319 test reference solutions score 1 against
    their own `#### N` answer, both as written and rendered in the R1 format
    `<think> steps </think> <answer> N </answer>`; N+1 scores 0.
  * MATH-500: 500/500 reference solutions score 1 against their `answer`
    field (required: >= 99%), so there are no failures to list. The fast path
    decides all 500; math-verify alone (every pair forced through the pool,
    the prediction re-boxed so that no string shortcut applies) also accepts
    all 500.
  * MATH-500 perturbed: the last digit of the answer bumped by one (or `+1`
    appended when it has no digit, e.g. `\\text{(C)}+1`), written into the
    reference solution's last box: all 500 score 0. (Base-n answers such as
    `52_8` -> `52_9` and units such as `cm^2` -> `cm^3` needed fast-path rules,
    because math-verify drops subscripts and unit powers.)
"""

import json
import re

import numpy as np
import pytest

from r1jax import rewards
from r1jax.rewards import math_answer
from r1jax.rewards import math_reward
from r1jax.rewards import math_verify_pool


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('text, expected', [
    ('so \\boxed{\\frac{1}{2}}.', '\\frac{1}{2}'),
    ('\\boxed{\\frac{a^{2}}{\\sqrt{b_{1}}}} done', '\\frac{a^{2}}{\\sqrt{b_{1}}}'),
    ('first \\boxed{1} then \\boxed{2}', '2'),
    ('\\boxed 5 is it', '5'),
    ('\\fbox{7}', '7'),
    ('<think>maybe \\boxed{3}</think> <answer> 5 </answer>', '5'),
    ('<think>t</think><answer>so $\\boxed{x+1}$</answer>', 'x+1'),
    ('<think>t</think><answer>42', '42'),  # truncated: unclosed answer
    ('steps\n#### 1,080', '1,080'),
    ('it costs 3 then 4.5 dollars', '4.5'),
    ('half is 3/4 here', '3/4'),
    ('negative -12 result', '-12'),
    ('no numbers here', None),
    ('', None),
])
def test_extract_answer(text, expected):
  assert math_answer.extract_answer(text) == expected


def test_extract_answer_without_fallback():
  assert math_answer.extract_answer('about 12', fallback_last_number=False) is None
  assert math_answer.extract_answer(
      '\\boxed{12}', fallback_last_number=False) == '12'


def test_unbalanced_box_is_skipped():
  # A truncated final box falls back to the previous complete one.
  assert math_answer.last_boxed('\\boxed{1} and \\boxed{\\frac{2}{') == '1'


def test_gold_answer_reads_solutions():
  assert math_answer.gold_answer('a\n#### 18') == '18'
  assert math_answer.gold_answer('so \\boxed{\\pi}.') == '\\pi'
  assert math_answer.gold_answer(' 7 ') == '7'


# ----------------------------------------------------------------------------
# Fast path
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('pred, gold, expected', [
    ('18', '18', True),
    ('18.0', '18', True),
    ('1,000', '1000', True),
    ('\\$1,000', '1000', True),
    ('18 dollars', '18', True),
    ('\\frac{1}{2}', '\\dfrac12', True),
    ('1/2', '0.5', True),
    ('-\\frac{3}{4}', '-0.75', True),
    ('50\\%', '50', True),
    ('0.5', '50\\%', True),
    ('75^\\circ', '75', True),
    ('x = 5', '5', True),
    ('15 \\text{ cm}^2', '15\\mbox{ cm}^2', True),
    ('0.3333', '\\frac{1}{3}', True),  # a rounded decimal of 1/3
    ('2/3', '0.67', True),  # exact answer of a rounded gold
    ('\\text{(C)}', '\\text{(C)}', True),
    ('52', '52_8', True),
    ('19', '18', False),
    ('0.33', '\\frac{1}{3}', False),
    ('1000.05', '1000', False),  # decimals of a terminating value: exact
    ('.0000673', '.0000672', False),
    ('52_9', '52_8', False),
    ('15 cm^3', '15 cm^2', False),
    (None, '1', False),
    ('', '1', False),
    ('\\sqrt{8}', '2\\sqrt{2}', None),  # needs sympy
    ('3x', '3', None),  # `x` is not a unit: undecided, not "3"
])
def test_fast_equal(pred, gold, expected):
  assert math_answer.fast_equal(pred, gold) is expected


def test_answers_equal_is_boolean_fast_path():
  assert math_answer.answers_equal('1,000', '1000') is True
  assert math_answer.answers_equal('\\sqrt{8}', '2\\sqrt{2}') is False


# ----------------------------------------------------------------------------
# The reward
# ----------------------------------------------------------------------------


def test_math_reward_symbolic_path():
  completions = [
      '<think>t</think> <answer>\\sqrt{8}</answer>',
      '<think>t</think> <answer>(x+1)^2</answer>',
      '<think>t</think> <answer>\\left( 3, \\frac{\\pi}{2} \\right)</answer>',
      '<think>t</think> <answer>\\sqrt{9}</answer>',
  ]
  examples = [{'answer': '2\\sqrt{2}'}, {'answer': 'x^2+2x+1'},
              {'answer': '(3,\\frac{\\pi}{2})'}, {'answer': '2'}]
  metrics = {}
  r = rewards.REWARDS.get('math')(completions, examples, metrics=metrics)
  np.testing.assert_array_equal(r, [1, 1, 1, 0])
  assert r.dtype == np.float32
  # `\left( 3, ... \right)` normalises to the gold string; the rest need sympy.
  assert metrics['fast_decided'] == 1 and metrics['pool_items'] == 3
  assert metrics['timeouts'] == 0


def test_math_reward_options():
  fn = rewards.REWARDS.get('math')
  completions = ['I think it is 42', '<think>x</think><answer>\\sqrt{4}</answer>']
  examples = [{'answer': '42'}, {'answer': '2'}]
  np.testing.assert_array_equal(fn(completions, examples), [1, 1])
  np.testing.assert_array_equal(
      fn(completions, examples, fallback_last_number=False,
         use_math_verify=False), [0, 0])
  np.testing.assert_array_equal(
      fn(['#### 7'], [{'gold': '7'}], answer_key='gold'), [1])


def test_pool_is_lazy_and_reused():
  math_verify_pool.shutdown_pool()
  assert math_verify_pool._POOL is None
  # Decided by the fast path: no pool needed.
  math_reward.verify_answers(['1'], ['1'])
  assert math_verify_pool._POOL is None
  math_reward.verify_answers(['\\sqrt{4}'], ['2'])
  pool = math_verify_pool._POOL
  assert pool is not None and pool._workers
  math_reward.verify_answers(['\\sqrt{9}'], ['3'])
  assert math_verify_pool._POOL is pool
  procs = [w.proc for w in pool._workers]
  math_verify_pool.shutdown_pool()
  assert math_verify_pool._POOL is None
  assert all(p.poll() is not None for p in procs)


# ----------------------------------------------------------------------------
# Real data
# ----------------------------------------------------------------------------


def _gsm8k(shared_data):
  rows = _jsonl(shared_data / 'gsm8k' / 'train.jsonl')
  rows += _jsonl(shared_data / 'gsm8k' / 'test.jsonl')
  assert len(rows) == 7473 + 1319
  return rows


def test_gsm8k_reference_solutions_score_one(shared_data):
  rows = _gsm8k(shared_data)
  golds = [r['answer'].split('####')[-1].strip() for r in rows]
  fn = rewards.REWARDS.get('math')
  examples = [{'answer': g} for g in golds]
  metrics = {}
  r = fn([row['answer'] for row in rows], examples, metrics=metrics)
  assert r.sum() == len(rows)
  assert metrics['pool_items'] == 0  # integers never need the pool

  # Rendered in the R1 format, calculator annotations stripped.
  def render(solution, gold):
    steps = re.sub(r'<<[^>]*>>', '', solution.split('####')[0]).strip()
    return f'<think>\n{steps}\n</think>\n<answer>\n{gold}\n</answer>'

  completions = [render(row['answer'], g) for row, g in zip(rows, golds)]
  r = fn(completions, examples)
  assert r.sum() == len(rows)
  np.testing.assert_array_equal(
      rewards.REWARDS.get('format')(completions, examples), 1)

  # Off by one: all wrong.
  wrong = [{'answer': str(int(g.replace(',', '')) + 1)} for g in golds]
  assert fn([row['answer'] for row in rows], wrong).sum() == 0


def test_math500_reference_solutions(shared_data):
  rows = _jsonl(shared_data / 'math' / 'math500.jsonl')
  assert len(rows) == 500
  fn = rewards.REWARDS.get('math')
  examples = [{'answer': r['answer']} for r in rows]
  r = fn([row['solution'] for row in rows], examples)
  failures = [row['answer'] for row, ok in zip(rows, r) if not ok]
  assert r.mean() >= 0.99, failures
  assert not failures  # see the module docstring


def test_math500_perturbed_answers_score_zero(shared_data):
  # ~100 of these need the pool: 5-15 s on a busy 2-core machine.
  rows = _jsonl(shared_data / 'math' / 'math500.jsonl')
  fn = rewards.REWARDS.get('math')
  examples = [{'answer': r['answer']} for r in rows]
  perturbed = [
      math_answer.replace_last_boxed(
          row['solution'], math_answer.perturb_answer(row['answer']))
      for row in rows]
  metrics = {}
  r = fn(perturbed, examples, metrics=metrics)
  assert metrics['timeouts'] == 0
  assert r.sum() == 0, [p for p, ok in zip(perturbed, r) if ok]


def test_math500_math_verify_alone(shared_data):
  rows = _jsonl(shared_data / 'math' / 'math500.jsonl')
  pairs = [('\\boxed{' + math_answer.extract_answer(r['solution']) + '}',
            r['answer']) for r in rows]
  assert all(p != g for p, g in pairs)
  ok, stats = math_verify_pool.verify_pairs(pairs)
  assert stats.timeouts == 0
  assert sum(ok) == 500, [p for p, o in zip(pairs, ok) if not o]
