"""scripts/seed_study.py: the per-seed table, the summary over seeds, the
overlaid curves, and a failed seed reported instead of ending the study."""

import importlib.util
import json
import pathlib

import pytest

pytest.importorskip('matplotlib')

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    'seed_study', _ROOT / 'scripts' / 'seed_study.py')
seed_study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seed_study)


def _fake_seed(root, seed, start, end, passed=True, finished=True):
  d = root / f'seed{seed}'
  base = d / 'cache' / 'tiny_base' / f'seed{seed}-abc'
  base.mkdir(parents=True)
  (base / 'base_ability.json').write_text(json.dumps({
      'passed': passed, 'figures': {'gap': 0.3 if passed else 0.01,
                                    'steps_share': 0.3},
      'made_by': {'steps': 600}}))
  if not passed:
    return
  run = d / 'run'
  run.mkdir()
  rows = []
  for step, p in ((0, start), (60, (start + end) / 2), (120, end)):
    rows.append({'step': step, 'eval/pass@1': p, 'eval/format_rate': 0.9,
                 'eval/mean_length': 20.0 + step / 10,
                 'eval/reflection_rate': 0.02, 'eval/recheck_rate': 0.01})
    rows.append({'step': step + 1, 'train/response_length_mean': 21.0,
                 'train/reflection_rate': 0.03})
  (run / 'metrics.jsonl').write_text(
      '\n'.join(json.dumps(r) for r in rows) + '\n')
  if finished:
    (run / 'done.json').write_text('{}')
  (d / 'wall.json').write_text(json.dumps({'wall_s': 1500.0 + seed}))


def test_report_tables_every_seed_and_summarizes(tmp_path, capsys):
  _fake_seed(tmp_path, 0, 0.2, 0.6)
  _fake_seed(tmp_path, 1, 0.25, 0.55)
  _fake_seed(tmp_path, 2, 0.1, 0.1, passed=False)
  rows = seed_study.report(tmp_path, [0, 1, 2, 3])
  out = capsys.readouterr().out
  assert [r['seed'] for r in rows] == [0, 1, 2]
  assert rows[0]['gain'] == pytest.approx(0.4)
  assert rows[2]['status'] == 'base failed the check'
  assert '| 0 | +0.300 |' in out and '25 min 00 s' in out
  assert 'pass@1 gain +0.350 +- 0.071' in out
  assert 'seeds with gain >= +0.25: 2/3' in out
  assert 'not finished: seeds [2, 3]' in out
  assert (tmp_path / 'seeds.png').stat().st_size > 10_000
  assert json.loads((tmp_path / 'seeds.json').read_text())[1]['seed'] == 1


def test_a_finished_seed_is_skipped(tmp_path, capsys, monkeypatch):
  _fake_seed(tmp_path, 0, 0.2, 0.6)
  monkeypatch.setattr(seed_study.subprocess, 'call',
                      lambda *a, **k: pytest.fail('ran a finished seed'))
  seed_study.run_seed(tmp_path, 0, [])
  assert 'finished earlier' in capsys.readouterr().out


def test_a_failed_run_is_reported_and_its_time_kept(tmp_path, capsys,
                                                    monkeypatch):
  def failing(cmd, cwd, env, stdout, stderr):
    assert env['R1JAX_CACHE'] == str(tmp_path / 'seed4' / 'cache')
    assert '--config.seed=4' in cmd and '--config=experiments/zero.py' in cmd
    stdout.write('error: the base model ... failed the ability check\n')
    return 1
  monkeypatch.setattr(seed_study.subprocess, 'call', failing)
  seed_study.run_seed(tmp_path, 4, [])
  out = capsys.readouterr().out
  assert 'seed 4: the run failed (exit 1)' in out
  assert 'failed the ability check' in out
  assert json.loads((tmp_path / 'seed4' / 'wall.json').read_text())['wall_s'] >= 0
