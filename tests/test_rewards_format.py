"""Format and language-consistency rewards."""

import numpy as np
import pytest

from r1jax.rewards import format as fmt
from r1jax.rewards import language
from r1jax.rewards import REWARDS

GOOD = '<think>\nwork it out\n</think>\n<answer>\n42\n</answer>'


@pytest.mark.parametrize('completion, strict, lenient', [
    (GOOD, True, True),
    ('<think>a</think><answer>b</answer>', True, True),
    ('  <think> a </think>  <answer> b </answer> \n', True, True),
    ('Sure! <think>a</think><answer>b</answer>', False, True),
    ('<think>a</think><answer>b</answer> trailing words', False, True),
    ('<think>a</think> middle <answer>b</answer>', False, True),
    ('<think>a</think><answer>b</answer><answer>c</answer>', False, True),
    ('<think>a</think><think>b</think><answer>c</answer>', False, True),
    ('<think></think><answer>b</answer>', False, False),  # empty thinking
    ('<think>a</think><answer> </answer>', False, False),  # empty answer
    ('<answer>b</answer><think>a</think>', False, False),  # wrong order
    ('<think>a</think>', False, False),
    ('<think>a<answer>b</answer>', False, False),  # think never closed
    ('just 42', False, False),
    ('', False, False),
])
def test_format_variants(completion, strict, lenient):
  assert fmt.strict_format_ok(completion) is strict
  assert fmt.lenient_format_ok(completion) is lenient


def test_think_opened_in_prompt():
  completion = 'work it out\n</think>\n<answer>42</answer>'
  assert not fmt.strict_format_ok(completion)
  assert fmt.strict_format_ok(completion, think_opened_in_prompt=True)
  # Opening it again is a format error under that template.
  assert not fmt.strict_format_ok(GOOD, think_opened_in_prompt=True)
  assert fmt.think_text(completion, True) == 'work it out\n'


def test_format_rewards_registered():
  completions = [GOOD, 'x <think>a</think><answer>b</answer>', 'none']
  examples = [{}] * 3
  r = REWARDS.get('format')(completions, examples)
  np.testing.assert_array_equal(r, [1, 0, 0])
  assert r.dtype == np.float32
  np.testing.assert_array_equal(
      REWARDS.get('format_lenient')(completions, examples), [1, 1, 0])
  np.testing.assert_array_equal(
      REWARDS.get('format')(completions, examples, strict=False), [1, 1, 0])
  with pytest.raises(ValueError, match='examples'):
    REWARDS.get('format')(completions, examples[:2])


def test_think_text():
  assert fmt.think_text('<think>abc</think><answer>d</answer>') == 'abc'
  assert fmt.think_text('no tags here') == 'no tags here'
  assert fmt.think_text('<think>truncated') == 'truncated'


# ----------------------------------------------------------------------------
# Language consistency
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('text, scripts', [
    ('Let x be three', ['latin', 'latin', 'latin']),  # `x` is a variable
    ('因此答案', ['han'] * 4),  # one word per ideograph
    ('Пусть n равно', ['cyrillic', 'cyrillic']),
    ('안녕하세요 세계', ['hangul', 'hangul']),
    ('ひらがなカタカナ', ['hiragana'] * 4 + ['katakana'] * 4),
    ('नमस्ते दुनिया', ['devanagari', 'devanagari']),  # vowel signs join words
    ('مرحبا بالعالم', ['arabic', 'arabic']),
    ('Γειά σου', ['greek', 'greek']),
    ('naïve café', ['latin', 'latin']),
    ('$\\frac{a}{b} + \\sqrt{c}$ = 12, 3.5 π', []),  # math is neutral
    ('\\frac{x}{y} \\cdot 2', []),
])
def test_word_scripts(text, scripts):
  assert language.word_scripts(text) == scripts


def test_language_consistency_proportions():
  # 6 counted words: 4 ideographs + `the`, `answer`.
  text = '我们计算 the answer $x^2$ 5'
  assert language.language_consistency(text, 'zh') == pytest.approx(4 / 6)
  assert language.language_consistency(text, 'en') == pytest.approx(2 / 6)
  assert language.language_consistency(text, 'latin') == pytest.approx(2 / 6)
  assert language.language_consistency(text, 'cjk') == pytest.approx(4 / 6)
  assert language.language_consistency('日本語のテキスト', 'ja') == 1.0
  assert language.language_consistency('日本語のテキスト', 'zh') == 0.375
  assert language.language_consistency('2 + 2 = 4', 'en') == 0.0
  assert language.language_consistency('2 + 2 = 4', 'en', empty_score=1) == 1


def test_target_scripts():
  assert language.target_scripts('en') == {'latin'}
  assert language.target_scripts('zh-CN') == {'han'}
  assert language.target_scripts('Cyrillic') == {'cyrillic'}
  with pytest.raises(ValueError, match='klingon'):
    language.target_scripts('klingon')


def test_language_reward():
  fn = REWARDS.get('language')
  completions = [
      '<think>First compute the sum</think><answer>5</answer>',
      '<think>首先 compute the sum</think><answer>五</answer>',
      'no tags: all text is thinking',
      '<think>$1+1=2$</think><answer>2</answer>',
  ]
  examples = [{}] * 4
  r = fn(completions, examples, target_language='en')
  np.testing.assert_allclose(r, [1, 3 / 5, 1, 0])
  assert r.dtype == np.float32
  r = fn(completions, examples, target_language='zh')
  np.testing.assert_allclose(r, [0, 2 / 5, 0, 0])
  # The answer block is ignored unless asked for.
  r = fn(completions[1:2], examples[:1], target_language='zh',
         whole_completion=True)
  np.testing.assert_allclose(r, [3 / 6])
  r = fn(['sum</think><answer>x</answer>'], [{}], think_opened_in_prompt=True)
  np.testing.assert_allclose(r, [1])
  r = fn(completions[:1], [{'target_language': 'ru'}])
  np.testing.assert_allclose(r, [0])
  with pytest.raises(ValueError):
    fn(completions, examples, target_language='xx-unknown')
