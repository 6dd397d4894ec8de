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

import numpy as np

from r1jax.rewards.registry import Completions, Examples, Metrics, check_batch
from r1jax.rewards.registry import REWARDS
from r1jax.rewards.registry import score_each

THINK_OPEN, THINK_CLOSE = '<think>', '</think>'
ANSWER_OPEN, ANSWER_CLOSE = '<answer>', '</answer>'
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# Used only once each tag occurs exactly once, where it is linear.
_STRICT_RE = re.compile(
    r'\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*',
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
  # What `re.finditer(r'<think>(.*?)</think>.*?<answer>(.*?)</answer>', S)`
  # finds, with `str.find`: from a `<think>` the block ends at the first
  # `</think>`, the answer opens at the next `<answer>` and ends at the first
  # `</answer>` after it. When that fails, it fails for every later `<think>`
  # too, so the scan stops; the regex would instead rescan to the end from
  # every `<think>` (quadratic on a completion of repeated `<think>`).
  text = with_think_prefix(completion, think_opened_in_prompt)
  pos = 0
  while True:
    t = text.find(THINK_OPEN, pos)
    if t < 0:
      return False
    t_end = text.find(THINK_CLOSE, t + len(THINK_OPEN))
    if t_end < 0:
      return False
    a = text.find(ANSWER_OPEN, t_end + len(THINK_CLOSE))
    if a < 0:
      return False
    a_end = text.find(ANSWER_CLOSE, a + len(ANSWER_OPEN))
    if a_end < 0:
      return False
    if (text[t + len(THINK_OPEN):t_end].strip()
        and text[a + len(ANSWER_OPEN):a_end].strip()):
      return True
    pos = a_end + len(ANSWER_CLOSE)


@REWARDS.register('format', inputs=('metrics',))
def format_reward(
    completions: Completions, examples: Examples, *,
    strict: bool = True,
    think_opened_in_prompt: bool = False,
    metrics: Metrics = None,
) -> np.ndarray:
  """1.0 for completions in the R1 `<think>/<answer>` format, else 0.

  Options:
    strict: the whole completion must be the two blocks (default); False
      accepts them anywhere, in order (same as `format_lenient`).
    think_opened_in_prompt: the prompt ends with `<think>`, so the completion
      starts inside the think block.
    metrics: filled with `errors` (completions that could not be checked,
      e.g. not a string; they score 0).
  """
  check_batch(completions, examples)
  ok = strict_format_ok if strict else lenient_format_ok
  return score_each(
      lambda i: ok(completions[i], think_opened_in_prompt), len(completions),
      reward='format' if strict else 'format_lenient', metrics=metrics)


@REWARDS.register('format_lenient', inputs=('metrics',))
def format_lenient_reward(
    completions: Completions, examples: Examples, *,
    think_opened_in_prompt: bool = False,
    metrics: Metrics = None,
) -> np.ndarray:
  """1.0 when a think block is followed by an answer block, else 0."""
  return format_reward(
      completions, examples, strict=False,
      think_opened_in_prompt=think_opened_in_prompt, metrics=metrics)
