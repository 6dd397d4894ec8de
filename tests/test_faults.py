"""Faults a run survives, each injected for real, and what survives them.

  fault                                        test
  newest checkpoint damaged (one file)         test_damaged_newest_checkpoint_*
  each kind of damage (file, manifest, data)   test_each_kind_of_damage_*
  no checkpoint readable                       test_no_readable_checkpoint_*
  checkpoints of another config                test_checkpoints_of_another_*
  a save fails (disk full)                     test_failed_save_*
  killed during the HF export                  test_kill_during_export_*
  killed at a step after a checkpoint          test_sigkill_mid_run_*
  bad data / split / memory budget             test_data_and_memory_errors_*

Killed writes and reward faults: tests/test_faults_processes.py.

The run is a tiny SFT run (8 steps, checkpoints at 4 and 8), made once
uninterrupted (`straight`); a faulty run is compared with it.
"""

import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest

from r1jax import checkpoint as ckpt_lib
from r1jax import errors
from r1jax import memory
from r1jax import metrics as metrics_lib
from r1jax import train
from r1jax.run import records
from r1jax.run import train_state
from r1jax.stages import sft

from experiments import pretrain_tiny
import grpo_helpers as H

REPO = pathlib.Path(__file__).resolve().parents[1]
# Metrics that measure the machine, not the run.
_TIMING = ('time', 'train/tokens_per_s')


def sft_config():
  """experiments/pretrain_tiny.py on a small model: 8 steps, checkpoints at 4
  and 8, no ability check or samples (the run under test)."""
  c = pretrain_tiny.get_config('runlocal')
  c.model.overrides = dict(H.SMALL_MODEL)
  c.tokenizer.vocab_size = 384
  c.tokenizer.train_docs = 300
  c.data.num_docs = 400
  c.data.num_eval_docs = 32
  c.data.seq_len = 128
  c.train.steps = 8
  c.train.batch_size = 8
  c.train.warmup_steps = 2
  c.train.log_every = 1
  c.train.eval_every = 1000
  c.train.checkpoint_every = 4
  c.train.keep_checkpoints = 2
  c.train.eval_batches = 2
  c.train.sample_every = 0
  c.ability.check = False
  c.eval.num_problems = 0
  c.export.hf_dir = ''
  return c


@pytest.fixture(scope='module', autouse=True)
def compile_once(tmp_path_factory):
  """Every run here compiles the same tiny programs: a persistent XLA cache
  (in a temporary directory, for this module's runs and subprocesses) makes
  each compile once. The runs are unchanged: a cached program is the one
  compiled."""
  path = str(tmp_path_factory.mktemp('xla_cache'))
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  compilation_cache.reset_cache()
  yield path
  jax.config.update('jax_compilation_cache_dir', old[0])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', old[1])
  compilation_cache.reset_cache()


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """The uninterrupted run: checkpoints 4 and 8, metrics, export, done.json."""
  workdir = tmp_path_factory.mktemp('straight') / 'run'
  sft.train_and_evaluate(sft_config(), str(workdir))
  return workdir


def _copy(src: pathlib.Path, dst: pathlib.Path, drop=()) -> pathlib.Path:
  shutil.copytree(src, dst)
  for rel in drop:
    p = dst / rel
    shutil.rmtree(p) if p.is_dir() else p.unlink()
  return dst


def _files(root: pathlib.Path) -> dict[str, bytes]:
  """relative path -> bytes of every file under `root`."""
  return {str(p.relative_to(root)): p.read_bytes()
          for p in sorted(root.rglob('*')) if p.is_file()}


def _rows(workdir) -> dict[int, dict]:
  """metrics.jsonl merged per step, without the timing metrics."""
  out: dict[int, dict] = {}
  for row in metrics_lib.read_jsonl(pathlib.Path(workdir) / 'metrics.jsonl'):
    out.setdefault(row['step'], {}).update(
        {k: v for k, v in row.items() if not k.startswith(_TIMING)})
  return out


def _assert_same_run(a, b):
  """Equal metrics at every step and equal final params, bit for bit."""
  rows_a, rows_b = _rows(a), _rows(b)
  assert sorted(rows_a) == sorted(rows_b) == list(range(1, 9))
  for step in rows_a:
    assert rows_a[step] == rows_b[step], step
  pa, pb = H.final_params(a), H.final_params(b)
  assert pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def _steps(workdir) -> list[int]:
  with ckpt_lib.Checkpointer(pathlib.Path(workdir) / 'checkpoints') as c:
    return c.committed_steps()


# ================================================= damaged checkpoints


