"""python -m r1jax.runs on a real two-step GRPO run, an unfinished copy of
it, a pipeline workdir of both, and directories that are not runs."""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from r1jax import runs as runs_lib
from r1jax.stages import grpo
from r1jax.run import records as run_records

import grpo_helpers as H

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A finished two-step GRPO run with evals at steps 0 and 2."""
  base = H.make_tiny_base(tmp_path_factory.mktemp('base') / 'tiny')
  workdir = tmp_path_factory.mktemp('runs') / 'zero'
  grpo.train_and_evaluate(H.grpo_config(base, eval__at_start=True),
                          str(workdir))
  return workdir


def test_completions_file_holds_rewards_of_each_logged_step(run_dir):
  rows = runs_lib.read_jsonl(run_dir / run_records.COMPLETIONS_FILE)
  assert [r['step'] for r in rows] == [1, 2]
  weights = {'arithmetic': 1.0, 'format': 0.5, 'test_length': 1.0}
  for row in rows:
    assert len(row['completions']) == 4   # one from each of 4 groups
    for c in row['completions']:
      assert set(c['rewards']) == set(weights)
      assert c['reward'] == pytest.approx(
          sum(w * c['rewards'][k] for k, w in weights.items()), abs=1e-5)
      assert c['problem'].startswith('Compute') and c['answer']
      assert isinstance(c['completion'], str) and c['length'] <= 16


def test_finished_grpo_run(run_dir):
  out = runs_lib.describe(run_dir)
  first = out.splitlines()[0]
  assert "stage 'grpo'" in first and 'finished at step 2' in first, first
  assert 'checkpoints: steps [2]' in out
  assert f'exported model: {run_dir / "hf"}' in out
  for key in ('rl.group_size', 'rl.advantage', 'rewards.weights',
              'train.steps'):
    assert f'  {key} ' in out, key
  assert 'last training step (2):' in out
  for key in ('train/reward', 'train/accuracy', 'train/kl', 'time/step'):
    assert f'  {key} ' in out, key
  # Base model (step 0) next to the last eval (step 2).
  assert 'held-out evaluation (step 0 = the base model):' in out
  header = next(l for l in out.splitlines() if l.strip().startswith('metric')
                and 'step 0' in l)
  assert 'step 2' in header
  assert '  eval/pass@1 ' in out and '  eval/cons@2 ' in out
  # The latest completions, with each reward.
  assert 'recent training completions' in out
  shown = [l for l in out.splitlines() if l.startswith('  step 2 | reward')]
  assert len(shown) == 4, out
  assert all('arithmetic' in l and 'format' in l for l in shown)
  assert 'latest sample texts (eval/samples, step 2):' in out


def test_options_samples_config_all(run_dir):
  out = runs_lib.describe(run_dir, samples=1, full_config=True,
                             show_all=True)
  assert len([l for l in out.splitlines()
              if l.startswith('  step ') and '| reward' in l]) == 1
  assert '"group_size": 4' in out           # the whole config
  assert '  train/clip_frac_low ' in out     # every metric
  quiet = runs_lib.describe(run_dir, samples=0)
  assert 'recent training completions' not in quiet


def test_unfinished_run_and_pipeline(run_dir, tmp_path):
  pipe = tmp_path / 'pipe'
  shutil.copytree(run_dir, pipe / 'first')
  shutil.copytree(run_dir, pipe / 'second')
  (pipe / 'second' / run_records.DONE).unlink()
  out = runs_lib.describe(pipe / 'second')
  assert ('not finished: last logged step 2 of 2; latest checkpoint step 2'
          in out.splitlines()[0])
  out = runs_lib.describe(pipe)
  lines = out.splitlines()
  assert '2 stage workdir(s) in it (a pipeline)' in lines[0]
  first = next(l for l in lines if l.startswith('  first '))
  second = next(l for l in lines if l.startswith('  second '))
  assert 'grpo' in first and 'finished at step 2' in first
  assert 'not finished' in second
  assert '=== second' in out      # the stage that is not finished
  assert "stage 'grpo'" in runs_lib.describe(pipe, stage='first')
  with pytest.raises(FileNotFoundError, match='--stage=.third'):
    runs_lib.describe(pipe, stage='third')


def test_truncate_jsonl_after(tmp_path):
  path = tmp_path / run_records.COMPLETIONS_FILE
  path.write_text(''.join(json.dumps({'step': s, 'completions': []}) + '\n'
                          for s in (1, 2, 3)) + '{"step": 4, "comp',
                  encoding='utf-8')
  assert run_records.truncate_jsonl_after(path, 2) == 2  # step 3, a cut line
  assert [r['step'] for r in runs_lib.read_jsonl(path)] == [1, 2]
  run_records.truncate_jsonl_after(path, -1)
  assert runs_lib.read_jsonl(path) == []


def test_not_a_run(tmp_path, capsys):
  (tmp_path / 'empty' / 'sub').mkdir(parents=True)
  assert runs_lib.main([str(tmp_path / 'empty')]) == 2
  err = capsys.readouterr().err
  assert 'is not an r1jax run' in err and 'run_config.json' in err
  assert runs_lib.main([str(tmp_path / 'absent')]) == 2
  assert 'no such directory' in capsys.readouterr().err


def test_command_line(run_dir):
  out = subprocess.run(
      [sys.executable, '-m', 'r1jax.runs', str(run_dir), '--samples=2'],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
  assert "stage 'grpo'" in out and 'recent training completions' in out
