"""A multi-seed study's report: every stage's figures as mean +- std over
the seeds (`study_table`), a GRPO stage's held-out pass@1 at other stages'
wall time (`equal_time_rows`, `equal_time_table`; a pipeline config's
`equal_time`), and the GRPO stages' held-out curves (`draw_study`).
r1jax.pipeline writes them at the end of a study (WORKDIR/study.md,
study.json, study.png).
"""

import pathlib
from typing import Any

import ml_collections
import numpy as np

from r1jax import metrics as metrics_lib
from r1jax.run import records as run_records


def split_names(names: str) -> list[str]:
  """The stage names of a comma-separated string."""
  return [n.strip() for n in str(names).split(',') if n.strip()]


# Columns of the study table: (header, done.json key); 'cons' is the
# cons@k of the run's eval.num_samples.
_STUDY_COLUMNS = (
    ('pass@1', 'eval/pass@1'),
    ('cons@k', 'cons'),
    ('greedy', 'eval/greedy_accuracy'),
    ('format', 'eval/format_rate'),
    ('language', 'eval/language_consistency'),
    ('length', 'eval/mean_length'),
    ('reflection', 'eval/reflection_rate'),
    # A mixed-language held-out set (r1jax/evaluate: per prompt language):
    # pass@1 per language, and the consistency of the Russian problems'
    # chains of thought that have words at all.
    ('en pass@1', 'eval/en/pass@1'),
    ('ru pass@1', 'eval/ru/pass@1'),
    ('ru language (worded)', 'eval/ru/language_consistency_worded'),
    ('wall time (min)', 'wall_time_s'),
)


def _value(done: dict[str, Any], key: str) -> float | None:
  if key == 'cons':
    key = next((k for k in sorted(done) if k.startswith('eval/cons@')), '')
  v = done.get(key)
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    return None
  return float(v) / 60 if key == 'wall_time_s' else float(v)


def mean_std(values: list[float], fmt: str = '.3f') -> str:
  """'m +- s' over the values (the population std; 'm' alone for one)."""
  if not values:
    return ''
  m = float(np.mean(values))
  if len(values) == 1:
    return f'{m:{fmt}}'
  return f'{m:{fmt}} ± {float(np.std(values)):{fmt}}'


def study_table(config: ml_collections.ConfigDict,
                per_seed: dict[Any, dict[str, dict[str, Any]]]) -> str:
  """Markdown: each stage's held-out figures, mean +- std over the seeds
  that finished it (their count in `seeds`); rejection stages give the
  samples they kept and their pass@1 instead."""
  columns = [(h, k) for h, k in _STUDY_COLUMNS
             if not k.startswith('eval/') or k.count('/') < 2 or any(
                 k in d for r in per_seed.values() for d in r.values())]
  head = ['stage', 'kind', 'seeds'] + [c for c, _ in columns]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for name in config.order:
    dones = [r[name] for r in per_seed.values() if r.get(name)]
    if not dones:
      continue
    kind = config[name].stage
    cells = [name, kind, str(len(dones))]
    for header, key in columns:
      if kind == 'rejection_sampling' and key != 'wall_time_s':
        if header == 'pass@1':  # the samples', not a held-out figure
          cells.append(mean_std([float(d.get('pass@1', 0.0)) for d in dones])
                       + ' (samples)')
        elif header == 'cons@k':
          cells.append('kept ' + mean_std([float(d.get('kept', 0))
                                           for d in dones], '.0f'))
        else:
          cells.append('')
        continue
      values = [v for v in (_value(d, key) for d in dones) if v is not None]
      cells.append(mean_std(values))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _at_time(points: list[tuple[int, float, float]], t: float
             ) -> tuple[float, int, int] | None:
  """pass@1 at time t from (step, time, pass@1) evaluations: interpolated
  between the two that bracket t; (value, step before, step after), None
  when t is past the last evaluation."""
  for (s0, t0, v0), (s1, t1, v1) in zip(points, points[1:]):
    if t0 <= t <= t1:
      w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
      return v0 + w * (v1 - v0), s0, s1
  return None


