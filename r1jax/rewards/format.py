"""Format rewards for the R1 template `<think>..</think> <answer>..</answer>`.

Two variants:
  * `format` (strict): the whole completion is exactly one think block then
    one answer block, both non-empty, with only whitespace between and around
    them (R1-Zero's format reward).
  * `format_lenient`: somewhere in the completion a non-empty think block is
    followed by a non-empty answer block; text around them is tolerated.

Templates that already open `<think>` in the prompt make the completion start
inside the think block; pass `think_opened_in_prompt=True` and the completion
is read as if `<think>` preceded it.
"""

import re
from typing import Any, Mapping, Sequence

import numpy as np

from r1jax.rewards.registry import check_batch
from r1jax.rewards.registry import REWARDS

THINK_OPEN, THINK_CLOSE = '<think>', '</think>'
ANSWER_OPEN, ANSWER_CLOSE = '<answer>', '</answer>'
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

_STRICT_RE = re.compile(
    r'\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*',
    re.DOTALL,
)
_LENIENT_RE = re.compile(
    r'<think>(?P<think>.*?)</think>.*?<answer>(?P<answer>.*?)</answer>',
    re.DOTALL,
)


def with_think_prefix(completion: str, think_opened_in_prompt: bool) -> str:
  """The completion as it reads after the prompt's `<think>`, if any."""
  return THINK_OPEN + completion if think_opened_in_prompt else completion


def think_text(completion: str, think_opened_in_prompt: bool = False) -> str:
  """The chain of thought: the think block's text, or all text without tags.

  An unclosed think block (a truncated completion) runs to the end; with no
  think tags at all the whole completion counts as thinking.
  """
  text = with_think_prefix(completion, think_opened_in_prompt)
  start = text.find(THINK_OPEN)
  if start < 0:
    return text
  start += len(THINK_OPEN)
  end = text.find(THINK_CLOSE, start)
  return text[start:] if end < 0 else text[start:end]


def strict_format_ok(
    completion: str, think_opened_in_prompt: bool = False
) -> bool:
  """Exactly `<think> X </think> <answer> Y </answer>`, X and Y non-empty."""
  text = with_think_prefix(completion, think_opened_in_prompt)
  if any(text.count(tag) != 1 for tag in _TAGS):
    return False
  m = _STRICT_RE.fullmatch(text)
  return bool(m and m.group('think').strip() and m.group('answer').strip())


def lenient_format_ok(
    completion: str, think_opened_in_prompt: bool = False
) -> bool:
  """A non-empty think block followed (anywhere later) by a non-empty answer."""
  text = with_think_prefix(completion, think_opened_in_prompt)
  for m in _LENIENT_RE.finditer(text):
    if m.group('think').strip() and m.group('answer').strip():
      return True
  return False


@REWARDS.register('format')
def format_reward(
    completions: Sequence[str],
    examples: Sequence[Mapping[str, Any]],
    *,
    strict: bool = True,
    think_opened_in_prompt: bool = False,
) -> np.ndarray:
  """1.0 for completions in the R1 `<think>/<answer>` format, else 0.

  Options:
    strict: the whole completion must be the two blocks (default); False
      accepts them anywhere, in order (same as `format_lenient`).
    think_opened_in_prompt: the prompt ends with `<think>`, so the completion
      starts inside the think block.
  """
  check_batch(completions, examples)
  ok = strict_format_ok if strict else lenient_format_ok
  return np.array(
      [ok(c, think_opened_in_prompt) for c in completions], np.float32)


@REWARDS.register('format_lenient')
def format_lenient_reward(
    completions: Sequence[str],
    examples: Sequence[Mapping[str, Any]],
    *,
    think_opened_in_prompt: bool = False,
) -> np.ndarray:
  """1.0 when a think block is followed by an answer block, else 0."""
  return format_reward(
      completions, examples, strict=False,
      think_opened_in_prompt=think_opened_in_prompt)