def test_damaged_newest_checkpoint_resumes_from_the_previous_one(
    straight, tmp_path, capsys):
  work = _copy(straight, tmp_path / 'run')
  # One file of the newest checkpoint overwritten, as a bad copy or a full
  # disk leaves it (checkpoint 4 intact).
  (work / 'checkpoints/8/state/_sharding').write_text('{"truncated')
  damaged = _files(work / 'checkpoints/8')
  capsys.readouterr()
  sft.train_and_evaluate(sft_config(), str(work))
  out = capsys.readouterr().out
  said = [l for l in out.splitlines() if 'unreadable' in l]
  assert len(said) == 1, out
  assert said[0].startswith('checkpoint step 8 is unreadable (')
  assert 'checkpoints/8/state/_sharding: not valid JSON' in said[0]
  assert 'resuming from step 4' in said[0]
  assert 'resumed from step 4' in out
  # Set aside whole, never deleted; the run saved its own step 8 again.
  assert _files(work / 'checkpoints/unreadable-8') == damaged
  assert _steps(work) == [4, 8]
  # Resumed from 4, the run equals the uninterrupted one.
  _assert_same_run(straight, work)


def _truncate_each(d: pathlib.Path) -> None:
  for f in d.iterdir():
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


# name -> (damage done to checkpoint 8, what the message names)
_DAMAGE = {
    'metadata cut short': (
        lambda s: (s / 'state/_METADATA').write_text(
            (s / 'state/_METADATA').read_text()[:100]),
        '8/state/_METADATA: not valid JSON'),
    'step metadata not JSON': (
        lambda s: (s / '_CHECKPOINT_METADATA').write_text('\x00\x00'),
        '8/_CHECKPOINT_METADATA: not valid JSON'),
    'manifest missing': (
        lambda s: (s / 'state/manifest.ocdbt').unlink(),
        '8/state/manifest.ocdbt: missing'),
    'manifest overwritten': (
        lambda s: (s / 'state/manifest.ocdbt').write_bytes(b'\x00' * 64),
        '8/state/manifest.ocdbt: Error decoding manifest'),
    'array data cut short': (
        lambda s: _truncate_each(s / 'state/ocdbt.process_0/d'),
        '8/state: array '),
    'array data missing': (
        lambda s: shutil.rmtree(s / 'state/ocdbt.process_0/d'),
        '8/state: array '),
}


def _small_state(step: int, embed_shape=(96, 64)):
  """A train state's tree, small: arrays of a few kB, an int, data state."""
  rng = np.random.default_rng(step)
  return {'params': {'embed': jax.numpy.asarray(
              rng.normal(size=embed_shape).astype(np.float32)),
                     'norm': jax.numpy.ones((64,))},
          'opt_state': {'count': jax.numpy.asarray(step, jax.numpy.int32)},
          'step': jax.numpy.asarray(step, jax.numpy.int32),
          'data_state': {'epoch': 0, 'position': 8 * step}}


def _small_run(workdir: pathlib.Path) -> pathlib.Path:
  """A workdir whose checkpoints are steps 4 and 8 of a small state."""
  with ckpt_lib.Checkpointer(workdir / 'checkpoints', max_to_keep=2) as c:
    c.save(4, _small_state(4))
    c.save(8, _small_state(8))
  return workdir


@pytest.mark.parametrize('kind', sorted(_DAMAGE) + ['arrays of other shapes'])
def test_each_kind_of_damage_is_set_aside(tmp_path, capsys, kind):
  work = _small_run(tmp_path / 'run')
  state = _small_state(0)
  if kind == 'arrays of other shapes':
    # A newest step whose arrays do not fit while step 4 of the same
    # directory does: damage, not another config.
    with ckpt_lib.Checkpointer(work / 'checkpoints') as c:
      c.save(12, _small_state(12, embed_shape=(7, 3)))
    bad, names = 12, '(1 differences; first: params/embed: checkpoint has'
  else:
    damage, names = _DAMAGE[kind]
    damage(work / 'checkpoints/8')
    bad = 8
  before = _files(work / f'checkpoints/{bad}')
  capsys.readouterr()
  with ckpt_lib.Checkpointer(work / 'checkpoints') as c:
    restored, _, step = train_state.restore_latest(c, state, None)
  said = capsys.readouterr().out.strip()
  resumed = 8 if bad == 12 else 4  # the newest step that reads
  assert step == resumed and int(restored['step']) == resumed
  np.testing.assert_array_equal(restored['params']['embed'],
                                _small_state(resumed)['params']['embed'])
  assert said.startswith(f'checkpoint step {bad} is unreadable'), said
  assert names in said and '\n' not in said, said
  assert _files(work / f'checkpoints/unreadable-{bad}') == before
  assert bad not in _steps(work)


