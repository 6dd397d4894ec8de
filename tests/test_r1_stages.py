"""The R1 stages: rejection sampling (filters, report, resume), the pipeline
runner (chaining, skipping finished stages, resuming a killed one)."""

import json
import pathlib

import ml_collections
import numpy as np
import pytest

from experiments import r1
from experiments import rejection as rejection_config
from r1jax import pipeline
from r1jax import rewards as rewards_lib
from r1jax import train
from r1jax.stages import rejection
from r1jax.run import records as run_records
from tests import grpo_helpers

if 'test_one' not in rewards_lib.REWARDS:
  rewards_lib.REWARDS.add(
      'test_one', lambda completions, examples: np.ones(len(completions),
                                                       np.float32))

GOOD = '<think> First, 2 + 3 = 5. So the answer is 5. </think> <answer> 5 </answer>'


def _row(completion, i='p0', correct=1.0, finished=True, num_tokens=20,
         task='arithmetic', lang=''):
  return dict(id=i, prompt='Q', completion=completion, answer='5', task=task,
              correct=correct, finished=finished, num_tokens=num_tokens,
              target_language=lang)


def _filters(**kw):
  fc = dict(rejection_config.get_config().filters)
  fc.update(max_per_prompt=2, max_tokens=40)
  fc.update(kw)
  return fc


def test_report_counts_one_of_each_reject():
  rows = [
      _row(GOOD),                                          # kept
      _row(GOOD.replace('5 </answer>', '6 </answer>'), correct=0.0),  # correct
      _row('First, 2 + 3 = 5. The answer is 5.'),          # format
      _row(GOOD.replace('So the answer is', 'итак, ответ')),  # language
      _row(GOOD.replace('First,', 'First, then'), finished=False),  # length
      _row(GOOD.replace('First,', 'First, again'), num_tokens=41),  # length
      _row(GOOD.replace('First,', '```py\nx = 5\n```')),   # code
      _row('<think> ' + 'so 2 + 3 = 5. ' * 6 + '</think> <answer> 5 </answer>'),
      _row(GOOD.replace(' ', '  ')),                       # unique (whitespace)
      _row(GOOD.replace('First,', 'Start:')),              # kept (2nd of p0)
      _row(GOOD.replace('First,', 'Begin:')),              # per_prompt (3rd)
      _row(GOOD, i='p1'),                                  # kept, other prompt
      _row(GOOD.replace('First,', '```py\nx = 5\n```'), i='p2', task='code'),
  ]
  kept, report = rejection.filter_completions(rows, _filters())
  assert report['sampled'] == 13 and report['prompts'] == 3
  assert report['rejected'] == {'correct': 1, 'format': 1, 'language': 1,
                                'length': 2, 'code': 1, 'repetition': 1,
                                'unique': 1, 'per_prompt': 1}
  assert report['kept']['per_prompt'] == len(kept) == 4
  assert report['kept']['correct'] == 12 and report['kept']['length'] == 8
  assert report['prompts_with_kept'] == 3
  assert [r['id'] for r in kept] == ['p0', 'p0', 'p1', 'p2']
  table = rejection.report_table(report)
  assert 'repetition' in table and '3 of 3 prompts' in table


def test_language_filter_uses_the_record_target():
  ru = '<think> сперва 2 + 3 = 5. итак, ответ 5. </think> <answer> 5 </answer>'
  kept, _ = rejection.filter_completions(
      [_row(ru, lang='ru'), _row(ru, i='p1', lang='en'), _row(GOOD, i='p2',
                                                           lang='ru')],
      _filters())
  assert [r['id'] for r in kept] == ['p0']


def test_repeated_fraction():
  assert rejection.repeated_fraction('a b c d e f g') == 0.0
  assert rejection.repeated_fraction('x y z w ' * 5) > 0.7


def _rejection_cfg(base, **kw):
  c = rejection_config.get_config('runlocal')
  c.model.hf_path = str(base)
  c.rewards.accuracy = 'test_one'
  c.filters.format = False
  c.filters.min_language = 0.0
  c.filters.max_repeat = 1.0
  c.filters.drop_truncated = False
  c.filters.max_per_prompt = 2
  c.data.num_train = 12
  c.rejection.num_samples = 3
  c.rejection.batch_size = 12   # 4 prompts per chunk: 3 chunks
  c.sampling.max_new_tokens = 8
  for k, v in kw.items():
    node = c
    *parents, leaf = k.split('__')
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  return grpo_helpers.make_tiny_base(tmp_path_factory.mktemp('base') / 'hf')


