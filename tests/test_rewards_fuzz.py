"""Rewards never stall or crash the trainer, whatever a policy writes.

* Fuzz (hypothesis): every registered reward, through `compute_rewards`, on
  adversarial completions of up to 200k characters (fragments that stress
  brace matching, tag and delimiter scans and number parsing, repeated and
  mixed, plus random text with lone surrogates), each completion scored alone
  within `PER_COMPLETION_S` and to a finite float32, never raising.
* The two cases found by hand: 4,000 / 20,000 repeats of `\\boxed{` (was
  4.8 s / 117 s, quadratic) and an answer with more than 4,300 digits (was a
  ValueError out of `REWARDS['math']` and `'arithmetic'`): each well under a
  second, scoring 0.
* The linear scanners agree with the regexes / code they replace, on random
  strings over their special tokens.
* A completion whose reward raises scores 0 and is counted in
  `reward/<name>/errors`.
"""

import re
import time

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from r1jax import rewards
from r1jax.rewards import code_sandbox
from r1jax.rewards import format as format_rewards
from r1jax.rewards import language
from r1jax.rewards import math_answer
from r1jax.rewards.registry import REWARDS
from r1jax.rewards.registry import score_each

MAX_CHARS = 200_000
# Measured worst case at 200k characters is ~0.2 s on one busy CPU; the
# quadratic paths this guards against took minutes. Generous for shared CI.
PER_COMPLETION_S = 2.0

# Fragments a degenerate policy repeats that hit the scanners' corner cases.
FRAGMENTS = [
    '\\boxed{', '\\boxed ', '\\boxed', '\\fbox{', '{', '}', '{}', '\\', '\\\\',
    '\\{', '<think>', '</think>', '<answer>', '</answer>',
    '<think>x</think><answer>', '<think></think><answer></answer>', '$', '$$',
    '$$a', '\\[', '\\(', '\\[a', '```', '```\n', '```py', '``` \n', '####',
    '#### ', '1,', '1,234', '0.', '-', '1/', '-1', '1.', '.1', '\\frac{',
    '\\frac', '^', '^ ', '^{', '^{\\circ', ' ', '\n', 'a', 'ab ', 'é', '中',
    'x=', '=', '\\text{', '\\text', '\\left', '\\!', '~', 'the answer is ',
    'answer: ', '7', '12cm', 'cm', '%', '\\%', '_', '1_', '_{', '°', 'dollars',
    '\ud800', 'ab\u0301', 'привет ', '\\sqrt{', '(', ')', '1+', '×', ' x ',
]
WRAPS = [
    lambda s: s,
    lambda s: '<answer>' + s + '</answer>',
    lambda s: '\\boxed{' + s + '}',
    lambda s: '<think>' + s + '</think> <answer>7</answer>',
    lambda s: '<think>ok</think> <answer>' + s,
    lambda s: 'so #### ' + s,
    lambda s: '```python\n' + s + '\n```',
]
# Any code point, lone surrogates included (hypothesis leaves them out by
# default; a detokenizer with errors='surrogateescape' can produce them).
_ANY_CHAR = st.characters(exclude_categories=())


