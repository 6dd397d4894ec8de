"""A plain (non-editable) install runs: `pip install .` ships r1jax and the
experiment configs its entry points read, and nothing needs the checkout."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """r1jax installed (no dependencies: the test's own environment has them)
  into a folder of its own."""
  target = tmp_path_factory.mktemp('site')
  subprocess.run(
      [sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
       '--target', str(target), str(REPO)],
      check=True, capture_output=True, text=True, timeout=600)
  return target


def _run(target, cwd, *args, timeout=600):
  env = {**os.environ, 'PYTHONPATH': str(target),
         'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
         'R1JAX_CACHE': str(cwd / 'cache')}
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_plain_install_runs_a_stage_and_checks_configs(installed, tmp_path):
  where = _run(installed, tmp_path, '-c',
               'import r1jax, experiments; print(r1jax.__file__); '
               'print(experiments.__file__)')
  assert where.returncode == 0, where.stderr
  assert all(line.startswith(str(installed))
             for line in where.stdout.split()), where.stdout
  config = installed / 'experiments' / 'pretrain_tiny.py'
  assert config.is_file()

  # The config checks read the installed experiments: a misspelt key is the
  # one line they promise, not an ImportError.
  bad = _run(installed, tmp_path, '-m', 'r1jax.train',
             f'--config={config}:runlocal', f'--workdir={tmp_path / "bad"}',
             '--config.train.stepz=2')
  assert bad.returncode != 0
  assert 'config.train.stepz' in bad.stderr and 'steps' in bad.stderr
  assert 'Traceback' not in bad.stderr

  run = _run(installed, tmp_path, '-m', 'r1jax.train',
             f'--config={config}:runlocal', f'--workdir={tmp_path / "run"}',
             '--config.train.steps=2', '--config.train.warmup_steps=0',
             '--config.ability.check=False',
             '--config.eval.num_problems=2')
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
  done = json.loads((tmp_path / 'run' / 'done.json').read_text())
  assert done['step'] == 2
