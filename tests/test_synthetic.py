"""Synthetic tasks: determinism, held-out splits, verified answers, knobs."""

import ast
from fractions import Fraction
import re

import numpy as np
import pytest

from r1jax.data import synthetic
from r1jax.data.synthetic import generate

_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def exact_eval(expr: str) -> tuple[Fraction, list[int]]:
  """Value of an expression of integers and + - * / (exact), and its leaves."""
  leaves = []

  def ev(node):
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
      return _OPS[type(node.op)](ev(node.left), ev(node.right))
    if isinstance(node, ast.Constant) and type(node.value) is int:
      leaves.append(node.value)
      return Fraction(node.value)
    raise ValueError(f'Not allowed in {expr!r}: {ast.dump(node)}')

  return ev(ast.parse(expr, mode='eval').body), leaves


def check_steps(steps, final):
  """Each 'a op b = c' step is right, and the last one gives `final`."""
  for s in steps:
    a, op, b, c = synthetic.parse_step(s)
    a, b = Fraction(a), Fraction(b)
    assert {'+': a + b, '-': a - b, '*': a * b, '/': b and a / b}[op] == c, s
  assert synthetic.parse_step(steps[-1])[3] == final


def check_arithmetic(r):
  expr = re.fullmatch(r'Compute (.*)', r['problem']).group(1)
  value, leaves = exact_eval(expr)
  assert value == int(r['answer'])
  assert leaves == r['numbers']
  check_steps(r['solution_steps'], int(r['answer']))
  assert len(r['solution_steps']) == len(r['numbers']) - 1


def check_countdown(r):
  value, leaves = exact_eval(r['answer'])
  assert value == r['target']
  assert sorted(leaves) == sorted(r['numbers'])
  assert f'{r["numbers"]}' in r['problem'] and f'make {r["target"]}.' in r['problem']
  check_steps(r['solution_steps'], r['target'])
  assert len(r['solution_steps']) == len(r['numbers']) - 1


CHECKS = {'arithmetic': check_arithmetic, 'countdown': check_countdown}


@pytest.mark.parametrize('task', ['arithmetic', 'countdown'])
def test_deterministic_prefix_stable_and_seed_dependent(task):
  a = generate(task, 30, seed=3)
  assert a == generate(task, 30, seed=3)
  assert a[:10] == generate(task, 10, seed=3)
  b = generate(task, 30, seed=4)
  assert [r['problem'] for r in a] != [r['problem'] for r in b]
  assert len({r['id'] for r in a}) == 30
  assert len({r['problem'] for r in a}) == 30  # unique=True


@pytest.mark.parametrize('split', ['train', 'test'])
@pytest.mark.parametrize('task', ['arithmetic', 'countdown'])
def test_answers_and_steps_are_correct(task, split):
  for r in generate(task, 200, seed=0, split=split):
    assert r['task'] == task and r['split'] == split
    CHECKS[task](r)


def test_arithmetic_knobs():
  recs = generate('arithmetic', 200, seed=1, num_operands=5, max_digits=(3, 3),
                  operators='+*', mul_digits=1)
  for r in recs:
    check_arithmetic(r)
    assert len(r['numbers']) == 5 and '-' not in r['problem']
    assert max(r['numbers']) < 1000
    assert r['difficulty'] == {'num_operands': 5, 'max_digits': 3}
    # Factors next to '*' have at most mul_digits digits.
    for m in re.finditer(r'(\d+) \* (\d+)', r['problem']):
      assert int(m.group(1)) < 10 and int(m.group(2)) < 10
  assert any('*' in r['problem'] for r in recs)
  assert any(max(r['numbers']) >= 100 for r in recs)
  recs = generate('arithmetic', 300, seed=2, num_operands=(2, 6),
                  operators='-', max_digits=2)
  assert {len(r['numbers']) for r in recs} == {2, 3, 4, 5, 6}
  # Running results never go negative unless allowed.
  for r in recs:
    assert all(synthetic.parse_step(s)[3] >= 0 for s in r['solution_steps'])
  neg = generate('arithmetic', 100, seed=2, num_operands=4, operators='-',
                 allow_negative=True)
  assert any(int(r['answer']) < 0 for r in neg)
  for r in neg:
    check_arithmetic(r)


