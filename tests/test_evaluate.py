"""pass@k, cons@k and the evaluation loop on a tiny model."""

import math

import numpy as np
import pytest

from r1jax import evaluate


def test_pass_at_k_hand_values():
  # n=4, c=1, k=1: 1 - C(3,1)/C(4,1) = 1 - 3/4.
  assert evaluate.pass_at_k(4, 1, 1) == pytest.approx(0.25)
  # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6.
  assert evaluate.pass_at_k(4, 1, 2) == pytest.approx(0.5)
  # n=5, c=2, k=3: 1 - C(3,3)/C(5,3) = 1 - 1/10.
  assert evaluate.pass_at_k(5, 2, 3) == pytest.approx(0.9)
  assert evaluate.pass_at_k(4, 0, 4) == 0.0
  assert evaluate.pass_at_k(4, 3, 2) == 1.0   # every pair has a correct one
  with pytest.raises(ValueError):
    evaluate.pass_at_k(2, 1, 3)


def test_pass_at_k_matches_combinatorial_formula():
  for n in range(1, 9):
    for c in range(n + 1):
      for k in range(1, n + 1):
        expected = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert evaluate.pass_at_k(n, c, k) == pytest.approx(expected)


def test_majority_vote():
  assert evaluate.majority_vote(['3', '4', '4', None]) == '4'
  assert evaluate.majority_vote(['5', '3', '3', '5']) == '5'  # tie: earliest
  assert evaluate.majority_vote([None, '']) is None
  assert evaluate.majority_vote([]) is None


def test_majority_vote_pools_equivalent_answers():
  # '1/2' and '0.5' are one vote (2 > 1); the earliest spelling is returned.
  assert evaluate.majority_vote(['1/2', '0.5', '2']) == '1/2'
  assert evaluate.majority_vote(['2', '0.5', '\\frac{1}{2}']) == '0.5'
  # '3' and '3.0' pool to 2 votes, tying '4' x 2: the earlier class wins.
  assert evaluate.majority_vote(['3', None, '3.0', '4', '4']) == '3'
  assert evaluate.majority_vote(['4', '3', None, '3.0', '4']) == '4'
  # Empty / None answers never win, however many there are.
  assert evaluate.majority_vote([None, None, '', '  ', '7']) == '7'
  assert evaluate.majority_vote(['', '', None]) is None
  # Exact strings on request: '3' and '3.0' no longer pool, '4' x 2 wins.
  assert evaluate.majority_vote(['3', '3.0', '4', '4'],
                                equal=str.__eq__) == '4'
  assert evaluate.majority_vote(['3', '3.0', '4', '4']) == '3'


def test_vote_clusters_asks_equal_only_about_distinct_strings():
  calls = []

  def equal(a, b):
    calls.append((a, b))
    return a.rstrip('0').rstrip('.') == b.rstrip('0').rstrip('.')

  answers = ['3'] * 50 + ['3.0'] * 10 + ['4'] * 40 + [None] * 5
  clusters = evaluate.vote_clusters(answers, equal=equal)
  assert clusters == [('3', 60), ('4', 40)]
  # Three distinct strings: '3.0' vs '3', then '4' vs '3'.
  assert calls == [('3.0', '3'), ('4', '3')]


def test_summarize_keeps_only_floats():
  stats = {'pass@1': 0.5, 'cons@4': np.float32(0.25), 'num_problems': 3,
           'num_samples': 4, 'samples': ['a', 'b'], 'format_rate': 1.0}
  out = evaluate.summarize(stats)
  assert out == {'pass@1': 0.5, 'cons@4': 0.25, 'format_rate': 1.0}
  assert all(type(v) is float for v in out.values())


class _FakeOut:

  def __init__(self, tokens, mask, lengths):
    self.tokens, self.mask, self.lengths = tokens, mask, lengths
    self.finish_reason = np.ones_like(lengths)  # FINISH_LENGTH: no stop token


