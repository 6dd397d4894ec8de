"""Cold-start SFT examples: annotations gone, answers preserved, R1 format."""

import re

import pytest

from r1jax.data import builders
from r1jax.data.cold_start import (cold_start_examples, format_completion,
                                   gsm8k_reasoning, read_jsonl, write_jsonl)
from r1jax.data.templates import render_prompt

NATALIA = {
    'id': 'gsm8k/train/0',
    'problem': 'Natalia sold clips to 48 of her friends in April, and then she '
               'sold half as many clips in May. How many clips did Natalia '
               'sell altogether in April and May?',
    'solution': 'Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold '
                '48+24 = <<48+24=72>>72 clips altogether in April and May.\n'
                '#### 72',
    'answer': '72', 'source': 'gsm8k'}
MATH = {
    'id': 'math/0', 'problem': 'How many vertical asymptotes does '
    '$y=\\frac{2}{x^2+x-6}$ have?',
    'solution': 'It factors as $(x-2)(x+3)$, so the graph has $\\boxed{2}$ '
                'vertical asymptotes.',
    'answer': '2', 'source': 'math'}

_TAGS_RE = re.compile(
    r'<think>\n(?P<think>.+)\n</think>\n<answer>\n(?P<answer>.+)\n</answer>',
    re.DOTALL)


def _answer_block(completion: str) -> str:
  return completion.rsplit('<answer>\n', 1)[1].split('\n</answer>')[0]


def test_gsm8k_annotations_and_final_line_removed():
  assert gsm8k_reasoning(NATALIA['solution']) == (
      'Natalia sold 48/2 = 24 clips in May.\n'
      'Natalia sold 48+24 = 72 clips altogether in April and May.')


def test_gsm8k_example_format():
  [ex] = cold_start_examples([NATALIA], 'gsm8k')
  assert ex['prompt'] == render_prompt('r1_zero', NATALIA['problem'])
  assert ex['completion'] == (
      ' <think>\nNatalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 '
      'clips altogether in April and May.\n</think>\n<answer>\n72\n</answer>')
  assert ex['answer'] == '72' and ex['id'] == 'gsm8k/train/0'


def test_math_keeps_latex_and_answer_goes_into_answer_block():
  [ex] = cold_start_examples([MATH], 'math')
  m = _TAGS_RE.fullmatch(ex['completion'].lstrip(' '))
  assert m['think'] == MATH['solution']
  assert m['answer'] == '2'


def test_think_template_completion_starts_inside_the_block():
  [ex] = cold_start_examples([MATH], 'math', template='r1_zero_think')
  assert ex['prompt'].endswith('Assistant: <think>')
  assert ex['completion'].startswith('\n') and '<think>' not in ex['completion']
  # The full text is the same as with the plain R1-Zero template.
  [plain] = cold_start_examples([MATH], 'math', template='r1_zero')
  assert (ex['prompt'] + ex['completion'] ==
          plain['prompt'] + plain['completion'])


def test_summary_style():
  completion = format_completion('reason', '\\frac{1}{2}', style='summary')
  assert completion == ('<think>\nreason\n</think>\n'
                        'The final answer is $\\boxed{\\frac{1}{2}}$.')
  with pytest.raises(ValueError, match='tags'):
    format_completion('r', 'a', style='prose')


def test_errors():
  with pytest.raises(ValueError, match='amc23/0'):
    cold_start_examples([{'id': 'amc23/0', 'problem': 'p', 'answer': '1',
                          'solution': ''}], 'math')
  with pytest.raises(KeyError, match='gsm8k'):
    cold_start_examples([NATALIA], 'amc23')


def test_jsonl_round_trip(tmp_path):
  examples = cold_start_examples([NATALIA, MATH], 'gsm8k') + [
      {'prompt': 'Ünïcode π', 'completion': '\\boxed{π}', 'answer': 'π'}]
  path = tmp_path / 'cs.jsonl'
  assert write_jsonl(examples, path) == 3
  assert read_jsonl(path) == examples
  assert 'π' in path.read_text(encoding='utf-8')  # not \u-escaped


@pytest.mark.parametrize('relpath,source,reader,count', [
    ('gsm8k/train.jsonl', 'gsm8k', builders.gsm8k_records, 7473),
    ('math/test5000.jsonl', 'math', builders.math_records, 5000),
])
def test_all_real_solutions_keep_their_answers(shared_data, relpath, source,
                                               reader, count):
  rewards = pytest.importorskip('r1jax.rewards')
  format_rewards = pytest.importorskip('r1jax.rewards.format')
  # The records as the TFDS builder makes them, without the build step.
  records = [rec for _, rec in reader(shared_data / relpath, source)]
  assert len(records) == count
  for template in ('r1_zero', 'r1_zero_think'):
    examples = cold_start_examples(records, source, template=template)
    opens = template == 'r1_zero_think'
    for rec, ex in zip(records, examples):
      completion = ex['completion']
      assert rewards.extract_answer(completion) == rec['answer'], rec['id']
      assert _answer_block(completion) == rec['answer']
      assert format_rewards.strict_format_ok(completion, opens), rec['id']
      if source == 'gsm8k':
        assert '<<' not in completion and '####' not in completion, rec['id']


def test_synthetic_traces_restate_what_is_left_in_the_prompt_language():
  """`restate` follows each step but the last with what is left to compute,
  as the tiny base's corpus does, in the problem's language."""
  from r1jax.data import cold_start  # pylint: disable=g-import-not-at-top
  from r1jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from r1jax.rewards import language  # pylint: disable=g-import-not-at-top
  recs = synthetic.localize(
      synthetic.generate('arithmetic', 40, seed=3, split='train',
                         num_operands=(2, 4), max_digits=1),
      {'en': 0.5, 'ru': 0.5}, seed=3)
  plain = cold_start.synthetic_examples(recs, 'r1_zero_short')
  langs = set()
  for connectives in (True, False):
    restated = cold_start.synthetic_examples(
        recs, 'r1_zero_short', restate=True, connectives=connectives)
    for rec, p, r in zip(recs, plain, restated):
      lang = rec['target_language']
      langs.add(lang)
      n = len(rec['solution_steps'])
      so = (cold_start.CONNECTIVES[lang][3] if connectives
            else cold_start.COMPACT[lang][0])
      assert r['completion'].count(f', {so} ') == n - 1, r['completion']
      assert p['completion'].count(f', {so} ') == 0
      assert (cold_start.CONNECTIVES[lang][1] in r['completion']) == (
          connectives and n > 1)
      # The restated expression is the rest of the problem after the step.
      problem = rec['problem'].split(' ', 1)[1]
      if n >= 2:
        first = rec['solution_steps'][0]
        value = first.split(' = ')[1]
        rest = ' '.join(problem.split(' ')[3:])
        assert f'{first}, {so} {value} {rest}.' in r['completion']
      assert r['answer'] == rec['answer'] and r['prompt'] == p['prompt']
      # Every word of the chain of thought is in the problem's language.
      assert language.language_consistency(
          r['completion'].split('</think>')[0].replace('<think>', ''),
          lang) == 1.0
  assert langs == {'en', 'ru'}
