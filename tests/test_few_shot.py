"""Few-shot evaluation (eval.few_shot, --few_shot): worked examples from the
train split before each held-out problem, in the template's style; zero
shots is today's prompt exactly; no held-out problem is ever a shot; one
seed, one set of shots; bad values refused naming the key."""

import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import zero
from r1jax import errors
from r1jax import evaluate
from r1jax import evaluate_cli as cli
from r1jax.data import synthetic
from r1jax.data import templates
from r1jax.run import problems
from r1jax.sampling import FINISH_STOP
from r1jax.tokenizer import Tokenizer, train_bpe

import grpo_helpers as H

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_TOKENIZER = REPO / 'tests' / 'fixtures' / 'tiny_base'
QWEN_LIKE_CHAT_TEMPLATE = (
    '{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}'
    '<|im_end|>\n{% endfor %}'
    '{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}')
SHOTS = [{'id': 'a', 'problem': 'Compute 2 + 3',
          'reasoning': 'First, 2 + 3 = 5.', 'answer': '5'},
         {'id': 'b', 'problem': 'Compute 9 - 4 + 1',
          'reasoning': 'First, 9 - 4 = 5. Then, 5 + 1 = 6.', 'answer': '6'}]
PROBLEM = 'Compute 7 - 2'

# GSM8K-style rows. Train holds 5 problems of its own and one that is a test
# problem again (other whitespace): it must never be a shot.
_TEST = [{'question': f'Ann has {a} pens and gets {b} more. How many?',
          'answer': f'{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}'}
         for a, b in ((2, 3), (10, 7), (4, 4))]
_TRAIN = [{'question': f'Bob reads {a} pages, then {b} more. Pages read?',
           'answer': f'He reads {a} + {b} = <<{a}+{b}={a + b}>>{a + b} pages.'
                     f'\n#### {a + b}'}
          for a, b in ((1, 2), (3, 5), (6, 1), (8, 8), (5, 9))]
_DUPLICATE = {'question': '  Ann has 10 pens and gets 7 more.\nHow many? ',
              'answer': 'She has 10 + 7 = 17 pens.\n#### 17'}


def _write_gsm8k(root: pathlib.Path, train=None) -> pathlib.Path:
  raw = root / 'raw'
  (raw / 'gsm8k').mkdir(parents=True, exist_ok=True)
  train = _TRAIN[:3] + [_DUPLICATE] + _TRAIN[3:] if train is None else train
  for split, rows in (('train', train), ('test', _TEST)):
    (raw / 'gsm8k' / f'{split}.jsonl').write_text(
        ''.join(json.dumps(r) + '\n' for r in rows))
  return raw


@pytest.fixture(scope='module')
def gsm8k(tmp_path_factory):
  """(raw jsonl dir, prepared-dataset dir) of the GSM8K rows above."""
  root = tmp_path_factory.mktemp('gsm8k')
  return str(_write_gsm8k(root)), str(root / 'tfds')


@pytest.fixture(scope='module')
def tok():
  return Tokenizer.from_dir(TINY_TOKENIZER)


@pytest.fixture(scope='module')
def chat_tok():
  texts = ['Compute 2 + 3 = 5. The final answer is boxed. Please reason step '
           'by step, and put your final answer within.'] * 20
  return train_bpe(texts, vocab_size=300,
                   special_tokens=('<|endoftext|>', '<|im_start|>',
                                   '<|im_end|>'),
                   config={'chat_template': QWEN_LIKE_CHAT_TEMPLATE})


def _config(k: int = 0, **eval_fields):
  c = zero.get_config('runlocal')
  c.eval.num_problems = 8
  c.eval.greedy = False              # one sampling pass per evaluation
  c.eval.few_shot = k
  for key, value in eval_fields.items():
    c.eval[key] = value
  return c


# ------------------------------------------------------------ the builder


def test_r1_zero_templates_repeat_the_user_turn_with_tagged_answers():
  for name in ('r1_zero', 'r1_zero_short'):
    tmpl = templates.get_template(name)
    text = templates.render_prompt(name, PROBLEM, shots=SHOTS)
    zero_shot = templates.render_prompt(name, PROBLEM)
    header = zero_shot[:zero_shot.index('User:')]
    assert text == (
        header + 'User: Compute 2 + 3. Assistant: <think> First, 2 + 3 = 5. '
        '</think> <answer> 5 </answer> User: Compute 9 - 4 + 1. Assistant: '
        '<think> First, 9 - 4 = 5. Then, 5 + 1 = 6. </think> <answer> 6 '
        '</answer> User: Compute 7 - 2. Assistant:'), name
    assert text.count('User:') == 3 and text.startswith(header)
    assert text.endswith(zero_shot[len(header):])
    assert tmpl.completion_prefix == ' '
  # The think template's turn opens the block: shots do not repeat <think>.
  text = templates.render_prompt('r1_zero_think', PROBLEM, shots=SHOTS[:1])
  assert ('User: Compute 2 + 3. Assistant: <think> First, 2 + 3 = 5. '
          '</think> <answer> 5 </answer> User: Compute 7 - 2. Assistant: '
          '<think>') in text
  assert text.endswith('Assistant: <think>')
  assert text.count('<think> First') == 1