def test_rejection_stage_writes_data_and_resumes(base, tmp_path):
  work = tmp_path / 'rs'
  final = train.run(_rejection_cfg(base), str(work))
  report = json.loads((work / rejection.REPORT_FILE).read_text())
  assert report['sampled'] == 36 and final['sampled'] == 36
  sft_rows = [json.loads(l) for l in (work / rejection.SFT_FILE).open()]
  assert len(sft_rows) == report['kept']['per_prompt'] == final['kept']
  assert all(set(r) == {'prompt', 'completion', 'id', 'answer'} for r in sft_rows)
  assert run_records.read_done(work)['kept'] == len(sft_rows)
  # A kill after the first chunk, mid-way through writing the second.
  lines = (work / rejection.SAMPLES_FILE).read_text().splitlines(True)
  (work / rejection.SAMPLES_FILE).write_text(''.join(lines[:14]) + lines[14][:9])
  (work / run_records.DONE).unlink()
  again = train.run(_rejection_cfg(base), str(work))
  assert again['sampled'] == 36
  assert [json.loads(l) for l in (work / rejection.SFT_FILE).open()] == sft_rows


def test_sft_reads_a_rejection_workdir(base, tmp_path):
  work = tmp_path / 'rs'
  train.run(_rejection_cfg(base), str(work))
  cfg = r1.get_config('runlocal').sft
  cfg.model.hf_path = str(base)
  cfg.data.path = str(work)
  cfg.train.steps = 2
  cfg.eval.num_problems = 0
  out = train.run(cfg, str(tmp_path / 'sft'))
  assert np.isfinite(out['train_loss'])
  assert (tmp_path / 'sft' / 'hf' / 'config.json').is_file()
  with pytest.raises(FileNotFoundError, match='rejection_sampling'):
    cfg.data.path = str(tmp_path)
    train.run(cfg, str(tmp_path / 'sft2'))


def _tiny_eval(stage):
  """4 held-out problems x 2 samples of 8 tokens at the end of a stage."""
  stage.eval.num_problems = 4
  stage.eval.num_samples = 2
  stage.eval.ks = (1, 2)
  stage.eval.max_new_tokens = 8


def _tiny_rl(rl):
  """2 GRPO steps of 8 prompts x 2 samples of 8 tokens, eval at the end."""
  rl.rl.prompts_per_step = 8
  rl.rl.group_size = 2
  rl.sampling.max_new_tokens = 8
  _tiny_eval(rl)
  rl.eval.at_start = False
  rl.train.steps = 2
  rl.data.num_train = 50


def _tiny_rejection(rs, base):
  """8 prompts from `base`, every sample correct, only the cheap filters."""
  rs.rewards.accuracy = 'test_one'
  rs.filters.format = False
  rs.filters.min_language = 0.0
  rs.filters.drop_truncated = False
  rs.data.num_train = 8
  rs.sampling.max_new_tokens = 8
  if base is not None:
    rs.model.hf_path = str(base)


def _pipeline_cfg(base):
  c = r1.get_config('runlocal')
  c.cold_start.model.hf_path = str(base)
  c.cold_start.model.pretrain_if_missing = False
  c.sft.model.hf_path = str(base)
  for name in ('cold_start', 'sft'):
    c[name].train.steps = 2
    _tiny_eval(c[name])
  _tiny_rejection(c.rejection, None)  # samples from '@reasoning_rl'
  for name in ('reasoning_rl', 'final_rl'):
    _tiny_rl(c[name])
    c[name].train.checkpoint_every = 1
  return c


