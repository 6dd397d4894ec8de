"""Synthetic reasoning tasks with verifiable answers, generated from a seed.

    records = generate('countdown', n=500, seed=0, split='test', num_numbers=4)
    records[0]['problem']  # 'Using the numbers [3, 7, 25, 50], make 75. ...'

Every record is a plain dict (JSON-friendly):
  id             '<task>/<split>/<seed>/<index>', unique per generate call.
  task, split    the task name and the split it belongs to.
  problem        the question text.
  answer         arithmetic: the integer as a string; countdown: one valid
                 equation (its left-hand side, e.g. '25 * (7 - 3) - 25');
                 code: the solution program ('def f(x):\n    return x + 5').
  tests, entry_point, expression, value
                 code only: what the `code` reward runs (asserts on f), the
                 constant part of the function and its value.
  numbers        the operands (arithmetic, code) or the numbers to use
                 (countdown).
  target         countdown only: the number to reach.
  solution_steps one 'a op b = c' string per binary operation, in an order that
                 evaluates the solution.
  difficulty     the knob values this problem was drawn with.

Held-out splits. A problem's split is a pure function of its canonical key
(`split_of`): the expression for arithmetic and code, (sorted numbers, target) for
countdown. A generator for split S keeps only problems whose key hashes into
S, so train never contains a test problem, whatever seeds either side used.

Difficulty knobs are keyword arguments of the task sampler; an int fixes the
knob, a (lo, hi) pair draws it uniformly per problem (inclusive).
"""

import hashlib
import random
from typing import Any, Callable, Sequence

from r1jax.registry import Registry

TASKS: Registry[Callable[..., tuple[dict, str]]] = Registry('synthetic task')

# Fractions of the canonical-key hash space held by each split. Held-out
# splits are small so train keeps most of the problem space.
SPLITS = {'test': 0.10, 'validation': 0.05, 'train': 0.85}
_HASH_BUCKETS = 10_000
# Attempts per record before giving up: a split that holds ~10% of keys
# needs ~10 on average; running out means the problem space is exhausted.
_MAX_ATTEMPTS = 2_000


def stable_hash(*parts: Any) -> int:
  """A stable 64-bit hash (Python's hash() is salted per process)."""
  text = '\x1f'.join(str(p) for p in parts).encode()
  return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), 'little')


def split_of(task: str, key: str) -> str:
  """The split a canonical problem key belongs to (seed-independent)."""
  bucket = stable_hash('split', task, key) % _HASH_BUCKETS
  edge = 0.0
  for name, frac in SPLITS.items():
    edge += frac * _HASH_BUCKETS
    if bucket < edge:
      return name
  return 'train'


def _draw(rng: random.Random, knob: int | Sequence[int], name: str) -> int:
  if isinstance(knob, int):
    return knob
  lo, hi = knob
  if lo > hi:
    raise ValueError(f'Difficulty knob {name}={knob}: lo > hi.')
  return rng.randint(lo, hi)


_PRECEDENCE = {'+': 1, '-': 1, '*': 2, '/': 2}


def apply_op(a: int, op: str, b: int) -> int:
  if op == '+':
    return a + b
  if op == '-':
    return a - b
  if op == '*':
    return a * b
  if op == '/':
    if b == 0 or a % b:
      raise ValueError(f'{a} / {b} is not an exact integer division.')
    return a // b
  raise ValueError(f'Unknown operator {op!r}')


# The operation that undoes each one: a op b = c checks as c inv b = a.
INVERSE_OP = {'+': '-', '-': '+', '*': '/', '/': '*'}


def step_text(a: int, op: str, b: int, c: int) -> str:
  return f'{a} {op} {b} = {c}'


def parse_step(step: str) -> tuple[int, str, int, int]:
  """'37 + 48 = 85' -> (37, '+', 48, 85)."""
  lhs, c = step.split(' = ')
  a, op, b = lhs.split(' ')
  return int(a), op, int(b), int(c)


# ----------------------------------------------------------------------------
# Arithmetic: evaluate a flat expression with + - (and optionally *).
# ----------------------------------------------------------------------------


