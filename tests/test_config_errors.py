"""Errors that help: every bad config of every stage (sft, grpo,
rejection_sampling, the pipeline) fails at start-up, before any XLA compile,
with one line that names the key or file and says what to do."""

import json
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from experiments import cold_start, pretrain_tiny, r1, rejection
from r1jax import pipeline, train
from r1jax import config_checks
from r1jax.run import console
from r1jax.run import records as run_records

import grpo_helpers as H

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  return H.make_tiny_base(tmp_path_factory.mktemp('base') / 'hf')


@pytest.fixture
def no_compile():
  """Asserts the test compiled nothing (after its set-up)."""
  console.CompileCounter.install()
  before = console.CompileCounter.count()
  yield
  assert console.CompileCounter.count() == before


def _fails(config, workdir, error, needle: str, run=train.run):
  """Runs `config`; it must raise `error` with `needle` in a one-line message."""
  with pytest.raises(error) as info:
    run(config, str(workdir))
  message = str(info.value)
  assert needle in message, message
  assert '\n' not in message, message
  return message


def _sft(base, **kw):
  c = cold_start.get_config('runlocal')
  c.model.hf_path = str(base)
  c.model.pretrain_if_missing = False
  return _set(c, kw)


def _grpo(base, **kw):
  return _set(H.grpo_config(base), kw)


def _rejection(base, **kw):
  c = rejection.get_config('runlocal')
  c.model.hf_path = str(base)
  return _set(c, kw)


def _set(c, kw):
  for dotted, value in kw.items():
    node = c
    *parents, leaf = dotted.split('__')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


def _with(config, dotted: str, value):
  """A copy of `config` with a value its ConfigDict type-safety would refuse
  (as a config file written by hand has it)."""
  d = config.to_dict()
  node = d
  *parents, leaf = dotted.split('.')
  for part in parents:
    node = node[part]
  node[leaf] = value
  return ml_collections.ConfigDict(d)


_STAGES = {'sft': _sft, 'grpo': _grpo, 'rejection_sampling': _rejection}

# ------------------------------------------------------- misspelled keys


def test_misspelled_key_on_the_command_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'r1jax.train',
       '--config=experiments/zero.py:runlocal', f'--workdir={tmp_path}',
       '--config.rl.grup_size=8'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert proc.stderr.strip() == (
      'FATAL Flags parsing error: unknown key config.rl.grup_size; did you '
      'mean config.rl.group_size?')


