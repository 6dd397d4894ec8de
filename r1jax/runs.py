r"""Looks at a run: its config, its state, its last metrics, what it writes.

    python -m r1jax.runs runs/zero
    python -m r1jax.runs runs/r1                    # a pipeline: every stage
    python -m r1jax.runs runs/r1 --stage=final_rl   # one stage of it
    python -m r1jax.runs runs/zero --samples=8 --config

For one stage's workdir it prints the stage and the key parts of its config
(run_config.json), whether it finished (done.json) or how far it got (the
latest complete checkpoint), the last training metrics (metrics.jsonl), the
base model's and the last held-out evaluation, and the latest completions
with their rewards (GRPO: completions.jsonl; other stages: the sample texts
in metrics.jsonl). For a pipeline's workdir it lists every stage with its
state, then shows the latest stage that started.

It only reads files: it starts no accelerator and changes nothing, so it is
safe to run on a run that is still going.
"""

import argparse
import json
import math
import pathlib
import sys
import time
from typing import Any, Sequence

from r1jax import checkpoint as ckpt_lib
from r1jax import metrics as metrics_lib
from r1jax.run import checks
from r1jax.run import console
from r1jax.run import records as run_records

METRICS = run_records.METRICS_FILE
PIPELINE = 'pipeline.json'

# Config fields worth a line, in this order (those a config has are shown).
CONFIG_KEYS = (
    'model.preset', 'model.hf_path', 'model.gguf_path', 'model.dtype',
    'data.source', 'data.path', 'data.tasks', 'data.template', 'data.split',
    'rewards.weights', 'rewards.accuracy',
    'rl.prompts_per_step', 'rl.group_size', 'rl.advantage', 'rl.policy_loss',
    'rl.aggregation', 'rl.kl_estimator', 'rl.beta', 'rl.dynamic_sampling',
    'sampling.temperature', 'sampling.max_new_tokens',
    'train.steps', 'train.lr', 'train.batch_size',
    'eval.dataset', 'eval.num_problems', 'eval.num_samples',
    'mesh',
)
# Training metrics shown first (then the rest of train/ with --all).
TRAIN_KEYS = (
    'train/reward', 'train/accuracy', 'train/format',
    'train/response_length_mean', 'train/frac_truncated', 'train/kl',
    'train/entropy', 'train/loss', 'train/grad_norm',
    'train/frac_zero_spread_groups', 'train/tokens_per_s', 'time/step',
)
EVAL_PREFIXES = ('pass@', 'cons@', 'greedy_accuracy', 'format_rate',
                 'language_consistency', 'mean_length', 'loss')
# metrics.jsonl keys holding sample texts (held-out evals; SFT's samples).
TEXT_KEYS = ('eval/samples', 'samples')


# ================================================================== reading


def is_run(path: pathlib.Path) -> bool:
  """Whether `path` is the workdir of one stage (a run's own records)."""
  return any((path / name).exists() for name in (
      run_records.RUN_CONFIG, run_records.DONE, METRICS, 'checkpoints'))


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  """Steps with a complete (committed) checkpoint, ascending."""
  root = workdir / 'checkpoints'
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir()
                if p.name.isdigit() and (p / ckpt_lib.COMMIT_MARKER).exists())


def read_jsonl(path: pathlib.Path) -> list[dict]:
  """The rows of a run's jsonl file that name their step."""
  return [r for r in metrics_lib.read_jsonl(path) if 'step' in r]


def merged_steps(rows: Sequence[dict]) -> dict[int, dict]:
  """metrics.jsonl rows merged per step (train/, time/ and eval/ rows)."""
  out: dict[int, dict] = {}
  for row in rows:
    out.setdefault(int(row['step']), {}).update(row)
  return out


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _last_with(steps: dict[int, dict], prefix: str) -> int | None:
  found = [s for s, row in steps.items()
           if any(k.startswith(prefix) and k not in TEXT_KEYS for k in row)]
  return max(found) if found else None