@TASKS.register('arithmetic')
def arithmetic(rng: random.Random, *,
               num_operands: int | Sequence[int] = (2, 4),
               max_digits: int | Sequence[int] = 2,
               operators: str = '+-',
               mul_digits: int = 1,
               allow_negative: bool = False) -> tuple[dict, str]:
  """'Compute 37 + 48 - 19 + 6' with standard precedence (no final full stop:
  the R1-Zero template adds one after the question).

  Knobs: `num_operands` per expression; `max_digits` per problem (operands are
  uniform in [1, 10**d - 1]); `operators`, a subset of '+-*'; `mul_digits`,
  the most digits of a factor next to '*' (keeps products small);
  `allow_negative`, else running results never go below zero.
  Steps evaluate products first, then sums left to right.
  """
  if not operators or set(operators) - set('+-*'):
    raise ValueError(f'arithmetic operators must be a subset of "+-*", got '
                     f'{operators!r}')
  k = _draw(rng, num_operands, 'num_operands')
  d = _draw(rng, max_digits, 'max_digits')
  if k < 2 or d < 1:
    raise ValueError(f'arithmetic needs num_operands >= 2 and max_digits >= 1 '
                     f'(got {k}, {d}).')
  for attempt in range(100):
    ops = [rng.choice(operators) for _ in range(k - 1)]
    # Plain rejection first keeps the natural distribution of results; long
    # '-' chains that keep failing fall back to bounded subtrahends.
    bounded = attempt >= 20 and not allow_negative
    nums = _draw_operands(rng, ops, d, mul_digits, bounded)
    if nums is None:
      continue
    steps, value, ok = _arithmetic_steps(nums, ops, allow_negative)
    if ok:
      break
  else:
    raise ValueError('Could not draw a non-negative arithmetic problem; set '
                     'allow_negative=True or use fewer "-" operators.')
  expr = ' '.join(f'{op} {n}' for op, n in zip([''] + ops, nums)).strip()
  record = dict(problem=f'Compute {expr}', answer=str(value), numbers=nums,
                solution_steps=steps,
                difficulty=dict(num_operands=k, max_digits=d))
  return record, expr


def _draw_operands(rng, ops, d, mul_digits, bounded):
  """Operands left to right; None when no non-negative choice is left.

  With `bounded`, a lone subtrahend (not part of a product) is drawn no
  larger than the value before it, so '-' chains stay non-negative.
  """
  k = len(ops) + 1
  nums = []
  running, sign, term = 0, 1, 0  # Closed terms' sum; the open term.
  for i in range(k):
    if i > 0 and ops[i - 1] != '*':
      running += sign * term
      sign = 1 if ops[i - 1] == '+' else -1
    near_mul = (i > 0 and ops[i - 1] == '*') or (i < k - 1 and ops[i] == '*')
    hi = 10**(min(d, mul_digits) if near_mul else d) - 1
    if bounded and sign < 0 and not near_mul:
      hi = min(hi, running)
      if hi < 1:
        return None
    n = rng.randint(1, hi)
    term = term * n if i > 0 and ops[i - 1] == '*' else n
    nums.append(n)
  return nums


def _arithmetic_steps(nums, ops, allow_negative):
  """Products first, then a left-to-right sum; (steps, value, ok)."""
  steps = []
  terms = [(1, nums[0])]  # (sign, value) after products are folded.
  for op, n in zip(ops, nums[1:]):
    if op == '*':
      sign, a = terms[-1]
      terms[-1] = (sign, a * n)
      steps.append(step_text(a, '*', n, a * n))
    else:
      terms.append((1 if op == '+' else -1, n))
  value = terms[0][1]
  ok = True
  for sign, t in terms[1:]:
    new = value + sign * t
    steps.append(step_text(value, '+' if sign > 0 else '-', t, new))
    value = new
    ok = ok and (allow_negative or value >= 0)
  return steps, value, ok


# ----------------------------------------------------------------------------
# Countdown: combine all given numbers with + - * / to reach a target.
# ----------------------------------------------------------------------------


def render_expr(node) -> str:
  """An expression tree (int | (op, left, right)) with minimal parentheses."""
  if isinstance(node, int):
    return str(node)
  op, left, right = node
  ls, rs = render_expr(left), render_expr(right)
  if not isinstance(left, int) and _PRECEDENCE[left[0]] < _PRECEDENCE[op]:
    ls = f'({ls})'
  if not isinstance(right, int) and (
      _PRECEDENCE[right[0]] < _PRECEDENCE[op]
      or (_PRECEDENCE[right[0]] == _PRECEDENCE[op] and op in '-/')):
    rs = f'({rs})'
  return f'{ls} {op} {rs}'