class _ScriptedSampler:
  """Returns fixed completions so the scoring arithmetic can be checked."""

  def __init__(self, tokenizer, completions):
    self.tok = tokenizer
    self.completions = completions

  def generate(self, params, prompts, *, n, **kw):
    del params, kw
    rows = [self.tok.encode(self.completions[i % len(self.completions)])
            for i in range(len(prompts) * n)]
    ids, mask = self.tok.pad_batch(rows, left=False)
    return _FakeOut(ids, mask, mask.sum(-1))


def _tokenizer(texts, vocab_size: int = 300):
  """A BPE tokenizer trained on the scripted completions."""
  from r1jax.tokenizer import train_bpe
  return train_bpe(texts * 20, vocab_size, config={
      'eos_token': '<|endoftext|>', 'pad_token': '<|pad|>'})


def test_evaluate_problems_scores_with_rewards():
  texts = ['<think> 1 + 2 = 3 </think> <answer> 3 </answer>', 'The answer is 4.']
  tok = _tokenizer(texts)
  records = [{'problem': 'Compute 1 + 2', 'answer': '3', 'task': 'arithmetic'}]
  # Two samples: one right and formatted, one wrong and unformatted.
  sampler = _ScriptedSampler(tok, [texts[0], texts[1]])
  stats = evaluate.evaluate_problems(sampler, None, tok, records,
                                     template='r1_zero', num_samples=2,
                                     ks=(1, 2))
  assert stats['pass@1'] == pytest.approx(0.5)
  assert stats['pass@2'] == pytest.approx(1.0)
  assert stats['format_rate'] == pytest.approx(0.5)
  assert stats['cons@2'] == 1.0  # a 1-1 tie goes to the first answer, '3'
  lengths = [len(tok.encode(t)) for t in texts]
  assert stats['mean_length'] == pytest.approx(np.mean(lengths))


def test_cons_at_k_pools_equivalent_answers():
  """cons@4 over '0.5', '0.5', '1/2'-style answers beats a 2-vote wrong one."""
  texts = ['<think> x </think> <answer> 0.5 </answer>',
           '<think> x </think> <answer> 7 </answer>',
           '<think> x </think> <answer> 1/2 </answer>',
           '<think> x </think> <answer> 7 </answer>']
  tok = _tokenizer(texts)
  records = [{'problem': 'Half of one?', 'answer': '\\frac{1}{2}',
              'task': 'math'}]
  sampler = _ScriptedSampler(tok, texts)
  stats = evaluate.evaluate_problems(sampler, None, tok, records,
                                     template='r1_zero', num_samples=4,
                                     ks=(1, 4))
  # By exact strings '7' (2 votes) would beat '0.5' and '1/2' (1 each).
  assert stats['pass@1'] == pytest.approx(0.5)
  assert stats['pass@4'] == pytest.approx(1.0)
  assert stats['cons@4'] == 1.0
  assert set(evaluate.summarize(stats)) == {
      'pass@1', 'pass@4', 'cons@4', 'format_rate', 'mean_length',
      'language_consistency', 'language_consistency_worded',
      'reflection_rate', 'reflective_words',
      'recheck_rate', 'correction_rate', 'check_rate', 'step_rate'}
  assert stats['language_consistency'] == 1.0   # 'x' is an English word


def test_language_consistency_uses_each_record_target():
  """Half the words of the first chain of thought are Russian; the second
  record asks for Russian and gets it."""
  texts = ['<think> first сперва then затем </think> <answer> 5 </answer>',
           '<think> сперва затем </think> <answer> 5 </answer>']
  tok = _tokenizer(texts)
  records = [{'problem': 'Compute 2 + 3.', 'answer': '5', 'task': 'math'},
             {'problem': 'Вычисли 2 + 3.', 'answer': '5', 'task': 'math',
              'target_language': 'ru'}]
  stats = evaluate.evaluate_problems(_ScriptedSampler(tok, texts), None, tok,
                                     records, template='r1_zero')
  assert stats['language_consistency'] == pytest.approx((0.5 + 1.0) / 2)
  # Per prompt language ('' = the default, English here).
  assert stats['unset/language_consistency'] == 0.5
  assert stats['ru/language_consistency'] == 1.0
  assert stats['ru/pass@1'] == 1.0 and stats['unset/pass@1'] == 1.0


