r"""Runs a multi-stage recipe: each stage in its own sub-directory, in order.

    python -m r1jax.pipeline --config=experiments/r1.py --workdir=runs/r1
    python -m r1jax.pipeline --config=experiments/r1.py:runlocal \
        --workdir=runs/r1 --config.reasoning_rl.train.steps=20

A pipeline config has `order`, a tuple of stage names, and one field per name
holding that stage's full config (so any field of any stage can be set from
the command line). A string value '@name' anywhere in a stage's config is
replaced by the workdir of stage `name` (WORKDIR/name): that is how a stage
starts from an earlier stage's model (model.hf_path='@cold_start') or reads
its data (data.path='@rejection').

Restarting the same command skips the stages that finished (their
WORKDIR/<name>/done.json exists) and resumes the one that was killed from its
last checkpoint. Before any stage runs, every stage's config is checked (keys,
types, values; r1jax/config_checks.py) and compared with the run its
sub-workdir holds (a finished stage's step count included): a stage whose
config changed is refused, or with
--overwrite moved aside (with every later stage's run, which it fed) to
WORKDIR/<name>/overwritten-<time>/ and run again. Files a stage reads are
checked when it starts (an earlier stage may write them).

'@best:a,b' names, of the finished stages a and b, the one with the higher
held-out pass@1 (done.json's eval/pass@1; the first on a tie): a
distillation study's teacher is the strongest model the study made.

With `seeds` (a tuple of ints; empty or absent: one run, no seed folders),
the whole order runs once per seed, seed after seed, in WORKDIR/seed<S>/,
with every stage's `seed` field set to S (so the tiny base each stage starts
from is that seed's, r1jax/tiny_base.py). A restarted study skips the seeds
and stages that finished. At the end it prints, and writes to
WORKDIR/study.md and study.json, every stage's figures as mean +- standard
deviation over the seeds that finished it, and draws WORKDIR/study.png: the
held-out curves of its GRPO stages, one line per seed (when matplotlib is
installed).

`cores_per_stage` (optional; 0, the default: one stage at a time, in this
process, on every core) runs stages side by side instead, each in a process
of its own pinned to that many cores (r1jax/pipeline_jobs.py). A mapping
gives each stage kind its own count ({'sft': 2, 'grpo': 1}, or the string
'sft=2,grpo=1'; a kind left out gets 1; a tiny base to pretrain counts as
'sft'); --config.cores_per_stage=0 turns it off. A stage starts once the
stages it reads ('@name') and the tiny base it starts from are there (each
missing base is a job of its own) and its cores are free, in stage order,
then seed order. Each job's output goes to WORKDIR[/seed<S>]/<stage>.log. A
stage's figures depend on its core count (XLA's summation order does), so
they equal those of another run that gave it as many cores.

`equal_time` (optional, with seeds) maps a GRPO stage to the comma-separated
stages whose wall time it is compared at, e.g. {'student_rl':
'teacher_traces,student_sft'}: the study then also prints that stage's
held-out pass@1 at the others' summed wall time and at twice it (its time is
the sum of its logged step times, compilation included, evaluations not;
interpolated between the two evaluations that bracket it). Side by side,
the time is machine time: a stage's wall time times its cores.
"""

import difflib
import functools
import json
import pathlib
import time
from typing import Any

from absl import app, flags, logging
import ml_collections

from r1jax import config_checks
from r1jax import errors
from r1jax import pipeline_jobs
from r1jax import study
from r1jax import tiny_base
from r1jax import train
from r1jax.run import console
from r1jax.run import records as run_records
from r1jax.run import xla_cache

# --config and --workdir are r1jax.train's flags (one config-file flag per
# process); the pipeline adds its own.
_ONLY = flags.DEFINE_list('only', [], 'Run only these stages (by name).')


def stage_dirs(config, workdir: pathlib.Path) -> dict[str, pathlib.Path]:
  return {name: workdir / name for name in config.order}


