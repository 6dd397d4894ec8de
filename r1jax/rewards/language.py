"""Language-consistency reward (DeepSeek-R1, stage 2 RL).

The reward is the proportion of the chain of thought's words that are written
in the target language, read from the Unicode script of their letters (no
language model): Latin, Han (CJK ideographs), Hiragana, Katakana, Hangul,
Cyrillic, Greek, Arabic, Hebrew, Devanagari, Thai and a few more.

What counts as a word:
  * a run of letters of one alphabetic script (`hello`, `привет`, `안녕`);
  * each character of a script written without spaces (Han, Hiragana,
    Katakana, Thai), since their words cannot be split without a dictionary;
  * neutral, not counted: digits, punctuation, math symbols, LaTeX commands
    and math segments (`$...$`, `\\[...\\]`, `\\(...\\)`), and single letters
    of alphabetic scripts (`x`, `n`, `π`), which in a chain of thought are
    almost always variables. English loses `a` and `I` from its count, which
    barely moves a proportion.

The chain of thought is the think block's text, or the whole completion when
there are no think tags (see `format.think_text`).
"""

import bisect
import re
import unicodedata
from typing import Mapping

import numpy as np

from r1jax.rewards.format import think_text
from r1jax.rewards.registry import Completions, Examples, Metrics, check_batch
from r1jax.rewards.registry import REWARDS
from r1jax.rewards.registry import score_each

# (first code point, last code point, script), sorted, non-overlapping.
_SCRIPT_RANGES = sorted([
    (0x0041, 0x005A, 'latin'), (0x0061, 0x007A, 'latin'),
    (0x00C0, 0x00D6, 'latin'), (0x00D8, 0x00F6, 'latin'),
    (0x00F8, 0x024F, 'latin'), (0x1E00, 0x1EFF, 'latin'),
    (0x0370, 0x03FF, 'greek'), (0x1F00, 0x1FFF, 'greek'),
    (0x0400, 0x052F, 'cyrillic'),
    (0x0530, 0x058F, 'armenian'),
    (0x0590, 0x05FF, 'hebrew'),
    (0x0600, 0x06FF, 'arabic'), (0x0750, 0x077F, 'arabic'),
    (0x08A0, 0x08FF, 'arabic'), (0xFB50, 0xFDFF, 'arabic'),
    (0xFE70, 0xFEFF, 'arabic'),
    (0x0900, 0x097F, 'devanagari'),
    (0x0980, 0x09FF, 'bengali'),
    (0x0B80, 0x0BFF, 'tamil'),
    (0x0E00, 0x0E7F, 'thai'),
    (0x10A0, 0x10FF, 'georgian'),
    (0x1100, 0x11FF, 'hangul'), (0x3130, 0x318F, 'hangul'),
    (0xAC00, 0xD7AF, 'hangul'),
    (0x3040, 0x309F, 'hiragana'),
    (0x30A0, 0x30FF, 'katakana'), (0x31F0, 0x31FF, 'katakana'),
    (0xFF66, 0xFF9F, 'katakana'),
    (0x3400, 0x4DBF, 'han'), (0x4E00, 0x9FFF, 'han'),
    (0xF900, 0xFAFF, 'han'), (0x20000, 0x2FA1F, 'han'),
])
_RANGE_STARTS = [r[0] for r in _SCRIPT_RANGES]

# Scripts written without spaces between words: each character is a word.
_CHAR_SCRIPTS = frozenset({'han', 'hiragana', 'katakana', 'thai'})