def test_worded_consistency_leaves_out_chains_without_words():
  """A chain of thought of arithmetic alone counts as consistent in
  language_consistency, and is left out of language_consistency_worded."""
  texts = ['<think> 2 + 3 = 5. </think> <answer> 5 </answer>',
           '<think> 2 + 3 = 5, so 5. </think> <answer> 5 </answer>']
  tok = _tokenizer(texts)
  records = [{'problem': 'Вычисли 2 + 3.', 'answer': '5', 'task': 'math',
              'target_language': 'ru'}] * 2
  stats = evaluate.evaluate_problems(_ScriptedSampler(tok, texts), None, tok,
                                     records, template='r1_zero')
  assert stats['language_consistency'] == pytest.approx(0.5)
  assert stats['language_consistency_worded'] == 0.0


def test_shot_answer_rate_counts_wrong_answers_copied_from_a_shot():
  texts = ['<think> 1 + 2 = 3 </think> <answer> 3 </answer>',
           '<think> 2 + 5 = 7 </think> <answer> 7 </answer>',
           '<think> 1 + 2 = 4 </think> <answer> 4 </answer>',
           'no answer']
  tok = _tokenizer(texts)
  shot = {'problem': 'Compute 2 + 5', 'reasoning': '2 + 5 = 7.', 'answer': '7'}
  records = [{'problem': 'Compute 1 + 2', 'answer': '3', 'task': 'arithmetic',
              'shots': [shot]}]
  stats = evaluate.evaluate_problems(_ScriptedSampler(tok, texts), None, tok,
                                     records, template='r1_zero', num_samples=4)
  assert stats['pass@1'] == pytest.approx(0.25)
  assert stats['shot_answer_rate'] == pytest.approx(0.25)  # the '7' alone
  # A shot whose answer is the problem's own: a right answer is no copy.
  records[0]['shots'] = [dict(shot, answer='3')]
  stats = evaluate.evaluate_problems(_ScriptedSampler(tok, texts), None, tok,
                                     records, template='r1_zero', num_samples=4)
  assert stats['shot_answer_rate'] == 0.0
  del records[0]['shots']
  stats = evaluate.evaluate_problems(_ScriptedSampler(tok, texts), None, tok,
                                     records, template='r1_zero', num_samples=4)
  assert 'shot_answer_rate' not in stats


def test_code_records_are_scored_in_the_sandbox():
  """Code records (task 'code') go through the code reward: pass@1 over k,
  unbiased pass@k, no cons@k; evaluate_model groups them by task."""
  right = ('<think> add one </think> <answer>```python\ndef inc(x):\n'
           '    return x + 1\n```</answer>')
  wrong = ('<think> add one </think> <answer>```python\ndef inc(x):\n'
           '    return x\n```</answer>')
  texts = [right, wrong, wrong, wrong]
  tok = _tokenizer(texts, 400)
  records = [{'problem': 'Write inc.', 'task': 'code',
              'tests': ['assert inc(1) == 2', 'assert inc(-1) == 0']}]
  sampler = _ScriptedSampler(tok, texts)
  stats = evaluate.evaluate_problems(sampler, None, tok, records,
                                     template='r1_zero', num_samples=4,
                                     ks=(1, 2, 4))
  assert stats['pass@1'] == pytest.approx(0.25)
  assert stats['pass@2'] == pytest.approx(evaluate.pass_at_k(4, 1, 2))
  assert stats['pass@4'] == pytest.approx(1.0)
  assert 'cons@4' not in stats
  assert stats['format_rate'] == 1.0
  # Mixed with math records, each task is scored by its own reward.
  math_records = [{'problem': 'Compute 1 + 2', 'answer': '3', 'task': 'math'}]
  mixed = evaluate.evaluate_model(
      sampler, None, tok, records + math_records, template='r1_zero',
      num_samples=4, temperature=0.6, top_p=0.95, max_new_tokens=8,
      ks=(4,))
  assert set(mixed['by_task']) == {'code', 'math'}
  assert mixed['code/pass@1'] == pytest.approx(0.25)
  assert mixed['math/pass@1'] == 0.0  # code is no answer to 1 + 2
  assert 'code/cons@4' not in mixed and 'math/cons@4' in mixed
