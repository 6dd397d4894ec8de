"""The tiny base's ability check, its keyed cache, drill documents and the
reflection figures (r1jax/base_ability.py, r1jax/tiny_base.py,
r1jax/reasoning_stats.py)."""

import json
import pathlib

import numpy as np
import pytest

from experiments import pretrain_tiny
from experiments import zero
from r1jax import base_ability
from r1jax import reasoning_stats
from r1jax.data import corpus
from r1jax.run import problems
from r1jax.run import train_state
from r1jax import errors
from r1jax import tiny_base
import grpo_helpers as H


# ------------------------------------------------------------ reasoning_stats


def test_steps_and_step_accuracy():
  text = '3 + 5 = 8. 8 - 2 = 7. 7 * 2 = 14. 12 / 4 = 3.'
  assert reasoning_stats.steps(text) == [(3, '+', 5, 8), (8, '-', 2, 7),
                                         (7, '*', 2, 14), (12, '/', 4, 3)]
  assert reasoning_stats.step_accuracy([text, 'no steps']) == (3, 4)


def test_rechecks_and_reflective_words():
  fixed = '9 + 8 = 16. Wait, 9 + 8 = 17, not 16. 17 - 2 = 15.'
  again = '9 + 8 = 17. Check: 9 + 8 = 17.'
  assert reasoning_stats.rechecks(fixed) == (True, True)
  assert reasoning_stats.rechecks(again) == (True, False)
  assert reasoning_stats.rechecks('9 + 8 = 17. 17 - 2 = 15.') == (False, False)
  # Word-bounded and case-free: 'But' counts, 'butter' and 'checked' do not.
  assert reasoning_stats.reflective_word_count(
      'Wait, but the butter was checked. Let me VERIFY.') == 3
  stats = reasoning_stats.reflection_stats(
      [fixed, again, '<answer> 3 </answer>', 'However, I retry.'])
  assert stats == {'reflection_rate': 0.75, 'reflective_words': 1.0,
                   'recheck_rate': 0.5, 'correction_rate': 0.25,
                   'check_rate': 0.0, 'step_rate': 0.5}
  assert reasoning_stats.reflection_stats([]) == {}


# ----------------------------------------------------------------- corpus


def test_drill_documents_are_right_steps_of_train_problems():
  cfg = corpus.CorpusConfig(p_drill=0.3)
  docs = corpus.corpus_records(cfg, 600, seed=0)
  drill = [d for d in docs if d['kind'] == 'drill']
  assert 0.22 < len(drill) / len(docs) < 0.38
  for d in drill:
    facts = reasoning_stats.steps(d['text'])
    assert cfg.drill_facts[0] <= len(facts) <= cfg.drill_facts[1]
    assert all(reasoning_stats.step_is_right(*f) for f in facts)
    assert d['prompt'] == '' and 'Compute' not in d['text']
  # p_drill draws from its own stream: the other documents are those of the
  # corpus without drill, one for one.
  plain = corpus.corpus_records(corpus.CorpusConfig(), 600, seed=0)
  for a, b in zip(docs, plain):
    if a['kind'] != 'drill':
      assert a['text'] == b['text']
  with pytest.raises(ValueError, match='drill_facts'):
    corpus.corpus_records(corpus.CorpusConfig(drill_facts=(3, 1)), 1, 0)


# ---------------------------------------------------------- ability check


def test_check_names_each_figure_below_its_minimum():
  req = pretrain_tiny.get_config('').ability.requirements.to_dict()
  good = dict(gap=0.3, steps_share=0.3, plain_steps_accuracy=0.6,
              format_rate=0.8)
  assert base_ability.check(good, req) == []
  bad = dict(good, gap=-0.03, format_rate=0.1)
  failures = base_ability.check(bad, req)
  assert len(failures) == 2
  assert failures[0].startswith('gap -0.030 < 0.150')
  assert 'format_rate 0.100' in failures[1]


def test_measure_sorts_samples_into_steps_and_direct(tmp_path):
  """A random tiny model, measured for real: the figures are consistent."""
  from r1jax import generate
  from r1jax.sampling import Sampler
  base = H.make_tiny_base(tmp_path / 'base')
  cfg, graphdef, params, tok = generate.load_checkpoint(base)
  config = zero.get_config('')
  config.eval.num_problems = 8
  records = problems.eval_records(config)
  sampler = Sampler(graphdef, cfg, pad_id=tok.pad_id, eos_ids=[tok.eos_id])
  f = base_ability.measure(sampler, params, tok, records,
                           template='r1_zero_short', num_samples=2,
                           max_new_tokens=12, batch_size=16)
  for k in ('pass@1', 'steps_share', 'steps_accuracy', 'direct_accuracy',
            'single_step_accuracy', 'plain_steps_accuracy', 'format_rate'):
    assert 0.0 <= f[k] <= 1.0, k
  assert f['gap'] == pytest.approx(f['steps_accuracy'] - f['direct_accuracy'])
  share = f['steps_share']
  assert f['pass@1'] == pytest.approx(
      share * f['steps_accuracy'] + (1 - share) * f['direct_accuracy'])


