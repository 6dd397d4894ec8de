"""Stages side by side (config.cores_per_stage, r1jax/pipeline_jobs.py): the
order they wait for, a failed stage, a killed pipeline, the tiny base's lock."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import ml_collections
import pytest

from experiments import r1_study
from r1jax import errors
from r1jax import pipeline
from r1jax import pipeline_jobs
from r1jax import tiny_base
from r1jax.run import records as run_records
from tests import grpo_helpers
from tests.test_study import _study

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  return grpo_helpers.make_tiny_base(tmp_path_factory.mktemp('base') / 'hf')


def test_cores_per_stage_forms_and_errors(base):
  assert pipeline_jobs.cores_spec(_study(base)) == 0
  for value, want in ((1, 1), ('2', 2), ('0', 0),
                      ('sft=2, grpo=1', {'sft': 2, 'grpo': 1}),
                      (ml_collections.ConfigDict({'evaluate': 1}),
                       {'evaluate': 1})):
    c = _study(base)
    c.cores_per_stage = value
    assert pipeline_jobs.cores_spec(c) == want
  c = _study(base)
  c.cores_per_stage = 'sft=2'
  assert pipeline_jobs.stage_cores(c, 'sft') == 2
  assert pipeline_jobs.stage_cores(c, 'grpo') == 1  # a kind left out: 1
  too_many = len(pipeline_jobs.machine_cpus()) + 1
  for value, match in ((-1, 'must be >= 0'), ('sft=x', "'sft=2,grpo=1'"),
                       ('sfx=1', "stage kind 'sfx'"), (True, 'a number'),
                       (too_many, 'CPUs this process may use'),
                       (f'grpo={too_many}', 'cores_per_stage grpo'),
                       ('grpo=0', 'between 1 and')):
    c = _study(base)
    c.cores_per_stage = value
    with pytest.raises(errors.ConfigError, match=match):
      pipeline.validate_config(c)
  with pytest.raises(errors.ConfigError, match='between 1 and the 2 CPUs'):
    pipeline_jobs.check_cores(3, 'x', [0, 1])
  c = _study(base)
  assert pipeline.stage_refs(c.c) == ['a', 'b']
  assert pipeline.stage_refs(c.a) == []


def test_each_missing_tiny_base_is_one_job_before_its_stages(tmp_path,
                                                            monkeypatch):
  monkeypatch.setenv('R1JAX_CACHE', str(tmp_path / 'cache'))
  c = r1_study.get_config('runlocal')
  runs = pipeline.seed_runs(c, tmp_path / 'study')
  jobs = pipeline.side_by_side_jobs(c, runs)
  by_key = {j.key: j for j in jobs}
  assert len(by_key) == len(jobs)
  bases = [j for j in jobs if '/base ' in j.key]
  assert [j.key.split('/')[0] for j in bases] == ['seed0', 'seed1']
  assert jobs[:2] == bases and all(j.cores == 2 and not j.deps for j in bases)
  assert len(jobs) == 2 + 2 * len(c.order)
  for seed, base_job in zip((0, 1), bases):
    s = f'seed{seed}/'
    # R1-Zero, the cold start and stage 3's SFT start from the tiny base.
    for name in ('zero', 'cold_start', 'sft'):
      assert base_job.key in by_key[s + name].deps, name
    assert by_key[s + 'reasoning_rl'].deps == (s + 'cold_start',)
    assert set(by_key[s + 'teacher_traces'].deps) == {s + 'final_rl',
                                                      s + 'zero'}
    assert by_key[s + 'student_base'].deps == ()  # pretrained from scratch
    assert by_key[s + 'student_base'].cores == 2  # an SFT stage
    assert by_key[s + 'zero'].cores == 1 and by_key[s + 'rejection'].cores == 1
    payload = base_job.prepare()
    assert payload['base_only'] and payload['workdir'] == str(
        tmp_path / 'study' / f'seed{seed}')
  # With the bases in the cache, no base job.
  for j in bases:
    path = tiny_base.missing(j.prepare()['config'])
    path.mkdir(parents=True)
    (path / 'config.json').write_text('{}')
    (path / 'base_ability.json').write_text('{}')
    assert tiny_base.missing(j.prepare()['config']) is None
  jobs = pipeline.side_by_side_jobs(c, runs)
  assert not [j for j in jobs if '/base ' in j.key]
  assert all(not d.split('/')[-1].startswith('base ') for j in jobs
             for d in j.deps)


@pytest.mark.slow
def test_side_by_side_study_waits_for_what_each_stage_reads(base, tmp_path,
                                                             capsys):
  c = _study(base)
  c.cores_per_stage = 1
  results = pipeline.run(c, str(tmp_path))
  out = capsys.readouterr().out
  assert sorted(results) == [0, 1]
  cpus = len(pipeline_jobs.machine_cpus())
  assert f'6 jobs on {cpus} CPUs' in out
  for seed in (0, 1):
    wd = tmp_path / f'seed{seed}'
    assert sorted(results[seed]) == ['a', 'b', 'c']
    done = {n: (wd / n / run_records.DONE).stat().st_mtime_ns for n in 'abc'}
    # c reads '@best:a,b': it started (wrote its run config) after both
    # finished, and reads the better of them.
    started_c = (wd / 'c' / run_records.RUN_CONFIG).stat().st_mtime_ns
    assert started_c >= max(done['a'], done['b'])
    a, b = (results[seed][n]['eval/pass@1'] for n in 'ab')
    run_c = run_records.read_run_config(wd / 'c')
    assert run_c.data.local_dir == str(wd / ('b' if b > a else 'a'))
    assert run_c.seed == seed
    for n in 'abc':  # each stage's output went to its log, on its own cpu
      log = (wd / f'{n}.log').read_text()
      assert f'seed{seed}/{n} on cpu ' in log and 'held-out' in log
      assert not (wd / f'{n}.log.job').exists()
    cores = json.loads((wd / 'pipeline.json').read_text())['cores_per_stage']
    assert cores == {'a': 1, 'b': 1, 'c': 1}
  assert (tmp_path / 'study.md').is_file()
  # A second run finds every stage finished.
  pipeline.run(c, str(tmp_path))
  assert capsys.readouterr().out.count('finished before, skipped') == 6


def test_failed_stage_stops_the_pipeline_and_keeps_the_rest(base, tmp_path):
  c = _study(base, seeds=(0,))
  c.cores_per_stage = 1
  # An evaluate stage exports no model: c's model is missing when it starts.
  c.c.model.hf_path = '@a'
  with pytest.raises(errors.ConfigError,
                     match=r'stage seed0/c failed \(exit status 1\): .*'
                     r'seed0/a is the workdir of a .evaluate. run'):
    pipeline.run(c, str(tmp_path))
  for n in 'ab':
    assert run_records.read_done(tmp_path / 'seed0' / n) is not None
  assert run_records.read_done(tmp_path / 'seed0' / 'c') is None
  assert (tmp_path / 'seed0' / 'c.log').is_file()


_KILLED_STUDY = '''
import pathlib, sys
sys.path.insert(0, {root!r})
from tests.test_study import _study
from r1jax import pipeline
c = _study(pathlib.Path({base!r}))
c.cores_per_stage = 1
pipeline.run(c, {workdir!r})
'''


def _stage_processes(workdir: pathlib.Path) -> list[int]:
  """The pids of stage processes whose job files lie in `workdir`."""
  pids = []
  for proc in pathlib.Path('/proc').iterdir():
    try:
      cmd = (proc / 'cmdline').read_bytes().decode(errors='replace')
    except OSError:
      continue
    if 'pipeline_jobs' in cmd and str(workdir) in cmd:
      pids.append(int(proc.name))
  return pids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='PR_SET_PDEATHSIG is Linux only')
def test_killed_side_by_side_pipeline_leaves_no_stage_running(base,
                                                               tmp_path):
  workdir = tmp_path / 'study'
  script = _KILLED_STUDY.format(root=str(ROOT), base=str(base),
                                workdir=str(workdir))
  proc = subprocess.Popen([sys.executable, '-c', script], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while not _stage_processes(workdir):  # stages started
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.2)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  deadline = time.time() + 20
  while _stage_processes(workdir):  # they die with it
    assert time.time() < deadline, 'stage processes outlived the pipeline'
    time.sleep(0.2)
  # The same config resumes and finishes every stage.
  c = _study(base)
  c.cores_per_stage = 1
  results = pipeline.run(c, str(workdir))
  assert all(sorted(r) == ['a', 'b', 'c'] for r in results.values())


def test_tiny_base_lock_makes_a_second_process_wait(tmp_path):
  path = tmp_path / 'cache' / 'seed0-abc'
  said, order = [], []
  with tiny_base._turn(path, said.append):  # pylint: disable=protected-access

    def second():
      turn = tiny_base._turn  # pylint: disable=protected-access
      with turn(path, said.append):
        order.append('second')

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.5)
    order.append('first')
  t.join(10)
  assert order == ['first', 'second']
  assert len(said) == 1 and 'another process is making the base' in said[0]
  assert (tmp_path / 'cache' / '.seed0-abc.lock').is_file()


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='PR_SET_PDEATHSIG is Linux only')
def test_child_refuses_to_run_when_its_parent_is_gone(tmp_path):
  # A stage process whose parent died before it set PR_SET_PDEATHSIG exits.
  job = tmp_path / 'x.job'
  job.write_bytes(b'')
  r = subprocess.run(
      [sys.executable, '-c', pipeline_jobs._CHILD,  # pylint: disable=protected-access
       '1' if os.getpid() != 1 else '2', '0', str(job)],
      cwd=ROOT, capture_output=True, timeout=60)
  assert r.returncode == 1 and b'Traceback' not in r.stderr