def test_countdown_knobs():
  recs = generate('countdown', 200, seed=1, num_numbers=(3, 5),
                  number_range=(2, 9), operators='+*', max_target=300)
  for r in recs:
    check_countdown(r)
    assert 3 <= len(r['numbers']) <= 5
    assert all(2 <= n <= 9 for n in r['numbers'])
    assert 1 <= r['target'] <= 300 and r['target'] not in r['numbers']
    assert not re.search(r'[-/]', r['answer'])
  assert {len(r['numbers']) for r in recs} == {3, 4, 5}


def test_bad_arguments_fail_loudly():
  with pytest.raises(KeyError, match='arithmetic'):
    generate('nope', 1, seed=0)
  with pytest.raises(ValueError, match='split'):
    generate('arithmetic', 1, seed=0, split='eval')
  with pytest.raises(TypeError):
    generate('arithmetic', 1, seed=0, num_digits=3)
  with pytest.raises(ValueError, match='operators'):
    generate('arithmetic', 1, seed=0, operators='+/')


def test_split_assignment_is_by_key_and_roughly_proportional():
  recs = {s: generate('arithmetic', 300, seed=0, split=s)
          for s in ('train', 'test')}
  keys = {s: {r['problem'][len('Compute '):] for r in rs}
          for s, rs in recs.items()}
  for s, ks in keys.items():
    assert all(synthetic.split_of('arithmetic', k) == s for k in ks)
  buckets = [synthetic.split_of('countdown', str(i)) for i in range(5000)]
  frac_test = np.mean([b == 'test' for b in buckets])
  assert abs(frac_test - synthetic.SPLITS['test']) < 0.02


@pytest.mark.parametrize('task,knobs,space', [
    # 9 * 9 one-digit sums: seeds cannot keep train and test apart, only
    # the key hash can.
    ('arithmetic', dict(num_operands=2, max_digits=1, operators='+'), 81),
    ('countdown', dict(num_numbers=2, number_range=(1, 6), operators='+*',
                       max_target=100), None),
])
def test_splits_disjoint_whatever_the_seeds(task, knobs, space):
  def problems(split, n):
    out = set()
    for seed in range(6):
      out |= {r['problem'] for r in
              generate(task, n, seed=seed, split=split, unique=False, **knobs)}
    return out

  train, test = problems('train', 150), problems('test', 15)
  assert train and test and not train & test
  if space:  # Train saw most of its share, so disjointness means something.
    assert len(train) > 0.7 * space and len(train) + len(test) <= space


def test_render_expr_minimal_parentheses():
  cases = {
      ('-', 10, ('+', 2, 3)): '10 - (2 + 3)',
      ('+', 10, ('-', 5, 3)): '10 + 5 - 3',
      ('-', ('-', 10, 2), 3): '10 - 2 - 3',
      ('*', ('+', 1, 2), 3): '(1 + 2) * 3',
      ('/', 12, ('*', 2, 3)): '12 / (2 * 3)',
      ('*', 12, ('/', 6, 3)): '12 * 6 / 3',
      ('+', ('*', 2, 3), ('/', 8, 4)): '2 * 3 + 8 / 4',
  }
  for tree, text in cases.items():
    assert synthetic.render_expr(tree) == text


def _reward_fn(name):
  try:
    from r1jax.rewards import REWARDS  # pylint: disable=g-import-not-at-top
  except ImportError:
    pytest.skip('r1jax.rewards is not importable yet')
  if name not in REWARDS:
    pytest.skip(f'reward {name!r} is not registered')
  return REWARDS.get(name)


@pytest.mark.parametrize('task', ['arithmetic', 'countdown'])
def test_reward_library_accepts_the_answers(task):
  fn = _reward_fn(task)
  recs = generate(task, 50, seed=5, split='test')
  good = [f'<think> {". ".join(r["solution_steps"])}. </think> '
          f'<answer> {r["answer"]} </answer>' for r in recs]
  wrong = []
  for r in recs:
    if task == 'arithmetic':
      w = str(int(r['answer']) + 1)
    else:  # Drop one number: never a valid equation.
      w = r['answer'].replace(str(r['numbers'][0]), '1', 1) + ' + 1'
    wrong.append(f'<think> x </think> <answer> {w} </answer>')
  r_good = np.asarray(fn(good, recs))
  r_wrong = np.asarray(fn(wrong, recs))
  assert r_good.shape == (50,)
  assert np.all(r_good == r_good.max()) and r_good.max() > 0
  assert np.all(r_wrong < r_good)
