"""The R1 study's runner: the evaluate stage, seeded pipelines, '@best:'
references, the mean +- std table, and a killed study resuming without
running its finished seeds again (experiments/r1_study.py)."""

import json
import pathlib

import ml_collections
import numpy as np
import pytest

from experiments import r1_study
from r1jax import errors
from r1jax import pipeline
from r1jax import study
from r1jax import train
from r1jax.run import records as run_records
from tests import grpo_helpers


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  return grpo_helpers.make_tiny_base(tmp_path_factory.mktemp('base') / 'hf')


def _eval_stage(model: str, shots: int = 0) -> ml_collections.ConfigDict:
  """The study's evaluate stage, shrunk: 4 problems x 2 samples, 8 tokens."""
  c = ml_collections.ConfigDict(
      r1_study.get_config('runlocal').zero_shots1.to_dict())
  c.model.hf_path = model
  c.eval.num_problems = 4
  c.eval.num_samples = 2
  c.eval.ks = (1, 2)
  c.eval.max_new_tokens = 8
  c.eval.greedy = False
  c.eval.few_shot = shots
  c.sampling.max_prompt_tokens = 64 + 96 * shots
  return c


def test_evaluate_stage_writes_its_figures(base, tmp_path):
  final = train.run(_eval_stage(str(base), shots=1), str(tmp_path / 'ev'))
  done = run_records.read_done(tmp_path / 'ev')
  assert done == json.loads(json.dumps(final))
  assert 0.0 <= done['eval/pass@1'] <= 1.0
  assert done['eval/few_shot'] == 1 and done['source'] == str(base)
  assert 'eval/cons@2' in done and 'eval/language_consistency' in done
  report = json.loads((tmp_path / 'ev' / 'eval.json').read_text())
  assert report['num_problems'] == 4 and report['few_shot'] == 1
  # Deterministic: the same checkpoint and settings give the same figures.
  again = train.run(_eval_stage(str(base), shots=1), str(tmp_path / 'ev2'))
  assert again['eval/pass@1'] == final['eval/pass@1']


def test_evaluate_stage_needs_a_checkpoint(tmp_path):
  c = _eval_stage('')
  with pytest.raises(errors.ConfigError, match='model.hf_path'):
    train.run(c, str(tmp_path / 'ev'))


def _study(base, seeds=(0, 1)) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = seeds
  c.a = _eval_stage(str(base), shots=0)
  c.b = _eval_stage(str(base), shots=1)
  c.c = _eval_stage(str(base), shots=0)
  # Evaluate stages export no model: the reference goes in a directory
  # field the synthetic problems leave unread.
  c.c.data.local_dir = '@best:a,b'
  c.order = ('a', 'b', 'c')
  return c


def test_killed_study_resumes_without_rerunning_finished_seeds(
    base, tmp_path, capsys, monkeypatch):
  real_run = train.run
  calls = []

  def dies_in_seed1_b(config, workdir, overwrite=False):
    calls.append(workdir)
    if workdir.endswith('seed1/b'):
      raise KeyboardInterrupt('killed')
    return real_run(config, workdir, overwrite)

  monkeypatch.setattr(train, 'run', dies_in_seed1_b)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run(_study(base), str(tmp_path))
  assert [pathlib.Path(c).relative_to(tmp_path).as_posix() for c in calls] == [
      'seed0/a', 'seed0/b', 'seed0/c', 'seed1/a', 'seed1/b']
  seed0_done = {n: (tmp_path / 'seed0' / n / run_records.DONE).stat().st_mtime_ns
                for n in 'abc'}
  monkeypatch.setattr(train, 'run', real_run)
  calls.clear()
  capsys.readouterr()
  results = pipeline.run(_study(base), str(tmp_path))
  out = capsys.readouterr().out
  # Seed 0 and seed 1's first stage are not run again.
  assert out.count('finished before, skipped') == 4
  assert seed0_done == {
      n: (tmp_path / 'seed0' / n / run_records.DONE).stat().st_mtime_ns
      for n in 'abc'}
  assert sorted(results) == [0, 1] and all(
      sorted(r) == ['a', 'b', 'c'] for r in results.values())
  for seed in (0, 1):
    # Every stage ran with the seed's number.
    for n in 'abc':
      run_cfg = run_records.read_run_config(tmp_path / f'seed{seed}' / n)
      assert run_cfg.seed == seed
    # '@best:a,b' is the stage with the higher held-out pass@1 (a on a tie).
    a, b = (results[seed][n]['eval/pass@1'] for n in 'ab')
    best = 'b' if b > a else 'a'
    run_c = run_records.read_run_config(tmp_path / f'seed{seed}' / 'c')
    assert run_c.data.local_dir == str(tmp_path / f'seed{seed}' / best)
  # The study table: one row per stage, mean +- std over the two seeds.
  table = (tmp_path / 'study.md').read_text()
  rows = [l for l in table.splitlines() if l.startswith('| ')][1:]
  assert [r.split(' | ')[0][2:] for r in rows] == ['a', 'b', 'c']
  values = [results[s]['a']['eval/pass@1'] for s in (0, 1)]
  assert f'{np.mean(values):.3f} ± {np.std(values):.3f}' in rows[0]
  assert '| a | evaluate | 2 |' in rows[0]
  summary = json.loads((tmp_path / 'study.json').read_text())
  assert sorted(summary['seeds']) == ['0', '1']