@st.composite
def adversarial_text(draw) -> str:
  """Up to MAX_CHARS of a few fragments, each repeated to a drawn length."""
  pieces = draw(st.lists(
      st.tuples(st.one_of(st.sampled_from(FRAGMENTS),
                          st.text(_ANY_CHAR, min_size=1, max_size=6)),
                st.integers(0, MAX_CHARS)),
      min_size=1, max_size=4))
  out, total = [], 0
  for fragment, n in pieces:
    n = min(n, MAX_CHARS - total)
    out.append((fragment * (n // len(fragment) + 1))[:n])
    total += n
  return draw(st.sampled_from(WRAPS))(''.join(out))


COMPLETIONS = st.one_of(adversarial_text(), st.text(_ANY_CHAR, max_size=2000))

# Example records and options per reward; a reward registered later without
# an entry is fuzzed with an empty example and no options.
EXAMPLES = {
    'math': [{'answer': '7'}, {'answer': '\\frac{1}{2}'},
             {'answer': '7' * 5000}, {'answer': 'so #### 1,234'}],
    'arithmetic': [{'answer': '7'}, {'answer': '-12'}],
    'countdown': [{'numbers': [1, 2, 3], 'target': 6}],
    'language': [{}, {'target_language': 'zh'}],
    'code': [{}],  # no tests: the host-side part; the sandbox is tested below
    # Each record scored by the reward its task names (a record without one
    # is an error in the data: refused, tests/test_code_task.py).
    'task': [{'task': 'arithmetic', 'answer': '7'},
             {'task': 'math', 'answer': '7'}, {'task': 'code'},
             {'task': 'countdown', 'numbers': [1, 2, 3], 'target': 6}],
}
OPTIONS = {
    'math': {'use_math_verify': False},  # the pool path is tested below
    'overlong': {'max_len': 100, 'buffer': 20},
    'task': {'options': {'math': {'use_math_verify': False}}},
}


@pytest.mark.parametrize('name', REWARDS.names())
def test_fuzz_every_reward_is_fast_and_total(name):

  @hypothesis.settings(
      max_examples=25, deadline=None, database=None,
      suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(COMPLETIONS, st.data())
  def check(completion, data):
    example = data.draw(st.sampled_from(EXAMPLES.get(name, [{}])))
    lengths_B = np.array([data.draw(st.one_of(
        st.integers(0, 10**6), st.floats(allow_nan=True)))])
    t0 = time.perf_counter()
    total_B, per_reward, metrics = rewards.compute_rewards(
        [completion], [example], {name: 1.0},
        {name: OPTIONS[name]} if name in OPTIONS else None,
        lengths_B=lengths_B)
    seconds = time.perf_counter() - t0
    assert seconds < PER_COMPLETION_S, (
        f'{name} took {seconds:.2f} s on {len(completion)} chars starting '
        f'{completion[:80]!r}')
    r = per_reward[name]
    assert r.shape == (1,) and r.dtype == np.float32
    assert np.isfinite(r).all() and np.isfinite(total_B).all()
    assert all(np.isfinite(v) for v in metrics.values())

  check()


def _helpers(completion: str) -> None:
  """Host-side helpers other code calls directly (the code reward's
  extraction runs only for examples with tests, so the reward fuzz above
  does not reach it)."""
  answer = math_answer.extract_answer(completion)
  if answer is not None:
    math_answer.fast_equal(answer, '7')
  math_answer.fast_equal(completion, '\\frac{1}{2}')
  code_sandbox.extract_code(completion)
  format_rewards.think_text(completion)
  language.word_scripts(completion)


@hypothesis.settings(max_examples=40, deadline=None, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(COMPLETIONS)
def test_fuzz_host_side_helpers_are_fast(completion):
  t0 = time.perf_counter()
  _helpers(completion)
  seconds = time.perf_counter() - t0
  assert seconds < PER_COMPLETION_S, (
      f'{seconds:.2f} s on {len(completion)} chars: {completion[:80]!r}')


def _reward_call(name):
  example = EXAMPLES.get(name, [{}])[0]

  def call(completion):
    total_B, _, _ = rewards.compute_rewards(
        [completion], [example], {name: 1.0},
        {name: OPTIONS[name]} if name in OPTIONS else None,
        lengths_B=np.array([50]))
    assert np.isfinite(total_B).all()

  return call


@pytest.mark.parametrize('name', REWARDS.names() + ['helpers'])
def test_every_fragment_repeated(name):
  """Each fragment repeated to 20k then 200k characters, bare and wrapped.

  Random draws rarely pick the one fragment a scanner is quadratic on, so
  every fragment is tried. The 20k step (a tenth of the time bound) fails a
  quadratic path in seconds instead of minutes at 200k.
  """
  call = _helpers if name == 'helpers' else _reward_call(name)

  def timed(completion, bound, tries=3):
    # The fastest of up to `tries` calls: a busy machine's pause (the full
    # suite with other jobs beside it took 0.43 s on a 20k call that takes
    # 0.02 s alone) passes on a retry, a quadratic path fails every try.
    best = float('inf')
    for _ in range(tries):
      t0 = time.perf_counter()
      call(completion)
      best = min(best, time.perf_counter() - t0)
      if best < bound:
        break
    return best

  for fragment in FRAGMENTS:
    for wrap in WRAPS[:2]:
      for n, bound in ((MAX_CHARS // 10, PER_COMPLETION_S / 5),
                       (MAX_CHARS, PER_COMPLETION_S)):
        completion = wrap((fragment * (n // len(fragment) + 1))[:n])
        seconds = timed(completion, bound)
        assert seconds < bound, (
            f'{name}: {seconds:.2f} s on {fragment!r} * {n} chars, wrapped '
            f'as {wrap("...")!r}')


@pytest.mark.parametrize('head,run,tail', [
    ('^', ' ', 'x'), ('^{', ' ', 'x'), ('^{\\circ', ' ', 'x'),
    ('\\text', ' ', 'x'), ('\\text{', 'a', ''), ('the', ' ', 'x'),
    ('answer', ' ', 'x'), ('x', ' ', '='), ('', '1', 'cm'), ('$', ' ', 'x'),
    ('', '1,234', '.5'), ('', '7', '_8'), ('7_', '9', ''), ('\\frac{', '1', '}{2}'),
])
def test_normalisation_backtracking(head, run, tail):
  """A long run between two fixed ends, where a regex could try every split
  (the degree mark `^ ... \\circ` did: quadratic in the run of spaces)."""
  for n, bound in ((MAX_CHARS // 10, PER_COMPLETION_S / 5),
                   (MAX_CHARS, PER_COMPLETION_S)):
    answer = head + run * (n // len(run)) + tail
    t0 = time.perf_counter()
    assert math_answer.fast_equal(answer, '7') in (None, False)
    r = REWARDS.get('math')([f'<answer>{answer}</answer>'], [{'answer': '7'}])
    assert r.tolist() == [0.0]
    seconds = time.perf_counter() - t0
    assert seconds < bound, f'{seconds:.2f} s on {n} chars'


# ----------------------------------------------------------------------------
# The two cases found by hand
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('repeats', [4000, 20000])
def test_repeated_open_boxes_are_fast_and_score_zero(repeats):
  completion = '\\boxed{' * repeats
  t0 = time.perf_counter()
  assert math_answer.extract_answer(completion) is None
  assert time.perf_counter() - t0 < 1.0
  for name in ('math', 'arithmetic', 'countdown'):
    t0 = time.perf_counter()
    r = REWARDS.get(name)(
        [completion], [{'answer': '7', 'numbers': [7], 'target': 7}])
    assert time.perf_counter() - t0 < 1.0, name
    assert r.tolist() == [0.0], name


@pytest.mark.parametrize('template', [
    '<answer>{}</answer>', '\\boxed{{{}}}', 'The answer is {}', '#### {}',
    '<answer>-{}.5</answer>', '<answer>{}/3</answer>', '<answer>{}_8</answer>',
    '<answer>\\frac{{{}}}{{2}}</answer>', '<answer>{}%</answer>'])
def test_answer_over_the_int_string_limit_scores_zero(template):
  digits = '7' * 5000  # > 4,300: int(digits) raises ValueError
  completion = template.format(digits)
  for name in ('math', 'arithmetic'):
    metrics = {}
    t0 = time.perf_counter()
    r = REWARDS.get(name)([completion], [{'answer': '7'}], metrics=metrics)
    assert time.perf_counter() - t0 < 1.0, name
    assert r.tolist() == [0.0], name
    assert metrics['errors'] == 0, name  # handled, not caught


def test_huge_equal_answers_still_match():
  digits = '7' * 5000
  r = REWARDS.get('math')([f'<answer>{digits}</answer>'], [{'answer': digits}])
  assert r.tolist() == [1.0]  # identical strings need no number parsing
  assert math_answer.fast_equal('9' * 5000, '7') is None  # not a number here
  assert math_answer.fast_equal('1', '1_' + '9' * 5000) is None  # no raise


# ----------------------------------------------------------------------------
# Linear scanners agree with what they replace
# ----------------------------------------------------------------------------


def _last_boxed_reference(text):
  """The former quadratic `last_boxed`: each box scans for its own brace."""
  for m in reversed(list(math_answer._BOXED_RE.finditer(text))):
    start = m.end()
    if start < len(text) and text[start] == '{':
      end = math_answer.matching_brace(text, start)
      if end is None:
        continue
      return text[start + 1:end]
    if m.group(0).endswith(' ') or (start < len(text) and text[start] != '\\'):
      arg = re.match(r'[^\s$]+', text[start:])
      if arg:
        return arg.group(0)
  return None


_LENIENT_REFERENCE = re.compile(
    r'<think>(?P<think>.*?)</think>.*?<answer>(?P<answer>.*?)</answer>',
    re.DOTALL)


def _tokens(*tokens):
  return st.lists(st.sampled_from(tokens), max_size=14).map(''.join)


@hypothesis.settings(max_examples=400, deadline=None, database=None)
@hypothesis.given(_tokens('\\boxed', '\\fbox', '{', '}', '\\', '\\{', ' ', 'x',
                          '$', '\n', '1'))
def test_last_boxed_matches_reference(text):
  assert math_answer.last_boxed(text) == _last_boxed_reference(text)


@hypothesis.settings(max_examples=400, deadline=None, database=None)
@hypothesis.given(_tokens('<think>', '</think>', '<answer>', '</answer>', ' ',
                          'x', '\n', '<'))
def test_lenient_format_matches_reference(text):
  expected = any(m.group('think').strip() and m.group('answer').strip()
                 for m in _LENIENT_REFERENCE.finditer(text))
  assert format_rewards.lenient_format_ok(text) == expected


@hypothesis.settings(max_examples=400, deadline=None, database=None)
@hypothesis.given(_tokens('$', '$$', '\\[', '\\]', '\\(', '\\)', '\\', 'a',
                          'ab', ' ', '\n', '[', ')', '\\x', 'é'))
def test_strip_math_matches_reference(text):
  assert language.strip_math(text) == language._MATH_RE.sub(' ', text)


@hypothesis.settings(max_examples=400, deadline=None, database=None)
@hypothesis.given(_tokens('```', '`', '\n', 'py', 'python', ' ', '\t', 'x',
                          '-', '``'))
def test_fenced_blocks_match_reference(text):
  assert code_sandbox.fenced_blocks(text) == code_sandbox._FENCE_RE.findall(
      text)


# ----------------------------------------------------------------------------
# A failing completion scores 0 and is counted
# ----------------------------------------------------------------------------


def test_failing_completion_scores_zero_and_is_counted():
  # Completion 2 is not a string: every reward fails on it.
  completions = ['<answer>7</answer>', '<answer>7</answer>', 12345]
  examples = [{'answer': '7', 'numbers': [7], 'target': 7},
              {'answer': 'seven', 'numbers': [7]},  # no int, no target
              {'answer': '7', 'numbers': [7], 'target': 7}]
  names = ['arithmetic', 'countdown', 'math', 'format', 'language']
  total_B, per, metrics = rewards.compute_rewards(
      completions, examples, {n: 1.0 for n in names},
      {'math': {'use_math_verify': False}})
  assert per['arithmetic'].tolist() == [1, 0, 0]
  assert per['countdown'].tolist() == [1, 0, 0]
  assert per['math'].tolist() == [1, 0, 0]
  assert metrics['reward/arithmetic/errors'] == 2  # bad gold, not a string
  assert metrics['reward/countdown/errors'] == 2  # no target, not a string
  assert metrics['reward/math/errors'] == 1  # not a string
  assert metrics['reward/format/errors'] == 1
  assert metrics['reward/language/errors'] == 1
  assert np.isfinite(total_B).all()


def test_score_each():
  metrics = {'errors': 1.0}
  values = [1.0, float('nan'), 'x', 0.5]
  out = score_each(lambda i: 1 / 0 if i == 2 else values[i], 4,
                   reward='t', metrics=metrics)
  assert out.dtype == np.float32 and out.tolist() == [1.0, 0.0, 0.0, 0.5]
  assert metrics['errors'] == 3.0  # added to what was there

  def interrupted(i):
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    score_each(interrupted, 1, reward='t')


def test_overlong_non_finite_length_scores_zero():
  metrics = {}
  r = REWARDS.get('overlong')(
      ['a'] * 3, [{}] * 3, lengths_B=np.array([90, np.nan, np.inf]),
      max_len=100, buffer=20, metrics=metrics)
  np.testing.assert_allclose(r, [-0.5, 0, 0])
  assert metrics['errors'] == 2


# ----------------------------------------------------------------------------
# Out-of-process paths on adversarial input
# ----------------------------------------------------------------------------


def test_math_verify_pool_path_on_adversarial_answers():
  """Undecided answers go to the pool; each is bounded by its timeout."""
  completions = [
      '\\boxed{' + '\\sqrt{' * 100 + '2' + '}' * 101,  # < 1000 chars: sent
      '\\boxed{' + '{' * 400 + '}' * 401,
      '<answer>' + '(' * 900 + '</answer>',
      '\\boxed{' * 20000 + '3',  # unbalanced boxes: the last number, 3
      '<answer>' + 'x' * 5000 + '</answer>',  # too long for the pool: 0
      '\\boxed{\\frac{\\sqrt{8}}{2}}',  # needs the pool, equals sqrt(2)
  ]
  metrics = {}
  t0 = time.perf_counter()
  r = REWARDS.get('math')(completions, [{'answer': '\\sqrt{2}'}] * 6,
                          timeout_s=3.0, metrics=metrics)
  seconds = time.perf_counter() - t0
  assert r.tolist() == [0, 0, 0, 0, 0, 1]
  assert metrics['errors'] == 0
  # Pool start-up (sympy import) plus at most one timeout per item.
  assert seconds < 60, seconds


def test_code_reward_on_adversarial_completions():
  completions = [
      '```' * 60000,  # was quadratic in the fence regex
      '```python\n' + 'print(3)\n' + '`' * 100000,
      '```' + 'a' * 100000 + '\n',  # info line with no closing fence
      '```python\nprint(\'\ud800\')\n```',  # cannot be written as UTF-8
  ]
  for c in completions:
    t0 = time.perf_counter()
    code_sandbox.extract_code(c)
    assert time.perf_counter() - t0 < PER_COMPLETION_S
  metrics = {}
  r = REWARDS.get('code')(
      completions, [{'tests': [{'input': '', 'output': '3'}]}] * 4,
      timeout_s=2.0, metrics=metrics)
  assert r.tolist() == [0, 1, 0, 0]  # 1: the fence closes at the first ```
  assert metrics['errors'] == 1  # the surrogate cannot be written out