def random_combination(rng: random.Random, numbers: Sequence[int],
                       operators: str) -> tuple[int, Any, list[str]] | None:
  """Combines all `numbers` pairwise at random into one positive integer.

  Every intermediate result is a positive integer (larger minus smaller,
  exact division by a divisor > 1). Returns (value, tree, steps), or None
  when the operators allow no valid move.
  """
  pool = [(n, n) for n in numbers]  # (value, tree)
  steps = []
  while len(pool) > 1:
    i, j = rng.sample(range(len(pool)), 2)
    (a, ta), (b, tb) = pool[i], pool[j]
    if a < b:
      (a, ta), (b, tb) = (b, tb), (a, ta)
    valid = [op for op in operators
             if op in '+*' or (op == '-' and a > b)
             or (op == '/' and b > 1 and a % b == 0)]
    if not valid:
      return None
    op = rng.choice(valid)
    # Commutative operations appear in both operand orders.
    if op in '+*' and rng.random() < 0.5:
      (a, ta), (b, tb) = (b, tb), (a, ta)
    c = apply_op(a, op, b)
    steps.append(step_text(a, op, b, c))
    pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(c, (op, ta, tb))]
  value, tree = pool[0]
  return value, tree, steps


@TASKS.register('countdown')
def countdown(rng: random.Random, *,
              num_numbers: int | Sequence[int] = (3, 4),
              number_range: Sequence[int] = (1, 50),
              operators: str = '+-*/',
              max_target: int = 1000) -> tuple[dict, str]:
  """'Using the numbers [3, 7, 25, 50], make 75. ...' with a kept solution.

  The target comes from a random expression tree over the numbers, so a
  solution always exists. Knobs: `num_numbers`; `number_range` (inclusive
  bounds of each number); `operators`, a subset of '+-*/'; `max_target`.
  Targets are in [1, max_target] and never one of the given numbers.
  """
  if not operators or set(operators) - set('+-*/'):
    raise ValueError(f'countdown operators must be a subset of "+-*/", got '
                     f'{operators!r}')
  k = _draw(rng, num_numbers, 'num_numbers')
  lo, hi = number_range
  if k < 2 or lo < 1 or hi < lo:
    raise ValueError(f'countdown needs num_numbers >= 2 and 1 <= lo <= hi '
                     f'(got {k}, {number_range}).')
  for _ in range(1000):
    numbers = [rng.randint(lo, hi) for _ in range(k)]
    built = random_combination(rng, numbers, operators)
    if built is None:
      continue
    target, tree, steps = built
    if 1 <= target <= max_target and target not in numbers:
      break
  else:
    raise ValueError(f'Could not draw a countdown problem with knobs '
                     f'num_numbers={k}, number_range={number_range}, '
                     f'operators={operators!r}, max_target={max_target}.')
  numbers = sorted(numbers)
  ops_text = ' '.join(operators)
  problem = (f'Using the numbers {numbers}, make {target}. '
             f'Use each number exactly once with {ops_text}.')
  record = dict(problem=problem, answer=render_expr(tree), numbers=numbers,
                target=target, solution_steps=steps,
                difficulty=dict(num_numbers=k, max_number=hi))
  return record, f'{numbers}->{target}'


# ----------------------------------------------------------------------------
# Code: write f(x) that returns x plus a constant expression, checked by tests.
# ----------------------------------------------------------------------------

# The function every `code` problem asks for (the tests call it).
CODE_ENTRY_POINT = 'f'


def code_program(value: int) -> str:
  """The solution of a `code` problem whose constant comes to `value`."""
  body = f'x + {value}' if value >= 0 else f'x - {-value}'
  return f'def {CODE_ENTRY_POINT}(x):\n    return {body}'