def test_wrong_type_on_the_command_line_and_pipeline_key(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'r1jax.pipeline',
       '--config=experiments/r1.py:runlocal', f'--workdir={tmp_path}',
       '--config.reasoning_rl.rl.group_size=8.5'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert proc.stderr.strip().startswith(
      'FATAL Flags parsing error: --config.reasoning_rl.rl.group_size=8.5: '
      'config.reasoning_rl.rl.group_size takes int values')
  assert 'Traceback' not in proc.stderr


def test_config_error_on_the_command_line_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'r1jax.train',
       '--config=experiments/rejection.py:runlocal', f'--workdir={tmp_path}',
       f'--config.model.hf_path={tmp_path}/nowhere'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip() == (
      f"error: config.model.hf_path='{tmp_path}/nowhere' does not exist; "
      'point it at a Hugging Face model directory or at the workdir of a '
      'finished stage')


@pytest.mark.parametrize('stage, dotted, guess', [
    ('grpo', 'rl.grup_size', 'rl.group_size'),
    ('sft', 'train.stpes', 'train.steps'),
    ('rejection_sampling', 'filters.max_per_promt', 'filters.max_per_prompt'),
    ('grpo', 'train.group_size', 'rl.group_size'),   # the wrong section
    ('sft', 'modle', 'model'),
])
def test_misspelled_key_in_a_config(base, tmp_path, no_compile, stage, dotted,
                                    guess):
  c = _STAGES[stage](base)
  c = _with(c, dotted, 8)
  _fails(c, tmp_path, ValueError,
         f'unknown key config.{dotted}; did you mean config.{guess}?')


def test_unknown_model_override_field(base, tmp_path, no_compile):
  c = pretrain_tiny.get_config('runlocal')
  c.model.overrides = {'num_layer': 2}
  _fails(c, tmp_path, ValueError,
         'unknown key config.model.overrides.num_layer (not a model config '
         'field); did you mean config.model.overrides.num_layers?')


def test_missing_key(base, tmp_path, no_compile):
  c = _grpo(base).to_dict()
  del c['train']['lr']
  _fails(ml_collections.ConfigDict(c), tmp_path, ValueError,
         'config.train.lr is missing; every grpo experiment sets it')


def test_unknown_stage_and_pipeline_config_given_to_train(tmp_path, no_compile):
  c = pretrain_tiny.get_config('runlocal')
  c.stage = 'sfft'
  _fails(c, tmp_path, ValueError,
         "config.stage='sfft' is not a known stage; did you mean 'sft'?")
  _fails(r1.get_config('runlocal'), tmp_path, ValueError,
         'it is a pipeline config (config.order): run it with python -m '
         'r1jax.pipeline')


# ------------------------------------------------------------ wrong types


@pytest.mark.parametrize('stage, dotted, value, needle', [
    ('grpo', 'rl.group_size', '8',
     "config.rl.group_size='8' is a string, but this field takes an int"),
    ('grpo', 'rl.prompts_per_step', 8.0,
     'config.rl.prompts_per_step=8.0 is a float, but this field takes an int'),
    ('sft', 'train.lr', '1e-3',
     "config.train.lr='1e-3' is a string, but this field takes a float"),
    ('sft', 'data.pack', 1, 'config.data.pack=1 is an int, but this field '
     'takes a bool'),
    ('rejection_sampling', 'rejection.num_samples', None,
     'config.rejection.num_samples=None is None, but this field takes an int'),
    ('rejection_sampling', 'filters', 'none',
     "config.filters='none' is a string, but this field takes a section (e.g. "
     '{drop_truncated: ..., format: ...,'),
])
def test_wrong_type(base, tmp_path, no_compile, stage, dotted, value, needle):
  c = _with(_STAGES[stage](base), dotted, value)
  _fails(c, tmp_path, ValueError, needle)


def test_int_for_a_float_is_fine(base, tmp_path):
  c = _with(_grpo(base), 'rl.beta', 0)
  config_checks.check_keys(c, 'grpo')


# ------------------------------------------------- impossible combinations


@pytest.mark.parametrize('stage, edit, needle', [
    ('sft', dict(train__batch_size=12),
     'config.train.batch_size=12 must be divisible by the mesh batch axes '
     '(data x fsdp = 8 devices)'),
    ('sft', dict(train__grad_accum=3), 'config.train.grad_accum=3 must divide '
     'train.batch_size=16'),
    ('sft', dict(eval__ks=(1, 8)), 'config.eval.ks=(1, 8) must be in '
     '[1, eval.num_samples=4]'),
    ('sft', dict(train__log_every=0), 'config.train.log_every=0 must be >= 1'),
    ('sft', dict(data__datasets=()), 'config.data.datasets=() is empty'),
    ('sft', dict(data__template='r1_zero_shrot'),
     "config.data.template='r1_zero_shrot' is not known; did you mean "
     "'r1_zero_short'?"),
    ('grpo', dict(rl__group_size=1), 'config.rl.group_size=1 is 1'),
    ('grpo', dict(rl__prompts_per_step=6),
     'config.rl.prompts_per_step=6 must be divisible by the mesh batch axes'),
    ('grpo', dict(rl__dual_clip=0.5), 'config.rl.dual_clip=0.5 must be 0 '
     '(off) or > 1'),
    ('grpo', dict(sampling__max_prompt_tokens=8),
     'config.sampling.max_prompt_tokens=8'),
    ('grpo', dict(sampling__decode_segments=0),
     'config.sampling.decode_segments=0 must be >= 1'),
    ('grpo', dict(eval__tasks=('arithmetc',)),
     "config.eval.tasks has 'arithmetc', which is not a synthetic task"),
    ('rejection_sampling', dict(rejection__num_samples=0),
     'config.rejection.num_samples=0 must be >= 1'),
    ('rejection_sampling', dict(rejection__batch_size=2),
     'config.rejection.batch_size=2 must be >= rejection.num_samples=4'),
    ('rejection_sampling', dict(sampling__top_p=0.0),
     'config.sampling.top_p=0.0 must be in (0, 1]'),
    ('rejection_sampling', dict(sampling__max_prompt_tokens=4),
     'config.sampling.max_prompt_tokens=4 is shorter than the longest prompt'),
])
def test_impossible_combination(base, tmp_path, no_compile, stage, edit,
                                needle):
  c = _set(_STAGES[stage](base), edit)
  _fails(c, tmp_path, ValueError, needle)


def test_max_per_prompt_above_num_samples_is_fine(base):
  c = _rejection(base, filters__max_per_prompt=10)
  train.check(c, '/nonexistent-workdir')


def test_tokenizer_larger_than_the_model(tmp_path, no_compile):
  c = pretrain_tiny.get_config('runlocal')
  c.tokenizer.vocab_size = 100_000
  _fails(c, tmp_path, ValueError, 'config.tokenizer.vocab_size=100000 is more '
         "than the model preset 'tiny-cpu' has")


# ------------------------------------------- checkpoints and missing files


@pytest.mark.parametrize('stage', sorted(_STAGES))
def test_checkpoint_of_another_architecture(base, tmp_path, no_compile, stage):
  c = _STAGES[stage](base)
  c.model.preset = 'qwen2.5-0.5b'
  _fails(c, tmp_path, ValueError, f"{base} is not a 'qwen2.5-0.5b' checkpoint: "
         'vocab_size 384 (preset: 151936)')


@pytest.mark.parametrize('stage, dotted, needle', [
    ('rejection_sampling', 'model.hf_path', 'does not exist; point it at a '
     'Hugging Face model directory'),
    ('grpo', 'model.hf_path', 'does not exist; point it at a Hugging Face '
     'model directory or at the workdir of a finished stage, or set '
     'config.model.pretrain_if_missing=True'),
    ('grpo', 'model.gguf_path', 'is not a file'),
    ('sft', 'tokenizer.path', 'does not exist; point it at a directory with '
     'tokenizer.json'),
    ('grpo', 'data.local_dir', 'is not a directory'),
    ('sft', 'data.path', 'does not exist; point it at a JSONL file'),
    ('sft', 'distill.teacher', 'does not exist'),
])
def test_missing_file(base, tmp_path, no_compile, stage, dotted, needle):
  c = _STAGES[stage](base)
  if dotted == 'model.gguf_path':
    c.model.hf_path = ''
  if dotted == 'data.path':
    c.data.source = 'jsonl'
  if dotted == 'distill.teacher' and 'distill' not in c:
    pytest.skip('no distill section in experiments/cold_start.py')
  missing = str(tmp_path / 'nowhere')
  _set(c, {dotted.replace('.', '__'): missing})
  _fails(c, tmp_path / 'work', FileNotFoundError,
         f'config.{dotted}={missing!r} {needle}')


def test_rejection_workdir_without_its_data(base, tmp_path, no_compile):
  c = _sft(base, data__source='jsonl', data__path=str(tmp_path))
  _fails(c, tmp_path / 'work', FileNotFoundError,
         'is a directory without sft.jsonl; point it at a JSONL file or at the '
         'workdir of a finished rejection_sampling stage')


# ------------------------------------------------------------- workdirs


def _run_record(workdir, config):
  run_records.write_run_config(config, workdir)
  (workdir / 'checkpoints').mkdir()
  (workdir / 'checkpoints' / 'saved').write_text('work')


def test_workdir_of_another_config_is_refused(base, tmp_path, no_compile):
  _run_record(tmp_path, _grpo(base))
  c = _grpo(base, rl__group_size=2, train__lr=3e-4)
  message = _fails(c, tmp_path, ValueError, f'{tmp_path} holds a run of another '
                   'config (run_config.json differs: rl.group_size 4 -> 2, '
                   'train.lr 0.001 -> 0.0003); use a new --workdir, or pass '
                   '--overwrite')
  assert 'overwritten-' in message


def test_a_failed_start_without_saved_work_may_be_retried(base, tmp_path):
  run_records.write_run_config(_grpo(base), tmp_path)  # no checkpoint, no data
  (tmp_path / 'checkpoints').mkdir()
  config_checks.check_workdir(_grpo(base, rl__group_size=2), tmp_path)


def test_resume_safe_changes_are_not_refused(base, tmp_path):
  _run_record(tmp_path, _grpo(base))
  c = _grpo(base, train__steps=10, train__log_every=5, eval__every=3,
            train__keep_checkpoints=5, rl__grad_accum=1)
  config_checks.check_workdir(c, tmp_path)
  assert config_checks.run_config_diff(run_records.read_run_config(tmp_path),
                                       c) == []


def test_overwrite_moves_the_old_run_aside(base, tmp_path, capsys):
  _run_record(tmp_path, _grpo(base))
  c = _grpo(base, rl__group_size=2)
  config_checks.check_workdir(c, tmp_path, overwrite=True)
  moved = [p for p in tmp_path.iterdir()]
  assert len(moved) == 1 and moved[0].name.startswith('overwritten-')
  assert (moved[0] / 'checkpoints' / 'saved').read_text() == 'work'
  assert run_records.read_run_config(moved[0]).rl.group_size == 4
  assert f'moved it to {moved[0]}' in capsys.readouterr().out
  config_checks.check_workdir(c, tmp_path)  # an empty workdir now


def _pipeline_cfg(base):
  c = r1.get_config('runlocal')
  c.cold_start.model.hf_path = str(base)
  c.cold_start.model.pretrain_if_missing = False
  c.sft.model.hf_path = str(base)
  return c


def test_pipeline_refuses_a_changed_stage_and_overwrite_reruns_the_rest(
    base, tmp_path, capsys):
  c = _pipeline_cfg(base)
  dirs = pipeline.stage_dirs(c, tmp_path)
  for name in ('cold_start', 'reasoning_rl'):
    _run_record(dirs[name], pipeline.resolve(c[name], dirs))
  pipeline.check(c, tmp_path)  # the same config resumes
  c.reasoning_rl.rl.group_size = 2
  with pytest.raises(ValueError, match='holds a run of another config for '
                     r'stage reasoning_rl \(rl.group_size 4 -> 2\)'):
    pipeline.check(c, tmp_path)
  c = _pipeline_cfg(base)
  c.cold_start.train.lr = 5e-4
  pipeline.check(c, tmp_path, overwrite=True)
  out = capsys.readouterr().out
  assert 'stage cold_start: moved its old run (train.lr 0.001 -> 0.0005)' in out
  assert ('stage reasoning_rl: moved its old run (it starts from stage '
          'cold_start, whose config changed)') in out
  for name in ('cold_start', 'reasoning_rl'):
    [moved] = list(dirs[name].iterdir())
    assert (moved / 'checkpoints' / 'saved').read_text() == 'work'
  pipeline.check(c, tmp_path)


def test_pipeline_finished_stage_with_another_step_count_is_refused(
    base, tmp_path):
  """A finished stage is skipped, so a new train.steps (resume-safe while a
  stage trains) would go unseen: it counts as a change."""
  c = _pipeline_cfg(base)
  dirs = pipeline.stage_dirs(c, tmp_path)
  _run_record(dirs['cold_start'], pipeline.resolve(c.cold_start, dirs))
  c.cold_start.train.steps += 5
  pipeline.check(c, tmp_path)  # unfinished: it resumes and trains on
  run_records.mark_done(dirs['cold_start'], {})
  with pytest.raises(ValueError, match='holds a run of another config for '
                     r'stage cold_start \(train.steps 4 -> 9\)'):
    pipeline.check(c, tmp_path)


@pytest.mark.parametrize('edit, needle', [
    (lambda c: setattr(c.reasoning_rl.rl, 'advantage', 'grop'),
     "reasoning_rl: config.reasoning_rl.rl.advantage='grop' is not known"),
    (lambda c: _set(c, {'final_rl__model__hf_path': '@final_rl'}),
     "config.final_rl.model.hf_path='@final_rl' refers to stage 'final_rl', "
     'which is not an earlier stage'),
    (lambda c: c.__setitem__('cold_stat', 1),
     'unknown key config.cold_stat; did you mean config.cold_start?'),
])
def test_pipeline_stage_errors_name_the_stage(base, tmp_path, no_compile,
                                               edit, needle):
  c = _pipeline_cfg(base)
  c.unlock()
  edit(c)
  _fails(c, tmp_path, ValueError, needle, run=pipeline.run)


def test_pipeline_stage_key_is_named_from_the_pipeline_root(base, tmp_path):
  c = _pipeline_cfg(base)
  c = _with(c, 'sft.train.stpes', 3)
  _fails(c, tmp_path, ValueError, 'unknown key config.sft.train.stpes; did you '
         'mean config.sft.train.steps?', run=pipeline.run)


def test_experiments_pass_the_key_checks():
  for stage in train.STAGES:
    defaults = config_checks.stage_defaults(stage)
    assert defaults, stage
    for c in defaults:
      config_checks.check_keys(c, stage)
      config_checks.check_names(c)
  json.dumps(config_checks.RESUME_SAFE)