def test_plain_templates_repeat_the_question():
  text = templates.render_prompt('plain', PROBLEM, shots=SHOTS)
  assert text == ('Question: Compute 2 + 3\nAnswer: First, 2 + 3 = 5. The '
                  'answer is 5.\n\nQuestion: Compute 9 - 4 + 1\nAnswer: '
                  'First, 9 - 4 = 5. Then, 5 + 1 = 6. The answer is 6.\n\n'
                  'Question: Compute 7 - 2\nAnswer:')
  steps = templates.render_prompt('plain_steps', PROBLEM, shots=SHOTS[:1])
  assert steps == ("Question: Compute 2 + 3\nAnswer: Let's compute step by "
                   "step. First, 2 + 3 = 5. The answer is 5.\n\nQuestion: "
                   "Compute 7 - 2\nAnswer: Let's compute step by step.")


def test_chat_templates_alternate_user_and_assistant_turns(chat_tok):
  for name in ('chat', 'chat_boxed', 'qwen_math'):
    tmpl = templates.get_template(name)
    turns = tmpl.messages(PROBLEM, shots=SHOTS)
    roles = [t['role'] for t in turns]
    own = roles[:1] if tmpl.system else []
    assert roles == own + ['user', 'assistant'] * 2 + ['user'], name
    users = [t['content'] for t in turns if t['role'] == 'user']
    assistants = [t['content'] for t in turns if t['role'] == 'assistant']
    # Every user turn is written as the problem's own (instruction and all).
    assert users == [tmpl.messages(p)[-1]['content']
                     for p in ('Compute 2 + 3', 'Compute 9 - 4 + 1', PROBLEM)]
    assert assistants == ['First, 2 + 3 = 5.\nThe final answer is '
                          '$\\boxed{5}$.',
                          'First, 9 - 4 = 5. Then, 5 + 1 = 6.\nThe final '
                          'answer is $\\boxed{6}$.']
    assert templates.prompt_ids(name, PROBLEM, chat_tok, shots=SHOTS) == (
        chat_tok.apply_chat_template(turns))
  if templates.BOXED_INSTRUCTION:
    boxed = templates.get_template('chat_boxed').messages(PROBLEM, shots=SHOTS)
    assert all(templates.BOXED_INSTRUCTION in t['content']
               for t in boxed if t['role'] == 'user')


def test_zero_shots_is_todays_prompt_exactly(tok, chat_tok):
  for name in templates.TEMPLATES.names():
    tk = chat_tok if templates.get_template(name).is_chat else tok
    want = templates.prompt_ids(name, PROBLEM, tk)
    for record in ({'problem': PROBLEM}, {'problem': PROBLEM, 'shots': []}):
      assert templates.record_prompt_ids(name, record, tk) == want, name
    assert templates.prompt_ids(name, PROBLEM, tk, shots=()) == want
  # The R1-Zero text is the paper's, unchanged.
  assert templates.render_prompt('r1_zero', 'What is 2 + 3 * 4?').endswith(
      'User: What is 2 + 3 * 4?. Assistant:')
  # eval.few_shot=0 gives the records a config without the key gives.
  old = _config()
  del old.eval['few_shot']
  del old.eval['few_shot_seed']
  assert problems.eval_records(_config(0)) == problems.eval_records(old)
  assert not any('shots' in r for r in problems.eval_records(_config(0)))


class _Recorder:
  """A sampler that records its prompts and answers '<answer> 0 </answer>'."""

  def __init__(self, tokenizer):
    self.tok, self.prompts = tokenizer, []

  def generate(self, params, prompts, *, n, **kw):
    del params, kw
    self.prompts.extend(prompts)
    row = self.tok.encode('<think> x </think> <answer> 0 </answer>')
    ids = np.asarray([row] * (len(prompts) * n), np.int32)
    out = type('Out', (), {})()
    out.tokens, out.lengths = ids, np.full(len(ids), len(row), np.int32)
    out.finish_reason = np.full(len(ids), FINISH_STOP + 1, np.int32)
    return out