_TOP_KEYS = ('order', 'seeds', 'equal_time', 'cores_per_stage')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """The pipeline's own structure: order, stage sections, '@' references."""
  if 'order' not in config or not config.order:
    raise errors.ConfigError('a pipeline config needs config.order, the tuple of its '
                      'stage names')
  names = list(config.order)
  for i, name in enumerate(names):
    if name not in config:
      raise errors.ConfigError(f'config.order names {name!r} but the config has no '
                        f'config.{name} (the stage\'s own config)')
    if 'stage' not in config[name]:
      raise errors.ConfigError(f'config.{name} has no `stage` field; is it a stage '
                        'config?')
    for key, value in _strings(config[name]):
      if value.startswith('@'):
        if not _refs(value):
          raise errors.ConfigError(
              f'config.{name}.{key}={value!r} names no stage; write '
              f"'@<stage>' or '@{BEST}<stage>,<stage>'")
        for ref in _refs(value):
          if ref not in names[:i]:
            raise errors.ConfigError(
                f'config.{name}.{key}={value!r} refers to stage {ref!r}, which '
                f'is not an earlier stage; earlier: {names[:i]}')
  if len(set(names)) != len(names):
    raise errors.ConfigError(f'config.order={tuple(names)} repeats a stage name')
  seeds = config.get('seeds', ())
  if not isinstance(seeds, (tuple, list)) or not all(
      isinstance(x, int) and not isinstance(x, bool) for x in seeds):
    raise errors.ConfigError(f'config.seeds={seeds!r} must be a tuple of '
                             'whole numbers (empty: one run, no seed folders)')
  if len(set(seeds)) != len(seeds):
    raise errors.ConfigError(f'config.seeds={tuple(seeds)} repeats a seed')
  pipeline_jobs.check_spec(config, tuple(train.STAGES))
  for key in config.keys():  # stage sections left out of order may stay
    if key not in _TOP_KEYS and key not in names and not (
        isinstance(config[key], ml_collections.ConfigDict)
        and 'stage' in config[key]):
      close = difflib.get_close_matches(key, list(_TOP_KEYS) + names, n=1)
      hint = (f'did you mean config.{close[0]}?' if close else
              f'the keys of a pipeline config are {", ".join(_TOP_KEYS)} and '
              f'its stages {names}')
      raise errors.ConfigError(f'unknown key config.{key}; {hint}')
  for name, refs in (config.get('equal_time') or {}).items():
    if name not in names or config[name].stage != 'grpo':
      raise errors.ConfigError(
          f'config.equal_time names {name!r}, which is not a GRPO stage of '
          f'config.order')
    for ref in study.split_names(refs):
      if ref not in names:
        raise errors.ConfigError(
            f'config.equal_time.{name}={refs!r} names {ref!r}, which is not '
            f'a stage of config.order {names}')


def check(config: ml_collections.ConfigDict, workdir: pathlib.Path,
          overwrite: bool = False) -> None:
  """Every stage's config (keys, types, values) and every stage's workdir,
  before any stage runs. A stage whose workdir holds a run of another config
  is refused; with `overwrite` it and every later stage are moved aside."""
  validate_config(config)
  dirs = stage_dirs(config, pathlib.Path(workdir))
  for name in config.order:
    prefix = f'config.{name}'
    stage_config = resolve(config[name], dirs)
    try:
      config_checks.check_stage_config(
          stage_config, train.get_stage(stage_config.stage), prefix)
    except errors.ConfigError as e:
      if f'{prefix}.' in str(e):  # config_checks named it from the root
        raise
      # The stages' own checks name keys from the stage config's root.
      raise type(e)(f'{name}: {e}'.replace(' config.', f' {prefix}.')) from None
  changed = None
  for name in config.order:
    diffs = []
    if config_checks.has_saved_work(dirs[name]):
      # A finished stage is skipped, so a new step count (resume-safe for a
      # stage still training) would go unseen: it counts as a change.
      diffs = config_checks.run_config_diff(
          run_records.read_run_config(dirs[name]), resolve(config[name], dirs),
          finished=run_records.read_done(dirs[name]) is not None)
    if diffs and not overwrite:
      raise errors.ConfigError(
          f'{dirs[name]} holds a run of another config for stage {name} '
          f'({config_checks.describe_diff(diffs)}); use a new --workdir, or '
          f'pass --overwrite to move it and the later stages\' runs aside to '
          f'<stage workdir>/{config_checks.OVERWRITTEN}<time>/ and run them '
          'again')
    if diffs and changed is None:
      changed = name
    if changed is not None and dirs[name].is_dir() and any(
        not p.name.startswith(config_checks.OVERWRITTEN)
        for p in dirs[name].iterdir()):
      dest = config_checks.move_aside(dirs[name])
      why = (config_checks.describe_diff(diffs) if diffs else
             f'it starts from stage {changed}, whose config changed')
      print(f'--overwrite: stage {name}: moved its old run ({why}) to {dest}')


