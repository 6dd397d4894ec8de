"""A pipeline's stages side by side: each stage a process of its own, pinned
to cores of its own (a pipeline config's `cores_per_stage`, r1jax/pipeline.py).

A tiny model's GRPO step does not use two cores well (on the 2-core CPU of
the README, one stage on both cores takes 5.5 s a step, two stages with a
core each 7.4 s a step each: 1.5x the work per second). A study has many
stages that do not need each other (its seeds; within a seed, R1-Zero, the R1
chain, the student's base), so `run_jobs` runs as many at once as the cores
hold, `cores_per_stage` each:

  * a stage starts when the stages it reads ('@name' references) have
    finished, in the order of the job list (the pipeline's: stage order,
    then seed);
  * each runs as `python -c ...` in a child process whose CPU affinity is
    its cores, set before JAX starts, so XLA's thread pool has that many
    threads: a stage's figures depend on `cores_per_stage`, not on the
    machine's core count or on what runs beside it;
  * its output goes to its log file; this process prints one line when a
    stage starts and one when it ends;
  * a failed stage stops new starts; the running ones finish (their work is
    kept), then the pipeline stops with the failed stage's error and log;
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

from r1jax import errors

# The child (argv: parent pid, cpus, job file): pin, then import JAX (with
# r1jax.pipeline) and run the stage.
_CHILD = ('import sys; from r1jax import pipeline_jobs; '
          'pipeline_jobs.pin(*sys.argv[1:3]); from r1jax import pipeline; '
          'pipeline.run_job(sys.argv[3])')
_POLL_S = 0.5


@dataclasses.dataclass
class Job:
  """A stage to run: `prepare()` returns its (resolved) config and workdir
  when it starts (after `deps`, keys of other jobs, have finished)."""
  key: str
  deps: tuple[str, ...]
  prepare: Callable[[], tuple[Any, pathlib.Path]]
  log: pathlib.Path


def machine_cpus() -> list[int]:
  """The CPUs this process may run on."""
  if hasattr(os, 'sched_getaffinity'):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def cpu_slots(cores_per_stage: int, cpus: list[int] | None = None
              ) -> list[tuple[int, ...]]:
  """Disjoint sets of `cores_per_stage` CPUs, as many as `cpus` hold."""
  cpus = machine_cpus() if cpus is None else cpus
  if cores_per_stage < 1 or cores_per_stage > len(cpus):
    raise errors.ConfigError(
        f'config.cores_per_stage={cores_per_stage} must be between 1 and the '
        f'{len(cpus)} CPUs this process may use (0: one stage at a time on '
        'every core)')
  n = len(cpus) // cores_per_stage
  return [tuple(cpus[i * cores_per_stage:(i + 1) * cores_per_stage])
          for i in range(n)]


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


def run_jobs(jobs: list[Job], cores_per_stage: int,
             say: Callable[[str], None] = print) -> dict[str, float]:
  """Runs `jobs` side by side (module doc); returns {key: seconds it ran}.
  Raises ConfigError naming the first failed job once the others ended."""
  slots = cpu_slots(cores_per_stage)
  keys = {j.key for j in jobs}
  for j in jobs:
    for d in j.deps:
      if d not in keys:
        raise ValueError(f'job {j.key} waits for {d}, which is not a job')
  free = list(slots)
  pending = list(jobs)
  running: dict[str, tuple[subprocess.Popen, Job, tuple[int, ...], float]] = {}
  finished: set[str] = set()
  failed: list[tuple[Job, int]] = []
  times: dict[str, float] = {}
  say(f'[{_stamp()}] {len(jobs)} stages, up to {len(slots)} at once, '
      f'{cores_per_stage} core{"s" if cores_per_stage > 1 else ""} each')
  try:
    while pending or running:
      while not failed and free:
        job = next((j for j in pending
                    if all(d in finished for d in j.deps)), None)
        if job is None:
          break
        pending.remove(job)
        cpus = free.pop(0)
        running[job.key] = (_start(job, cpus), job, cpus, time.perf_counter())
        cores = ','.join(map(str, cpus))
        say(f'[{_stamp()}] {job.key}: started on cpu {cores} '
            f'(log {job.log})')
      if not running:
        break  # a failure left jobs that will not start
      time.sleep(_POLL_S)
      for key, (proc, job, cpus, t0) in list(running.items()):
        rc = proc.poll()
        if rc is None:
          continue
        del running[key]
        free.append(cpus)
        free.sort()
        times[key] = time.perf_counter() - t0
        if rc == 0:
          finished.add(key)
          job.log.with_name(job.log.name + '.job').unlink(missing_ok=True)
          say(f'[{_stamp()}] {key}: finished in {_minutes(times[key])} '
              f'({len(running)} running, {len(pending)} waiting)')
        else:
          failed.append((job, rc))
          say(f'[{_stamp()}] {key}: FAILED (exit status {rc}) after '
              f'{_minutes(times[key])}; the end of {job.log}:\n'
              f'{_tail(job.log)}')
          if running:
            say(f'[{_stamp()}] no new stage starts; waiting for the '
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
        + (f'; {len(pending)} stages did not start' if pending else ''))
  return times


def _minutes(s: float) -> str:
  return f'{int(s // 60)}m{int(s % 60):02d}s'


def _start(job: Job, cpus: tuple[int, ...]) -> subprocess.Popen:
  config, workdir = job.prepare()
  job.log.parent.mkdir(parents=True, exist_ok=True)
  job_file = job.log.with_name(job.log.name + '.job')
  job_file.write_bytes(pickle.dumps({'config': config,
                                     'workdir': str(workdir)}))
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
  """{'config', 'workdir'} of a job file `_start` wrote."""
  return pickle.loads(pathlib.Path(job_file).read_bytes())
