"""Final-answer extraction and fast answer equivalence for math rewards.

Two halves:
  * `extract_answer(text)` finds the final answer a completion commits to:
    the last `<answer>...</answer>` block (a `\\boxed{}` inside it wins), else
    the last `\\boxed{...}` / `\\fbox{...}` (braces nested to any depth), else a
    GSM8K-style `#### N` line, else (optionally) the last number in the text.
  * `fast_equal(pred, gold)` decides equivalence without sympy for the common
    cases: identical strings after light LaTeX normalisation, and numbers
    (integers, decimals, `a/b`, `\\frac{a}{b}`, percentages, thousands
    separators, `$`, trailing units, degrees). It returns None when it cannot
    decide, and the caller then asks math-verify in a separate process
    (`math_verify_pool`).

Everything here is plain Python over strings: no subprocess, no sympy, safe to
call from evaluation code (`answers_equal`). It runs on whatever a policy
writes, so every function is linear in its input's length (no regex that can
backtrack over a long run, no scan per box) and never raises on a string:
numbers longer than `MAX_NUMBER_CHARS` are not parsed (Python refuses int
conversions over 4,300 digits).
"""

from fractions import Fraction
import re

# ----------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------

_ANSWER_OPEN = '<answer>'
_ANSWER_CLOSE = '</answer>'
_BOXED_RE = re.compile(r'\\(?:boxed|fbox)\s*')
_HASHES_RE = re.compile(r'####\s*([^\n]*)')
# An optionally signed integer or decimal, with optional thousands separators,
# optionally followed by `/denominator` (e.g. `3/4`).
_NUMBER_RE = re.compile(
    r'(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?'
    r'|(?<![\w.])-?\.\d+'
)


def matching_brace(text: str, open_idx: int) -> int | None:
  """Index of the `}` closing the `{` at `open_idx`, or None if unbalanced."""
  depth = 0
  i = open_idx
  while i < len(text):
    c = text[i]
    if c == '\\':
      i += 2  # `\{` and `\}` are literal braces, not grouping.
      continue
    if c == '{':
      depth += 1
    elif c == '}':
      depth -= 1
      if depth == 0:
        return i
    i += 1
  return None


# Tokens that matter for brace matching: an escaped character (`\\{`, `\\}`,
# `\\\\`) is one token, like `matching_brace`'s two-character skip.
_BRACE_TOKEN_RE = re.compile(r'\\.|[{}]', re.DOTALL)
_BARE_ARG_RE = re.compile(r'[^\s$]+')


def _closing_braces(text: str) -> dict[int, int]:
  """Index of each balanced `{` -> index of its `}`, in one linear pass.

  Agrees with `matching_brace(text, i)` for every `{` not preceded by a
  backslash (the `{` of a `\\boxed{`): such a brace starts a token whether
  the scan begins at it or at the start of the text.
  """
  stack: list[int] = []
  closing: dict[int, int] = {}
  for m in _BRACE_TOKEN_RE.finditer(text):
    c = m.group()
    if c == '{':
      stack.append(m.start())
    elif c == '}' and stack:
      closing[stack.pop()] = m.start()
  return closing