def _strings(node, prefix: str = ''):
  """(dotted key, value) of every string field under `node`."""
  for key in node.keys():
    value = node[key]
    dotted = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      yield from _strings(value, dotted + '.')
    elif isinstance(value, str):
      yield dotted, value


BEST = 'best:'  # '@best:a,b': the finished stage of a, b with the best pass@1
BEST_KEY = 'eval/pass@1'


def _refs(value: str) -> list[str]:
  """The stage names an '@...' string refers to."""
  ref = value[1:]
  if ref.startswith(BEST):
    return [r.strip() for r in ref[len(BEST):].split(',') if r.strip()]
  return [ref]


def best_stage(names: list[str], dirs: dict[str, pathlib.Path]) -> str:
  """Of `names`, the finished stage with the highest held-out pass@1 (the
  first of a tie); the first name while none has finished (a pipeline checks
  configs before the stages run; the stage that uses it resolves it again
  when it starts, after they finished)."""
  best, best_score = names[0], None
  for name in names:
    done = run_records.read_done(dirs[name]) or {}
    score = done.get(BEST_KEY)
    if isinstance(score, (int, float)) and (best_score is None
                                            or score > best_score):
      best, best_score = name, float(score)
  return best


def resolve(stage_config: ml_collections.ConfigDict,
            dirs: dict[str, pathlib.Path]) -> ml_collections.ConfigDict:
  """A copy of `stage_config` with '@name' strings made stage workdirs
  ('@best:a,b': the workdir of `best_stage`)."""
  out = ml_collections.ConfigDict(stage_config.to_dict())
  for key, value in list(_strings(out)):
    if value.startswith('@'):
      node = out
      *parents, leaf = key.split('.')
      for p in parents:
        node = node[p]
      refs = _refs(value)
      best = value[1:].startswith(BEST)
      node[leaf] = str(dirs[best_stage(refs, dirs) if best else refs[0]])
  tiny_base.resolve(out)  # model.hf_path's {base_key}: the cached tiny base
  return out


def with_seed(config: ml_collections.ConfigDict,
              seed: int) -> ml_collections.ConfigDict:
  """A copy of `config` with every stage's `seed` set to `seed`."""
  out = ml_collections.ConfigDict(config.to_dict())
  for name in out.order:
    if 'seed' in out[name]:
      out[name].seed = int(seed)
  return out


def seed_runs(config: ml_collections.ConfigDict, workdir: pathlib.Path
              ) -> list[tuple[int | None, ml_collections.ConfigDict,
                              pathlib.Path]]:
  """(seed, config, workdir) of each run: one per seed of config.seeds in
  WORKDIR/seed<S>, or the config itself in WORKDIR when it has no seeds."""
  seeds = tuple(config.get('seeds', ()) or ())
  if not seeds:
    return [(None, config, workdir)]
  return [(s, with_seed(config, s), workdir / f'seed{s}') for s in seeds]


def run(config: ml_collections.ConfigDict, workdir: str,
        only: tuple[str, ...] = (), overwrite: bool = False) -> dict[str, Any]:
  """Checks every stage of every seed (see `check`), then runs the stages in
  order, seed after seed (or side by side: `cores_per_stage`); returns
  {stage: its final metrics} (with seeds: {seed: {stage: ...}})."""
  validate_config(config)
  for name in only:
    if name not in config.order:
      raise errors.ConfigError(
          f'--only names {name!r}; stages: {list(config.order)}')
  workdir = pathlib.Path(workdir)
  runs = seed_runs(config, workdir)
  for _, cfg, wd in runs:
    check(cfg, wd, overwrite)
  t0 = time.perf_counter()
  if pipeline_jobs.side_by_side(config):
    per_seed = _run_side_by_side(config, runs, only)
  else:
    per_seed = {}
    for n, (seed, cfg, wd) in enumerate(runs):
      if seed is not None:
        print(f'##### seed {seed} ({n + 1} of {len(runs)}) in {wd}',
              flush=True)
      per_seed[seed] = _run_stages(cfg, wd, only)
  if runs[0][0] is None:
    return per_seed[None]
  summary = {'seeds': {str(s): r for s, r in per_seed.items()},
             'wall_time_s': time.perf_counter() - t0,
             'stages_wall_time_s': sum(
                 float(d.get('wall_time_s', 0.0))
                 for r in per_seed.values() for d in r.values())}
  table = study.study_table(config, per_seed)
  seed_dirs = {s: wd for s, _, wd in runs}
  timed = study.equal_time_rows(config, seed_dirs, {
      name: pipeline_jobs.stage_cores(config, config[name].stage)
      for name in config.order})
  if timed:
    summary['equal_time'] = timed
    table += '\n\n' + study.equal_time_table(timed)
  run_records.write_text_atomic(workdir / 'study.json',
                                json.dumps(summary, indent=1, default=str))
  run_records.write_text_atomic(workdir / 'study.md', table + '\n')
  print(table)
  png = study.draw_study(config, seed_dirs, workdir / 'study.png')
  print(f'##### study done: {len(runs)} seeds in '
        f'{console.format_seconds(summary["wall_time_s"])} (the stages\' own '
        f'wall time in all: '
        f'{console.format_seconds(summary["stages_wall_time_s"])}); tables in '
        f'{workdir / "study.md"}' + (f', curves in {png}' if png else ''))
  return per_seed


