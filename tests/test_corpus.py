"""Pretraining corpus: mixture proportions, document forms, no held-out leak."""

import dataclasses
import re

import numpy as np
import pytest

from r1jax.data import corpus
from r1jax.data import synthetic
from r1jax.data.corpus import CorpusConfig

_TAGGED_RE = re.compile(
    r' <think> (?P<think>.+?) </think> <answer> (?P<answer>.+?) </answer>')
_STEP_RE = re.compile(r'(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)')


@pytest.fixture(scope='module')
def docs():
  return corpus.corpus_records(CorpusConfig(), 4000, seed=0)


def frac(xs):
  return float(np.mean(xs)) if xs else float('nan')


def test_mixture_follows_the_knobs(docs):
  cfg = CorpusConfig()
  r1 = [d for d in docs if d['format'] != 'plain']
  plain = [d for d in docs if d['format'] == 'plain']
  steps = [d for d in docs if d['kind'] != 'direct']
  # Binomial standard errors here are <= 0.012; 0.04 is > 3 of them.
  assert abs(len(r1) / len(docs) - cfg.p_r1_prompt) < 0.04
  assert abs(frac([d['format'] == 'r1' for d in r1]) - cfg.p_r1_tags) < 0.04
  assert abs(frac([d['kind'] == 'direct' for d in r1]) - cfg.p_direct_r1) < 0.04
  assert abs(frac([d['kind'] == 'direct' for d in plain]) - cfg.p_direct) < 0.04
  assert abs(frac([d['kind'] == 'self_correct' for d in steps])
             - cfg.p_self_correct) < 0.04
  # Every (format, kind) combination occurs.
  assert {(d['format'], d['kind']) for d in docs} == {
      (f, k) for f in ('r1', 'r1_untagged', 'plain')
      for k in ('direct', 'steps', 'self_correct')}


def test_knobs_change_the_mixture():
  cfg = CorpusConfig(p_r1_prompt=1.0, p_r1_tags=1.0, p_direct=0.0,
                     p_direct_r1=0.0, p_self_correct=0.0)
  recs = corpus.corpus_records(cfg, 200, seed=1)
  assert {(d['format'], d['kind']) for d in recs} == {('r1', 'steps')}
  cfg = CorpusConfig(p_r1_prompt=0.0, p_direct=1.0, p_direct_r1=None)
  recs = corpus.corpus_records(cfg, 200, seed=1)
  assert {(d['format'], d['kind']) for d in recs} == {('plain', 'direct')}
  with pytest.raises(ValueError, match='p_direct'):
    corpus.corpus_records(CorpusConfig(p_direct=1.5), 1, seed=0)
  with pytest.raises(KeyError, match='arithmetic'):
    corpus.corpus_records(CorpusConfig(task_weights={'sudoku': 1.0}), 1, 0)


def test_documents_read_as_their_kind(docs):
  for d in docs:
    assert d['text'] == d['prompt'] + d['completion']
    comp = d['completion']
    m = _TAGGED_RE.fullmatch(comp)
    assert bool(m) == (d['format'] == 'r1'), comp
    final = m.group('answer') if m else comp.rsplit(' ', 1)[-1].rstrip('.')
    assert final == d['answer']
    steps = [tuple(map(str, s)) for s in _STEP_RE.findall(comp)]
    if d['kind'] == 'direct':
      assert not steps and len(comp.split()) <= 12
      continue
    # Every written step is right, except the one a 'Wait,' corrects.
    wrong = [s for s in steps if eval(f'{s[0]} {s[1]} {s[2]}') != int(s[3])]  # pylint: disable=eval-used
    if d['kind'] == 'steps':
      assert not wrong and 'Wait' not in comp
    else:
      assert len(wrong) == 1
      a, op, b, bad = wrong[0]
      good = eval(f'{a} {op} {b}')  # pylint: disable=eval-used
      assert f'{a} {op} {b} = {bad}. Wait, {a} {op} {b} = {good}, not {bad}.' in comp
    # The last step lands on the answer (arithmetic).
    assert int(steps[-1][3]) == int(d['answer'])