def last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`.

  Handles nested braces and the brace-less form `\\boxed 5`. Returns None when
  there is no box or the last box is unbalanced (e.g. a truncated completion);
  an unbalanced last box falls back to the box before it.

  Linear in `len(text)`: all braces are matched in one pass, rather than each
  box scanning to the end of the text for its closing brace (quadratic on a
  completion made of `\\boxed{` repeated).
  """
  matches = list(_BOXED_RE.finditer(text))
  if not matches:
    return None
  closing: dict[int, int] | None = None
  for m in reversed(matches):
    start = m.end()
    if start < len(text) and text[start] == '{':
      if closing is None:
        closing = _closing_braces(text)
      end = closing.get(start)
      if end is None:
        continue
      return text[start + 1:end]
    # `\\boxed 5`: the argument runs to the next whitespace or `$`.
    if m.group(0).endswith(' ') or (start < len(text) and text[start] != '\\'):
      arg = _BARE_ARG_RE.match(text, start)
      if arg:
        return arg.group(0)
  return None


def answer_block(text: str) -> str | None:
  """Content of the last `<answer>` block (an unclosed last block counts)."""
  open_idx = text.rfind(_ANSWER_OPEN)
  if open_idx < 0:
    return None
  start = open_idx + len(_ANSWER_OPEN)
  close_idx = text.find(_ANSWER_CLOSE, start)
  return text[start:] if close_idx < 0 else text[start:close_idx]


def last_number(text: str) -> str | None:
  """The last number written in `text` (e.g. `-1,234.5` or `3/4`), or None."""
  matches = _NUMBER_RE.findall(text)
  return matches[-1] if matches else None


def extract_answer(
    text: str | None, *, fallback_last_number: bool = True
) -> str | None:
  """The final answer a completion (or reference solution) commits to.

  Priority: the last `<answer>` block (a box inside it wins over its raw
  text), the last `\\boxed{}`, the last `#### N` line, then the last number
  when `fallback_last_number` is set. Returns the answer text stripped, or
  None when nothing qualifies.
  """
  if not text:
    return None
  block = answer_block(text)
  if block is not None:
    boxed = last_boxed(block)
    candidate = boxed if boxed is not None else block
    candidate = candidate.strip()
    if candidate:
      return candidate
  boxed = last_boxed(text)
  if boxed is not None and boxed.strip():
    return boxed.strip()
  hashes = _HASHES_RE.findall(text)
  if hashes and hashes[-1].strip():
    return hashes[-1].strip()
  if fallback_last_number:
    return last_number(text)
  return None


def gold_answer(gold: str) -> str:
  """Normalises a dataset's gold field to a bare answer.

  Datasets store either the answer (`'18'`, `'\\frac{1}{2}'`) or a whole
  solution (GSM8K's `'... #### 18'`, MATH's `'... \\boxed{...}'`); the latter
  are reduced to their final answer so that reward code accepts both.
  """
  gold = str(gold).strip()
  if '####' in gold or '\\boxed' in gold or '\\fbox' in gold:
    extracted = extract_answer(gold, fallback_last_number=False)
    if extracted is not None:
      return extracted
  return gold


# ----------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------

# Spacing, sizing and style commands that never change a value.
_DROP_RE = re.compile(
    r'\\(?:displaystyle|textstyle|left|right|big|Big|bigg|Bigg)(?![a-zA-Z])'
    r'|\\[,;:! ]|~'
)
# Possessive `*+`: `\s*\{?\s*` would otherwise try every split of a long
# run of spaces after a `^` (quadratic); the matches are the same.
_DEGREE_RE = re.compile(
    r'\^\s*+\{?\s*+\\circ\s*+\}?|°|\\degree(?![a-zA-Z])')
# `\text{...}` / `\mbox{...}` / `\mathrm{...}` wrappers (no nested braces).
_TEXT_RE = re.compile(
    r'\\(?:text|textbf|mbox|mathrm|mathbf|textrm)\s*+\{([^{}]*+)\}')
_ASSIGN_RE = re.compile(r'^[a-zA-Z]\s*=(?!=)')
_ANSWER_PREFIX_RE = re.compile(
    r'^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*:?\s*', re.IGNORECASE
)
# Unit words a numeric answer may carry (`18 dollars`, `15 cm^2`); a closed
# list, because `2xy` or `3x` must not read as the number 2 or 3 (hence no
# one-letter units such as `m` or `g`, which are also common variables).
_UNITS = (
    'dollars?|cents?|units?|(?:sq|square|cubic)?(?:cm|mm|km|in|ft|yd|mi)'
    '|inch(?:es)?|feet|foot|yards?|miles?|meters?|metres?|centimeters?'
    '|kilometers?|millimeters?|mph|degrees?|seconds?|minutes?|hours?|days?'
    '|weeks?|months?|years?|pounds?|lbs?|ounces?|oz|grams?|kg|liters?'
    '|litres?|ml|gallons?|people|students?|points?|ways|times|percent'
)
_UNITS_RE = re.compile(
    r'^(.*?\d)(' + _UNITS + r')(\^\d+|\^\{\d+\})?$', re.IGNORECASE
)
# A number in another base, `2516_8` or `4210_{6}`.
_BASE_RE = re.compile(r'^([0-9A-Za-z]+)_\{?(\d+)\}?$')


def normalize_answer(s: str) -> str:
  """Light, value-preserving normalisation of an answer string.

  Strips math delimiters, `\\left`/`\\right`, spacing commands, `\\dfrac` ->
  `\\frac`, degree marks, `\\text{}` wrappers, a `The answer is` prefix, a
  trailing full stop, a leading `x =` and all whitespace. Used both for the
  exact-string test and before number parsing.
  """
  s = s.strip()
  s = _ANSWER_PREFIX_RE.sub('', s)
  # Math delimiters around the whole answer.
  for left, right in (('$$', '$$'), ('$', '$'), ('\\(', '\\)'),
                      ('\\[', '\\]')):
    if (s.startswith(left) and s.endswith(right)
        and len(s) >= len(left) + len(right)):
      s = s[len(left):len(s) - len(right)].strip()
  s = s.rstrip('.').strip()
  s = _DROP_RE.sub('', s)
  s = s.replace('\\dfrac', '\\frac').replace('\\tfrac', '\\frac')
  s = _DEGREE_RE.sub('', s)
  s = _TEXT_RE.sub(r'\1', s)
  s = s.replace('{,}', ',')
  if _ASSIGN_RE.match(s) and s.count('=') == 1:
    s = s.split('=', 1)[1]
  s = ''.join(s.split())
  return s.rstrip('.')


# ----------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------

# Longer strings are not read as numbers (`parse_number` returns None): Python
# refuses int <-> str conversions over 4,300 digits (ValueError), and those
# conversions are quadratic below that. A real final answer is far shorter.
MAX_NUMBER_CHARS = 1000
_PLAIN_NUM_RE = re.compile(r'^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$')
_THOUSANDS_RE = re.compile(r'^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$')
_SLASH_RE = re.compile(r'^([+-]?\d+)/(\d+)$')
_FRAC_RE = re.compile(
    r'^([+-]?)\\frac(?:\{([+-]?\d+)\}|(\d))(?:\{(\d+)\}|(\d))$')


class _Num:
  """A parsed number: exact value, decimal digits, percent?, unit power.

  `decimals` counts the digits after a decimal point (None when the number
  was written without one, e.g. `3` or `\\frac{1}{3}`); `power` is the
  exponent of a trailing unit (`'2'` for `cm^2`, `''` for `cm`, None without
  a unit), so that `15 cm^2` and `15 cm^3` differ.
  """

  __slots__ = ('value', 'decimals', 'percent', 'power')

  def __init__(self, value: Fraction, decimals: int | None, percent: bool,
               power: str | None = None):
    self.value = value
    self.decimals = decimals
    self.percent = percent
    self.power = power


def _parse_number_core(s: str) -> tuple[Fraction, int | None] | None:
  if _THOUSANDS_RE.match(s):
    s = s.replace(',', '')
  if _PLAIN_NUM_RE.match(s):
    return Fraction(s), (len(s.split('.')[1]) if '.' in s else None)
  m = _SLASH_RE.match(s)
  if m:
    den = int(m.group(2))
    return (Fraction(int(m.group(1)), den), None) if den else None
  m = _FRAC_RE.match(s)
  if m:
    num = int(m.group(2) or m.group(3))
    den = int(m.group(4) or m.group(5))
    if den == 0:
      return None
    value = Fraction(num, den)
    return (-value if m.group(1) == '-' else value), None
  return None


def parse_number(s: str) -> _Num | None:
  """Parses a normalised answer as a number, or returns None.

  Accepts integers, decimals, thousands separators (`1,000`), `a/b`,
  `\\frac{a}{b}` / `\\frac ab` with integer parts, a leading `$` or `\\$`, a
  trailing `%` / `\\%` and trailing unit words (`18 dollars`, `5cm^2`).
  """
  if len(s) > MAX_NUMBER_CHARS:
    return None
  s = s.replace('\\$', '').replace('$', '')
  percent = False
  if s.endswith('\\%'):
    s, percent = s[:-2], True
  elif s.endswith('%'):
    s, percent = s[:-1], True
  s = s.rstrip('.')
  core = _parse_number_core(s)
  power = None
  if core is None:
    # Trailing units: `18dollars`, `15cm^2` (whitespace is already gone).
    m = _UNITS_RE.match(s)
    if m:
      core = _parse_number_core(m.group(1))
      power = (m.group(3) or '').strip('^{}')
  if core is None:
    return None
  return _Num(core[0], core[1], percent, power)


def _terminates(x: Fraction) -> bool:
  """Whether `x` has a finite decimal expansion (denominator 2^a 5^b)."""
  d = x.denominator
  for p in (2, 5):
    while d % p == 0:
      d //= p
  return d == 1


def _numbers_equal(pred: _Num, gold: _Num, rel_tol: float) -> bool:
  """Exact for exact numbers; decimals meet fractions half-way.

  A decimal prediction of a fraction with no finite decimal expansion
  (`0.3333` for 1/3) passes within relative tolerance `rel_tol`; an exact
  prediction of a rounded decimal gold (`2/3` for `0.67`) passes when it
  rounds to the gold's digits; two decimals compare exactly.
  """
  if pred.power is not None and gold.power is not None:
    if pred.power != gold.power:
      return False
  candidates = [pred.value]
  # `50%` and `0.5` (or `50`) name the same answer; accept either reading.
  if pred.percent != gold.percent:
    candidates.append(pred.value / 100 if pred.percent else pred.value * 100)
  for value in candidates:
    if value == gold.value:
      return True
    if (pred.decimals is not None and gold.decimals is None
        and not _terminates(gold.value)):
      if abs(value - gold.value) <= Fraction(rel_tol) * abs(gold.value):
        return True
    elif gold.decimals is not None and pred.decimals is None:
      if round(value, gold.decimals) == gold.value:
        return True
  return False


def _base_number(s: str) -> tuple[str, int] | None:
  """(digits, base) of a number written in base 2..36, like `2516_8`."""
  m = _BASE_RE.match(s)
  if not m:
    return None
  if len(m.group(2)) > 3 or len(s) > MAX_NUMBER_CHARS:
    return None
  digits, base = m.group(1).lower(), int(m.group(2))
  if not 2 <= base <= 36 or any(int(d, 36) >= base for d in digits):
    return None  # e.g. the subscripted variable `a_1`
  return digits.lstrip('0') or '0', base


def _base_equal(pred: str, gold: str) -> bool | None:
  """`2516_8` vs `2516_8` / `2516`: same digits, and same base if both given."""
  g = _base_number(gold)
  if g is None:
    return None
  if _BASE_RE.match(pred):
    return _base_number(pred) == g  # an invalid base (`40_0`) is just wrong
  if re.fullmatch(r'[0-9a-zA-Z]+', pred):
    return (pred.lower().lstrip('0') or '0') == g[0]
  return None


# ----------------------------------------------------------------------------
# Equivalence
# ----------------------------------------------------------------------------


def fast_equal(
    pred: str | None, gold: str, *, rel_tol: float = 1e-4
) -> bool | None:
  """Decides `pred == gold` cheaply, or returns None when it cannot.

  True when the normalised strings match or both parse as equal numbers;
  False when both parse as numbers that differ (a decimal prediction of a
  fraction without finite decimal expansion compares with relative tolerance
  `rel_tol`, so `0.3333` matches `\\frac{1}{3}`; all else exactly) or when
  `pred` is missing; None otherwise (e.g. `\\sqrt{8}` vs `2\\sqrt{2}`),
  leaving the case to the symbolic checker.
  """
  if pred is None:
    return False
  gold_n = normalize_answer(gold_answer(gold))
  pred_n = normalize_answer(pred)
  if not pred_n:
    return False
  if pred_n == gold_n:
    return True
  base = _base_equal(pred_n, gold_n)
  if base is not None:
    return base
  gold_num = parse_number(gold_n)
  pred_num = parse_number(pred_n)
  if gold_num is not None and pred_num is not None:
    return _numbers_equal(pred_num, gold_num, rel_tol)
  return None


def answers_equal(pred: str | None, gold: str) -> bool:
  """Fast-path equivalence only (no subprocess, no sympy): undecided -> False.

  For evaluation code that wants the full symbolic check, use
  `math_verify_pool.verify_pairs` on the pairs this returns False for.
  """
  return bool(fast_equal(pred, gold))


def perturb_answer(answer: str) -> str:
  """A nearby wrong answer: the last digit plus one (mod 10), or '+1'.

  For checks that a verifier rejects answers that are close but not equal.
  """
  digits = list(re.finditer(r'\d', answer))
  if not digits:
    return answer + '+1'
  m = digits[-1]
  return answer[:m.start()] + str((int(m.group()) + 1) % 10) + answer[m.end():]


def replace_last_boxed(solution: str, new: str) -> str:
  """`solution` with the content of its last \\boxed{...} replaced by `new`."""
  start = solution.rfind('\\boxed')
  brace = solution.index('{', start)
  end = matching_brace(solution, brace)
  return solution[:brace + 1] + new + solution[end:]
