"""The synthetic code task (write f(x) returning x plus a constant), its
documents in the tiny corpus, the `task` reward that scores a mixed pool by
each record's own task, and the `data=code` / `data=mixed` experiments.

The sandboxed runs use the warm worker pool (a few hundred milliseconds).
"""

import numpy as np
import pytest

from experiments import common
from experiments import pretrain_tiny
from experiments import zero
from r1jax import base_ability
from r1jax import evaluate
from r1jax.data import corpus
from r1jax.data import synthetic
from r1jax.rewards import code_sandbox
from r1jax.rewards import compute_rewards
from r1jax.rewards import REWARDS

KNOBS = common.tiny_code_difficulty()['code']


def _code(n, seed=0, split='test'):
  return synthetic.generate('code', n, seed=seed, split=split, **KNOBS)


def _answer(program: str) -> str:
  return f'<think> ok </think> <answer> ```python\n{program}\n``` </answer>'


def test_records_are_right_and_carry_what_the_reward_runs():
  for r in _code(200):
    value = sum(int(t) * (1 if op != '-' else -1) for op, t in zip(
        ['+'] + r['expression'].split(' ')[1::2],
        r['expression'].split(' ')[0::2]))
    assert r['value'] == value
    assert r['problem'] == f'Write f(x) that returns x + {r["expression"]}'
    assert r['entry_point'] == 'f' and len(r['tests']) == 3
    scope = {}
    exec(r['answer'], scope)  # pylint: disable=exec-used
    for t in r['tests']:
      exec(t, scope)  # pylint: disable=exec-used  # the asserts hold
    assert synthetic.parse_step(r['solution_steps'][-1])[3] == value
    assert r['numbers'] == [int(t) for t in r['expression'].split(' ')[0::2]]


def test_held_out_by_expression_whatever_the_seeds():
  test = {r['expression'] for r in _code(300, seed=1, split='test')}
  train = {r['expression'] for r in _code(3000, seed=2, split='train')}
  assert test and not test & train
  # The key is the expression (salted by the task name).
  assert all(synthetic.split_of('code', e) == 'test' for e in test)


def test_bad_knobs_fail_loudly():
  with pytest.raises(ValueError, match='num_tests'):
    synthetic.generate('code', 1, seed=0, num_tests=5, test_range=(0, 2))


def test_code_reward_on_right_wrong_and_bad_programs():
  recs = _code(6)
  right = [_answer(r['answer']) for r in recs]
  wrong = [_answer(r['answer'] + ' + 1') for r in recs]
  literal = [_answer(f'def f(x):\n    return x + {r["expression"]}')
             for r in recs]
  bad = ['<answer> 7 </answer>', _answer('def f(x) return'),
         _answer('def f(x):\n    while True: pass'),
         _answer('def g(x):\n    return x'), '', _answer('import nope')]
  m = {}
  scores = REWARDS.get('code')(right + wrong + literal + bad,
                               recs * 3 + recs, timeout_s=1.0, metrics=m)
  np.testing.assert_array_equal(scores, [1.0] * 6 + [0.0] * 6 + [1.0] * 6
                                + [0.0] * 6)
  assert m['fail_no_code_block'] == 2 and m['fail_syntax_error'] == 1
  assert m['fail_timeout'] == 1 and m['fail_missing_module'] == 1
  assert m['fail_wrong_answer'] == 6 and m['fail_runtime_error'] == 1


def test_corpus_documents_answer_with_the_program():
  cfg = corpus.CorpusConfig(**{
      k: v for k, v in pretrain_tiny.get_config('code').data.corpus.items()})
  docs = [d for d in corpus.corpus_records(cfg, 400, seed=0)
          if d['task'] == 'code' and d['kind'] != 'drill']
  assert 40 < len(docs) < 120  # weight 0.25 of 1.25
  kinds = {d['kind'] for d in docs}
  assert {'direct', 'steps'} <= kinds
  for d in docs:
    program = d['example']['answer']
    assert f'```python\n{program}\n```' in d['completion']
    if d['kind'] == 'steps':  # the constant worked out, restated as it goes
      for step in d['example']['solution_steps']:
        assert step in d['completion']
  tagged = [d['completion'] for d in docs if d['format'] == 'r1']
  scores = REWARDS.get('code')(tagged, [{**d['example']} for d in docs
                                         if d['format'] == 'r1'])
  assert tagged and scores.min() == 1.0  # every tagged document passes


def test_code_weight_zero_leaves_the_default_corpus_and_its_key():
  default = pretrain_tiny.get_config('')
  assert 'code' not in default.data.corpus.task_weights
  assert 'code' not in default.data.corpus.difficulty
  assert base_ability.base_key(default) == 'seed0-09efd40e35'
  assert base_ability.base_key(pretrain_tiny.get_config('code')) != (
      base_ability.base_key(default))


