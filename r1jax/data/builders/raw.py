"""Raw jsonl files of the math sets -> uniform records (no TFDS here).

Every record is a dict of str with the fields in `FIELDS`: `id`, `problem`,
`answer` (the gold final answer), `solution` (reference solution, '' when the
source has none), `source`, `level` and `subject` ('' outside MATH). A line
that is not a valid record raises `DataFormatError` naming file and line.
"""

import json
import os
import re
from typing import Any, Iterator, Mapping

from r1jax.errors import DataFormatError
from r1jax.rewards import math_answer

DATA_DIR_ENV = 'R1JAX_DATA_DIR'  # raw jsonl files (local copy of the sources)

_QWEN_EVAL = ('https://raw.githubusercontent.com/QwenLM/Qwen2.5-Math/main/'
              'evaluation/data')
_GSM8K = ('https://raw.githubusercontent.com/openai/grade-school-math/master/'
          'grade_school_math/data')
# (path under the local data dir, public URL) of every raw file.
RAW_FILES = {
    'gsm8k_train': ('gsm8k/train.jsonl', f'{_GSM8K}/train.jsonl'),
    'gsm8k_test': ('gsm8k/test.jsonl', f'{_GSM8K}/test.jsonl'),
    # The 5000-problem MATH test split (Hendrycks et al.).
    'math_test5000': ('math/test5000.jsonl', f'{_QWEN_EVAL}/math/test.jsonl'),
    'math500': ('math/math500.jsonl',
                'https://huggingface.co/datasets/HuggingFaceH4/MATH-500/'
                'resolve/main/test.jsonl'),
    'aime24': ('competition/aime24.jsonl', f'{_QWEN_EVAL}/aime24/test.jsonl'),
    'amc23': ('competition/amc23.jsonl', f'{_QWEN_EVAL}/amc23/test.jsonl'),
}

FIELDS = ('id', 'problem', 'answer', 'solution', 'source', 'level', 'subject')


# ----------------------------------------------------------------------------
# Reading raw files
# ----------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
  """Yields (1-based line number, object) for each non-blank line of `path`."""
  with open(path, encoding='utf-8') as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataFormatError(
            f'{path}:{lineno}: invalid JSON ({e.msg})') from None
      if not isinstance(row, dict):
        raise DataFormatError(f'{path}:{lineno}: expected a JSON object')
      yield lineno, row


def require(row: Mapping, key: str, path, lineno: int) -> Any:
  value = row.get(key)
  if value is None or (isinstance(value, str) and not value.strip()):
    raise DataFormatError(f'{path}:{lineno}: missing required field {key!r}')
  return value


def last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}`, nested braces included.

  The fallback when `r1jax.rewards` is absent; on the 5000 MATH solutions it
  agrees with `r1jax.rewards.extract_answer`.
  """
  start = text.rfind('\\boxed{')
  if start < 0:
    return None
  depth, i = 0, start + len('\\boxed')
  for j in range(i, len(text)):
    depth += {'{': 1, '}': -1}.get(text[j], 0)
    if depth == 0:
      return text[i + 1:j].strip()
  return None


def boxed_answer(solution: str) -> str | None:
  """The final `\\boxed{}` answer of a reference solution, or None."""
  if '\\boxed' not in solution and '\\fbox' not in solution:
    return None
  return math_answer.extract_answer(solution)


def gsm8k_answer(solution: str) -> str | None:
  """The `#### N` answer of a GSM8K solution, thousands separators removed."""
  if '####' not in solution:
    return None
  return solution.rsplit('####', 1)[1].strip().replace(',', '')


def number_text(value: Any) -> str:
  """An answer field as text: 27.0 -> '27', 2.5 -> '2.5', '025' -> '025'."""
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value).strip()


def _level(value: Any) -> str:
  m = re.search(r'\d+', str(value or ''))
  return m.group(0) if m else ''


def _record(**fields: str) -> dict[str, str]:
  rec = dict.fromkeys(FIELDS, '')
  rec.update(fields)
  return rec


def gsm8k_records(path, split: str) -> Iterator[tuple[int, dict]]:
  """(line, record) of a GSM8K file; gold = the `#### N` number."""
  for lineno, row in read_jsonl(path):
    solution = require(row, 'answer', path, lineno)
    answer = gsm8k_answer(solution)
    if not answer:
      raise DataFormatError(f'{path}:{lineno}: solution has no "#### N" answer')
    yield lineno, _record(
        id=f'gsm8k/{split}/{lineno - 1}',
        problem=require(row, 'question', path, lineno), answer=answer,
        solution=solution, source='gsm8k')


def math_records(path, source: str,
                 skip_problems: frozenset[str] = frozenset()
                 ) -> Iterator[tuple[int, dict]]:
  """MATH rows: gold from the `answer` field, else the solution's last box."""
  for lineno, row in read_jsonl(path):
    problem = require(row, 'problem', path, lineno)
    if problem.strip() in skip_problems:
      continue
    solution = str(row.get('solution') or '')
    if row.get('answer') is not None and str(row['answer']).strip():
      answer = number_text(row['answer'])
    else:
      answer = boxed_answer(require(row, 'solution', path, lineno))
      if not answer:
        raise DataFormatError(
            f'{path}:{lineno}: solution has no \\boxed answer')
    key = row.get('unique_id') or lineno - 1
    yield lineno, _record(
        id=f'{source}/{key}', problem=problem, answer=answer,
        solution=solution, source=source, level=_level(row.get('level')),
        subject=str(row.get('subject') or row.get('type') or ''))


def competition_records(path, source: str) -> Iterator[tuple[int, dict]]:
  """(line, record) of an AIME / AMC file; gold = the `answer` field."""
  for lineno, row in read_jsonl(path):
    problem = row.get('problem') or row.get('question')
    if not problem:
      require(row, 'problem', path, lineno)
    answer = number_text(require(row, 'answer', path, lineno))
    key = row.get('id', lineno - 1)
    yield lineno, _record(
        id=f'{source}/{key}', problem=problem, answer=answer,
        solution=str(row.get('solution') or ''), source=source)
