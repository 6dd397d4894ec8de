r"""R1-Zero's main job for several seeds, each from its own empty cache.

    python scripts/seed_study.py --seeds=0,1,2,3,4 --workdir=runs/seeds
    python scripts/seed_study.py --seeds=0,1 --workdir=/tmp/s -- \
        --config=experiments/zero.py:runlocal        # a quick smoke study

For each seed S it runs

    R1JAX_CACHE=WORKDIR/seedS/cache python -m r1jax.train \
        --config=experiments/zero.py --workdir=WORKDIR/seedS/run --config.seed=S

(the seed is both the tiny base's pretraining seed and the RL seed; the
cache starts empty, so the base is pretrained from scratch) one after the
other, never two at once (their wall times are part of the result). Text
after `--` replaces the config and adds overrides for every seed. A seed
whose run finished (done.json) is skipped, so the same command resumes a
killed study; a killed run resumes from its last checkpoint. Each seed's
wall time is the sum over the attempts that ran it (WORKDIR/seedS/wall.json).

At the end (and with --report alone, from what is on disk) it prints a table:
per seed the base's ability figures (r1jax/base_ability.py), pass@1, cons@4,
greedy accuracy, format rate, mean length and reflection at step 0 and at
the end, the gain and the wall time, then the mean and standard deviation
over seeds; writes it as WORKDIR/seeds.json and WORKDIR/seeds.md; and draws
WORKDIR/seeds.png, every seed's curves overlaid (held-out pass@1, format,
mean length, reflection).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import plot_metrics  # pylint: disable=g-import-not-at-top,wrong-import-position

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_DEFAULT_CONFIG = '--config=experiments/zero.py'

# (column, where it comes from, format)
_EVAL_KEYS = ('pass@1', 'cons@4', 'greedy_accuracy', 'format_rate',
              'mean_length', 'reflection_rate', 'recheck_rate')


def seed_dir(workdir: pathlib.Path, seed: int) -> pathlib.Path:
  return workdir / f'seed{seed}'


def run_seed(workdir: pathlib.Path, seed: int, extra: list[str]) -> None:
  """Runs (or resumes) one seed's main job; skips a finished one."""
  d = seed_dir(workdir, seed)
  run = d / 'run'
  if (run / 'done.json').is_file():
    print(f'seed {seed}: finished earlier ({run}); skipped', flush=True)
    return
  d.mkdir(parents=True, exist_ok=True)
  args = extra if any(a.startswith('--config=') for a in extra) else (
      [_DEFAULT_CONFIG] + extra)
  cmd = [sys.executable, '-m', 'r1jax.train', *args, f'--workdir={run}',
         f'--config.seed={seed}']
  env = dict(os.environ, R1JAX_CACHE=str(d / 'cache'))
  print(f'seed {seed}: {" ".join(cmd)} (log: {d / "log.txt"})', flush=True)
  wall_file = d / 'wall.json'
  spent = json.loads(wall_file.read_text())['wall_s'] if wall_file.is_file() else 0.0
  t0 = time.perf_counter()
  with open(d / 'log.txt', 'a') as log:
    rc = subprocess.call(cmd, cwd=_ROOT, env=env, stdout=log,
                         stderr=subprocess.STDOUT)
  spent += time.perf_counter() - t0
  tmp = wall_file.with_suffix('.tmp')
  tmp.write_text(json.dumps({'wall_s': spent}))
  tmp.replace(wall_file)
  if rc != 0:  # reported in the table; the study goes on with the next seed
    tail = (d / 'log.txt').read_text().splitlines()[-3:]
    print(f'seed {seed}: the run failed (exit {rc}); last lines of '
          f'{d / "log.txt"}:\n' + '\n'.join(tail), flush=True)


def _base_ability(d: pathlib.Path) -> dict:
  for path in sorted((d / 'cache' / 'tiny_base').glob('*/base_ability.json')):
    return json.loads(path.read_text())
  return {}


