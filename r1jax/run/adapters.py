"""LoRA in a run (config.model.lora): what a stage trains, on which base.

    w = adapters.attach(config, model_cfg, graphdef, params, mesh, log)
    state = train_state.init_train_state(w.params, optimizer, seed, mesh)
    sampler.generate(w.full(state['params']), ...)    # base + adapters
    update_fn = make_update_fn(w.graphdef, ..., frozen=w.frozen)

With LoRA off (rank 0, the default) `attach` hands back the loaded model as
it is: `params` are all the weights, `frozen` is None, `full` is the
identity, and every program is the one a run without this module compiles.
With LoRA on, `graphdef` is the LoRA model's, `params` the adapters (the
only tree the optimizer and the checkpoints hold), `frozen` the loaded base
in model.param_dtype (float32 by default; bfloat16 halves it on an
accelerator, the adapters stay float32), and the GRPO reference is the base
with the adapters switched off (`reference`: zero adapters, no second copy of
the base).

Every LoRA checkpoint records the base's fingerprint (its config and weight
files' contents, not their path) and the adapters' shape (`metadata`); a
resume onto another base, or with another rank or targets, is refused before
anything is read (`check_resume`). The run exports the merged model as a
Hugging Face directory and the adapters alone in the PEFT layout (`export`).
"""

import dataclasses
import hashlib
import json
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import checkpoint as ckpt_lib
from r1jax import errors
from r1jax import parallel
from r1jax.model import functional as fn
from r1jax.model import hf
from r1jax.model import lora as lora_lib
from r1jax.model import peft
from r1jax.run import records

PEFT_DIR = 'peft'  # WORKDIR/peft: the adapters alone, for peft
_META = 'lora'     # the key of a checkpoint's LoRA record


@dataclasses.dataclass
class Weights:
  """What a stage trains (`params`) and what it keeps frozen (`frozen`)."""
  graphdef: Any
  params: Any
  frozen: Any = None
  lora: lora_lib.LoRAConfig | None = None
  fingerprint: str = ''

  def full(self, params):
    """The weights the forward pass reads (sampler, evaluation, log-prob
    passes): `params` themselves, or the adapters with the base."""
    return params if self.frozen is None else lora_lib.combine(params,
                                                               self.frozen)

  def reference(self, params):
    """The GRPO reference's trainable tree at the start: a copy of the
    policy, or with LoRA the adapters switched off (the base itself)."""
    if self.lora is None:
      return copy_tree(params)
    # Laid out as the policy's adapters (as a reset's copy is): one
    # compiled reference pass before and after a reset.
    return jax.device_put(lora_lib.off(params),
                          jax.tree.map(lambda x: x.sharding, params))

  @property
  def dropout(self) -> bool:
    """Whether the trainer draws LoRA dropout masks."""
    return self.lora is not None and self.lora.dropout > 0

  def metadata(self) -> dict | None:
    """What a checkpoint records of the LoRA run (None without LoRA)."""
    if self.lora is None:
      return None
    return {_META: {'rank': self.lora.rank, 'alpha': self.lora.alpha,
                    'targets': list(self.lora.targets),
                    'base': self.fingerprint}}


@jax.jit
def copy_tree(tree):
  """A fresh copy of every array (a reference must not alias donated
  policy buffers)."""
  return jax.tree.map(jnp.copy, tree)


def attach(config, model_cfg, graphdef, params, mesh,
           log: Callable[[str], None] = print) -> Weights:
  """The run's `Weights`: the loaded model, or fresh (A random, B zero) or
  PEFT-loaded (model.lora.adapter_path) adapters on it as a frozen base."""
  lcfg = lora_lib.from_config(config.model)
  if lcfg is None:
    return Weights(graphdef, params)
  lgraphdef, abstract = fn.abstract_lora(model_cfg, lcfg)
  shardings = parallel.param_shardings(mesh, abstract)
  fingerprint = base_fingerprint(config)
  if lcfg.adapter_path:
    values = peft.load_adapters(adapter_dir(lcfg.adapter_path), model_cfg,
                                lcfg, abstract,
                                base_fingerprint=fingerprint)
  else:
    values = lora_lib.init_adapters(abstract, jax.random.key(config.seed))
  adapters = jax.device_put(values, shardings)
  n, total = lora_lib.count(adapters), fn.count_params(params)
  log(f'LoRA rank {lcfg.rank}, alpha {lcfg.alpha:g} on '
      f'{",".join(lcfg.targets)}: {n:,} trained params ({100 * n / total:.2f}%'
      f' of the {total:,} frozen ones, kept in '
      f'{np.dtype(model_cfg.param_dtype).name})'
      + (f'; adapters from {lcfg.adapter_path}' if lcfg.adapter_path else ''))
  return Weights(lgraphdef, adapters, params, lcfg, fingerprint)