@pytest.mark.slow
def test_pipeline_chains_skips_and_resumes(base, tmp_path, capsys,
                                          monkeypatch):
  c = _pipeline_cfg(base)
  grpo_helpers.inject_nan(monkeypatch, at_step=2)  # reasoning_rl dies at 2 of 2
  with pytest.raises(FloatingPointError):
    pipeline.run(c, str(tmp_path))
  monkeypatch.undo()
  assert run_records.read_done(tmp_path / 'cold_start') is not None
  assert run_records.read_done(tmp_path / 'reasoning_rl') is None
  rl_run = run_records.read_run_config(tmp_path / 'reasoning_rl')
  assert rl_run.model.hf_path == str(tmp_path / 'cold_start')
  capsys.readouterr()
  c = _pipeline_cfg(base)
  results = pipeline.run(c, str(tmp_path))
  out = capsys.readouterr().out
  assert 'cold_start (sft): finished before, skipped' in out
  assert 'resumed from step 1' in out
  assert list(results) == list(c.order)
  assert results['final_rl']['step'] == 2
  assert (tmp_path / 'final_rl' / 'hf' / 'config.json').is_file()
  # Everything finished: a third run does nothing but report.
  pipeline.run(_pipeline_cfg(base), str(tmp_path))
  out = capsys.readouterr().out
  assert out.count('finished before, skipped') == 5
  # The end-of-run table: one row per stage, held-out metrics where a stage
  # has them, the rejection stage's kept count.
  rows = [l for l in out.splitlines() if l.startswith('| ')][1:]
  assert [r.split(' | ')[0][2:] for r in rows] == list(c.order)
  rl_row = next(r for r in rows if r.startswith('| final_rl | grpo |'))
  assert f"{results['final_rl']['eval/pass@1']:.3f}" in rl_row
  kept = results['rejection']['kept']
  assert f'kept {kept} of 32 samples' in next(r for r in rows if 'rejection' in r)


def test_pipeline_config_errors():
  c = r1.get_config('runlocal')
  c.reasoning_rl.model.hf_path = '@final_rl'
  with pytest.raises(ValueError, match='not an earlier stage'):
    pipeline.validate_config(c)
  c = r1.get_config('runlocal')
  c.order = ('cold_start', 'nope')
  with pytest.raises(ValueError, match="names 'nope'"):
    pipeline.validate_config(c)


def test_unfinished_workdir_is_refused(base, tmp_path):
  c = grpo_helpers.grpo_config(base, train__steps=1)
  c.export.hf = False
  train.run(c, str(tmp_path / 'rl'))
  (tmp_path / 'rl' / run_records.DONE).unlink()
  with pytest.raises(FileNotFoundError, match='has not finished'):
    run_records.resolve_hf_path(str(tmp_path / 'rl'))


@pytest.mark.slow
def test_distill_pipeline_runs_every_stage(base, tmp_path):
  """experiments/distill.py:compare at tiny scale: the teacher's traces, a
  smaller student with the teacher's tokenizer, SFT on the traces, and the
  same student trained with GRPO instead."""
  from experiments import distill
  c = distill.get_config('runlocal,compare')
  assert c.order == ('teacher_traces', 'student_base', 'student_sft',
                     'student_rl')
  _tiny_rejection(c.teacher_traces, base)
  sb = c.student_base
  sb.tokenizer.path = str(base)
  sb.model.overrides = ml_collections.ConfigDict(
      dict(grpo_helpers.SMALL_MODEL, num_layers=1))
  sb.data.num_docs = 300
  sb.data.num_eval_docs = 16
  sb.train.steps = 2
  sb.train.warmup_steps = 1
  sb.train.batch_size = 8
  sb.train.log_every = 1
  sb.train.eval_every = 2
  sb.train.sample_every = 0
  sb.train.checkpoint_every = 2
  sb.eval.num_problems = 0
  c.student_sft.train.steps = 2
  _tiny_eval(c.student_sft)
  _tiny_rl(c.student_rl)
  results = pipeline.run(c, str(tmp_path))
  assert list(results) == list(c.order)
  assert results['teacher_traces']['kept'] > 0
  assert results['student_sft']['step'] == 2
  assert results['student_rl']['step'] == 2
  teacher = json.loads((base / 'config.json').read_text())
  for stage in ('student_base', 'student_sft', 'student_rl'):
    student = json.loads((tmp_path / stage / 'hf' / 'config.json').read_text())
    assert student['num_hidden_layers'] == 1 < teacher['num_hidden_layers']
    assert ((tmp_path / stage / 'hf' / 'tokenizer.json').read_text() ==
            (base / 'tokenizer.json').read_text())