def test_the_evaluation_builds_prompts_with_the_records_shots(tok):
  c = _config(2)
  records = problems.eval_records(c)
  sampler = _Recorder(tok)
  logged = []
  stats = evaluate.evaluate_config(c.eval, sampler, None, tok, records,
                                   log=logged.append)
  assert stats['few_shot'] == 2 and '2-shot' in logged[0]
  shots = records[0]['shots']
  want = [templates.prompt_ids(c.eval.template, r['problem'], tok,
                               shots=shots) for r in records]
  assert sampler.prompts == want
  assert tok.decode(sampler.prompts[0]).count('User:') == 3
  # Zero-shot: today's prompts, exactly.
  c0 = _config(0)
  sampler0 = _Recorder(tok)
  stats0 = evaluate.evaluate_config(c0.eval, sampler0, None, tok,
                                    problems.eval_records(c0),
                                    log=lambda s: None)
  assert stats0['few_shot'] == 0
  assert sampler0.prompts == [
      templates.prompt_ids(c0.eval.template, r['problem'], tok)
      for r in problems.eval_records(c0)]
  # Records without the shots eval.few_shot asks for: refused, not zero-shot.
  with pytest.raises(errors.EvalError, match=r'config.eval.few_shot=2, but '
                     'the held-out records carry 0 worked examples'):
    evaluate.evaluate_config(c.eval, sampler, None, tok,
                             problems.eval_records(c0))


# -------------------------------------------------------- choosing shots


def test_synthetic_shots_are_train_problems_with_their_steps():
  c = _config(3)
  records = problems.eval_records(c)
  held_out = {r['problem'] for r in records}
  shots = records[0]['shots']
  assert len(shots) == 3
  assert all(r['shots'] is shots for r in records)  # one set for all
  for shot in shots:
    assert '/train/' in shot['id'] and shot['problem'] not in held_out
    assert shot['reasoning'].startswith('First, ')
    key = shot['problem'].removeprefix('Compute ')
    assert synthetic.split_of('arithmetic', key) == 'train'
  # The shots' difficulty is the held-out problems' (one-digit operands).
  assert all(len(n) == 1 for s in shots
             for n in s['problem'].removeprefix('Compute ').split()[::2])


def test_each_synthetic_task_gets_its_own_shots():
  c = _config(1, tasks=('arithmetic', 'countdown'))
  records = problems.eval_records(c)
  by_task = {r['task']: r['shots'][0]['problem'] for r in records}
  assert by_task['arithmetic'].startswith('Compute ')
  assert by_task['countdown'].startswith('Using the numbers')


def test_bilingual_held_out_sets_get_shots_in_their_languages():
  c = _config(4)
  c.eval.languages = {'en': 0.5, 'ru': 0.5}
  shots = problems.eval_records(c)[0]['shots']
  assert any(s['problem'].startswith('Вычисли ') for s in shots)
  ru = next(s for s in shots if s['problem'].startswith('Вычисли '))
  assert ru['reasoning'].startswith('сперва ')


def test_the_same_seed_gives_the_same_shots():
  one = problems.eval_records(_config(2, few_shot_seed=5))[0]['shots']
  again = problems.eval_records(_config(2, few_shot_seed=5))[0]['shots']
  other = problems.eval_records(_config(2, few_shot_seed=6))[0]['shots']
  assert one == again
  assert one != other
  # The held-out problems do not depend on the shots' seed.
  assert ([r['problem'] for r in problems.eval_records(_config(2))] ==
          [r['problem'] for r in problems.eval_records(_config(0))])


def test_a_train_record_equal_to_a_held_out_problem_is_never_a_shot():
  held_out = ['Compute 1 + 1', 'Compute 4 - 2']
  train = [{'id': f't{i}', 'problem': f'Compute {i} + 5',
            'solution_steps': [f'{i} + 5 = {i + 5}'], 'answer': str(i + 5)}
           for i in range(5)]
  # The same problems as held-out ones, with other whitespace.
  twins = [{'id': 'twin1', 'problem': ' Compute 1  + 1 ',
            'solution_steps': ['1 + 1 = 2'], 'answer': '2'},
           {'id': 'twin2', 'problem': 'Compute 4 - 2\n',
            'solution_steps': ['4 - 2 = 2'], 'answer': '2'}]
  pool = twins[:1] + train + twins[1:]
  chosen_twin = False
  for seed in range(20):
    shots = problems.choose_shots(pool, 5, seed, held_out, what='t')
    assert {s['id'] for s in shots} == {f't{i}' for i in range(5)}
    # Without the held-out list a twin would have been a shot.
    free = problems.choose_shots(pool, 5, seed, [], what='t')
    chosen_twin |= any(s['id'].startswith('twin') for s in free)
  assert chosen_twin
  with pytest.raises(errors.ConfigError, match=(
      r'^config.eval.few_shot=6: only 5 of the 7 t records have a worked '
      'solution and are not held-out problems; use fewer shots$')):
    problems.choose_shots(pool, 6, 0, held_out, what='t')
  # A record without a worked solution is skipped too.
  bare = [{'id': 'x', 'problem': 'Compute 3 + 3', 'answer': '6'}]
  assert problems.worked_example(bare[0]) is None
  shots = problems.choose_shots(bare + train, 5, 0, [], what='t')
  assert {s['id'] for s in shots} == {f't{i}' for i in range(5)}


