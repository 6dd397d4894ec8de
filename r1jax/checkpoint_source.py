"""Which model a path names, loaded: an HF directory, a GGUF file or a
training workdir.

    model = checkpoint_source.load('runs/zero', mesh)
    model.kind, model.source, model.step
    # ('workdir', 'runs/zero/checkpoints/40', 40) for a run killed at step 40

A workdir gives its finished stage's export (WORKDIR/hf, or the config's
export.hf_dir), else the params of its latest orbax checkpoint on the model
its run_config.json describes (that run's base checkpoint or preset, and its
tokenizer; with LoRA the checkpoint's adapters on that base). Everything else
goes through `loading.load_model_and_tokenizer`.
"""

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections

import orbax.checkpoint as ocp

from r1jax import checkpoint as ckpt_lib
from r1jax.errors import CheckpointError
from r1jax.model import lora as lora_lib
from r1jax.run import adapters
from r1jax.run import loading
from r1jax.run import records as run_records


@dataclasses.dataclass
class LoadedModel:
  """A checkpoint ready to sample from."""

  cfg: Any
  graphdef: Any
  params: Any
  tokenizer: Any
  kind: str         # 'hf', 'gguf' or 'workdir'
  source: str       # what was read: the directory, file or checkpoint step
  step: int | None  # the orbax step restored (workdir checkpoints only)


def checkpoint_kind(path: pathlib.Path) -> str:
  """'gguf', 'hf' or 'workdir' (CheckpointError for anything else)."""
  if not path.exists():
    raise CheckpointError(f'{path}: no such file or directory')
  if path.is_file():
    if path.suffix == '.gguf':
      return 'gguf'
    raise CheckpointError(f'{path} is a file but not a .gguf file; give a '
                          'GGUF file, a Hugging Face directory or a workdir')
  if (path / 'config.json').is_file():
    return 'hf'
  if ((path / run_records.RUN_CONFIG).is_file()
      or (path / 'checkpoints').is_dir()
      or (path / run_records.EXPORT_DIR / 'config.json').is_file()):
    return 'workdir'
  raise CheckpointError(
      f'{path} is none of: a GGUF file, a Hugging Face directory '
      f'(no config.json), a training workdir (no {run_records.RUN_CONFIG}, '
      'checkpoints/ or hf/)')


def _source_config(dtype: str, hf_path: str = '', gguf_path: str = ''):
  """The `model` / `tokenizer` sections that loading.load_model_and_tokenizer
  reads, for a checkpoint given on the command line."""
  return ml_collections.ConfigDict({
      'seed': 0,
      'model': {'hf_path': hf_path, 'gguf_path': gguf_path, 'preset': '',
                'dtype': dtype, 'param_dtype': dtype, 'remat': False,
                'overrides': {}},
      'tokenizer': {'path': ''}})


def load(checkpoint: str | pathlib.Path, mesh, dtype: str = '',
               ) -> LoadedModel:
  """The model, params (on `mesh`) and tokenizer of `checkpoint`.

  `dtype` sets compute and parameter dtype ('' = float32, or for a workdir
  checkpoint the run's own).
  """
  path = pathlib.Path(checkpoint)
  kind = checkpoint_kind(path)
  if kind != 'workdir':
    config = _source_config(dtype or 'float32', **(
        {'gguf_path': str(path)} if kind == 'gguf' else {'hf_path': str(path)}))
    cfg, graphdef, params, tok = loading.load_model_and_tokenizer(
        config, path, mesh)
    return LoadedModel(cfg, graphdef, params, tok, kind, str(path), None)

  run = run_records.read_run_config(path)
  exported = (run_records.export_dir(run, path) if run is not None
              else path / run_records.EXPORT_DIR)
  ckpt_dir = path / 'checkpoints'
  latest = None
  if ckpt_dir.is_dir():
    with ckpt_lib.Checkpointer(ckpt_dir) as ckptr:
      latest = ckptr.latest_step()
  finished = run_records.read_done(path) is not None
  if (exported / 'config.json').is_file() and (finished or latest is None):
    config = _source_config(dtype or 'float32', hf_path=str(exported))
    cfg, graphdef, params, tok = loading.load_model_and_tokenizer(
        config, exported, mesh)
    return LoadedModel(cfg, graphdef, params, tok, kind, str(exported), None)
  if latest is None:
    raise CheckpointError(f'{path} is a workdir with no complete '
                          f'checkpoint in {ckpt_dir} and no exported model')
  if run is None:
    raise CheckpointError(
        f'{path} has checkpoints but no {run_records.RUN_CONFIG} to rebuild '
        'its model from')
  return _restore_workdir(path, run, latest, dtype, mesh)


def _restore_workdir(path: pathlib.Path, run, step: int, dtype: str, mesh
                     ) -> LoadedModel:
  """The params of checkpoint `step`, on the model the run was built with.

  The run's model source (base checkpoint or preset) gives the architecture
  and tokenizer; only 'params' is read from the checkpoint, the optimizer
  state, reference params and data position are skipped.
  """
  run.model.remat = False
  if dtype:
    run.model.dtype = dtype
  cfg, graphdef, params, tok = loading.load_model_and_tokenizer(run, path, mesh)
  # A LoRA run's checkpoints hold adapters: they go on the run's base.
  w = adapters.attach(run, cfg, graphdef, params, mesh, log=lambda _: None)
  graphdef, params = w.graphdef, w.params
  ckpt_dir = path / 'checkpoints'
  saved = ocp.v1.metadata(ckpt_dir / str(step)).metadata
  if 'params' not in saved:
    raise CheckpointError(f'{ckpt_dir / str(step)} holds no params '
                          f'(keys: {sorted(saved)})')
  target = {k: jax.tree.map(lambda _: ocp.v1.PLACEHOLDER, v)
            for k, v in saved.items() if k != 'params'}
  target['params'] = ckpt_lib.abstract_like(params)
  with ckpt_lib.Checkpointer(ckpt_dir) as ckptr:
    adapters.check_resume(ckptr, w, 'the run\'s model.lora')
    params = ckptr.restore(step, abstract_state=target)['params']
  if w.lora is not None:
    params = lora_lib.combine(params, w.frozen)
  return LoadedModel(cfg, graphdef, params, tok, 'workdir',
                     str(ckpt_dir / str(step)), step)