def adapter_dir(path: str) -> pathlib.Path:
  """A PEFT directory, or a finished LoRA run's workdir (its peft/)."""
  p = pathlib.Path(path)
  if not (p / peft.CONFIG_FILE).exists() and (p / PEFT_DIR).is_dir():
    return p / PEFT_DIR
  return p


# ================================================================ the base


def _file_digest(h, path: pathlib.Path, edge: int = 1 << 20) -> None:
  """Name, size and the first and last `edge` bytes of a file: cheap, and
  different for any two checkpoints (headers, first and last tensors)."""
  size = path.stat().st_size
  h.update(f'{path.name}:{size}:'.encode())
  with open(path, 'rb') as f:
    h.update(f.read(edge))
    if size > 2 * edge:
      f.seek(size - edge)
      h.update(f.read(edge))
    elif size > edge:
      h.update(f.read())


def base_fingerprint(config) -> str:
  """The identity of the run's base model, from its contents: a Hugging
  Face directory's config.json and weight files, a GGUF file, or a preset
  with its overrides and seed (a random init)."""
  mc = config.model
  h = hashlib.sha256()
  if mc.get('hf_path'):
    d = pathlib.Path(records.resolve_hf_path(mc.hf_path))
    h.update((d / 'config.json').read_bytes())
    for f in sorted(d.glob('*.safetensors')):
      _file_digest(h, f)
  elif mc.get('gguf_path'):
    _file_digest(h, pathlib.Path(mc.gguf_path))
  else:
    h.update(json.dumps({'preset': mc.preset,
                         'overrides': dict(mc.get('overrides') or {}),
                         'seed': config.seed}, sort_keys=True).encode())
  return h.hexdigest()[:16]


def check_resume(checkpointer: ckpt_lib.Checkpointer, w: Weights,
                 config_key: str = 'config.model.lora') -> None:
  """Refuses, in one line before any array is read, a newest checkpoint
  whose LoRA record differs from this run: another base model, another
  rank or target set, LoRA on one side only."""
  steps = checkpointer.committed_steps()
  if not steps:
    return
  step = steps[-1]
  saved = checkpointer.metadata(step).get(_META)
  where = checkpointer.directory / str(step)
  if w.lora is None:
    if saved:
      raise errors.CheckpointError(
          f'{where} holds LoRA adapters (rank {saved["rank"]}) but '
          f'{config_key}.rank=0; resume it with {config_key}.rank='
          f'{saved["rank"]}, or start this run in another --workdir')
    return
  if not saved:
    raise errors.CheckpointError(
        f'{where} holds a full fine-tuning run, not LoRA adapters, but '
        f'{config_key}.rank={w.lora.rank}; resume it with '
        f'{config_key}.rank=0, or start this run in another --workdir')
  if saved['base'] != w.fingerprint:
    raise errors.CheckpointError(
        f'{where} holds LoRA adapters trained on another base model '
        f'(fingerprint {saved["base"]}; config.model names one with '
        f'{w.fingerprint}); resume with the base it was trained on, or start '
        'this run in another --workdir')
  if saved['rank'] != w.lora.rank:
    raise errors.CheckpointError(
        f'{where} holds LoRA adapters of rank {saved["rank"]} but '
        f'{config_key}.rank={w.lora.rank}; set it to {saved["rank"]} to '
        'resume, or start this run in another --workdir')
  if list(saved['targets']) != list(w.lora.targets):
    raise errors.CheckpointError(
        f'{where} holds LoRA adapters on {",".join(saved["targets"])} but '
        f'{config_key}.targets={tuple(w.lora.targets)}; set it to match to '
        'resume, or start this run in another --workdir')


# ================================================================== export


def export(out_dir, model_cfg, w: Weights, params, tokenizer, workdir, *,
           base_name: str = '', extra_files=None,
           log: Callable[[str], None] = print) -> None:
  """The Hugging Face directory of the trained model (with LoRA: the base
  with the adapters merged in), and with LoRA the adapters alone in the PEFT
  layout in WORKDIR/peft. Every process calls it; process 0 writes."""
  if w.lora is None:
    hf.save_pretrained(out_dir, model_cfg, params, tokenizer=tokenizer,
                       extra_files=extra_files)
    log(f'exported Hugging Face checkpoint to {out_dir}')
    return
  merged = lora_lib.merged_params(params, w.frozen, w.lora)
  hf.save_pretrained(out_dir, model_cfg, merged, tokenizer=tokenizer,
                     extra_files=extra_files)
  del merged
  peft_dir = pathlib.Path(workdir) / PEFT_DIR
  peft.save_adapters(peft_dir, model_cfg, w.lora, params, base_name=base_name,
                     base_fingerprint=w.fingerprint)
  log(f'exported the merged model (Hugging Face) to {out_dir} and the LoRA '
      f'adapters (PEFT) to {peft_dir}')