# ------------------------------------------------------------- the cache


def test_cache_key_follows_seed_and_weight_fields_only():
  c0 = zero.get_config('')
  assert tiny_base.BASE_KEY in c0.model.hf_path
  key = lambda c: base_ability.base_key(tiny_base.pretrain_config(c))
  c1 = zero.get_config('')
  c1.seed = 1
  assert key(c0).startswith('seed0-') and key(c1).startswith('seed1-')
  assert key(c0) != key(c1)
  # runlocal pretrains another base.
  assert key(zero.get_config('runlocal')) != key(c0)
  pre = tiny_base.pretrain_config(c0)
  same = tiny_base.pretrain_config(c0)
  same.train.log_every = 7       # not a weight field
  same.export.hf_dir = '/elsewhere'
  assert base_ability.base_key(same) == base_ability.base_key(pre)
  other = tiny_base.pretrain_config(c0)
  other.data.corpus.p_drill = 0.3
  assert base_ability.base_key(other) != base_ability.base_key(pre)
  tiny_base.resolve(c1)
  assert c1.model.hf_path.endswith(key(c1)) and '{' not in c1.model.hf_path
  tiny_base.resolve(c1)  # idempotent
  assert c1.model.hf_path.endswith(key(c1))


def _cached_base(tmp_path, config, passed=True, key=None):
  tiny_base.resolve(config)
  path = pathlib.Path(config.model.hf_path)
  H.make_tiny_base(path)
  pre = tiny_base.pretrain_config(config)
  made = base_ability.made_by(pre)
  if key:
    made['base_key'] = key
  base_ability.save(path, {'gap': 0.3 if passed else -0.02},
                    {'min_gap': 0.15},
                    [] if passed else ['gap -0.020 < 0.150 (...)'], made)
  return path


@pytest.fixture
def cached_config(tmp_path, monkeypatch):
  monkeypatch.setenv('R1JAX_CACHE', str(tmp_path / 'cache'))
  return zero.get_config('')


def test_ensure_accepts_a_checked_base_and_prints_its_figures(
    tmp_path, cached_config):
  path = _cached_base(tmp_path, cached_config)
  lines = []
  tiny_base.ensure(cached_config, tmp_path / 'run', lines.append)
  assert len(lines) == 1 and str(path) in lines[0] and 'passed' in lines[0]


def test_ensure_refuses_a_failed_base_in_one_line(tmp_path, cached_config):
  path = _cached_base(tmp_path, cached_config, passed=False)
  with pytest.raises(errors.ConfigError, match='failed the ability check') as e:
    tiny_base.ensure(cached_config, tmp_path / 'run', lambda _: None)
  assert str(path) in str(e.value) and '\n' not in str(e.value)
  assert 'require_ability=False' in str(e.value)
  cached_config.model.require_ability = False
  tiny_base.ensure(cached_config, tmp_path / 'run', lambda _: None)
  assert (path / 'model.safetensors').is_file()  # nothing was touched


def test_ensure_refuses_a_base_made_by_another_config(tmp_path, cached_config):
  _cached_base(tmp_path, cached_config, key='seed9-0000000000')
  with pytest.raises(errors.ConfigError, match='made by another config'):
    tiny_base.ensure(cached_config, tmp_path / 'run', lambda _: None)


def test_ensure_sets_an_incomplete_base_aside_and_pretrains_again(
    tmp_path, cached_config, monkeypatch):
  tiny_base.resolve(cached_config)
  path = pathlib.Path(cached_config.model.hf_path)
  H.make_tiny_base(path)  # weights, no base_ability.json: a killed export
  calls = []

  def fake_pretrain(config, dest, workdir, log):
    calls.append(dest)
    _cached_base(tmp_path, config)  # what the real pretraining leaves

  monkeypatch.setattr(tiny_base, '_pretrain', fake_pretrain)
  lines = []
  tiny_base.ensure(cached_config, tmp_path / 'run', lines.append)
  assert calls == [path]
  aside = [p for p in path.parent.iterdir() if '.incomplete-' in p.name]
  assert len(aside) == 1 and (aside[0] / 'model.safetensors').is_file()
  assert 'moved it to' in lines[0]
  assert json.loads((path / base_ability.ABILITY_FILE).read_text())['passed']


