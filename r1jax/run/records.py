"""What a stage's workdir records about its run, and how other runs find it.

  * run_config.json: the config the run was started with;
  * done.json: written when the stage ran to the end, with its final metrics;
  * metrics.jsonl (r1jax.metrics.MetricWriter) and completions.jsonl (a few
    GRPO completions per logged step): rows of steps after the checkpoint a
    run resumes from are dropped (`truncate_jsonl_after`), so each file reads
    as one uninterrupted run;
  * rejection sampling's samples.jsonl, sft.jsonl and its report;
  * the exported model, an HF directory (WORKDIR/hf, or config.export.hf_dir),
    written beside its place and then swapped in (hf.save_pretrained);
  * `resolve_hf_path`: an HF directory, or the workdir of a finished stage
    (what a pipeline's '@stage' reference becomes), as the HF directory to
    load.
"""

import json
import pathlib
from typing import Any

import jax
import ml_collections

from r1jax import atomic
from r1jax import checkpoint as ckpt_lib
from r1jax.errors import MissingFileError

RUN_CONFIG = 'run_config.json'   # the config a workdir's run was started with
DONE = 'done.json'               # written when a stage finishes: its metrics
EXPORT_DIR = 'hf'                # a finished stage's model, as an HF directory
METRICS_FILE = 'metrics.jsonl'   # one row per logged step (r1jax.metrics)
# A few completions of each logged GRPO step with their rewards, readable
# without TensorBoard (`python -m r1jax.runs WORKDIR` prints the latest).
COMPLETIONS_FILE = 'completions.jsonl'
SAMPLES_FILE = 'samples.jsonl'   # rejection sampling: every sample, as drawn
SFT_FILE = 'sft.jsonl'           # rejection sampling: the kept ones, for SFT
REPORT_FILE = 'rejection_report.json'


def write_run_config(config: ml_collections.ConfigDict,
                     workdir: pathlib.Path) -> None:
  """Saves the run's config as WORKDIR/run_config.json (process 0)."""
  if jax.process_index() != 0:
    return
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  write_text_atomic(workdir / RUN_CONFIG,
                    config.to_json_best_effort(indent=1, sort_keys=True))


def read_run_config(workdir: pathlib.Path) -> ml_collections.ConfigDict | None:
  """The config saved by `write_run_config`, or None when there is none."""
  path = pathlib.Path(workdir) / RUN_CONFIG
  if not path.is_file():
    return None
  return ml_collections.ConfigDict(json.loads(path.read_text(encoding='utf-8')))


def mark_done(workdir: pathlib.Path, final: dict[str, Any]) -> None:
  """Records that the stage in `workdir` ran to the end (with its metrics)."""
  if jax.process_index() != 0:
    return
  scalars = {k: v for k, v in final.items()
             if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
  write_text_atomic(pathlib.Path(workdir) / DONE,
                    json.dumps(scalars, indent=1, sort_keys=True))


def read_done(workdir: pathlib.Path) -> dict[str, Any] | None:
  path = pathlib.Path(workdir) / DONE
  if not path.is_file():
    return None
  return json.loads(path.read_text(encoding='utf-8'))


def export_dir(config, workdir: pathlib.Path) -> pathlib.Path:
  """Where a stage writes its final model: config.export.hf_dir or WORKDIR/hf."""
  hf_dir = config.get('export', {}).get('hf_dir', '') if 'export' in config else ''
  return pathlib.Path(hf_dir) if hf_dir else pathlib.Path(workdir) / EXPORT_DIR


def resolve_hf_path(path: str) -> str:
  """An HF directory for `path`: itself, or the model an earlier stage's
  workdir exported (WORKDIR/hf, or its config's export.hf_dir).

  A workdir whose stage has not finished fails naming its latest step.
  """
  p = pathlib.Path(path)
  if (p / 'config.json').is_file():
    return str(p)
  if (p / EXPORT_DIR / 'config.json').is_file():
    return str(p / EXPORT_DIR)
  run = read_run_config(p)
  if run is not None:
    exported = export_dir(run, p)
    if (exported / 'config.json').is_file():
      return str(exported)
    steps = ckpt_lib.Checkpointer(p / 'checkpoints').latest_step() if (
        p / 'checkpoints').is_dir() else None
    raise MissingFileError(
        f'{path} is the workdir of a {run.get("stage", "?")!r} run that has not '
        f'finished (latest checkpoint: step {steps}); run it to the end first '
        '(the same command resumes it), or evaluate its checkpoint with '
        'python -m r1jax.evaluate --checkpoint=' + str(path))
  return str(p)


def write_text_atomic(path: pathlib.Path, text: str) -> None:
  """Writes `text` to a temporary name beside `path`, flushes it, then renames
  it: a kill at any moment leaves the old file or the new one, never a part
  (r1jax/atomic.py)."""
  atomic.write_text(path, text)


def truncate_jsonl_after(path: pathlib.Path, step: int) -> int:
  """Drops the rows of `path` whose 'step' is > `step` (a resumed run writes
  them again), and a line cut by a kill mid-write. Returns how many rows were
  dropped; the file is rewritten atomically (process 0 only)."""
  path = pathlib.Path(path)
  if not path.is_file() or jax.process_index() != 0:
    return 0
  kept, dropped = [], 0
  for line in path.read_text(encoding='utf-8').splitlines():
    if not line.strip():
      continue
    try:
      row_step = int(json.loads(line).get('step', 0))
    except (ValueError, AttributeError, TypeError):
      dropped += 1  # a line cut by a kill mid-write
      continue
    if row_step > step:
      dropped += 1
    else:
      kept.append(line + '\n')
  write_text_atomic(path, ''.join(kept))
  return dropped


def append_completions(workdir, step: int, rows: list[dict]) -> None:
  """Appends {'step', 'completions': rows} to WORKDIR/completions.jsonl."""
  if jax.process_index() != 0 or not rows:
    return
  with open(pathlib.Path(workdir) / COMPLETIONS_FILE, 'a',
            encoding='utf-8') as f:
    f.write(json.dumps({'step': int(step), 'completions': rows}) + '\n')