def stage_state(workdir: pathlib.Path) -> dict[str, Any]:
  """What the records in `workdir` say: stage, config, done, steps, rows."""
  config = None
  if (workdir / run_records.RUN_CONFIG).is_file():
    config = json.loads((workdir / run_records.RUN_CONFIG).read_text('utf-8'))
  rows = read_jsonl(workdir / METRICS)
  steps = merged_steps(rows)
  total = None
  if config is not None:
    try:
      total = int(checks.config_get(config, 'train.steps'))
    except (KeyError, TypeError, ValueError):
      total = None
  metric_steps = [s for s, r in steps.items()
                  if any(k.startswith('train/') for k in r)]
  return {
      'workdir': workdir,
      'config': config,
      'stage': (config or {}).get('stage', '?'),
      'done': run_records.read_done(workdir),
      'checkpoints': checkpoint_steps(workdir),
      'steps': steps,
      'last_step': max(metric_steps) if metric_steps else None,
      'total_steps': total,
      'last_write': rows[-1].get('time') if rows else None,
  }


def state_line(s: dict[str, Any]) -> str:
  """'finished at step 120 in 9m12s' / 'stopped or running: step 40 of 120'."""
  total = f' of {s["total_steps"]}' if s['total_steps'] else ''
  ckpt = s['checkpoints'][-1] if s['checkpoints'] else None
  if s['done'] is not None:
    step = s['done'].get('step', s['last_step'])
    wall = s['done'].get('wall_time_s')
    took = f' in {console.format_seconds(wall)}' if _is_number(wall) else ''
    at = f' at step {step}' if step is not None else ''
    return f'finished{at}{took} (done.json)'
  if s['last_step'] is None and ckpt is None:
    return 'started, no training step logged yet'
  parts = [f'not finished: last logged step {s["last_step"]}{total}']
  parts.append(f'latest checkpoint step {ckpt}' if ckpt is not None
               else 'no checkpoint yet')
  if _is_number(s['last_write']):
    ago = time.time() - s['last_write']
    parts.append(f'last write {console.format_seconds(ago)} ago')
  return '; '.join(parts) + ' (the same command resumes it)'


# ================================================================= printing


def _fmt(v: Any) -> str:
  if isinstance(v, bool) or not _is_number(v):
    return str(v)
  if not math.isfinite(v):
    return str(v)
  if isinstance(v, int):
    return f'{v:,}'
  if abs(v) >= 1000:
    return f'{v:,.0f}'
  return f'{v:.4g}'


def _config_value(v: Any) -> str:
  if isinstance(v, dict):
    return ', '.join(f'{k}={_config_value(x)}' for k, x in v.items()) or '{}'
  if isinstance(v, list):
    return '[' + ', '.join(_config_value(x) for x in v) + ']'
  return repr(v) if isinstance(v, str) else _fmt(v)


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> str:
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  line = lambda r: ('  ' + '  '.join(c.ljust(w) for c, w in zip(r, widths))
                    ).rstrip()
  return '\n'.join([line(header), line(tuple('-' * w for w in widths)),
                    *map(line, rows)])


def _text(text: str, max_chars: int, indent: str = '      ') -> str:
  if max_chars and len(text) > max_chars:
    text = text[:max_chars] + f' ... [{len(text) - max_chars} more chars]'
  return '\n'.join(indent + line for line in text.splitlines() or [''])


def describe_config(config: dict | None, full: bool) -> str:
  if config is None:
    return 'config: no run_config.json (a run of an older r1jax?)'
  if full:
    return 'config (run_config.json):\n' + json.dumps(config, indent=1,
                                                      sort_keys=True)
  lines = ['config (run_config.json; --config prints all of it):']
  for key in CONFIG_KEYS:
    try:
      value = checks.config_get(config, key)
    except KeyError:
      continue
    if value in ('', None):
      continue
    lines.append(f'  {key:<24} {_config_value(value)}')
  return '\n'.join(lines)