def test_r1_prompts_are_the_template_verbatim(docs):
  try:
    from r1jax.data import templates  # pylint: disable=g-import-not-at-top
    render = lambda p: templates.render_prompt('r1_zero', p)
  except ImportError:
    render = lambda p: corpus._R1_ZERO_FALLBACK.format(problem=p)  # pylint: disable=protected-access
  r1 = [d for d in docs if d['format'] != 'plain']
  for d in r1:
    assert d['prompt'] == render(d['problem'])
    assert d['prompt'].endswith('Assistant:')
  plain = [d for d in docs if d['format'] == 'plain']
  assert all('<think>' not in d['text'] for d in plain)


def test_direct_answers_are_short_and_steps_long(docs):
  # Words, not characters: a tag is one token, a digit is one token.
  words = {k: np.mean([len(d['completion'].split()) for d in docs
                       if d['kind'] == k and d['format'] == 'r1'])
           for k in ('direct', 'steps')}
  assert words['steps'] > 2 * words['direct']


def test_deterministic_and_prefix_stable():
  cfg = CorpusConfig(task_weights={'arithmetic': 1.0, 'countdown': 1.0})
  a = corpus.corpus_documents(cfg, 60, seed=7)
  assert a == corpus.corpus_documents(cfg, 60, seed=7)
  assert a[:20] == corpus.corpus_documents(cfg, 20, seed=7)
  assert a != corpus.corpus_documents(cfg, 60, seed=8)
  recs = corpus.corpus_records(cfg, 300, seed=7)
  assert {d['task'] for d in recs} == {'arithmetic', 'countdown'}
  for d in recs:
    if d['task'] == 'countdown' and d['kind'] == 'steps':
      assert d['completion'].count(' = ') >= 2


def test_corpus_never_contains_a_held_out_problem():
  # A tiny problem space: the corpus covers most of it, so only the split
  # mechanism keeps the held-out problems out.
  knobs = dict(num_operands=2, max_digits=1, operators='+')
  cfg = CorpusConfig(difficulty={'arithmetic': knobs})
  recs = corpus.corpus_records(cfg, 1500, seed=0)
  seen = {d['problem'] for d in recs}
  assert len(seen) > 0.7 * 81
  held_out = set()
  for seed in range(5):
    for split in ('test', 'validation'):
      held_out |= {r['problem'] for r in synthetic.generate(
          'arithmetic', 5, seed=seed, split=split, unique=False, **knobs)}
  text = '\n'.join(d['text'] for d in recs)
  for problem in held_out:
    assert problem not in seen
    assert problem not in text


def test_tokenizer_texts_train_a_usable_tokenizer():
  from r1jax.tokenizer import train_bpe  # pylint: disable=g-import-not-at-top
  texts = corpus.tokenizer_training_texts(CorpusConfig(), 300, seed=0)
  assert len(texts) >= 300
  tok = train_bpe(texts, vocab_size=300)
  assert len(tok.encode('<think>')) == 1
  assert len(tok.encode('123')) == 3  # Digits stay one per token.
  doc = corpus.corpus_documents(CorpusConfig(), 1, seed=3)[0]
  assert tok.decode(tok.encode(doc)) == doc


def test_config_is_a_plain_dataclass():
  cfg = dataclasses.replace(CorpusConfig(), p_direct=0.2)
  assert cfg.p_direct == 0.2 and CorpusConfig().p_direct != 0.2
  # Mutable defaults are per instance.
  c1, c2 = CorpusConfig(), CorpusConfig()
  c1.difficulty['arithmetic']['max_digits'] = 3
  assert c2.difficulty['arithmetic']['max_digits'] != 3