def test_no_readable_checkpoint_stops_in_one_line_and_moves_nothing(tmp_path):
  work = _small_run(tmp_path / 'run')
  (work / 'checkpoints/8/state/_sharding').write_text('x')
  (work / 'checkpoints/4/state/manifest.ocdbt').unlink()
  before = _files(work / 'checkpoints')
  with pytest.raises(SystemExit) as e, errors.one_line():
    with ckpt_lib.Checkpointer(work / 'checkpoints') as c:
      train_state.restore_latest(c, _small_state(0), None)
  message = str(e.value.code)
  assert message.startswith(
      f'error: no checkpoint in {work}/checkpoints can be read (step 8: ')
  assert 'step 4: ' in message and 'manifest.ocdbt: missing' in message
  assert 'nothing was moved or deleted' in message and '\n' not in message
  assert _files(work / 'checkpoints') == before


def test_checkpoints_of_another_config_stay_an_error(tmp_path):
  mesh_free = lambda shape: {'w': np.ones(shape, np.float32), 'step': 1}
  with ckpt_lib.Checkpointer(tmp_path / 'checkpoints') as c:
    c.save(1, mesh_free((4, 4)))
    c.save(2, mesh_free((4, 4)))
  before = _files(tmp_path)
  with ckpt_lib.Checkpointer(tmp_path / 'checkpoints') as c:
    with pytest.raises(errors.CheckpointError,
                       match='holds checkpoints of another config: step 2 '
                       r'has 1 arrays .* \(first: w: checkpoint has \(4, 4\)'):
      train_state.restore_latest(c, mesh_free((8, 4)), None)
  assert _files(tmp_path) == before


# ================================================= faults mid-run


def test_failed_save_stops_in_one_line_and_keeps_the_previous_checkpoint(
    straight, tmp_path, monkeypatch):
  # The run got to checkpoint 4; from step 8's save on, every write past
  # 256 kB fails (RLIMIT_FSIZE: a full disk for files that size, EFBIG).
  work = _copy(straight, tmp_path / 'run',
               drop=('checkpoints/8', 'hf', 'done.json'))
  kept = _files(work / 'checkpoints/4')
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  real_save = ckpt_lib.Checkpointer.save

  def save(self, step, state, **kw):
    if int(step) == 8:
      resource.setrlimit(resource.RLIMIT_FSIZE, (256_000, hard))
    return real_save(self, step, state, **kw)

  monkeypatch.setattr(ckpt_lib.Checkpointer, 'save', save)
  handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  try:
    with pytest.raises(SystemExit) as e, errors.one_line():
      sft.train_and_evaluate(sft_config(), str(work))
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)
  message = str(e.value.code)
  assert message.startswith(
      f'error: saving checkpoint step 8 in {work}/checkpoints failed: '), message
  assert 'File too large' in message and '\n' not in message
  assert message.endswith('then run the same command to resume from step 4')
  assert _files(work / 'checkpoints/4') == kept
  assert _steps(work) == [4]
  assert not (work / 'done.json').exists() and not (work / 'hf').exists()


_KILL_IN_EXPORT = textwrap.dedent('''
    import os, signal, sys
    sys.path[:0] = [{repo!r}, {tests!r}]
    import jax
    jax.config.update('jax_default_matmul_precision', 'highest')
    import test_faults
    from r1jax.model import hf
    from r1jax.stages import sft
    real = hf.save_file
    def write_then_die(*args, **kwargs):
      real(*args, **kwargs)  # the weights are written ...
      os.kill(os.getpid(), signal.SIGKILL)  # ... and the run is killed
    hf.save_file = write_then_die
    sft.train_and_evaluate(test_faults.sft_config(), sys.argv[1])
''')