def test_gsm8k_shots_skip_the_held_out_problem(gsm8k, monkeypatch):
  raw, tfds_dir = gsm8k
  monkeypatch.setenv('R1JAX_TFDS_DIR', tfds_dir)
  c = _config(5, dataset='gsm8k', num_problems=2)
  c.data.local_dir = raw
  records = problems.eval_records(c)
  assert len(records) == 2
  shots = records[0]['shots']
  # All 5 train problems of their own, none the duplicated test problem
  # (which is held out even though only the first 2 are evaluated).
  assert sorted(s['problem'] for s in shots) == sorted(
      r['question'] for r in _TRAIN)
  for s in shots:  # the cold start's clean solution: no '<<..>>', no '####'
    assert '<<' not in s['reasoning'] and '####' not in s['reasoning']
    assert s['reasoning'].startswith('He reads ')
  assert shots[0]['answer'] == next(
      str(a + b) for a, b in ((1, 2), (3, 5), (6, 1), (8, 8), (5, 9))
      if f'reads {a} pages' in shots[0]['problem'])
  c.eval.few_shot = 6
  with pytest.raises(errors.ConfigError, match=(
      r'config.eval.few_shot=6: only 5 of the 6 gsm8k train records')):
    problems.eval_records(c)


def test_a_seed_picks_other_gsm8k_shots(gsm8k, monkeypatch):
  raw, tfds_dir = gsm8k
  monkeypatch.setenv('R1JAX_TFDS_DIR', tfds_dir)
  seen = set()
  for seed in range(6):
    c = _config(2, dataset='gsm8k', few_shot_seed=seed)
    c.data.local_dir = raw
    shots = problems.eval_records(c)[0]['shots']
    again = problems.eval_records(c)[0]['shots']
    assert shots == again
    seen.add(tuple(s['id'] for s in shots))
    assert not any('Ann has' in s['problem'] for s in shots)
  assert len(seen) > 1


# ---------------------------------------------------------------- errors


def test_bad_few_shot_values_are_refused_naming_the_key():
  for bad in (-1, -4):
    with pytest.raises(errors.ConfigError, match=(
        rf'^config.eval.few_shot={bad} must be a whole number >= 0')):
      problems.eval_records(_config(bad))
  for name in ('aime24', 'amc23', 'mbpp', 'humaneval'):
    with pytest.raises(errors.ConfigError) as info:
      problems.eval_records(_config(2, dataset=name))
    message = str(info.value)
    assert message.startswith('config.eval.few_shot=2: config.eval.dataset='
                              f"'{name}' has no train split with worked "
                              'solutions'), message
    assert '\n' not in message


def test_the_prompt_length_check_sees_the_shots(tok):
  c = _config(2)
  records = problems.eval_records(c)
  zero_shot = problems.eval_records(_config(0))
  width = max(len(templates.record_prompt_ids(c.eval.template, r, tok))
              for r in zero_shot)
  problems.check_prompt_lengths(zero_shot, c.eval.template, tok, width,
                                'eval prompt')
  with pytest.raises(errors.ConfigError) as info:
    problems.check_prompt_lengths(records, c.eval.template, tok, width,
                                  'eval prompt')
  message = str(info.value)
  longest = max(len(templates.record_prompt_ids(c.eval.template, r, tok))
                for r in records)
  assert message == (
      f'config.sampling.max_prompt_tokens={width} is shorter than the longest '
      f"eval prompt ({longest} tokens with template 'r1_zero_short' and 2 "
      'shots, config.eval.few_shot); raise it, or use fewer / shorter '
      'problems or fewer shots')