def test_pipeline_seed_and_reference_errors(base):
  c = _study(base)
  c.seeds = (0, 0)
  with pytest.raises(errors.ConfigError, match='repeats a seed'):
    pipeline.validate_config(c)
  c = _study(base)
  c.seeds = ('0',)
  with pytest.raises(errors.ConfigError, match='config.seeds'):
    pipeline.validate_config(c)
  c = _study(base)
  c.c.data.local_dir = '@best:a,zz'
  with pytest.raises(errors.ConfigError, match="stage 'zz'"):
    pipeline.validate_config(c)
  c.c.data.local_dir = '@best:'
  with pytest.raises(errors.ConfigError, match='names no stage'):
    pipeline.validate_config(c)


def test_best_stage_reads_done_files(tmp_path):
  dirs = {n: tmp_path / n for n in 'xyz'}
  assert pipeline.best_stage(['x', 'y'], dirs) == 'x'  # none finished yet
  for n, score in (('x', 0.25), ('y', 0.5), ('z', 0.5)):
    dirs[n].mkdir()
    run_records.mark_done(dirs[n], {'eval/pass@1': score})
  assert pipeline.best_stage(['x', 'y'], dirs) == 'y'
  assert pipeline.best_stage(['y', 'z'], dirs) == 'y'  # a tie: the first
  assert pipeline.best_stage(['z', 'x'], dirs) == 'z'


def test_study_config_scores_every_row_on_one_held_out_set():
  """Every stage with an evaluation uses the same problems, sampling and
  budget; every stage config passes the start-up checks."""
  c = r1_study.get_config('')
  assert c.seeds == (0, 1, 2)
  same = ('dataset', 'split', 'tasks', 'num_problems', 'num_samples',
          'temperature', 'top_p', 'max_new_tokens', 'template', 'seed',
          'difficulty')
  evals = {n: c[n].eval for n in c.order if 'eval' in c[n]
           and c[n].stage != 'rejection_sampling'}
  assert {'zero', 'cold_start', 'reasoning_rl', 'sft', 'final_rl',
          'zero_shots4', 'r1_shots4', 'student_sft', 'student_kd',
          'student_rl'} <= set(evals)
  ref = evals['zero']
  for name, ev in evals.items():
    assert {k: ev[k] for k in same} == {k: ref[k] for k in same}, name
    assert dict(ev.languages) == ({'en': 1.0} if '_en_' in name
                                  else r1_study.LANGUAGES), name
    assert ev.get('few_shot', 0) == (int(name[-1]) if '_shots' in name
                                     else 0), name
  # R1-Zero has no language reward; R1's RL stages have it.
  assert 'language' not in c.zero.rewards.weights
  assert c.reasoning_rl.rewards.weights.language > 0
  assert c.final_rl.rewards.weights.language > 0
  assert c.cold_start.data.p_mixed == 0.0 and c.cold_start.data.restate
  # The teacher is the better of R1 final and R1-Zero; the student is
  # clearly smaller than the teacher.
  assert c.teacher_traces.model.hf_path == '@best:final_rl,zero'
  assert c.student_kd.distill.teacher == '@best:final_rl,zero'
  assert c.student_base.model.overrides.hidden_size == 96
  # (c) is read at (a)'s wall time: the traces' sampling plus the SFT.
  assert dict(c.equal_time) == {'student_rl': 'teacher_traces,student_sft'}
  assert c.student_kd.train.steps == c.student_sft.train.steps
  pipeline.validate_config(c)


def test_study_config_stages_pass_their_checks(tmp_path, monkeypatch):
  monkeypatch.setenv('R1JAX_CACHE', str(tmp_path / 'cache'))
  c = r1_study.get_config('')
  for _, cfg, wd in pipeline.seed_runs(c, tmp_path / 'run'):
    pipeline.check(cfg, wd)
  with pytest.raises(ValueError, match='runlocal and ablations only'):
    r1_study.get_config('model=smollm2-135m')


