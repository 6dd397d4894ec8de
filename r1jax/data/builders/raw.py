"""Raw jsonl files of the math and code sets -> uniform records (no TFDS).

A math record is a dict of str with the fields in `FIELDS`: `id`, `problem`,
`answer` (the gold final answer), `solution` (reference solution, '' when the
source has none), `source`, `level` and `subject` ('' outside MATH).

A code record (MBPP, HumanEval) has the fields in `CODE_FIELDS`: `id`,
`problem` (the task as the prompt templates show it, ending with the
instruction to answer in a ```python block), `solution` (the reference
program), `tests` (a list of assert-style test programs, each run after the
candidate program in its module: what the `code` reward reads), `entry_point`
(the function the tests call), `code_prefix` (prepended to the candidate
program: HumanEval's prompt, with its imports and helper functions; '' for
MBPP), `source` and `task` ('code', the reward that scores it).

A line that is not a valid record raises `DataFormatError` naming file and
line. Files may be gzipped (the public HumanEval file is).
"""

import ast
import gzip
import json
import os
import re
from typing import Any, Iterator, Mapping

from r1jax.data.templates import humaneval_problem
from r1jax.data.templates import mbpp_problem
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
    # Code: the publishers' files, unchanged (HumanEval gzipped upstream).
    'mbpp': ('code/mbpp.jsonl',
             'https://raw.githubusercontent.com/google-research/'
             'google-research/master/mbpp/mbpp.jsonl'),
    'humaneval': ('code/humaneval.jsonl',
                  'https://raw.githubusercontent.com/openai/human-eval/'
                  'master/data/HumanEval.jsonl.gz'),
}

FIELDS = ('id', 'problem', 'answer', 'solution', 'source', 'level', 'subject')
CODE_FIELDS = ('id', 'problem', 'solution', 'tests', 'entry_point',
               'code_prefix', 'source', 'task')

# MBPP splits by task_id (the publishers' loader): 1-10 few-shot prompts,
# 11-510 test, 511-600 validation, 601-974 train. Never train on 11-510.
MBPP_SPLITS = {'prompt': (1, 10), 'test': (11, 510),
               'validation': (511, 600), 'train': (601, 974)}


# ----------------------------------------------------------------------------
# Reading raw files
# ----------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
  """Yields (1-based line number, object) for each non-blank line of `path`."""
  with open(path, 'rb') as probe:
    gzipped = probe.read(2) == b'\x1f\x8b'
  opener = gzip.open if gzipped else open
  with opener(path, 'rt', encoding='utf-8') as f:
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


# ----------------------------------------------------------------------------
# Code sets
# ----------------------------------------------------------------------------


def _text(row: Mapping, key: str, path, lineno: int) -> str:
  value = require(row, key, path, lineno)
  if not isinstance(value, str):
    raise DataFormatError(f'{path}:{lineno}: field {key!r} must be a string')
  return value


def _str_list(row: Mapping, key: str, path, lineno: int) -> list[str]:
  value = row.get(key)
  if (not isinstance(value, list) or not value
      or not all(isinstance(t, str) and t.strip() for t in value)):
    raise DataFormatError(
        f'{path}:{lineno}: field {key!r} must be a non-empty list of strings')
  return value


def called_function(code: str, tests: str) -> str:
  """The entry point of an MBPP task: the first function the reference code
  defines at top level that the tests call ('' when none is)."""
  try:
    tree = ast.parse(code)
  except SyntaxError:
    return ''
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and re.search(
        rf'\b{re.escape(node.name)}\s*\(', tests):
      return node.name
  return ''


def mbpp_records(path, split: str) -> Iterator[tuple[int, dict]]:
  """(line, record) of the MBPP rows whose task_id is in `split`.

  Each of the 3 asserts is one test (after `test_setup_code`, which must
  follow the program: tasks 367 and 927 use a class the code defines);
  `challenge_test_list` is not used. Every line is checked, whatever its
  split, so that a bad line is reported by the first split built.
  """
  lo, hi = MBPP_SPLITS[split]
  found = 0
  for lineno, row in read_jsonl(path):
    task_id = require(row, 'task_id', path, lineno)
    if not isinstance(task_id, int):
      raise DataFormatError(f'{path}:{lineno}: task_id must be an integer')
    text = _text(row, 'text', path, lineno)
    code = _text(row, 'code', path, lineno)
    asserts = _str_list(row, 'test_list', path, lineno)
    setup = row.get('test_setup_code') or ''
    if not isinstance(setup, str):
      raise DataFormatError(
          f'{path}:{lineno}: field \'test_setup_code\' must be a string')
    if not lo <= task_id <= hi:
      continue
    found += 1
    tests = [f'{setup}\n{t}' if setup.strip() else t for t in asserts]
    yield lineno, dict(
        id=f'mbpp/{task_id}', problem=mbpp_problem(text, asserts),
        solution=code.replace('\r\n', '\n'), tests=tests,
        entry_point=called_function(code, '\n'.join(asserts)),
        code_prefix='', source='mbpp', task='code')
  if not found:
    raise DataFormatError(
        f'{path}: no task with task_id in {lo}..{hi} (MBPP split {split!r})')


def humaneval_records(path) -> Iterator[tuple[int, dict]]:
  """(line, record) of HumanEval: one test, the file's `check` function
  called on the entry point; the solution is prompt + canonical body."""
  for lineno, row in read_jsonl(path):
    task_id = _text(row, 'task_id', path, lineno)
    prompt = _text(row, 'prompt', path, lineno)
    body = _text(row, 'canonical_solution', path, lineno)
    test = _text(row, 'test', path, lineno)
    entry = _text(row, 'entry_point', path, lineno)
    if not entry.isidentifier():
      raise DataFormatError(
          f'{path}:{lineno}: entry_point {entry!r} is not an identifier')
    yield lineno, dict(
        id=task_id, problem=humaneval_problem(prompt, entry),
        solution=prompt + body, tests=[f'{test}\n\ncheck({entry})\n'],
        entry_point=entry, code_prefix=prompt, source='humaneval',
        task='code')