def describe_metrics(s: dict[str, Any], show_all: bool) -> list[str]:
  out = []
  steps = s['steps']
  last = s['last_step']
  if last is not None:
    row = steps[last]
    keys = [k for k in TRAIN_KEYS if _is_number(row.get(k))]
    if show_all:
      keys += sorted(k for k, v in row.items() if k not in keys and
                     k not in ('step', 'time') and _is_number(v))
    out.append(f'last training step ({last}):')
    out.append(_table([(k, _fmt(row[k])) for k in keys], ('metric', 'value')))
  ev = _last_with(steps, 'eval/')
  if ev is not None:
    base = steps.get(0, {})
    last_row = steps[ev]
    keys = sorted(
        (k for k, v in last_row.items() if k.startswith('eval/') and
         k.count('/') == 1 and _is_number(v) and
         k[len('eval/'):].startswith(EVAL_PREFIXES)),
        key=lambda k: (EVAL_PREFIXES.index(next(
            p for p in EVAL_PREFIXES if k[5:].startswith(p))), k))
    if ev != 0 and any(_is_number(base.get(k)) for k in keys):
      rows = [(k, _fmt(base[k]) if _is_number(base.get(k)) else '',
               _fmt(last_row[k])) for k in keys]
      out.append('held-out evaluation (step 0 = the base model):')
      out.append(_table(rows, ('metric', 'step 0', f'step {ev}')))
    else:
      out.append(f'held-out evaluation (step {ev}):')
      out.append(_table([(k, _fmt(last_row[k])) for k in keys],
                        ('metric', 'value')))
  return out


def describe_samples(s: dict[str, Any], n: int, max_chars: int) -> list[str]:
  """The latest training completions with their rewards (GRPO), then the
  latest sample texts in metrics.jsonl (eval samples; SFT samples)."""
  out = []
  rows = read_jsonl(s['workdir'] / run_records.COMPLETIONS_FILE)
  if rows and n:
    shown = []
    for row in reversed(rows):
      shown = [(row['step'], r) for r in row.get('completions', [])] + shown
      if len(shown) >= n:
        break
    shown = shown[-n:]
    first, last = shown[0][0], shown[-1][0]
    span = f'step {last}' if first == last else f'steps {first}-{last}'
    out.append(f'recent training completions ({run_records.COMPLETIONS_FILE}'
               f', {span}):')
    for step, r in shown:
      parts = ', '.join(f'{k} {_fmt(v)}' for k, v in r.get('rewards', {}).items())
      trunc = ', truncated' if r.get('truncated') else ''
      out.append(f'  step {step} | reward {_fmt(r.get("reward"))} ({parts}) | '
                 f'{r.get("length")} tokens{trunc} | answer '
                 f'{r.get("answer")!r} | problem {r.get("problem")!r}')
      out.append(_text(r.get('completion', ''), max_chars))
  texts = [(step, key, row[key]) for step, row in sorted(s['steps'].items())
           for key in TEXT_KEYS if isinstance(row.get(key), list)]
  if texts and n:
    step, key, samples = texts[-1]
    out.append(f'latest sample texts ({key}, step {step}):')
    for t in samples[:n]:
      out.append(_text(str(t), max_chars, indent='    '))
  return out


def describe_stage(workdir: pathlib.Path, *, samples: int = 4,
                   max_chars: int = 600, full_config: bool = False,
                   show_all: bool = False) -> str:
  """The report on one stage's workdir."""
  s = stage_state(workdir)
  lines = [f'{workdir}: stage {s["stage"]!r}, {state_line(s)}']
  if s['checkpoints']:
    lines.append(f'checkpoints: steps {s["checkpoints"]} in '
                 f'{workdir / "checkpoints"}')
  exported = workdir / run_records.EXPORT_DIR
  if (exported / 'config.json').is_file():
    lines.append(f'exported model: {exported}')
  subruns = [p for p in sorted(workdir.iterdir()) if p.is_dir() and is_run(p)]
  for p in subruns:  # e.g. the tiny base model pretrained first
    sub = stage_state(p)
    lines.append(f'sub-run {p.name}: stage {sub["stage"]!r}, {state_line(sub)}')
  lines.append(describe_config(s['config'], full_config))
  report = workdir / run_records.REPORT_FILE
  if report.is_file():
    r = json.loads(report.read_text('utf-8'))
    kept = r.get('kept', {})
    lines.append(f'rejection sampling: {r.get("sampled")} sampled; left after '
                 'each filter: ' + ', '.join(f'{k} {v}' for k, v in kept.items()))
  lines += describe_metrics(s, show_all)
  if s['done']:
    keys = [k for k in sorted(s['done'])
            if k.startswith(('base/', 'eval/')) and
            k[k.index('/') + 1:].startswith(EVAL_PREFIXES) and
            k.count('/') == 1 and _is_number(s['done'][k])]
    if keys and s['last_step'] is None:
      lines.append('final metrics (done.json):')
      lines.append(_table([(k, _fmt(s['done'][k])) for k in keys],
                          ('metric', 'value')))
  lines += describe_samples(s, samples, max_chars)
  return '\n'.join(lines)


