"""LoRA adapters in and out of the PEFT layout (Hugging Face `peft`).

    save_adapters('runs/zero/peft', cfg, lcfg, adapters, base_name='Qwen/...')
    adapters = load_adapters('runs/zero/peft', cfg, lcfg, abstract_adapters)

A directory holds `adapter_config.json` (peft_type LORA, r, lora_alpha,
lora_dropout, target_modules as projection names) and
`adapter_model.safetensors` with PEFT's names and layout, e.g.

    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight  [r, in]
    base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight  [out, r]

(r1jax keeps A [in, r] and B [r, out]: a transpose each way), so that
`peft.PeftModel.from_pretrained(base, dir)` applies the same delta,
scaling alpha / r (scripts/check_peft.py checks it against transformers).
The safetensors metadata carry the base model's fingerprint when r1jax wrote
them: adapters trained on another base are refused by name, as are another
rank, alpha or target set than the config's, and tensors whose shapes are
another architecture's.
"""

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors import safe_open
from safetensors.numpy import save_file

from r1jax import atomic
from r1jax.errors import ConfigError, MissingFileError
from r1jax.model.config import ModelConfig
from r1jax.model.lora import TARGETS, LoRAConfig

CONFIG_FILE = 'adapter_config.json'
WEIGHTS_FILE = 'adapter_model.safetensors'
PREFIX = 'base_model.model.model.layers'
FINGERPRINT_KEY = 'r1jax_base_fingerprint'


def tensor_names(cfg: ModelConfig, lcfg: LoRAConfig
                 ) -> list[tuple[str, tuple, str]]:
  """(PEFT name, r1jax adapter path, 'A' or 'B') of every adapter tensor."""
  rows = []
  for i in range(cfg.num_layers):
    for t in lcfg.targets:
      module, proj = TARGETS[t]
      stem = f'{PREFIX}.{i}.{module}.{proj}'
      path = ('layers', i, module, proj)
      rows.append((f'{stem}.lora_A.weight', path + ('lora_a',), 'A'))
      rows.append((f'{stem}.lora_B.weight', path + ('lora_b',), 'B'))
  return rows


def adapter_config(lcfg: LoRAConfig, base_name: str = '') -> dict[str, Any]:
  """adapter_config.json as peft's LoraConfig writes it (the fields that
  matter for loading; peft fills in the rest)."""
  alpha = lcfg.alpha
  return {
      'peft_type': 'LORA',
      'task_type': 'CAUSAL_LM',
      'base_model_name_or_path': base_name or None,
      'r': lcfg.rank,
      'lora_alpha': int(alpha) if float(alpha).is_integer() else alpha,
      'lora_dropout': lcfg.dropout,
      'target_modules': sorted(TARGETS[t][1] for t in lcfg.targets),
      'bias': 'none',
      'fan_in_fan_out': False,
      'inference_mode': True,
      'init_lora_weights': True,
      'use_rslora': False,
      'use_dora': False,
      'modules_to_save': None,
      'layers_to_transform': None,
      'layers_pattern': None,
      'rank_pattern': {},
      'alpha_pattern': {},
      'revision': None,
  }


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _host(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x), np.float32)


def save_adapters(path: str | os.PathLike, cfg: ModelConfig, lcfg: LoRAConfig,
                  adapters, *, base_name: str = '',
                  base_fingerprint: str = '') -> None:
  """Writes the PEFT directory (whole, then swapped in: r1jax/atomic.py).
  Every process must call it (adapters are gathered); process 0 writes."""
  pure = adapters.to_pure_dict() if isinstance(adapters, nnx.State) else adapters
  tensors = {}
  for name, apath, _ in tensor_names(cfg, lcfg):
    tensors[name] = np.ascontiguousarray(_host(_get(pure, apath)).T)
  if jax.process_index() != 0:
    return
  metadata = {'format': 'pt'}
  if base_fingerprint:
    metadata[FINGERPRINT_KEY] = base_fingerprint
  with atomic.replaced_dir(path) as out:
    save_file(tensors, str(out / WEIGHTS_FILE), metadata=metadata)
    (out / CONFIG_FILE).write_text(
        json.dumps(adapter_config(lcfg, base_name), indent=2) + '\n')