def seed_row(workdir: pathlib.Path, seed: int) -> dict | None:
  """One seed's figures from its files, or None when it has not started.
  A seed whose base failed the ability check has its base figures only."""
  d = seed_dir(workdir, seed)
  run = d / 'run'
  ability = _base_ability(d)
  if not (run / 'done.json').is_file() and not ability:
    return None
  metrics = (plot_metrics.load_run(run) if (run / 'metrics.jsonl').is_file()
             else {})
  row = {'seed': seed, 'status': 'finished' if (run / 'done.json').is_file()
         else ('base failed the check' if not ability.get('passed', True)
               else 'not finished')}
  ability = _base_ability(d)
  for k in ('gap', 'steps_share', 'steps_accuracy', 'direct_accuracy',
            'single_step_accuracy', 'plain_steps_accuracy'):
    row[f'base/{k}'] = ability.get('figures', {}).get(k, float('nan'))
  row['base/steps'] = ability.get('made_by', {}).get('steps', float('nan'))
  for k in _EVAL_KEYS:
    steps, values = metrics.get(f'eval/{k}', (np.zeros(0), np.zeros(0)))
    if len(values):
      row[f'start/{k}'] = float(values[0])
      if row['status'] == 'finished':  # a killed run's last eval is no end
        row[f'end/{k}'] = float(values[-1])
        row['end_step'] = int(steps[-1])
  row['gain'] = row.get('end/pass@1', np.nan) - row.get('start/pass@1', np.nan)
  row['length_growth'] = (row.get('end/mean_length', np.nan)
                          - row.get('start/mean_length', np.nan))
  wall = d / 'wall.json'
  row['wall_s'] = json.loads(wall.read_text())['wall_s'] if wall.is_file() else np.nan
  return row


_COLUMNS = (
    ('seed', 'seed', '{:d}'),
    ('base gap', 'base/gap', '{:+.3f}'),
    ('base steps share', 'base/steps_share', '{:.2f}'),
    ('base 1-step acc', 'base/single_step_accuracy', '{:.2f}'),
    ('base asked-steps acc', 'base/plain_steps_accuracy', '{:.2f}'),
    ('pretrain steps', 'base/steps', '{:.0f}'),
    ('pass@1 0', 'start/pass@1', '{:.3f}'),
    ('pass@1 end', 'end/pass@1', '{:.3f}'),
    ('gain', 'gain', '{:+.3f}'),
    ('cons@4 0 -> end', ('start/cons@4', 'end/cons@4'), '{:.3f} -> {:.3f}'),
    ('greedy 0 -> end', ('start/greedy_accuracy', 'end/greedy_accuracy'),
     '{:.3f} -> {:.3f}'),
    ('format 0 -> end', ('start/format_rate', 'end/format_rate'),
     '{:.3f} -> {:.3f}'),
    ('length 0 -> end', ('start/mean_length', 'end/mean_length'),
     '{:.1f} -> {:.1f}'),
    ('reflection 0 -> end', ('start/reflection_rate', 'end/reflection_rate'),
     '{:.3f} -> {:.3f}'),
    ('re-check 0 -> end', ('start/recheck_rate', 'end/recheck_rate'),
     '{:.3f} -> {:.3f}'),
    ('wall', 'wall_s', None),
    ('status', 'status', None),
)


def _cell(row: dict, key, fmt) -> str:
  if key == 'status':
    return str(row.get('status', ''))
  if key == 'wall_s':
    w = row.get('wall_s', np.nan)
    return '-' if not np.isfinite(w) else f'{int(w // 60)} min {int(w % 60):02d} s'
  keys = key if isinstance(key, tuple) else (key,)
  values = [row.get(k, np.nan) for k in keys]
  if any(not np.isfinite(v) for v in values):
    return '-'
  if fmt == '{:d}':
    return str(int(values[0]))
  return fmt.format(*values)


def _mean_std_row(rows: list[dict]) -> tuple[dict, dict]:
  keys = {k for r in rows for k, v in r.items() if isinstance(v, (int, float))}
  mean, std = {'seed': 'mean'}, {'seed': 'std'}
  for k in keys - {'seed'}:
    v = np.asarray([r.get(k, np.nan) for r in rows], np.float64)
    mean[k] = float(np.nanmean(v))
    std[k] = float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0
  return mean, std