def pipeline_stages(workdir: pathlib.Path) -> list[pathlib.Path]:
  """A pipeline workdir's stage directories, in the order they started."""
  dirs = [p for p in workdir.iterdir() if p.is_dir() and is_run(p)]
  order = []
  if (workdir / PIPELINE).is_file():
    summary = json.loads((workdir / PIPELINE).read_text('utf-8'))
    order = list(summary.get('stages', {}))
  def key(p):
    if p.name in order:
      return (0, order.index(p.name), 0.0)
    marker = p / run_records.RUN_CONFIG
    return (1, 0, (marker if marker.exists() else p).stat().st_mtime)
  return sorted(dirs, key=key)


def describe(workdir: str | pathlib.Path, *, stage: str = '', **kw) -> str:
  """The report `python -m r1jax.runs` prints for `workdir`.

  Raises FileNotFoundError for a path that is neither a stage's nor a
  pipeline's workdir.
  """
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise FileNotFoundError(f'{workdir}: no such directory')
  if stage:
    if not is_run(workdir / stage):
      raise FileNotFoundError(f'{workdir / stage}: no run records there '
                              f'(--stage={stage!r})')
    return describe_stage(workdir / stage, **kw)
  if is_run(workdir):
    return describe_stage(workdir, **kw)
  stages = pipeline_stages(workdir)
  if not stages:
    raise FileNotFoundError(
        f'{workdir} is not an r1jax run: it has no {run_records.RUN_CONFIG}, '
        f'{METRICS}, {run_records.DONE} or checkpoints/, and no sub-directory '
        'with them (a pipeline). Pass the --workdir given to python -m r1jax.train '
        'or python -m r1jax.pipeline.')
  lines = [f'{workdir}: no run records of its own; {len(stages)} stage '
           'workdir(s) in it (a pipeline)' +
           (', all finished (pipeline.json)' if (workdir / PIPELINE).is_file()
            else '')]
  states = [stage_state(p) for p in stages]
  lines.append(_table(
      [(p.name, s['stage'], state_line(s)) for p, s in zip(stages, states)],
      ('stage dir', 'stage', 'state')))
  current = next((p for p, s in zip(stages, states) if s['done'] is None),
                 stages[-1])
  lines.append('')
  lines.append(f'=== {current.name} (--stage=NAME shows another)')
  lines.append(describe_stage(current, **kw))
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m r1jax.runs', description=__doc__.split('\n')[0])
  parser.add_argument('workdir', help='a run\'s --workdir (one stage or a '
                      'pipeline)')
  parser.add_argument('--stage', default='',
                      help='in a pipeline workdir, the stage to show')
  parser.add_argument('--samples', type=int, default=4,
                      help='completions to print (0: none)')
  parser.add_argument('--max_chars', type=int, default=600,
                      help='characters per completion (0: all)')
  parser.add_argument('--config', action='store_true',
                      help='print the whole config, not only its key parts')
  parser.add_argument('--all', action='store_true',
                      help='print every metric of the last training step')
  args = parser.parse_args(argv)
  try:
    print(describe(args.workdir, stage=args.stage, samples=args.samples,
                   max_chars=args.max_chars, full_config=args.config,
                   show_all=args.all))
  except FileNotFoundError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
