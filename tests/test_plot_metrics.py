"""scripts/plot_metrics.py: the metrics.jsonl reader and the PNGs it writes."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

pytest.importorskip('matplotlib')  # a 'test' extra; absent: skip, not fail

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    'plot_metrics', _ROOT / 'scripts' / 'plot_metrics.py')
plot_metrics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_metrics)

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _write_jsonl(path, rows):
  with open(path, 'w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')


def _fake_run(workdir, scale=1.0):
  """Train rows 0..5, eval every 2 steps, a resume from step 3, odd rows."""
  workdir.mkdir(parents=True, exist_ok=True)
  rows = []
  for step in range(6):
    rows.append({'step': step, 'time': 1.0 + step,
                 'train/accuracy': scale * 0.1 * step,
                 'train/reward': scale * 0.2 * step,
                 'train/response_length_mean': 100.0 + 10 * step,
                 'train/kl': 0.01 * step, 'train/format': 0.5})
    if step % 2 == 0:
      rows.append({'step': step, 'time': 1.5 + step,
                   'eval/pass@1': scale * 0.1 * step, 'eval/cons@8': 0.2,
                   'eval/greedy_accuracy': 0.15, 'eval/format_rate': 0.6,
                   'eval/mean_length': 120.0})
  rows.append({'step': 4, 'eval/samples': ['<think> a </think>', 'b']})
  # Resumed from a step-3 checkpoint: step 3 again, then 4 with a nan loss.
  rows.append({'step': 3, 'time': 20.0, 'train/accuracy': 0.9,
               'train/kl': 'nan', 'note': 'resumed'})
  rows.append({'step': 4, 'time': 21.0, 'train/accuracy': 0.95,
               'train/reward': 'inf', 'flag': True})
  _write_jsonl(workdir / 'metrics.jsonl', rows)
  with open(workdir / 'metrics.jsonl', 'a', encoding='utf-8') as f:
    f.write('{"step": 5, "train/accura')  # torn last line of a killed run


def test_load_metrics_last_occurrence_wins(tmp_path):
  _fake_run(tmp_path / 'run')
  m = plot_metrics.load_metrics(tmp_path / 'run' / 'metrics.jsonl')
  steps, acc = m['train/accuracy']
  # Step 3 and 4 from the resumed run; 5 from the abandoned run is dropped.
  np.testing.assert_array_equal(steps, [0, 1, 2, 3, 4])
  np.testing.assert_allclose(acc, [0.0, 0.1, 0.2, 0.9, 0.95])
  # KL: the resumed step 3 is nan (a gap, not the stale 0.03), 4 and 5 gone.
  np.testing.assert_array_equal(m['train/kl'][0], [0, 1, 2])
  # Reward: step 4 is inf in the resumed run; 3 was never rewritten.
  np.testing.assert_array_equal(m['train/reward'][0], [0, 1, 2, 3])
  # A metric untouched by the resume keeps all its steps.
  np.testing.assert_array_equal(m['train/format'][0], [0, 1, 2, 3, 4, 5])
  np.testing.assert_array_equal(m['eval/pass@1'][0], [0, 2, 4])
  # Rows sharing a step merge; text, bool, string and time values are skipped.
  for key in ('eval/samples', 'note', 'flag', 'time', 'step'):
    assert key not in m
  for steps, values in m.values():
    assert np.all(np.isfinite(values)) and np.all(np.diff(steps) > 0)


def test_panel_series_picks_train_then_eval_keys(tmp_path):
  _fake_run(tmp_path / 'run')
  m = plot_metrics.load_run(tmp_path / 'run')
  by_name = {p.name: p for p in plot_metrics.PANELS}
  assert plot_metrics.panel_series(by_name['accuracy'], m) == [
      'train/accuracy', 'eval/pass@1', 'eval/cons@8', 'eval/greedy_accuracy']
  assert plot_metrics.panel_series(by_name['response_length'], m) == [
      'train/response_length_mean', 'eval/mean_length']
  assert plot_metrics.panel_series(by_name['kl'], {}) == []


def _assert_png(path):
  assert path.is_file(), path
  with open(path, 'rb') as f:
    assert f.read(8) == _PNG_MAGIC


def test_main_writes_pngs(tmp_path, capsys):
  _fake_run(tmp_path / 'run')
  assert plot_metrics.main([str(tmp_path / 'run')]) == 0
  out = tmp_path / 'run' / 'plots'
  names = ['accuracy', 'reward', 'response_length', 'kl', 'format', 'curves']
  for name in names:
    _assert_png(out / f'{name}.png')
  printed = capsys.readouterr().out.split()
  assert printed == [str(out / f'{n}.png') for n in names]


def test_main_compare_and_missing_panels(tmp_path, capsys):
  _fake_run(tmp_path / 'a')
  # Run b has only accuracy and length: the other panels come from run a.
  (tmp_path / 'b').mkdir()
  _write_jsonl(tmp_path / 'b' / 'metrics.jsonl',
               [{'step': s, 'train/accuracy': 0.05 * s,
                 'train/response_length_mean': 90.0 + s} for s in range(4)])
  assert plot_metrics.main([str(tmp_path / 'b'), '--compare',
                            str(tmp_path / 'a'), '--out', str(tmp_path / 'p'),
                            '--smooth', '0.5', '--dpi', '40']) == 0
  for name in ('accuracy', 'kl', 'curves'):
    _assert_png(tmp_path / 'p' / f'{name}.png')
  capsys.readouterr()
  # Alone, b gets only its two panels plus the combined figure.
  assert plot_metrics.main([str(tmp_path / 'b'), '--out',
                            str(tmp_path / 'q'), '--dpi', '40']) == 0
  assert sorted(p.name for p in (tmp_path / 'q').iterdir()) == [
      'accuracy.png', 'curves.png', 'response_length.png']
  # Nothing plottable: an error, no figure.
  _write_jsonl(tmp_path / 'c.jsonl', [{'step': 0, 'loss': 1.0}])
  assert plot_metrics.main([str(tmp_path / 'c.jsonl'), '--out',
                            str(tmp_path / 'r')]) == 1
  assert 'loss' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    plot_metrics.main([str(tmp_path / 'absent')])


def test_tensorboard_events_without_jsonl(tmp_path):
  from tensorboardX import SummaryWriter
  w = SummaryWriter(str(tmp_path / 'run' / 'tensorboard'))
  for step in range(4):
    w.add_scalar('train/accuracy', 0.1 * step, step)
    w.add_scalar('train/kl', 0.01 * step, step)
  w.add_scalar('train/accuracy', 0.7, 2)   # a resumed run rewrites step 2
  w.add_text('eval/samples', 'hello', 2)
  w.close()
  m = plot_metrics.load_run(tmp_path / 'run')
  np.testing.assert_array_equal(m['train/accuracy'][0], [0, 1, 2])
  np.testing.assert_allclose(m['train/accuracy'][1], [0.0, 0.1, 0.7],
                             rtol=1e-6)
  assert set(m) == {'train/accuracy', 'train/kl'}
  assert plot_metrics.main([str(tmp_path / 'run'), '--dpi', '40']) == 0
  _assert_png(tmp_path / 'run' / 'plots' / 'curves.png')