def stage_refs(stage_config: ml_collections.ConfigDict) -> list[str]:
  """The stages whose workdirs `stage_config` reads ('@name', '@best:a,b')."""
  return [ref for _, value in _strings(stage_config) if value.startswith('@')
          for ref in _refs(value)]


def _stage_job(config: ml_collections.ConfigDict, workdir: pathlib.Path,
               name: str) -> dict[str, Any]:
  dirs = stage_dirs(config, workdir)
  return {'config': resolve(config[name], dirs), 'workdir': str(dirs[name])}


def _base_job(stage_config: ml_collections.ConfigDict,
              workdir: pathlib.Path) -> dict[str, Any]:
  return {'config': stage_config, 'workdir': str(workdir), 'base_only': True}


def side_by_side_jobs(config: ml_collections.ConfigDict, runs,
                      only: tuple[str, ...] = ()) -> list[pipeline_jobs.Job]:
  """The jobs of `runs` (`seed_runs`) side by side: each missing tiny base,
  then each unfinished stage (in --only, when given), stage by stage, seed by
  seed; each waits for the stages it reads and the base it starts from."""
  bases: dict[str, pipeline_jobs.Job] = {}
  jobs = []
  for i, name in enumerate(config.order):
    for seed, cfg, wd in runs:
      prefix = '' if seed is None else f'seed{seed}/'
      header = f'=== pipeline stage {i + 1}/{len(config.order)}: {prefix}{name}'
      if run_records.read_done(wd / name) is not None:
        print(f'{header} ({cfg[name].stage}): finished before, skipped')
        continue
      if only and name not in only:
        print(f'{header}: not in --only, skipped')
        continue
      deps = [prefix + ref for ref in stage_refs(cfg[name])]
      stage_config = resolve(cfg[name], stage_dirs(cfg, wd))
      base = tiny_base.missing(stage_config)
      if base is not None:  # pretrained once, before the stages that need it
        key = f'{prefix}base {base.name}'
        if key not in bases:
          bases[key] = pipeline_jobs.Job(
              key, (), functools.partial(_base_job, stage_config, wd),
              wd / f'base-{base.name}.log', pipeline_jobs.stage_cores(config, 'sft'))
        deps.append(key)
      jobs.append(pipeline_jobs.Job(
          prefix + name, tuple(dict.fromkeys(deps)),
          functools.partial(_stage_job, cfg, wd, name), wd / f'{name}.log',
          pipeline_jobs.stage_cores(config, cfg[name].stage)))
  jobs = list(bases.values()) + jobs
  keys = {j.key for j in jobs}
  for j in jobs:  # finished (or left out) stages are not waited for
    j.deps = tuple(d for d in j.deps if d in keys)
  return jobs


def _run_side_by_side(config: ml_collections.ConfigDict, runs,
                      only: tuple[str, ...]) -> dict[Any, dict[str, Any]]:
  """Runs the unfinished stages of every seed side by side
  (`cores_per_stage`, module doc); returns {seed: {stage: done.json}}."""
  jobs = side_by_side_jobs(config, runs, only)
  t0 = time.perf_counter()
  if jobs:
    pipeline_jobs.run_jobs(jobs)
  per_seed = {}
  for seed, cfg, wd in runs:
    dirs = stage_dirs(cfg, wd)
    results = {name: run_records.read_done(dirs[name])
               for name in cfg.order}
    per_seed[seed] = {n: r for n, r in results.items() if r is not None}
    _seed_summary(cfg, wd, per_seed[seed], time.perf_counter() - t0)
  return per_seed


