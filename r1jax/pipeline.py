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
sub-workdir holds: a stage whose config changed is refused, or with
--overwrite moved aside (with every later stage's run, which it fed) to
WORKDIR/<name>/overwritten-<time>/ and run again. Files a stage reads are
checked when it starts (an earlier stage may write them).
"""

import difflib
import json
import pathlib
import time
from typing import Any

from absl import app, flags, logging
import ml_collections

from r1jax import config_checks
from r1jax import errors
from r1jax import tiny_base
from r1jax import train
from r1jax.run import console
from r1jax.run import records as run_records

# --config and --workdir are r1jax.train's flags (one config-file flag per
# process); the pipeline adds its own.
_ONLY = flags.DEFINE_list('only', [], 'Run only these stages (by name).')


def stage_dirs(config, workdir: pathlib.Path) -> dict[str, pathlib.Path]:
  return {name: workdir / name for name in config.order}


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
        ref = value[1:]
        if ref not in names[:i]:
          raise errors.ConfigError(
              f'config.{name}.{key}={value!r} refers to stage {ref!r}, which '
              f'is not an earlier stage; earlier: {names[:i]}')
  if len(set(names)) != len(names):
    raise errors.ConfigError(f'config.order={tuple(names)} repeats a stage name')
  for key in config.keys():  # stage sections left out of order may stay
    if key != 'order' and key not in names and not (
        isinstance(config[key], ml_collections.ConfigDict)
        and 'stage' in config[key]):
      close = difflib.get_close_matches(key, ['order'] + names, n=1)
      hint = (f'did you mean config.{close[0]}?' if close else
              f'the keys of a pipeline config are order and its stages '
              f'{names}')
      raise errors.ConfigError(f'unknown key config.{key}; {hint}')


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
      diffs = config_checks.run_config_diff(
          run_records.read_run_config(dirs[name]), resolve(config[name], dirs))
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


def resolve(stage_config: ml_collections.ConfigDict,
            dirs: dict[str, pathlib.Path]) -> ml_collections.ConfigDict:
  """A copy of `stage_config` with '@name' strings made stage workdirs."""
  out = ml_collections.ConfigDict(stage_config.to_dict())
  for key, value in list(_strings(out)):
    if value.startswith('@'):
      node = out
      *parents, leaf = key.split('.')
      for p in parents:
        node = node[p]
      node[leaf] = str(dirs[value[1:]])
  tiny_base.resolve(out)  # model.hf_path's {base_key}: the cached tiny base
  return out


def run(config: ml_collections.ConfigDict, workdir: str,
        only: tuple[str, ...] = (), overwrite: bool = False) -> dict[str, Any]:
  """Checks every stage (see `check`), then runs the stages in order;
  returns {stage: its final metrics}."""
  for name in only:
    if name not in config.order:
      raise errors.ConfigError(
          f'--only names {name!r}; stages: {list(config.order)}')
  workdir = pathlib.Path(workdir)
  check(config, workdir, overwrite)
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
  # This invocation's time, and the stages' own (a restart skips some).
  summary = {'stages': results, 'wall_time_s': time.perf_counter() - t0,
             'stages_wall_time_s': sum(float(r.get('wall_time_s', 0.0))
                                       for r in results.values())}
  run_records.write_text_atomic(workdir / 'pipeline.json',
                                json.dumps(summary, indent=1, default=str))
  print(stage_table(config, results))
  print(f'=== pipeline done in {console.format_seconds(summary["wall_time_s"])}'
        f' (the stages\' own wall time in all: '
        f'{console.format_seconds(summary["stages_wall_time_s"])}); summary in '
        f'{workdir / "pipeline.json"}')
  return results


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  with errors.one_line(flags.FLAGS.verbose):  # 'error: ...', no traceback
    run(flags.FLAGS.config, str(pathlib.Path(flags.FLAGS.workdir).absolute()),
        tuple(_ONLY.value), flags.FLAGS.overwrite)


if __name__ == '__main__':
  app.run(main, flags_parser=train.parse_flags)