def test_reward_library_scores_the_documents():
  rewards = pytest.importorskip('r1jax.rewards')
  cfg = CorpusConfig(task_weights={'arithmetic': 1.0, 'countdown': 1.0})
  recs = [d for d in corpus.corpus_records(cfg, 400, seed=2)
          if d['format'] != 'plain']
  fmt = rewards.REWARDS.get('format')([d['completion'] for d in recs], recs)
  np.testing.assert_array_equal(fmt, [d['format'] == 'r1' for d in recs])
  for task in ('arithmetic', 'countdown'):
    mine = [d for d in recs if d['task'] == task and d['format'] == 'r1']
    examples = [d['example'] for d in mine]
    assert all(e['problem'] == d['problem'] for e, d in zip(examples, mine))
    acc = rewards.REWARDS.get(task)([d['completion'] for d in mine], examples)
    assert len(mine) > 20 and acc.min() == 1.0


# ------------------------------------------------- checks that can pay (p_check)


def test_p_check_zero_leaves_the_corpus_unchanged_and_its_key():
  from experiments import pretrain_tiny  # pylint: disable=g-import-not-at-top
  from r1jax import base_ability  # pylint: disable=g-import-not-at-top
  plain = corpus.corpus_records(CorpusConfig(restate=True), 300, seed=3)
  off = corpus.corpus_records(CorpusConfig(restate=True, p_check=0.0,
                                           p_slip=0.5), 300, seed=3)
  assert [d['text'] for d in plain] == [d['text'] for d in off]
  # The default base keeps its cache key; the check variant has its own.
  default = base_ability.base_key(pretrain_tiny.get_config(''))
  assert default == 'seed0-09efd40e35'
  assert base_ability.base_key(pretrain_tiny.get_config('check')) != default


def test_checked_documents_check_every_step_and_catch_each_slip():
  cfg = CorpusConfig(restate=True, p_check=0.5, p_slip=0.3,
                     p_self_correct=0.0, difficulty={'arithmetic': dict(
                         num_operands=(2, 4), max_digits=(1, 2),
                         operators='+-')})
  recs = corpus.corpus_records(cfg, 1500, seed=0)
  stepped = [d for d in recs if d['kind'] in ('steps', 'checked')]
  share = frac([d['kind'] == 'checked' for d in stepped])
  assert abs(share - 0.5) < 0.06
  # Other documents are those of p_check=0 (a stream of its own).
  base = corpus.corpus_records(dataclasses.replace(cfg, p_check=0.0), 1500, 0)
  for d, b in zip(recs, base):
    assert (d['kind'] == 'checked') or d['text'] == b['text']
    if d['kind'] == 'checked':
      assert b['kind'] == 'steps' and b['problem'] == d['problem']
  slips = 0
  for d in (d for d in recs if d['kind'] == 'checked'):
    comp, n = d['completion'], len(d['example']['solution_steps'])
    assert d['completion'].endswith((f' {d["answer"]} </answer>',
                                     f' {d["answer"]}.'))
    # Each step sentence: 'a op b = c, check c inv b = a', or a slip:
    # 'a op b = w, check w inv b = x, not a. Wait, a op b = c'.
    found = [tuple(s) for s in _STEP_RE.findall(comp)]
    assert comp.count(', check ') == n
    ok = lambda s: synthetic.apply_op(int(s[0]), s[1], int(s[2])) == int(s[3])
    i = 0
    while i < len(found):
      a, op, b, c = found[i]
      ca, cop, cb, cc = found[i + 1]
      assert (ca, cop, cb) == (c, synthetic.INVERSE_OP[op], b)
      assert ok(found[i + 1])  # the check is computed right
      if ok(found[i]):
        assert cc == a
        i += 2
      else:  # a slip: the check shows it, then the step is redone
        slips += 1
        assert cc != a and f', not {a}. Wait, {a} {op} {b} = ' in comp
        assert found[i + 2][:3] == (a, op, b) and ok(found[i + 2])
        i += 3
    from r1jax import reasoning_stats  # pylint: disable=g-import-not-at-top
    assert reasoning_stats.checks_a_step(comp)
  steps_written = sum(len(d['example']['solution_steps'])
                      for d in recs if d['kind'] == 'checked')
  assert abs(slips / steps_written - 0.3) < 0.05
  with pytest.raises(ValueError, match='p_check'):
    corpus.corpus_records(CorpusConfig(p_check=2.0), 1, seed=0)