def check_adapter_config(path: str | os.PathLike, lcfg: LoRAConfig,
                         key: str = 'config.model.lora.adapter_path') -> None:
  """A PEFT directory's adapter_config.json fits the config (rank, alpha,
  targets), checked before any weight is read; one line naming the file
  and the key otherwise."""
  path = pathlib.Path(path)
  config_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
  if not config_file.is_file() or not weights.is_file():
    raise MissingFileError(
        f'{key}={str(path)!r} is not a PEFT adapter directory (it needs '
        f'{CONFIG_FILE} and {WEIGHTS_FILE})')
  saved = json.loads(config_file.read_text())
  lk = key.rpartition('.')[0]  # config.model.lora
  if saved.get('peft_type', 'LORA') != 'LORA':
    raise ConfigError(f'{config_file}: peft_type {saved.get("peft_type")!r} '
                      'is not LORA')
  if saved.get('r') != lcfg.rank:
    raise ConfigError(
        f'{config_file} holds adapters of rank r={saved.get("r")} but '
        f'{lk}.rank={lcfg.rank}; set {lk}.rank={saved.get("r")} or start '
        f'fresh adapters ({key}=\'\')')
  if float(saved.get('lora_alpha', 0)) != lcfg.alpha:
    raise ConfigError(
        f'{config_file} has lora_alpha={saved.get("lora_alpha")} but '
        f'{lk}.alpha={lcfg.alpha}; set {lk}.alpha to match')
  want = sorted(TARGETS[t][1] for t in lcfg.targets)
  have = saved.get('target_modules') or []
  have = sorted([have] if isinstance(have, str) else have)
  if have != want:
    raise ConfigError(
        f'{config_file} targets {have} but {lk}.targets names {want}; set '
        f'{lk}.targets to match')


def load_adapters(path: str | os.PathLike, cfg: ModelConfig,
                  lcfg: LoRAConfig, abstract_adapters, *,
                  key: str = 'config.model.lora.adapter_path',
                  base_fingerprint: str = ''):
  """The adapters of a PEFT directory as r1jax's tree (float32 numpy), after
  checking, in one line naming the file or key, that they fit this base
  and this config: rank, alpha, targets (`check_adapter_config`), every
  tensor's shape, and (when both are known) the base model's fingerprint."""
  path = pathlib.Path(path)
  check_adapter_config(path, lcfg, key)
  weights = path / WEIGHTS_FILE
  pure = abstract_adapters.to_pure_dict()
  with safe_open(str(weights), framework='numpy') as f:
    stored = (f.metadata() or {}).get(FINGERPRINT_KEY, '')
    if stored and base_fingerprint and stored != base_fingerprint:
      raise ConfigError(
          f'{weights} was trained on another base model (fingerprint '
          f'{stored}, this base {base_fingerprint}); point {key} at adapters '
          'of this base, or config.model at theirs')
    names = set(f.keys())
    rows = tensor_names(cfg, lcfg)
    missing = [n for n, _, _ in rows if n not in names]
    if missing:
      raise ConfigError(
          f'{weights} is for another base model: it has no {missing[0]} '
          f'({len(missing)} of this base\'s {len(rows)} adapter tensors '
          'missing)')
    extra = sorted(names - {n for n, _, _ in rows})
    if extra:
      raise ConfigError(f'{weights} is for another base model: it has '
                        f'{extra[0]}, which this base has no place for')
    out: dict = jax.tree.map(lambda x: None, pure)
    for name, apath, _ in rows:
      want_shape = tuple(_get(pure, apath).shape)
      x = f.get_tensor(name)
      if tuple(x.shape[::-1]) != want_shape:
        raise ConfigError(
            f'{weights} is for another base model: {name} has shape '
            f'{tuple(x.shape)}, this base needs {want_shape[::-1]}')
      node = out
      for k in apath[:-1]:
        node = node[k]
      node[apath[-1]] = np.ascontiguousarray(x.T).astype(np.float32)
  state = jax.tree.map(lambda x: x, abstract_adapters)
  nnx.replace_by_pure_dict(state, out)
  return state