def test_task_reward_scores_each_record_by_its_own_task():
  code = _code(3)
  arith = synthetic.generate('arithmetic', 3, seed=0, split='test')
  recs = [code[0], arith[0], code[1], arith[1], code[2], arith[2]]
  texts = [_answer(r['answer']) if r['task'] == 'code'
           else f'<think> ok </think> <answer> {r["answer"]} </answer>'
           for r in recs]
  texts[2] = _answer(code[1]['answer'] + ' - 1')  # one wrong program
  texts[3] = '<answer> -5 </answer>'              # one wrong number
  total, per, m = compute_rewards(texts, recs, {'task': 1.0},
                                  {'task': {'options': {
                                      'code': {'timeout_s': 1.0}}}})
  np.testing.assert_array_equal(per['task'], [1, 1, 0, 0, 1, 1])
  np.testing.assert_array_equal(total, per['task'])
  alone = REWARDS.get('code')([texts[i] for i in (0, 2, 4)], code)
  np.testing.assert_array_equal(alone, per['task'][[0, 2, 4]])
  assert m['reward/task/code'] == pytest.approx(2 / 3)
  assert m['reward/task/arithmetic'] == pytest.approx(2 / 3)
  assert m['reward/task/count/code'] == 3
  assert m['reward/task/code/fail_wrong_answer'] == 1
  assert m['reward/task/errors'] == 0


def test_task_reward_refuses_a_record_it_cannot_score():
  with pytest.raises(ValueError, match="task='poetry', which names no reward"):
    REWARDS.get('task')(['x'], [{'id': 'p/1', 'task': 'poetry'}])
  with pytest.raises(ValueError, match='task=None'):
    REWARDS.get('task')(['x'], [{'answer': '1'}])
  with pytest.raises(ValueError, match='options for'):
    REWARDS.get('task')(['x'], [{'task': 'arithmetic', 'answer': '1'}],
                        options={'cod': {}})


def test_task_and_weighted_rewards_check_a_reward_shape_alike(monkeypatch):
  """Both call a reward through registry.call_reward: a reward returning
  another shape than [B] is an error naming it, on either path."""
  # Registered for this test only (other tests call every reward).
  for table in ('_entries', '_inputs', '_options'):
    monkeypatch.setattr(REWARDS, table, dict(getattr(REWARDS, table)))
  REWARDS.add('test_bad_shape',
              lambda completions, examples: np.zeros(len(completions) + 1))
  records = [{'task': 'test_bad_shape', 'answer': '1'}] * 2
  with pytest.raises(ValueError, match="'test_bad_shape' returned shape"):
    REWARDS.get('task')(['x', 'y'], records)
  with pytest.raises(ValueError, match="'test_bad_shape' returned shape"):
    compute_rewards(['x', 'y'], records, {'test_bad_shape': 1.0})


def test_evaluation_scores_each_task_by_its_own_reward():
  # accuracy_reward 'task' (the mixed run's rewards.accuracy) or '' picks
  # each group's own reward; code is scored by running its tests.
  recs = _code(2) + synthetic.generate('arithmetic', 2, seed=0, split='test')
  seen = {}

  def fake_problems(sampler, params, tokenizer, recs_, **kw):
    seen[recs_[0]['task']] = kw['accuracy_reward']
    return {'pass@1': 1.0, 'samples': []}

  original = evaluate.evaluate_problems
  evaluate.evaluate_problems = fake_problems
  try:
    for reward in ('', 'task'):
      seen.clear()
      evaluate.evaluate_model(None, None, None, recs, template='r1_zero_short',
                              num_samples=1, temperature=1.0, top_p=1.0,
                              max_new_tokens=8, accuracy_reward=reward)
      assert seen == {'code': 'code', 'arithmetic': 'arithmetic'}
    evaluate.evaluate_model(None, None, None, recs, template='r1_zero_short',
                            num_samples=1, temperature=1.0, top_p=1.0,
                            max_new_tokens=8, accuracy_reward='math')
    assert seen == {'code': 'math', 'arithmetic': 'math'}
  finally:
    evaluate.evaluate_problems = original


@pytest.mark.parametrize('arg, tasks, accuracy', [
    ('data=code', ('code',), 'code'),
    ('data=mixed', ('arithmetic', 'code'), 'task')])
def test_code_experiments(arg, tasks, accuracy):
  c = zero.get_config(arg)
  assert c.data.source == 'synthetic' and c.data.tasks == tasks
  assert c.eval.tasks == tasks and c.rewards.accuracy == accuracy
  assert dict(c.rewards.weights) == {accuracy: 1.0, 'format': 0.5}
  assert c.model.pretrain_arg == 'code'
  assert set(c.data.difficulty) == {'arithmetic', 'code'}
  assert zero.get_config(arg + ',runlocal').model.pretrain_arg == (
      'runlocal,code')
  with pytest.raises(ValueError, match='task of the tiny base model'):
    zero.get_config(arg + ',model=smollm2-135m')


def test_code_base_is_checked_on_the_code_task():
  c = pretrain_tiny.get_config('code')
  assert c.eval.tasks == ('code',) and c.ability.reward == 'code'
  assert c.ability.max_new_tokens == zero.get_config(
      'data=code').sampling.max_new_tokens
  assert c.ability.requirements.min_gap == 0.2
  assert pretrain_tiny.get_config('').eval.tasks == ('arithmetic',)


def test_code_block_of_a_corpus_answer():
  program = synthetic.code_program(-3)
  assert program == 'def f(x):\n    return x - 3'
  text = ' <think> 1 - 4 = -3. </think> <answer> ' + corpus.answer_text(
      {'task': 'code', 'answer': program}) + ' </answer>'
  assert code_sandbox.code_block(text, 'f') == program + '\n'
