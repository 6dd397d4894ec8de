"""What a stage's workdir records about its run, and how other runs find it.

  * run_config.json: the config the run was started with;
  * done.json: written when the stage ran to the end, with its final metrics;
  * the exported model, an HF directory (WORKDIR/hf, or config.export.hf_dir);
  * `resolve_hf_path`: an HF directory, or the workdir of a finished stage
    (what a pipeline's '@stage' reference becomes), as the HF directory to
    load.
"""

import json
import pathlib
from typing import Any

import jax
import ml_collections

from r1jax import checkpoint as ckpt_lib
from r1jax.stages.errors import MissingFileError

RUN_CONFIG = 'run_config.json'   # the config a workdir's run was started with
DONE = 'done.json'               # written when a stage finishes: its metrics
EXPORT_DIR = 'hf'                # a finished stage's model, as an HF directory


def write_run_config(config: ml_collections.ConfigDict,
                     workdir: pathlib.Path) -> None:
  """Saves the run's config as WORKDIR/run_config.json (process 0)."""
  if jax.process_index() != 0:
    return
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = workdir / (RUN_CONFIG + '.tmp')
  tmp.write_text(config.to_json_best_effort(indent=1, sort_keys=True),
                 encoding='utf-8')
  tmp.replace(workdir / RUN_CONFIG)


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
  path = pathlib.Path(workdir) / DONE
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(scalars, indent=1, sort_keys=True), encoding='utf-8')
  tmp.replace(path)


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
