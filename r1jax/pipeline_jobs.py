"""A pipeline's stages side by side: each stage a process of its own, pinned
to cores of its own (a pipeline config's `cores_per_stage`,
r1jax/pipeline.py).

A tiny model's GRPO step does not use two cores well: on the 2-core CPU of
the README one GRPO stage on both cores takes 5.5 s a step, two with a core
each 7.4 s a step each (1.5x the work per second). Its SFT does (pretraining
on one core is 1.8x slower alone, 2.6x beside another stage), so a study
gives SFT stages both cores and the others one (`cores_per_stage` maps a
stage kind to its cores). A study has many stages that do not need each
other (its seeds; within a seed, R1-Zero, the R1 chain, the student's base),
so `run_jobs` runs as many at once as the cores hold:

  * a job starts when the jobs it waits for (the stages it reads, '@name';
    the tiny base it starts from) have finished and its cores are free,
    the first such in the job list's order (the pipeline's: each seed's
    tiny base, then stage order, then seed); a job that does not fit lets
    a later one that does start;
  * each runs as `python -c ...` in a child process whose CPU affinity is
    its cores, set before JAX starts, so XLA's thread pool has that many
    threads: a stage's figures depend on its core count (XLA's summation
    order does), not on the machine's cores or on what runs beside it;
  * its output goes to its log file; this process prints one line when a
    job starts and one when it ends;
  * a failed job stops new starts; the running ones finish (their work is
    kept), then the pipeline stops with the failed job's error and log;
  * a child dies with this process (Linux: PR_SET_PDEATHSIG), so a killed
    pipeline leaves no stage running, and the same command resumes it.

Nothing here imports JAX: the child imports it after its affinity is set.
"""

import ctypes
import dataclasses
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import ml_collections

from r1jax import errors

# The child (argv: parent pid, cpus, job file): pin, then import JAX (with
# r1jax.pipeline) and run the stage.
_CHILD = ('import sys; from r1jax import pipeline_jobs; '
          'pipeline_jobs.pin(*sys.argv[1:3]); from r1jax import pipeline; '
          'pipeline.run_job(sys.argv[3])')
_POLL_S = 0.5


@dataclasses.dataclass
class Job:
  """A job to run on `cores` CPUs: `prepare()` returns its payload (for the
  child, r1jax.pipeline.run_job) when it starts, after `deps` (keys of
  other jobs) have finished."""
  key: str
  deps: tuple[str, ...]
  prepare: Callable[[], dict[str, Any]]
  log: pathlib.Path
  cores: int = 1


def machine_cpus() -> list[int]:
  """The CPUs this process may run on."""
  if hasattr(os, 'sched_getaffinity'):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def check_cores(cores: int, what: str, cpus: list[int] | None = None) -> None:
  """`cores` (of config field `what`) is a whole number the CPUs hold."""
  cpus = machine_cpus() if cpus is None else cpus
  if (not isinstance(cores, int) or isinstance(cores, bool) or cores < 1
      or cores > len(cpus)):
    raise errors.ConfigError(
        f'{what}={cores!r} must be a whole number between 1 and the '
        f'{len(cpus)} CPUs this process may use')


def cores_spec(config: ml_collections.ConfigDict) -> int | dict[str, int]:
  """config.cores_per_stage: a number (every stage; 0: one stage at a time)
  or {stage kind: cores}, from an int, a mapping or a string ('2',
  'sft=2,grpo=1')."""
  value = config.get('cores_per_stage', 0)
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, str):
    text = value.replace(' ', '')
    try:
      value = (dict((k, int(v)) for k, v in (p.split('=') for p in
                                              text.split(',')))
               if '=' in text else int(text or 0))
    except ValueError:
      raise errors.ConfigError(
          f'config.cores_per_stage={value!r}: write a number (every stage; 0: '
          "one at a time) or kinds and numbers, 'sft=2,grpo=1'") from None
  if isinstance(value, bool) or not isinstance(value, (int, dict)):
    raise errors.ConfigError(
        f'config.cores_per_stage={value!r} must be a number or a mapping of '
        'stage kinds to numbers')
  if isinstance(value, int) and value < 0:
    raise errors.ConfigError(
        f'config.cores_per_stage={value} must be >= 0 (0: one stage at a time, '
        'on every core)')
  return value


def stage_cores(config: ml_collections.ConfigDict, kind: str) -> int:
  """The cores a stage of `kind` runs on side by side; 0: one at a time."""
  cores = cores_spec(config)
  return int(cores.get(kind, 1)) if isinstance(cores, dict) else cores