def _run_stages(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                only: tuple[str, ...]) -> dict[str, Any]:
  """Runs (or skips, or resumes) the stages of one checked run in order."""
  workdir.mkdir(parents=True, exist_ok=True)
  dirs = stage_dirs(config, workdir)
  results: dict[str, Any] = {}
  t0 = time.perf_counter()
  for i, name in enumerate(config.order):
    header = f'=== pipeline stage {i + 1}/{len(config.order)}: {name}'
    done = run_records.read_done(dirs[name])
    if done is not None:
      print(f'{header} ({config[name].stage}): finished before, skipped')
      results[name] = done
      continue
    if only and name not in only:
      print(f'{header}: not in --only, skipped')
      continue
    print(f'{header} ({config[name].stage}) in {dirs[name]}', flush=True)
    stage_config = resolve(config[name], dirs)
    train.run(stage_config, str(dirs[name]))
    results[name] = run_records.read_done(dirs[name]) or {}
  _seed_summary(config, workdir, results, time.perf_counter() - t0)
  return results


def _seed_summary(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                  results: dict[str, Any], wall_time_s: float) -> None:
  """Writes WORKDIR/pipeline.json and prints the stage table."""
  workdir.mkdir(parents=True, exist_ok=True)
  # This invocation's time, and the stages' own (a restart skips some).
  summary = {'stages': results, 'wall_time_s': wall_time_s,
             'stages_wall_time_s': sum(float(r.get('wall_time_s', 0.0))
                                       for r in results.values()),
             'cores_per_stage': {
                 name: pipeline_jobs.stage_cores(config, config[name].stage)
                 for name in results}}
  run_records.write_text_atomic(workdir / 'pipeline.json',
                                json.dumps(summary, indent=1, default=str))
  print(stage_table(config, results))
  print(f'=== pipeline done in {console.format_seconds(summary["wall_time_s"])}'
        f' (the stages\' own wall time in all: '
        f'{console.format_seconds(summary["stages_wall_time_s"])}); summary in '
        f'{workdir / "pipeline.json"}')


# Columns of the end-of-run table: (header, done.json key). Every training
# stage records its held-out metrics under eval/; a rejection_sampling stage
# has no held-out eval (its sample pass@1 and the number of examples it kept
# are shown instead).
_COLUMNS = (
    ('pass@1', 'eval/pass@1'),
    ('format', 'eval/format_rate'),
    ('language', 'eval/language_consistency'),
    ('length', 'eval/mean_length'),
)


def stage_table(config: ml_collections.ConfigDict,
                results: dict[str, dict[str, Any]]) -> str:
  """A markdown table of each finished stage's held-out metrics and wall time."""
  head = ['stage', 'kind'] + [c for c, _ in _COLUMNS] + ['wall time', 'note']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for name in config.order:
    r = results.get(name)
    if r is None:
      continue
    cells = [name, config[name].stage]
    for _, key in _COLUMNS:
      v = r.get(key) if isinstance(r.get(key), (int, float)) else None
      held_out = config[name].stage != 'rejection_sampling'
      cells.append(f'{v:.3f}' if v is not None and held_out else '')
    wall = r.get('wall_time_s')
    cells.append(console.format_seconds(wall) if wall is not None else '')
    if config[name].stage == 'rejection_sampling':
      cells.append(f'kept {r.get("kept", 0)} of {r.get("sampled", 0)} '
                   f'samples (sample pass@1 {r.get("pass@1", 0.0):.3f})')
    else:
      cells.append(f'{r.get("step", "")} steps')
    lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
  return '\n'.join(lines)


def run_job(job_file: str) -> None:
  """A side-by-side stage's process (r1jax/pipeline_jobs.py), once pinned:
  runs the stage of `job_file`; an error exits with its one line."""
  job = pipeline_jobs.read_job(job_file)
  logging.set_verbosity(logging.WARNING)
  xla_cache.enable()
  with errors.one_line():
    if job.get('base_only'):  # the tiny base a stage starts from
      tiny_base.ensure(job['config'], pathlib.Path(job['workdir']), print)
    else:
      train.run(job['config'], job['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  xla_cache.enable()  # compiled programs kept for later runs
  with errors.one_line(flags.FLAGS.verbose):  # 'error: ...', no traceback
    run(flags.FLAGS.config, str(pathlib.Path(flags.FLAGS.workdir).absolute()),
        tuple(_ONLY.value), flags.FLAGS.overwrite)


if __name__ == '__main__':
  app.run(main, flags_parser=train.parse_flags)