# Language codes -> the scripts their text is written in.
LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    **{code: frozenset({'latin'}) for code in (
        'en', 'fr', 'de', 'es', 'it', 'pt', 'nl', 'sv', 'da', 'no', 'fi',
        'pl', 'cs', 'sk', 'ro', 'hu', 'tr', 'vi', 'id', 'ms', 'ca', 'hr',
        'sl', 'et', 'lv', 'lt', 'sw', 'tl')},
    **{code: frozenset({'cyrillic'}) for code in (
        'ru', 'uk', 'bg', 'sr', 'mk', 'be', 'kk')},
    **{code: frozenset({'arabic'}) for code in ('ar', 'fa', 'ur', 'ps')},
    **{code: frozenset({'devanagari'}) for code in ('hi', 'mr', 'ne', 'sa')},
    'zh': frozenset({'han'}),
    'ja': frozenset({'han', 'hiragana', 'katakana'}),
    'ko': frozenset({'hangul', 'han'}),
    'el': frozenset({'greek'}),
    'he': frozenset({'hebrew'}),
    'th': frozenset({'thai'}),
    'bn': frozenset({'bengali'}),
    'ta': frozenset({'tamil'}),
    'hy': frozenset({'armenian'}),
    'ka': frozenset({'georgian'}),
}
_SCRIPT_ALIASES = {'cjk': frozenset({'han'}), 'chinese': frozenset({'han'}),
                   'kana': frozenset({'hiragana', 'katakana'})}
KNOWN_SCRIPTS = frozenset(r[2] for r in _SCRIPT_RANGES)

# Math segments and LaTeX commands are neutral: removed before counting.
# A word candidate: letters plus the combining marks that sit inside words of
# alphabetic scripts (accents, Devanagari and Bengali vowel signs, viramas).
_TOKEN_RE = re.compile(
    r'[^\W\d_](?:[^\W\d_]|[\u0300-\u036F\u0483-\u0489\u0591-\u05C7'
    r'\u0610-\u061A\u064B-\u065F\u0670\u06D6-\u06ED\u0900-\u0903'
    r'\u093A-\u094F\u0951-\u0957\u0962\u0963\u0981-\u09D7\u0B82-\u0BD7'
    r'\u0E31-\u0E3A\u0E47-\u0E4E])*')
_TAG_RE = re.compile(r'</?(?:think|answer)>')
# The math segments `strip_math` removes, as a regex (its reference
# semantics; `re.sub` with it is quadratic on many unclosed `\[` or `\(`).
_MATH_RE = re.compile(
    r'\$\$.*?\$\$|\$[^$]*\$|\\\[.*?\\\]|\\\(.*?\\\)|\\[a-zA-Z]+', re.DOTALL)
_MATH_START_RE = re.compile(r'[$\\]')
_COMMAND_RE = re.compile(r'[a-zA-Z]+')


def strip_math(text: str, repl: str = ' ') -> str:
  """`_MATH_RE.sub(repl, text)`, in time linear in `len(text)`.

  Math segments (`$$..$$`, `$..$`, `\\[..\\]`, `\\(..\\)`) and LaTeX commands
  are replaced by `repl`, leftmost first, each segment ending at the first
  closing delimiter. A search for a closing delimiter that fails is not
  repeated from a later position (it would fail again), which is what keeps
  a completion of unclosed `\\[` linear.
  """
  out: list[str] = []
  last = 0  # text[last:] is not yet copied to `out`
  pos = 0
  no_close: dict[str, int] = {}  # delimiter -> a start it is known absent from

  def find(needle: str, start: int) -> int:
    if start >= no_close.get(needle, len(text) + 1):
      return -1
    k = text.find(needle, start)
    if k < 0:
      no_close[needle] = start
    return k

  while True:
    m = _MATH_START_RE.search(text, pos)
    if m is None:
      break
    j = m.start()
    end = -1
    if text[j] == '$':
      if text.startswith('$$', j):
        k = find('$$', j + 2)
        end = k + 2 if k >= 0 else -1
      if end < 0:
        k = find('$', j + 1)
        end = k + 1 if k >= 0 else -1
    else:
      nxt = text[j + 1:j + 2]
      if nxt in ('[', '('):
        k = find('\\]' if nxt == '[' else '\\)', j + 2)
        end = k + 2 if k >= 0 else -1
      else:
        cmd = _COMMAND_RE.match(text, j + 1)
        end = cmd.end() if cmd else -1
    if end < 0:
      pos = j + 1
      continue
    out.append(text[last:j])
    out.append(repl)
    last = pos = end
  out.append(text[last:])
  return ''.join(out)