def side_by_side(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` runs its stages side by side."""
  return cores_spec(config) not in (0, {})


def check_spec(config: ml_collections.ConfigDict, kinds: tuple[str, ...]
               ) -> None:
  """config.cores_per_stage reads (`cores_spec`), names only stage `kinds`,
  and asks for no more cores than this process may use."""
  cores = cores_spec(config)
  for kind, n in (cores.items() if isinstance(cores, dict) else ()):
    if kind not in kinds:
      raise errors.ConfigError(
          f'config.cores_per_stage names the stage kind {kind!r}; kinds: '
          f'{", ".join(kinds)}')
    check_cores(n, f'config.cores_per_stage {kind}')
  if isinstance(cores, int) and cores:
    check_cores(cores, 'config.cores_per_stage (0: one stage at a time, on '
                'every core)')


def _stamp() -> str:
  return time.strftime('%H:%M:%S')


def _tail(path: pathlib.Path, lines: int = 12) -> str:
  try:
    text = path.read_text(errors='replace')
  except OSError:
    return ''
  # Progress bars rewrite their line with carriage returns: keep the last.
  out = [l.rsplit('\r', 1)[-1] for l in text.splitlines()]
  return '\n'.join('    ' + l for l in out[-lines:])


def _error_line(path: pathlib.Path) -> str:
  """The child's one-line error ('error: ...'), or its last line."""
  try:
    lines = [l for l in path.read_text(errors='replace').splitlines() if l]
  except OSError:
    return ''
  for line in reversed(lines):
    if line.startswith('error: '):
      return line[len('error: '):]
  return lines[-1].rsplit('\r', 1)[-1] if lines else ''


def run_jobs(jobs: list[Job], say: Callable[[str], None] = print
             ) -> dict[str, float]:
  """Runs `jobs` side by side (module doc); returns {key: seconds it ran}.
  Raises ConfigError naming the first failed job once the others ended."""
  cpus = machine_cpus()
  keys = {j.key for j in jobs}
  for j in jobs:
    check_cores(j.cores, f'the cores of {j.key}', cpus)
    for d in j.deps:
      if d not in keys:
        raise ValueError(f'job {j.key} waits for {d}, which is not a job')
  free = list(cpus)
  pending = list(jobs)
  running: dict[str, tuple[subprocess.Popen, Job, list[int], float]] = {}
  finished: set[str] = set()
  failed: list[tuple[Job, int]] = []
  times: dict[str, float] = {}
  say(f'[{_stamp()}] {len(jobs)} jobs on {len(cpus)} CPUs')
  try:
    while pending or running:
      for job in list(pending):
        if failed:
          break
        if (job.cores <= len(free)
            and all(d in finished for d in job.deps)):
          pending.remove(job)
          mine, free = free[:job.cores], free[job.cores:]
          running[job.key] = (_start(job, mine), job, mine, time.perf_counter())
          say(f'[{_stamp()}] {job.key}: started on cpu '
              f'{",".join(map(str, mine))} (log {job.log})')
      if not running:
        break  # a failure left jobs that will not start
      time.sleep(_POLL_S)
      for key, (proc, job, mine, t0) in list(running.items()):
        rc = proc.poll()
        if rc is None:
          continue
        del running[key]
        free = sorted(free + mine)
        times[key] = time.perf_counter() - t0
        if rc == 0:
          finished.add(key)
          _job_file(job).unlink(missing_ok=True)
          say(f'[{_stamp()}] {key}: finished in {_minutes(times[key])} '
              f'({len(running)} running, {len(pending)} waiting)')
        else:
          failed.append((job, rc))
          say(f'[{_stamp()}] {key}: FAILED (exit status {rc}) after '
              f'{_minutes(times[key])}; the end of {job.log}:\n'
              f'{_tail(job.log)}')
          if running:
            say(f'[{_stamp()}] no new job starts; waiting for the '
                f'{len(running)} running to finish (their work is kept)')
  finally:
    for proc, *_ in running.values():  # interrupted: stop the children
      proc.terminate()
    for proc, *_ in running.values():
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        proc.kill()
  if failed:
    job, rc = failed[0]
    raise errors.ConfigError(
        f'stage {job.key} failed (exit status {rc}): {_error_line(job.log)} '
        f'(its output: {job.log}). The stages that finished are kept; the '
        'same command resumes the rest'
        + (f'; {len(pending)} jobs did not start' if pending else ''))
  return times


def _minutes(s: float) -> str:
  # Not r1jax.run.console.format_seconds: that module imports JAX, which a
  # stage process may import only once pinned (module doc).
  return f'{int(s // 60)}m{int(s % 60):02d}s'


def _job_file(job: Job) -> pathlib.Path:
  """Where `_start` leaves a job's payload for its process (removed once the
  job has finished)."""
  return job.log.with_name(job.log.name + '.job')


def _start(job: Job, cpus: list[int]) -> subprocess.Popen:
  payload = job.prepare()
  job.log.parent.mkdir(parents=True, exist_ok=True)
  job_file = _job_file(job)
  job_file.write_bytes(pickle.dumps(payload))
  with open(job.log, 'ab') as log:
    log.write(f'##### [{time.strftime("%Y-%m-%d %H:%M:%S")}] {job.key} on '
              f'cpu {",".join(map(str, cpus))}\n'.encode())
    log.flush()
    return subprocess.Popen(
        [sys.executable, '-c', _CHILD, str(os.getpid()),
         ','.join(map(str, cpus)), str(job_file)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _die_with_parent(parent: int) -> None:
  """Linux: this process gets SIGKILL when its parent dies."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return
  if os.getppid() != parent:  # the parent died before the call
    os._exit(1)


def pin(parent: str, cpus: str) -> None:
  """A stage process's first step (see `_CHILD`): die with the pipeline,
  run on `cpus` ('0,1')."""
  _die_with_parent(int(parent))
  if hasattr(os, 'sched_setaffinity'):
    os.sched_setaffinity(0, {int(c) for c in cpus.split(',')})


def read_job(job_file: str) -> dict[str, Any]:
  """The payload of a job file `_start` wrote."""
  return pickle.loads(pathlib.Path(job_file).read_bytes())