def equal_time_rows(config: ml_collections.ConfigDict,
                    seed_dirs: dict[int, pathlib.Path],
                    cores: dict[str, int] | None = None) -> list[dict]:
  """For each `config.equal_time` entry and seed that finished its stages:
  the budget T (the named stages' summed wall time), their last stage's
  held-out pass@1, and the GRPO stage's pass@1 at T and at 2T (`_at_time`
  over its evaluations, its time the running sum of its step times).

  `cores` ({stage: the cores it ran on}, stages side by side) makes it equal
  machine time: each named stage's wall time counts times its cores, and T
  is that core time over the GRPO stage's cores (a named stage on 2 cores
  for 5 min is 10 min of a GRPO stage on 1)."""
  cores = cores or {}
  rows = []
  for name, refs in (config.get('equal_time') or {}).items():
    refs = split_names(refs)
    for seed, seed_dir in seed_dirs.items():
      dones = [run_records.read_done(seed_dir / r) for r in refs]
      if any(d is None for d in dones):
        continue
      budget = sum(float(d.get('wall_time_s', 0.0)) * max(cores.get(r, 1), 1)
                   for r, d in zip(refs, dones)) / max(cores.get(name, 1), 1)
      # By step, the last record winning: a resumed run logs again the
      # steps after its checkpoint.
      step_s, evals = {}, {}
      for r in metrics_lib.read_jsonl(seed_dir / name /
                                      run_records.METRICS_FILE):
        if 'time/step' in r:
          step_s[int(r['step'])] = float(r['time/step'])
        if 'eval/pass@1' in r:
          evals[int(r['step'])] = float(r['eval/pass@1'])
      elapsed = sum(step_s.values())
      points = [(s, sum(t for k, t in step_s.items() if k <= s), v)
                for s, v in sorted(evals.items())]
      row = {'stage': name, 'against': ','.join(refs), 'seed': seed,
             'budget_s': budget,
             'against_pass@1': dones[-1].get('eval/pass@1'),
             'stage_time_s': elapsed}
      for f in (1, 2):
        at = _at_time(points, f * budget)
        row[f'pass@1_at_{f}x'] = None if at is None else at[0]
        row[f'steps_at_{f}x'] = None if at is None else at[1:]
      rows.append(row)
  return rows


def equal_time_table(rows: list[dict]) -> str:
  """Markdown: per seed and mean +- std, a GRPO stage's pass@1 at the
  wall time of the stages it is compared with, and at twice it."""
  head = ['stage', 'against', 'seed', 'their time (min)', 'their pass@1',
          'pass@1 at 1x time (steps)', 'pass@1 at 2x time (steps)']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  def cell(v, steps=None, missing='past its last evaluation'):
    if v is None:
      return missing
    return f'{v:.3f}' + (f' ({steps[0]}-{steps[1]})' if steps else '')
  for (name, against) in dict.fromkeys((r['stage'], r['against'])
                                       for r in rows):
    group = [r for r in rows if (r['stage'], r['against']) == (name, against)]
    for r in group:
      lines.append('| ' + ' | '.join([
          name, against, str(r['seed']), f'{r["budget_s"] / 60:.1f}',
          cell(r['against_pass@1'], missing=''),
          cell(r['pass@1_at_1x'], r['steps_at_1x']),
          cell(r['pass@1_at_2x'], r['steps_at_2x'])]) + ' |')
    def ms(key, scale=1.0, fmt='.3f'):
      vals = [r[key] * scale for r in group if r[key] is not None]
      return mean_std(vals, fmt) if len(vals) == len(group) else ''
    lines.append('| ' + ' | '.join([
        name, against, 'mean ± std', ms('budget_s', 1 / 60, '.1f'),
        ms('against_pass@1'), ms('pass@1_at_1x'), ms('pass@1_at_2x')]) + ' |')
  return '\n'.join(lines)


# Panels of study.png: (title, metrics.jsonl key) for each GRPO stage.
_CURVES = (('held-out pass@1', 'eval/pass@1'),
           ('language consistency', 'eval/language_consistency'),
           ('mean length', 'eval/mean_length'))


def draw_study(config: ml_collections.ConfigDict,
               seed_dirs: dict[int, pathlib.Path],
               out: pathlib.Path) -> pathlib.Path | None:
  """`out` (a PNG): per GRPO stage (a row) the held-out curves of `_CURVES`
  over its steps, one line per seed (`seed_dirs`: seed -> its run's
  workdir, as `seed_runs` names it); None without matplotlib or without a
  curve to draw."""
  rows = []
  for name in config.order:
    if config[name].stage != 'grpo':
      continue
    curves = {}
    for seed, seed_dir in seed_dirs.items():
      path = seed_dir / name / run_records.METRICS_FILE
      points = [(r['step'], r) for r in metrics_lib.read_jsonl(path)
                if 'eval/pass@1' in r]
      if points:
        curves[seed] = points
    if curves:
      rows.append((name, curves))
  if not rows:
    return None
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    print('study.png not drawn: matplotlib is not installed (pip install '
          'matplotlib)')
    return None
  fig, axes = plt.subplots(len(rows), len(_CURVES), squeeze=False,
                           figsize=(4 * len(_CURVES), 2.6 * len(rows)))
  for r, (name, curves) in enumerate(rows):
    for c, (title, key) in enumerate(_CURVES):
      ax = axes[r][c]
      for seed, points in curves.items():
        xs = [step for step, row in points if key in row]
        ys = [row[key] for _, row in points if key in row]
        ax.plot(xs, ys, marker='o', label=f'seed {seed}')
      ax.set_title(f'{name}: {title}', fontsize=9)
      ax.set_xlabel('GRPO step', fontsize=8)
      ax.grid(alpha=0.3)
      if r == 0 and c == 0:
        ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=90)
  plt.close(fig)
  return out
