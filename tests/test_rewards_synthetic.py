"""Countdown and arithmetic rewards, overlong shaping, reward combination."""

from fractions import Fraction

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from r1jax import rewards
from r1jax.rewards import overlong
from r1jax.rewards import synthetic

REWARDS = rewards.REWARDS


def _wrap(answer: str) -> str:
  return f'<think>try things</think> <answer>{answer}</answer>'


# ----------------------------------------------------------------------------
# Countdown
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('expr, ok', [
    ('(25 - 5) * 3 + 4', True),
    ('4 + 3 * (25 - 5)', True),
    ('(25-5)*3+4 = 64', True),  # a trailing `= target` is fine
    ('(25 − 5) × 3 + 4', True),  # Unicode minus and times
    ('(25 - 5) \\times 3 + 4', True),
    ('25 * 3 - 5 - 4 - 2', False),  # 64, but 2 is not a given number
    ('25 * 3 - 5 - 4', False),  # 66, not 64
    ('(25 - 5) * 3', False),  # 4 unused
    ('(25 - 5) * 3 + 4 + 4 - 4', False),  # 4 used three times
    ('(25 - 5) * 3 + 2 * 2', False),  # 2 * 2 is not 4
    ('(25 - 5) * 3 + 4 ** 1', False),  # `**` is not allowed
    ('(25 - 5) * 3 + -(-4)', False),  # unary minus is not allowed
    ('__import__("os").system("true")', False),
    ('64', False),
    ('', False),
    ('(' * 300 + '4' + ')' * 300, False),
])
def test_check_countdown(expr, ok):
  numbers, target = [25, 5, 3, 4], 64
  eq = synthetic.countdown_equation(expr)
  assert (eq is not None and synthetic.check_countdown(eq, numbers, target)) is ok


def test_countdown_fractions_are_exact():
  # 6 / (1 - 3/4) = 24 needs exact rational arithmetic.
  assert synthetic.check_countdown('6 / (1 - 3 / 4)', [6, 1, 3, 4], 24)
  assert not synthetic.check_countdown('1 / 0 + 5', [1, 0, 5], 5)
  assert not synthetic.check_countdown('7 / 2', [7, 2], 3)


def test_countdown_reward():
  fn = REWARDS.get('countdown')
  examples = [{'numbers': [25, 5, 3, 4], 'target': 64}] * 4
  completions = [_wrap('(25 - 5) * 3 + 4'), _wrap('25 + 5 + 3 + 4'),
                 'no answer here: (25 - 5) * 3 + 4',
                 '<think>x</think> \\boxed{4 + (25 - 5) * 3}']
  r = fn(completions, examples)
  np.testing.assert_array_equal(r, [1, 0, 0, 1])
  assert r.dtype == np.float32
  np.testing.assert_allclose(fn(completions, examples, format_score=0.1),
                             [1, 0.1, 0, 1])


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.lists(st.integers(1, 30), min_size=2, max_size=4),
                  st.data())
def test_countdown_accepts_any_valid_solution(numbers, data):
  # Build a random left-to-right expression over a permutation; its value is
  # the target, so the reward must accept it.
  perm = data.draw(st.permutations(numbers))
  ops = data.draw(st.lists(st.sampled_from('+-*/'), min_size=len(perm) - 1,
                           max_size=len(perm) - 1))
  expr, value = str(perm[0]), Fraction(perm[0])
  for op, n in zip(ops, perm[1:]):
    expr = f'({expr}) {op} {n}'
    value = {'+': value + n, '-': value - n, '*': value * n, '/': value / n}[op]
  if value.denominator != 1:
    return
  assert synthetic.check_countdown(expr, numbers, int(value))
  assert not synthetic.check_countdown(expr, numbers, int(value) + 1)
  assert not synthetic.check_countdown(expr, numbers + [1], int(value))


# ----------------------------------------------------------------------------
# Arithmetic
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('text, value', [
    ('12', 12), ('-7', -7), ('1,234', 1234), ('\\$5', 5), ('5.0', 5),
    ('+3', 3), ('5.5', None), ('abc', None), (None, None), ('50\\%', None),
])
def test_parse_integer(text, value):
  assert synthetic.parse_integer(text) == value