@TASKS.register('code')
def code(rng: random.Random, *, num_tests: int = 3,
         test_range: Sequence[int] = (-20, 20),
         **arithmetic_knobs) -> tuple[dict, str]:
  """'Write f(x) that returns x + 3 + 4 - 2', scored by hidden tests.

  The constant part is an `arithmetic` problem (its knobs pass through);
  the solution folds it (`def f(x):\n    return x + 5`), working it out step
  by step like the arithmetic problem (the same `solution_steps`). The record
  carries what the `code` reward runs: `tests` (`num_tests` asserts on
  distinct x in `test_range`), `entry_point` 'f', and `expression` (the
  constant part). Its `answer` is the solution program; `value` the
  constant. Held out by the expression, like arithmetic.
  """
  rec, expr = arithmetic(rng, **arithmetic_knobs)
  value = int(rec['answer'])
  lo, hi = test_range
  if num_tests < 1 or hi - lo + 1 < num_tests:
    raise ValueError(f'code needs 1 <= num_tests <= the size of test_range '
                     f'(got {num_tests}, {test_range}).')
  xs = rng.sample(range(lo, hi + 1), num_tests)
  tests = [f'assert {CODE_ENTRY_POINT}({x}) == {x + value}' for x in xs]
  record = dict(problem=f'Write {CODE_ENTRY_POINT}(x) that returns x + {expr}',
                answer=code_program(value), value=value, expression=expr,
                numbers=rec['numbers'], solution_steps=rec['solution_steps'],
                tests=tests, entry_point=CODE_ENTRY_POINT,
                difficulty=rec['difficulty'])
  return record, expr


# ----------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------


def sample_problem(task: str, seed: int, split: str, index: int,
                   **difficulty) -> dict:
  """Problem `index` of (task, seed, split): a pure function of its inputs.

  Redraws (attempt 1, 2, ...) until the problem's canonical key belongs to
  `split`. Returns the record without `id` plus its canonical key in '_key'.
  """
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; known: {sorted(SPLITS)}')
  sampler = TASKS.get(task)
  for attempt in range(_MAX_ATTEMPTS):
    rng = random.Random(stable_hash(task, seed, split, index, attempt))
    record, key = sampler(rng, **difficulty)
    if split_of(task, key) == split:
      return dict(task=task, split=split, **record, _key=key)
  raise RuntimeError(
      f'No {task!r} problem of split {split!r} found in {_MAX_ATTEMPTS} draws '
      f'with difficulty {difficulty}; the problem space is too small.')


def generate(task: str, n: int, seed: int, split: str = 'train', *,
             unique: bool = True, **difficulty) -> list[dict]:
  """`n` records of `task` for `split`, deterministic in (seed, split).

  With `unique`, no two records share a canonical key (a repeat is redrawn).
  generate(..., n=m) is a prefix of generate(..., n=m') for m <= m'.
  """
  records, seen = [], set()
  index = 0
  misses = 0
  while len(records) < n:
    rec = sample_problem(task, seed, split, index, **difficulty)
    index += 1
    key = rec.pop('_key')
    if unique and key in seen:
      misses += 1
      if misses > _MAX_ATTEMPTS + n:
        raise RuntimeError(
            f'Only {len(records)} distinct {task!r} problems found for split '
            f'{split!r} with difficulty {difficulty}; ask for fewer.')
      continue
    seen.add(key)
    records.append(dict(id=f'{task}/{split}/{seed}/{len(records)}', **rec))
  return records


# ----------------------------------------------------------------------------
# Prompt languages (the language-consistency study)
# ----------------------------------------------------------------------------

# How an arithmetic problem is asked in each language; the expression stays.
PROBLEM_PREFIX = {'en': 'Compute ', 'ru': 'Вычисли '}


def localize(records: Sequence[dict], languages: dict[str, float],
             seed: int = 0) -> list[dict]:
  """Records asked in languages drawn with weights `languages` (e.g.
  {'en': 0.5, 'ru': 0.5}), each with its `target_language` field.

  The draw is a pure function of (seed, record id). Only arithmetic problems
  ('Compute ...') have translations.
  """
  unknown = set(languages) - set(PROBLEM_PREFIX)
  if unknown:
    raise ValueError(f'no problem wording for languages {sorted(unknown)}; '
                     f'known: {sorted(PROBLEM_PREFIX)}')
  names = sorted(languages)
  weights = [float(languages[n]) for n in names]
  out = []
  for rec in records:
    rng = random.Random(stable_hash('language', seed, rec['id']))
    lang = rng.choices(names, weights)[0]
    problem = rec['problem']
    if lang != 'en':
      if not problem.startswith(PROBLEM_PREFIX['en']):
        raise ValueError(f'record {rec["id"]}: only arithmetic problems '
                         f'("Compute ...") can be asked in {lang!r}')
      problem = PROBLEM_PREFIX[lang] + problem[len(PROBLEM_PREFIX['en']):]
    out.append({**rec, 'problem': problem, 'target_language': lang})
  return out