def test_study_ablations_add_the_no_language_reward_stage():
  c = r1_study.get_config('ablations')
  plain = r1_study.get_config('')
  assert c.order == plain.order + ('reasoning_rl_nolang',)
  nolang = c.reasoning_rl_nolang.to_dict()
  assert nolang['rewards']['weights']['language'] == 0.0
  nolang['rewards']['weights']['language'] = (
      plain.reasoning_rl.rewards.weights.language)
  assert nolang == plain.reasoning_rl.to_dict()  # the one change
  # The stages' configs do not see the study's own argument.
  assert c.zero.to_dict() == plain.zero.to_dict()
  pipeline.validate_config(c)


def test_equal_time_reads_the_budget_and_interpolates(tmp_path):
  """The GRPO stage's pass@1 at the named stages' summed wall time and at
  twice it: its time is the running sum of its logged step times (a resumed
  run's repeated steps counted once), interpolated between evaluations."""
  c = ml_collections.ConfigDict({
      'order': ('a', 'b', 'rl'), 'seeds': (0,),
      'a': {'stage': 'rejection_sampling'}, 'b': {'stage': 'sft'},
      'rl': {'stage': 'grpo'},
      'equal_time': {'rl': 'a,b'}})
  pipeline.validate_config(c)
  seed_dir = tmp_path / 'seed0'
  for name, done in (('a', {'wall_time_s': 30.0}),
                     ('b', {'wall_time_s': 30.0, 'eval/pass@1': 0.4})):
    (seed_dir / name).mkdir(parents=True)
    run_records.mark_done(seed_dir / name, done)
  (seed_dir / 'rl').mkdir()
  rows = [{'step': 0, 'eval/pass@1': 0.1}]
  rows += [{'step': s, 'time/step': 10.0} for s in range(1, 13)]
  rows += [{'step': 5, 'time/step': 10.0}]   # resumed: step 5 again
  rows += [{'step': 4, 'eval/pass@1': 0.2}, {'step': 8, 'eval/pass@1': 0.3},
           {'step': 12, 'eval/pass@1': 0.5}]
  (seed_dir / 'rl' / run_records.METRICS_FILE).write_text(
      ''.join(json.dumps(r) + '\n' for r in rows))
  (row,) = study.equal_time_rows(c, {0: seed_dir})
  assert row['budget_s'] == 60.0 and row['against_pass@1'] == 0.4
  assert row['stage_time_s'] == 120.0
  # 60 s: between step 4 (40 s, 0.2) and step 8 (80 s, 0.3).
  assert row['pass@1_at_1x'] == pytest.approx(0.25)
  assert row['steps_at_1x'] == (4, 8)
  assert row['pass@1_at_2x'] == pytest.approx(0.5)  # 120 s: step 12 itself
  table = study.equal_time_table([row, dict(row, seed=1,
                                            **{'pass@1_at_2x': None})])
  assert '0.250 (4-8)' in table and 'past its last evaluation' in table
  # No mean over seeds where one seed has no figure.
  assert table.splitlines()[-1].endswith('| 0.250 ± 0.000 |  |')
  # Side by side, machine time: b ran on 2 cores, rl on 1, so the budget is
  # 30 + 2 x 30 = 90 s of rl's (between step 8, 80 s, and 12, 120 s).
  (row,) = study.equal_time_rows(c, {0: seed_dir}, {'a': 1, 'b': 2, 'rl': 1})
  assert row['budget_s'] == 90.0
  assert row['pass@1_at_1x'] == pytest.approx(0.35)
  # Cores 0 (one stage at a time) count as 1.
  (row,) = study.equal_time_rows(c, {0: seed_dir}, {'a': 0, 'b': 0, 'rl': 0})
  assert row['budget_s'] == 60.0


def test_equal_time_errors():
  c = ml_collections.ConfigDict({
      'order': ('a', 'rl'), 'a': {'stage': 'sft'}, 'rl': {'stage': 'grpo'},
      'equal_time': {'a': 'rl'}})
  with pytest.raises(errors.ConfigError, match="'a', which is not a GRPO"):
    pipeline.validate_config(c)
  c.equal_time = ml_collections.ConfigDict({'rl': 'a,zz'})
  with pytest.raises(errors.ConfigError, match="names 'zz'"):
    pipeline.validate_config(c)
  c.equal_tim = 1
  del c['equal_time']
  with pytest.raises(errors.ConfigError, match='did you mean config.equal_time'):
    pipeline.validate_config(c)