def test_train_takes_few_shot_on_the_command_line(tmp_path):
  """--config.eval.few_shot is a key of every experiment; the GRPO stage's
  eval prompts are built with their shots, so the prompt-length check (the
  runlocal prompts are 48 tokens wide) fails in one line naming both keys."""
  base = H.make_tiny_base(tmp_path / 'base')
  proc = subprocess.run(
      [sys.executable, '-m', 'r1jax.train',
       '--config=experiments/zero.py:runlocal', f'--workdir={tmp_path / "w"}',
       f'--config.model.hf_path={base}',
       '--config.model.pretrain_if_missing=false',
       '--config.eval.few_shot=2', '--config.eval.few_shot_seed=1'],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1, proc.stderr[-2000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith('error: config.sampling.max_prompt_tokens=48 is '
                         'shorter than the longest eval prompt ('), line
  assert line.endswith("tokens with template 'r1_zero_short' and 2 shots, "
                       'config.eval.few_shot); raise it, or use fewer / '
                       'shorter problems or fewer shots'), line


# ------------------------------------------------------ the command line


@pytest.fixture(scope='module')
def base_dir(tmp_path_factory):
  return H.make_tiny_base(tmp_path_factory.mktemp('base') / 'tiny')


def test_cli_few_shot_on_a_tiny_model(base_dir, gsm8k, tmp_path, capsys,
                                      monkeypatch):
  raw, tfds_dir = gsm8k
  seen = []
  real = evaluate.record_prompt_ids

  def spy(template, record, tokenizer):
    seen.append(len(record.get('shots') or ()))
    return real(template, record, tokenizer)

  monkeypatch.setattr(evaluate, 'record_prompt_ids', spy)
  out = tmp_path / 'report.json'
  rc = cli.main([f'--checkpoint={base_dir}', '--datasets=gsm8k,synthetic',
                 '--few_shot=2', '--few_shot_seed=3', '--k=1', '--no-greedy',
                 '--max_new_tokens=4', '--batch_size=8',
                 '--synthetic_problems=4', f'--data_dir={raw}',
                 f'--tfds_dir={tfds_dir}', f'--output={out}'])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  report = json.loads(out.read_text())
  assert report['settings']['few_shot'] == 2
  assert report['settings']['few_shot_seed'] == 3
  for name in ('gsm8k', 'synthetic'):
    assert report['results'][name]['few_shot'] == 2
  assert seen and set(seen) == {2}
  assert ', 2-shot (seed 3)' in captured.out
  # The same records, as the library builds them: shots from train only.
  recs = cli.dataset_records('gsm8k', data_dir=raw, tfds_dir=tfds_dir,
                             few_shot=5, few_shot_seed=3)
  assert sorted(s['problem'] for s in recs[0]['shots']) == sorted(
      r['question'] for r in _TRAIN)
  syn = cli.dataset_records('synthetic', synthetic_problems=4, few_shot=1)
  assert {r['task'] for r in syn} == {'arithmetic', 'countdown'}
  assert all('/train/' in r['shots'][0]['id'] for r in syn)


def _error(argv, capsys) -> str:
  rc = cli.main(argv)
  err = capsys.readouterr().err
  assert rc == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  return lines[0]


def test_cli_refuses_bad_few_shot(base_dir, gsm8k, tmp_path, capsys):
  raw, tfds_dir = gsm8k
  ckpt = f'--checkpoint={base_dir}'
  with pytest.raises(SystemExit):
    cli.main([ckpt, '--few_shot=-1'])
  assert '--few_shot must be >= 0' in capsys.readouterr().err
  line = _error([ckpt, '--datasets=aime24', '--few_shot=2'], capsys)
  assert line == ('python -m r1jax.evaluate: error: --few_shot=2: data set '
                  'aime24 has no train split with worked solutions to draw '
                  'shots from (few-shot takes synthetic, gsm8k, math, '
                  'math500); use --few_shot=0 for it')
  line = _error([ckpt, '--datasets=gsm8k', '--few_shot=6', f'--data_dir={raw}',
                 f'--tfds_dir={tfds_dir}'], capsys)
  assert line == ('python -m r1jax.evaluate: error: data set gsm8k: '
                  '--few_shot=6: only 5 of the 6 gsm8k train records have a '
                  'worked solution and are not held-out problems; use fewer '
                  'shots')
  # Prompts longer than the model takes: a clear error before sampling.
  line = _error([ckpt, '--datasets=synthetic', '--synthetic_tasks=arithmetic',
                 '--synthetic_problems=2', '--few_shot=40',
                 '--template=r1_zero', f'--output={tmp_path / "x.json"}'],
                capsys)
  assert line.startswith("python -m r1jax.evaluate: error: the checkpoint's "
                         'max_position_embeddings=')
  assert 'and 40 shots, --few_shot); use a smaller --few_shot' in line