def test_restated_steps_carry_what_is_left():
  record = dict(task='arithmetic', problem='Compute 3 + 2 - 5 + 3',
                answer='3', solution_steps=['3 + 2 = 5', '5 - 5 = 0',
                                            '0 + 3 = 3'])
  assert corpus.remainders(record) == ['5 - 5 + 3', '0 + 3', None]
  cfg = corpus.CorpusConfig(restate=True)
  import random
  text = corpus.completion(record, 'steps', True, True, cfg, random.Random(0))
  assert text == (' <think> 3 + 2 = 5, so 5 - 5 + 3. 5 - 5 = 0, so 0 + 3. '
                  '0 + 3 = 3. </think> <answer> 3 </answer>')
  # A corrected step: the restatement follows the correction.
  fixed = corpus.completion(record, 'self_correct', False, False, cfg,
                            random.Random(3))
  steps = reasoning_stats.steps(fixed)
  assert len(steps) == 4 and reasoning_stats.rechecks(fixed) == (True, True)
  assert 'not' in fixed and fixed.endswith('The answer is 3.')
  wait = fixed.index('Wait')
  assert ', so' not in fixed[:wait].rsplit('.', 2)[-2]  # not after the slip
  # Products are not restated (their steps are not left to right).
  assert corpus.remainders(dict(record, problem='Compute 3 * 2 - 5 + 3')) is None
  assert corpus.remainders(dict(record, task='countdown')) is None


def test_ability_extensions_restart_the_lr_and_keep_the_main_schedule():
  import jax.numpy as jnp
  import optax
  c = pretrain_tiny.get_config('')
  tc, ab = c.train, c.ability
  lrs = {}
  for restarts in (None, ab):
    opt = train_state.make_optimizer(tc, restarts)
    params = {'w': jnp.zeros((2, 2))}
    state = opt.init(params)
    grads = {'w': jnp.ones((2, 2))}
    seen = []
    for step in range(tc.steps + ab.extend_steps + 2):
      # The AdamW update of a constant gradient is -lr * (1 + decay * 0).
      upd, state = opt.update(grads, state, params)
      seen.append(-float(upd['w'][0, 0]))
    lrs[restarts is None] = np.asarray(seen)
  plain, restarted = lrs[True], lrs[False]
  np.testing.assert_allclose(restarted[:tc.steps], plain[:tc.steps], rtol=1e-5)
  final = tc.lr * tc.min_lr_ratio
  assert plain[tc.steps + 1] == pytest.approx(final, rel=1e-3)
  assert restarted[tc.steps] == pytest.approx(ab.extend_lr, rel=1e-3)
  assert restarted[tc.steps + ab.extend_steps - 1] == pytest.approx(final, rel=1e-2)
  assert restarted[tc.steps + ab.extend_steps] == pytest.approx(ab.extend_lr,
                                                                rel=1e-3)


def test_ensure_never_moves_a_base_the_user_named(tmp_path, cached_config,
                                                  monkeypatch):
  """pretrain_if_missing with an hf_path of the user's (the R1 pipeline's sft
  stage points at its base so): used as it is, without an ability record."""
  user = H.make_tiny_base(tmp_path / 'my_base')
  cached_config.model.hf_path = str(user)
  monkeypatch.setattr(tiny_base, '_pretrain',
                      lambda *a: pytest.fail('pretrained over a user base'))
  lines = []
  tiny_base.ensure(cached_config, tmp_path / 'run', lines.append)
  assert lines == [] and (user / 'model.safetensors').is_file()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['cache', 'my_base'] or (
      sorted(p.name for p in tmp_path.iterdir()) == ['my_base'])


def test_checks_a_step_reads_an_inverse_check():
  assert reasoning_stats.checks_a_step('3 + 2 = 5, check 5 - 2 = 3, so 5.')
  assert reasoning_stats.checks_a_step(
      '9 - 4 = 6, check 6 + 4 = 10, not 9. Wait, 9 - 4 = 5.')
  assert not reasoning_stats.checks_a_step('3 + 2 = 5, so 5 - 2 = 3.'[:9])
  assert not reasoning_stats.checks_a_step('3 + 2 = 5. 5 + 2 = 7.')
  assert not reasoning_stats.checks_a_step('3 + 2 = 5. 5 - 3 = 2.')
  stats = reasoning_stats.reflection_stats(
      ['3 + 2 = 5, check 5 - 2 = 3', '3 + 2 = 5', 'no steps'])
  assert stats['check_rate'] == pytest.approx(1 / 3)


def test_zero_check_variant_trains_from_the_check_base():
  c = zero.get_config('check')
  assert c.model.pretrain_arg == 'check'
  assert c.sampling.max_new_tokens == c.eval.max_new_tokens == 128
  pre = pretrain_tiny.get_config('check')
  assert pre.data.corpus.p_check > 0
  assert pre.ability.max_new_tokens == 128
  assert zero.get_config('check,runlocal').model.pretrain_arg == (
      'runlocal,check')
  with pytest.raises(ValueError, match='tiny base'):
    zero.get_config('check,model=smollm2-135m')


def test_a_pretraining_saved_before_p_check_resumes():
  """run_config.json of a pretraining from before CorpusConfig.p_check: the
  default corpus resumes it; the checking corpus is another config."""
  from r1jax import config_checks  # pylint: disable=g-import-not-at-top
  old = pretrain_tiny.get_config('')
  del old.data.corpus['p_check']
  del old.data.corpus['p_slip']
  assert config_checks.run_config_diff(old, pretrain_tiny.get_config('')) == []
  keys = [k for k, _, _ in config_checks.run_config_diff(
      old, pretrain_tiny.get_config('check'))]
  assert 'data.corpus.p_check' in keys
