"""Code reward: run a completion's Python program against tests in a sandbox.

The program is the last ```python fenced block of the completion (inside the
`<answer>` block when there is one; `code_block`); a completion without one
scores 0. An example's `code_prefix` (HumanEval's prompt) goes before it.
Tests come from the example's `tests` field: a list whose items are either
`{"input": stdin, "output": expected stdout}` or a string of assert-style test
code (run after the program, in the same module), or a single such string;
APPS-style `{"inputs": [...], "outputs": [...]}` is accepted too. Bad input
(no block, a syntax error, a missing module, a time-out, an output flood...)
scores 0, with its reason counted in the metrics (`REASONS`).

Each run is a sandboxed process (`r1jax.rewards.sandbox`: forked from a warm
worker, its own session, minimal environment, private directory, rlimits,
namespaces as root, an audit hook; its docstring lists the honest limits).
The `code_format` reward checks the block without running it.
"""

import ast
import concurrent.futures
import dataclasses
import os
import re
import signal
from typing import Any, Mapping, Sequence

import numpy as np

from r1jax.rewards import math_answer
from r1jax.rewards.registry import Completions, Examples, Metrics, check_batch
from r1jax.rewards.registry import REWARDS
from r1jax.rewards.registry import score_each
from r1jax.rewards.sandbox import run_in_sandbox
from r1jax.rewards.sandbox import RunResult
from r1jax.rewards.sandbox import SandboxLimits
from r1jax.rewards.sandbox import worker_pids

# The fenced blocks `fenced_blocks` finds, as a regex (its reference
# semantics: `findall` with it backtracks over the info line and rescans the
# rest of the text, quadratic on adversarial text).
_FENCE_RE = re.compile(r'```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```', re.DOTALL)
_FENCE_LANG_RE = re.compile(r'[ \t]*([A-Za-z0-9_+-]*)')
_PYTHON_LANGS = ('python', 'py', 'python3')


# ----------------------------------------------------------------------------
# Tests and comparison
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TestCase:
  """Either stdin/expected-stdout, or assert-style code (`code`)."""

  input: str = ''
  output: str | None = None
  code: str | None = None


def normalize_tests(tests: Any) -> list[TestCase]:
  """Reads the `tests` field (see module docstring) into `TestCase`s."""
  if tests is None:
    return []
  if isinstance(tests, str):
    return [TestCase(code=tests)]
  if isinstance(tests, Mapping):
    if 'inputs' in tests and 'outputs' in tests:
      return [TestCase(str(i), str(o))
              for i, o in zip(tests['inputs'], tests['outputs'])]
    tests = [tests]
  cases = []
  for t in tests:
    if isinstance(t, str):
      cases.append(TestCase(code=t))
    elif isinstance(t, Mapping):
      cases.append(TestCase(str(t.get('input', '')), str(t['output'])))
    else:
      raise ValueError(f'Unsupported test case {t!r}')
  return cases


def outputs_match(
    actual: str, expected: str, float_tol: float | None = None
) -> bool:
  """Whitespace-insensitive comparison of stdout with the expected output.

  Tokens must match one to one; with `float_tol`, numeric tokens may differ by
  that much (absolute or relative).
  """
  a, e = actual.split(), expected.split()
  if a == e:
    return True
  if float_tol is None or len(a) != len(e):
    return False
  for x, y in zip(a, e):
    if x == y:
      continue
    try:
      fx, fy = float(x), float(y)
    except ValueError:
      return False
    if not abs(fx - fy) <= float_tol * max(1.0, abs(fy)):
      return False
  return True


def fenced_blocks(text: str) -> list[tuple[str, str]]:
  """`(language, body)` of each ``` fenced block, like `_FENCE_RE.findall`.

  A block opens at ```, its info line runs to the first newline (the language
  is its leading word), and its body to the next ```. Linear in `len(text)`:
  when a block has no newline or no closing fence, no later block can have
  one, so the scan stops.
  """
  blocks: list[tuple[str, str]] = []
  pos = 0
  while True:
    start = text.find('```', pos)
    if start < 0:
      break
    newline = text.find('\n', start + 3)
    if newline < 0:
      break
    end = text.find('```', newline + 1)
    if end < 0:
      break
    lang = _FENCE_LANG_RE.match(text, start + 3, newline).group(1)
    blocks.append((lang, text[newline + 1:end]))
    pos = end + 3
  return blocks


def _code_blocks(completion: str) -> tuple[str, list[tuple[str, str]]]:
  text = math_answer.answer_block(completion)
  if text is None:
    text = completion
  return text, fenced_blocks(text)