def script_of(ch: str) -> str | None:
  """The script of a letter or combining mark; None for digits and symbols."""
  cp = ord(ch)
  i = bisect.bisect_right(_RANGE_STARTS, cp) - 1
  if i >= 0 and cp <= _SCRIPT_RANGES[i][1]:
    if ch.isalpha() or unicodedata.category(ch).startswith('M'):
      return _SCRIPT_RANGES[i][2]
    return None
  return 'other' if ch.isalpha() else None


def target_scripts(target: str) -> frozenset[str]:
  """Scripts of a language code (`'en'`, `'zh-CN'`) or a script name."""
  key = target.lower().replace('_', '-')
  if key in LANGUAGE_SCRIPTS:
    return LANGUAGE_SCRIPTS[key]
  if key.split('-')[0] in LANGUAGE_SCRIPTS:
    return LANGUAGE_SCRIPTS[key.split('-')[0]]
  if key in _SCRIPT_ALIASES:
    return _SCRIPT_ALIASES[key]
  if key in KNOWN_SCRIPTS:
    return frozenset({key})
  raise ValueError(
      f'Unknown target language or script {target!r}; known languages: '
      f'{sorted(LANGUAGE_SCRIPTS)}; scripts: {sorted(KNOWN_SCRIPTS)}')


def word_scripts(text: str) -> list[str]:
  """The script of each counted word of `text`, in order (see module doc)."""
  scripts: list[str] = []
  for token in _TOKEN_RE.findall(strip_math(text)):
    if token.isascii():  # the common case, decided without a per-char loop
      if len(token) >= 2:
        scripts.append('latin')
      continue
    run_script, run_len = None, 0
    for ch in token:
      s = script_of(ch)
      if s in _CHAR_SCRIPTS:
        if run_script is not None and run_len >= 2:
          scripts.append(run_script)
        run_script, run_len = None, 0
        scripts.append(s)
      elif s == run_script or (s is not None and run_script is not None
                               and not ch.isalpha()):
        run_len += 1  # same script, or a combining mark inside the word
      else:
        if run_script is not None and run_len >= 2:
          scripts.append(run_script)
        run_script, run_len = s, 1
    if run_script is not None and run_len >= 2:
      scripts.append(run_script)
  return scripts


def language_consistency(
    text: str, target: str, empty_score: float = 0.0
) -> float:
  """Proportion of the words of `text` written in the target's scripts.

  `empty_score` is returned when the text has no counted word (only math,
  or nothing).
  """
  scripts = word_scripts(text)
  if not scripts:
    return empty_score
  wanted = target_scripts(target)
  return sum(s in wanted for s in scripts) / len(scripts)


@REWARDS.register('language', inputs=('metrics',))
def language_reward(
    completions: Completions, examples: Examples, *,
    target_language: str = 'en',
    think_opened_in_prompt: bool = False,
    empty_score: float = 0.0,
    whole_completion: bool = False,
    metrics: Metrics = None,
) -> np.ndarray:
  """Proportion of chain-of-thought words in `target_language` (0..1).

  Options:
    target_language: a language code (`'en'`, `'zh'`, `'ja'`, `'ru'`, ...) or
      a script name (`'latin'`, `'cjk'`, `'cyrillic'`, ...). An example's own
      `target_language` field, when present, overrides it.
    think_opened_in_prompt: the completion starts inside the think block.
    empty_score: score of a chain of thought with no counted word (default
      0, so an empty chain of thought earns nothing).
    whole_completion: score all of the completion, not only the think block.
    metrics: filled with `errors`: completions that could not be scored
      (e.g. an example naming an unknown language); they score 0.
  """
  check_batch(completions, examples)
  target_scripts(target_language)  # fail early on a bad config value

  def score(i: int) -> float:
    completion, example = completions[i], examples[i]
    text = completion if whole_completion else think_text(
        completion, think_opened_in_prompt)
    text = _TAG_RE.sub(' ', text)  # the template's tags are not words
    target = example.get('target_language', target_language) if isinstance(
        example, Mapping) else target_language
    return language_consistency(text, target, empty_score)

  return score_each(score, len(completions), reward='language',
                    metrics=metrics)