def table(rows: list[dict]) -> str:
  """A Markdown table: one row per seed, then mean and std over seeds."""
  head = '| ' + ' | '.join(c for c, _, _ in _COLUMNS) + ' |'
  sep = '|' + '---|' * len(_COLUMNS)
  lines = [head, sep]
  for r in rows:
    lines.append('| ' + ' | '.join(_cell(r, k, f) for _, k, f in _COLUMNS) + ' |')
  if len(rows) > 1:
    for stat in _mean_std_row(rows):
      cells = [stat['seed']] + [_cell(stat, k, f) for _, k, f in _COLUMNS[1:]]
      lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def summary(rows: list[dict]) -> str:
  """The headline figures over seeds, as one paragraph."""
  gains = np.asarray([r.get('gain', np.nan) for r in rows])
  grow = np.asarray([r.get('length_growth', np.nan) for r in rows])
  fmt = np.asarray([r.get('end/format_rate', np.nan) for r in rows])
  sd = lambda x: float(np.nanstd(x, ddof=1)) if np.isfinite(x).sum() > 1 else 0.0
  refl0 = np.asarray([r.get('start/reflection_rate', np.nan) for r in rows])
  refl1 = np.asarray([r.get('end/reflection_rate', np.nan) for r in rows])
  chk0 = np.asarray([r.get('start/recheck_rate', np.nan) for r in rows])
  chk1 = np.asarray([r.get('end/recheck_rate', np.nan) for r in rows])
  return (
      f'{len(rows)} seeds: pass@1 gain {np.nanmean(gains):+.3f} +- '
      f'{sd(gains):.3f} (min {np.nanmin(gains):+.3f}, over the '
      f'{int(np.isfinite(gains).sum())} that ran RL); seeds with gain >= +0.25: '
      f'{int((gains >= 0.25).sum())}/{len(rows)}; end format rate >= 0.95: '
      f'{int((fmt >= 0.95).sum())}/{len(rows)}; mean length growth '
      f'{np.nanmean(grow):+.1f} +- {sd(grow):.1f} tokens; reflection rate '
      f'{np.nanmean(refl0):.3f} -> {np.nanmean(refl1):.3f}, re-check rate '
      f'{np.nanmean(chk0):.3f} -> {np.nanmean(chk1):.3f}')


_PLOTS = (('eval/pass@1', 'held-out pass@1'),
          ('eval/format_rate', 'held-out strict format rate'),
          ('eval/mean_length', 'held-out mean length (tokens)'),
          ('eval/reflection_rate', 'held-out reflection rate'),
          ('train/response_length_mean', 'train mean length (tokens)'),
          ('train/reflection_rate', 'train reflection rate'))


def plot(workdir: pathlib.Path, seeds: list[int], out: pathlib.Path) -> None:
  plt = plot_metrics.plt
  fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
  for i, seed in enumerate(seeds):
    run = seed_dir(workdir, seed) / 'run'
    try:
      metrics = plot_metrics.load_run(run)
    except FileNotFoundError:
      continue
    for ax, (key, title) in zip(axes.flat, _PLOTS):
      if key not in metrics:
        continue
      steps, values = metrics[key]
      if key.startswith('train/') and len(values) > 1:
        ax.plot(steps, values, color=f'C{i}', alpha=0.2, linewidth=0.8)
        values = plot_metrics._ema(values, 0.9)  # pylint: disable=protected-access
        ax.plot(steps, values, color=f'C{i}', linewidth=1.5,
                label=f'seed {seed}')
      else:
        ax.plot(steps, values, color=f'C{i}', marker='o', markersize=4,
                linewidth=1.5, label=f'seed {seed}')
      ax.set_title(title, fontsize=10)
  for ax in axes.flat:
    ax.set_xlabel('GRPO step')
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.suptitle(f'R1-Zero on the tiny base, seeds {seeds} ({workdir})')
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def report(workdir: pathlib.Path, seeds: list[int]) -> list[dict]:
  rows = [r for r in (seed_row(workdir, s) for s in seeds) if r is not None]
  missing = [s for s in seeds
             if not (seed_dir(workdir, s) / 'run' / 'done.json').is_file()]
  if not rows:
    print(f'no seed of {seeds} has finished in {workdir}')
    return rows
  text = table(rows)
  print(text)
  print(summary(rows))
  if missing:
    print(f'not finished: seeds {missing}')
  (workdir / 'seeds.json').write_text(json.dumps(rows, indent=1))
  (workdir / 'seeds.md').write_text(text + '\n\n' + summary(rows) + '\n')
  plot(workdir, seeds, workdir / 'seeds.png')
  print(f'wrote {workdir / "seeds.md"}, {workdir / "seeds.json"}, '
        f'{workdir / "seeds.png"}')
  return rows


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = []
  if '--' in argv:
    i = argv.index('--')
    argv, extra = argv[:i], argv[i + 1:]
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--seeds', default='0,1,2,3,4',
                 help='comma-separated seeds (default 0,1,2,3,4)')
  p.add_argument('--workdir', required=True)
  p.add_argument('--report', action='store_true',
                 help='only print the table of what is on disk')
  args = p.parse_args(argv)
  try:
    seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  except ValueError:
    p.error(f'--seeds={args.seeds!r}: give integers separated by commas')
  workdir = pathlib.Path(args.workdir).resolve()
  if not args.report:
    for seed in seeds:
      run_seed(workdir, seed, extra)
  report(workdir, seeds)
  return 0


if __name__ == '__main__':
  sys.exit(main())