def _run_until_killed(template: str, script: pathlib.Path, work) -> None:
  """Runs `template` (a script that kills itself) on `work` in a fresh
  interpreter; asserts that it died of SIGKILL."""
  script.write_text(template.format(repo=str(REPO), tests=str(REPO / 'tests')))
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  proc = subprocess.run([sys.executable, str(script), str(work)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def test_kill_during_export_keeps_the_old_export_and_a_restart_redoes_it(
    straight, tmp_path, capsys):
  # A finished run started again (done.json gone): it exports again, and is
  # killed in the middle of writing the export.
  work = _copy(straight, tmp_path / 'run', drop=('done.json',))
  old = _files(work / 'hf')
  _run_until_killed(_KILL_IN_EXPORT, tmp_path / 'kill_in_export.py', work)
  assert _files(work / 'hf') == old  # the old export, whole
  assert [p.name.split('.tmp-')[0] for p in work.glob('hf.tmp-*')] == ['hf']
  assert not (work / 'done.json').exists()
  # The same command exports again and finishes; the leftover goes.
  capsys.readouterr()
  sft.train_and_evaluate(sft_config(), str(work))
  assert 'exported Hugging Face checkpoint' in capsys.readouterr().out
  assert _files(work / 'hf') == old  # the same params, the same bytes
  assert not list(work.glob('hf.*')) and (work / 'done.json').is_file()
  assert records.resolve_hf_path(str(work)) == str(work / 'hf')


_KILL_AT_STEP = textwrap.dedent('''
    import os, pathlib, signal, sys, time
    sys.path[:0] = [{repo!r}, {tests!r}]
    import jax
    jax.config.update('jax_default_matmul_precision', 'highest')
    import test_faults
    from r1jax.stages import sft, sft_update
    real = sft_update.make_train_step
    committed = pathlib.Path(sys.argv[1]) / 'checkpoints/4/commit_success.txt'
    def make_train_step(*args, **kwargs):
      step_fn, done = real(*args, **kwargs), [0]
      def killed_before_step_7(state, batch):
        if done[0] == 6:
          while not committed.exists():  # checkpoint 4 is written
            time.sleep(0.01)
          os.kill(os.getpid(), signal.SIGKILL)
        done[0] += 1
        return step_fn(state, batch)
      return killed_before_step_7
    sft_update.make_train_step = make_train_step
    sft.train_and_evaluate(test_faults.sft_config(), sys.argv[1])
''')


def test_sigkill_mid_run_resumes_to_the_same_metrics(straight, tmp_path,
                                                     capsys):
  work = tmp_path / 'run'
  _run_until_killed(_KILL_AT_STEP, tmp_path / 'kill_at_step.py', work)
  assert max(_rows(work)) == 6 and _steps(work) == [4]
  capsys.readouterr()
  sft.train_and_evaluate(sft_config(), str(work))
  assert 'resumed from step 4' in capsys.readouterr().out
  _assert_same_run(straight, work)


# ================================================= errors in one line


def _one_line_error(config, workdir) -> str:
  with pytest.raises(SystemExit) as e, errors.one_line():
    train.run(config, str(workdir))
  message = str(e.value.code)
  assert message.startswith('error: ') and '\n' not in message, message
  return message


def test_data_and_memory_errors_are_one_line(straight, tmp_path, monkeypatch):
  base = straight / 'hf'  # the run's export: a tiny HF model
  data = tmp_path / 'sft.jsonl'
  c = sft_config()
  c.model.hf_path = str(base)
  c.tokenizer.path = ''
  c.data.source = 'jsonl'
  c.data.path = str(data)
  data.write_text('{"prompt": "1+1=", "completion": "2"}\n{"prompt": "1+2=",\n')
  assert _one_line_error(c, tmp_path / 'a') == (
      f'error: {data}:2: invalid JSON (Expecting property name enclosed in '
      'double quotes)')
  data.write_text('{"prompt": "1+1=", "completion": "2"}\n{"prompt": "x"}\n')
  assert _one_line_error(c, tmp_path / 'b') == (
      f"error: {data}:2: expected an object with a 'completion' field (and "
      "optionally 'prompt')")
  # --verbose / R1JAX_TRACEBACK=1: the traceback instead.
  monkeypatch.setenv(errors.TRACEBACK_ENV, '1')
  with pytest.raises(errors.DataFormatError):
    with errors.one_line():
      train.run(c, str(tmp_path / 'c'))
  monkeypatch.delenv(errors.TRACEBACK_ENV)
  with pytest.raises(errors.DataFormatError), errors.one_line(verbose=True):
    train.run(c, str(tmp_path / 'c'))

  g = H.grpo_config(base)
  g.data.source = 'gsm8k'
  g.data.split = 'validation'
  assert _one_line_error(g, tmp_path / 'd') == (
      "error: config.data.source='gsm8k', config.data.split='validation': "
      "Dataset 'gsm8k' has splits ['test', 'train']; got 'validation'.")
  monkeypatch.setattr(memory, 'device_memory_limit', lambda device=None: 10**5)
  monkeypatch.delenv('R1JAX_MEMORY_CHECK', raising=False)
  message = _one_line_error(H.grpo_config(base), tmp_path / 'e')
  assert message.startswith('error: estimated peak memory ')
  assert 'R1JAX_MEMORY_CHECK=0' in message


def test_verbose_flag_shows_the_traceback(tmp_path):
  cmd = [sys.executable, '-m', 'r1jax.train',
         '--config=experiments/rejection.py:runlocal', f'--workdir={tmp_path}',
         f'--config.model.hf_path={tmp_path}/nowhere']
  quiet = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                         timeout=300)
  loud = subprocess.run(cmd + ['--verbose'], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert quiet.returncode == 1 and len(quiet.stderr.strip().splitlines()) == 1
  assert 'Traceback' in loud.stderr and 'MissingFileError' in loud.stderr
  assert loud.returncode != 0