def code_block(completion: str, entry_point: str | None = None) -> str | None:
  """The program of a completion: its last ```python fenced block (an
  unlabelled fence when there is no python one), or None when it has none.

  With `entry_point`, the last of those blocks that defines it (`def NAME(`)
  wins, so that a usage example after the solution is not taken for it.
  When there is an `<answer>` block, only its text is looked at (code in the
  chain of thought is a draft). Fences labelled with another language are
  skipped.
  """
  _, blocks = _code_blocks(completion)
  python = [b for lang, b in blocks if lang.lower() in _PYTHON_LANGS]
  candidates = python or [b for lang, b in blocks if not lang]
  if not candidates:
    return None
  if entry_point:
    define = re.compile(r'^[ \t]*(?:async[ \t]+)?def[ \t]+'
                        rf'{re.escape(entry_point)}[ \t]*\(', re.MULTILINE)
    defining = [b for b in candidates if define.search(b)]
    if defining:
      return defining[-1]
  return candidates[-1]


def extract_code(completion: str) -> str:
  """`code_block`, falling back to the whole answer (or completion) text."""
  block = code_block(completion)
  return _code_blocks(completion)[0] if block is None else block


# Why a completion scored 0 (the first failing run's reason), as counted in
# the code reward's metrics under 'fail_<reason>'.
REASONS = ('no_code_block', 'syntax_error', 'timeout', 'output_limit',
           'memory', 'missing_module', 'wrong_answer', 'runtime_error',
           'exited_early', 'sandbox_error')
_EXCEPTION_REASONS = {
    'SyntaxError': 'syntax_error', 'IndentationError': 'syntax_error',
    'TabError': 'syntax_error', 'ModuleNotFoundError': 'missing_module',
    'ImportError': 'missing_module', 'MemoryError': 'memory',
    'AssertionError': 'wrong_answer',
}


def failure_reason(r: RunResult, assert_test: bool = True) -> str:
  """Why run `r` failed (one of REASONS), from how it ended and the
  exception named on the last line of its stderr."""
  if r.returncode is None:
    return 'sandbox_error'
  if r.timed_out or r.returncode == -signal.SIGXCPU:
    return 'timeout'
  if r.output_capped or r.returncode == -signal.SIGXFSZ:
    return 'output_limit'
  lines = r.stderr.rstrip().rsplit('\n', 1)
  name = lines[-1].split(':', 1)[0].strip()
  if name in _EXCEPTION_REASONS:
    return _EXCEPTION_REASONS[name]
  if r.returncode == 0:
    return 'exited_early' if assert_test else 'wrong_answer'
  return 'runtime_error'


def run_tests(
    program: str,
    tests: Sequence[TestCase],
    limits: SandboxLimits = SandboxLimits(),
    *,
    stop_at_first_failure: bool = True,
    float_tol: float | None = None,
    combine: bool = False,
) -> tuple[int, list[RunResult], str | None]:
  """Runs the tests; returns (number passed, results, failure reason).

  Each test runs in its own sandbox, except with `combine` (and
  `stop_at_first_failure`) when every test is assert code: then one run
  executes the program once and the tests one after the other, which passes
  exactly when each would (the first failing assert ends it); its time limit
  is that of one run. The reason (`failure_reason`) is the first failing
  run's, None when all passed.
  """
  if (combine and stop_at_first_failure and len(tests) > 1
      and all(t.code is not None for t in tests)):
    one = [TestCase(code='\n'.join(t.code for t in tests))]
    passed, results, reason = run_tests(program, one, limits)
    return (len(tests) if passed else 0), results, reason
  passed, results, reason = 0, [], None
  for t in tests:
    if t.code is not None:
      r = run_in_sandbox(program, t.input, test_code=t.code, limits=limits)
      ok = r.returncode == 0 and not r.timed_out and r.token_ok
    else:
      r = run_in_sandbox(program, t.input, limits=limits)
      ok = (r.returncode == 0 and not r.timed_out
            and outputs_match(r.stdout, t.output, float_tol))
    results.append(r)
    passed += ok
    if not ok and reason is None:
      reason = failure_reason(r, t.code is not None)
    if not ok and stop_at_first_failure:
      break
  return passed, results, reason


def default_max_workers() -> int:
  return max(1, min(8, os.cpu_count() or 1))