def test_arithmetic_reward():
  fn = REWARDS.get('arithmetic')
  completions = [_wrap('1,234'), _wrap('1235'), 'so it is 1234', _wrap('x')]
  examples = [{'answer': '1234'}] * 4
  np.testing.assert_array_equal(fn(completions, examples), [1, 0, 1, 0])
  np.testing.assert_array_equal(
      fn(completions, examples, fallback_last_number=False), [1, 0, 0, 0])


# ----------------------------------------------------------------------------
# Overlong shaping
# ----------------------------------------------------------------------------


def test_overlong_penalty_hand_values():
  # L_max = 100, L_cache = 20: ramp from 80 (0) to 100 (-1).
  lengths = np.array([0, 80, 81, 90, 100, 101, 500])
  expected = [0, 0, -1 / 20, -0.5, -1, -1, -1]
  np.testing.assert_allclose(
      overlong.overlong_penalty(lengths, 100, 20), expected, rtol=1e-6)
  assert overlong.overlong_penalty(lengths, 100, 20).dtype == np.float32
  # No buffer: a hard cut above max_len.
  np.testing.assert_array_equal(
      overlong.overlong_penalty(np.array([100, 101]), 100, 0), [0, -1])
  with pytest.raises(ValueError):
    overlong.overlong_penalty(lengths, 10, 20)


@hypothesis.given(st.integers(1, 4096), st.data())
def test_overlong_penalty_is_monotone_and_bounded(max_len, data):
  buffer = data.draw(st.integers(0, max_len))
  lengths = np.arange(0, max_len + 3)
  p = overlong.overlong_penalty(lengths, max_len, buffer)
  assert np.all(np.diff(p) <= 0) and p.min() >= -1 and p.max() <= 0
  assert p[max_len - buffer] == 0 and p[-1] == -1


def test_truncation_mask():
  np.testing.assert_array_equal(
      overlong.truncation_mask(np.array([True, False, True])), [1, 0, 1])


# ----------------------------------------------------------------------------
# Combination
# ----------------------------------------------------------------------------


def test_compute_rewards_weights_and_metrics():
  completions = [
      '<think>so</think> <answer>18</answer>',
      '<think>so</think> <answer>17</answer>',
      'the answer is 18',
  ]
  examples = [{'answer': '18'}] * 3
  total, per, metrics = rewards.compute_rewards(
      completions, examples, {'math': 1.0, 'format': 0.5, 'overlong': 1.0},
      {'math': {'fallback_last_number': False},
       'overlong': {'max_len': 100, 'buffer': 20}},
      lengths_B=np.array([10, 90, 120]))
  np.testing.assert_allclose(per['math'], [1, 0, 0])
  np.testing.assert_allclose(per['format'], [1, 1, 0])
  np.testing.assert_allclose(per['overlong'], [0, -0.5, -1])
  np.testing.assert_allclose(total, [1.5, 0.0, -1.0])
  assert total.dtype == np.float32
  assert metrics['reward/math'] == pytest.approx(1 / 3)
  assert metrics['reward/total'] == pytest.approx(0.5 / 3)
  assert metrics['reward/math/timeouts'] == 0
  assert metrics['reward/math/no_answer'] == 1


def test_compute_rewards_errors():
  with pytest.raises(KeyError, match='known'):
    rewards.compute_rewards(['a'], [{}], {'nope': 1.0})
  with pytest.raises(ValueError, match='without a weight'):
    rewards.compute_rewards(['a'], [{}], {'format': 1.0}, {'math': {}})
  with pytest.raises(ValueError, match='lengths'):
    rewards.compute_rewards(['a'], [{}], {'overlong': 1.0},
                            {'overlong': {'max_len': 4, 'buffer': 1}})


def test_all_rewards_registered_and_batch_shaped():
  assert set(REWARDS.names()) >= {
      'math', 'format', 'format_lenient', 'language', 'code', 'countdown',
      'arithmetic', 'overlong'}
  example = {'answer': '3', 'numbers': [1, 2], 'target': 3,
             'tests': [{'input': '', 'output': '3'}], 'task': 'arithmetic'}
  completions = ['<think>1 plus 2</think><answer>1 + 2</answer>',
                 '```python\nprint(3)\n```']
  for name in REWARDS.names():
    if name == 'overlong':
      continue
    r = REWARDS.get(name)(completions, [example] * 2)
    assert r.shape == (2,) and r.dtype == np.float32, name