@REWARDS.register('code', inputs=('metrics',))
def code_reward(
    completions: Completions, examples: Examples, *,
    mode: str = 'all',
    timeout_s: float = 4.0,
    memory_mb: int = 1024,
    max_output_bytes: int = 16 << 20,
    max_workers: int | None = None,
    float_tol: float | None = None,
    tests_key: str = 'tests',
    require_block: bool = True,
    pool: bool = True,
    combine: bool = True,
    metrics: Metrics = None,
) -> np.ndarray:
  """Scores programs by the example's tests, run in the sandbox.

  The program is the completion's fenced block (`code_block`; the last one
  defining the example's `entry_point` when it names one) after the
  example's `code_prefix` (HumanEval's prompt: its imports and helpers).

  Options:
    mode: 'all' -> 1.0 when every test passes (stops at the first failure),
      'fraction' -> the fraction of tests passed.
    timeout_s, memory_mb, max_output_bytes: per-run limits (`SandboxLimits`).
    max_workers: completions checked in parallel (threads that wait on
      processes; default min(8, CPUs)).
    float_tol: tolerance for numeric output tokens (default exact tokens).
    tests_key: the example field with the tests.
    require_block: a completion without a fenced block scores 0 (reason
      'no_code_block'); False runs the whole answer text instead.
    pool: fork each run from a warm worker (`sandbox_pool`); False starts a
      fresh interpreter per run (about 10x slower; the original path).
    combine: in 'all' mode, run a completion's assert tests in one process
      (`run_tests`), so its time limit covers all of them.
    metrics: filled with `runs`, `timeouts` (runs), `no_tests`, `errors`
      (completions that could not be run, e.g. a malformed `tests` field or
      text that is no valid UTF-8; they score 0), `passed` and
      `fail_<reason>` for each of REASONS (completions scoring below 1, by
      their first failing run).
  A completion whose example has no tests scores 0.
  """
  check_batch(completions, examples)
  if mode not in ('all', 'fraction'):
    raise ValueError(
        f"code reward mode must be 'all' or 'fraction', not {mode!r}")
  limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb,
                         max_output_bytes=max_output_bytes, pool=pool)

  def score(i: int) -> tuple[float, int, int, str | None] | Exception:
    try:
      tests = normalize_tests(examples[i].get(tests_key))
      if not tests:
        return 0.0, 0, 0, None
      entry = examples[i].get('entry_point') or None
      program = (code_block(completions[i], entry) if require_block
                 else extract_code(completions[i]))
      if program is None:
        return 0.0, 0, 0, 'no_code_block'
      prefix = examples[i].get('code_prefix') or ''
      if prefix:
        program = f'{prefix}\n{program}'
      passed, results, reason = run_tests(
          program, tests, limits, stop_at_first_failure=(mode == 'all'),
          float_tol=float_tol, combine=combine)
      value = passed / len(tests) if mode == 'fraction' else float(
          passed == len(tests))
      return value, len(results), sum(r.timed_out for r in results), reason
    except Exception as e:  # pylint: disable=broad-except
      return e  # scored 0 and counted by `score_each` below

  workers = max_workers or default_max_workers()
  with concurrent.futures.ThreadPoolExecutor(workers) as pool_:
    scored = list(pool_.map(score, range(len(completions))))
  ok = [s for s in scored if not isinstance(s, Exception)]

  def value(i: int) -> float:
    if isinstance(scored[i], Exception):
      raise scored[i]
    return scored[i][0]

  out = score_each(value, len(completions), reward='code', metrics=metrics)
  if metrics is not None:
    metrics['runs'] = float(sum(s[1] for s in ok))
    metrics['timeouts'] = float(sum(s[2] for s in ok))
    metrics['no_tests'] = float(sum(s[1] == 0 and s[3] is None for s in ok))
    metrics['passed'] = float(sum(s[0] == 1.0 for s in ok))
    for reason in REASONS:
      metrics[f'fail_{reason}'] = float(sum(s[3] == reason for s in ok))
  return out


def code_format_ok(completion: str, max_chars: int = 100_000) -> bool:
  """The answer holds a fenced Python block (`code_block`) that parses."""
  block = code_block(completion)
  if block is None or len(block) > max_chars:
    return False
  try:
    ast.parse(block)
  except (SyntaxError, ValueError, MemoryError, RecursionError):
    return False
  return True


@REWARDS.register('code_format', inputs=('metrics',))
def code_format_reward(
    completions: Completions, examples: Examples, *,
    max_chars: int = 100_000,
    metrics: Metrics = None,
) -> np.ndarray:
  """1.0 when the completion's answer is a fenced Python block that parses
  (`code_format_ok`; nothing is run), else 0. Combine it with 'format' for
  the R1 think/answer structure.

  Options:
    max_chars: a longer block scores 0 without being parsed.
    metrics: filled with `errors` (completions that could not be checked).
  """
  check_batch(completions, examples)
  return score_each(lambda i: code_format_ok(completions[i], max_chars),
                    len(completions), reward='code_format', metrics=metrics)
