"""Start-up checks that the files and directories a config names exist:
model.hf_path (an HF directory or a finished stage's workdir), model.gguf_path,
tokenizer.path, data.path (a JSONL file or a rejection_sampling workdir),
data.local_dir, distill.teacher, model.lora.adapter_path (a PEFT directory
whose rank, alpha and targets are the config's); and that a checkpoint has
the architecture model.preset names (from its config only, before any weight
loads)."""

import json
import pathlib

import ml_collections

from r1jax.errors import MissingFileError
from r1jax.model import hf
from r1jax.model import lora as lora_lib
from r1jax.model import peft
from r1jax.run import adapters
from r1jax.run import checks
from r1jax.run import loading
from r1jax.run import records as run_records


def _has(config, dotted: str) -> bool:
  try:
    checks.config_get(config, dotted)
    return True
  except KeyError:
    return False


def _get(config, dotted: str):
  return checks.config_get(config, dotted)


def _missing(key: str, value: str, what: str, prefix: str) -> MissingFileError:
  return MissingFileError(f'{prefix}.{key}={value!r} {what}')


def _set(config, key: str) -> str:
  """The path at config.<key>, or '' when unset or an '@stage' reference
  (a pipeline checks those when the stage starts)."""
  if not _has(config, key):
    return ''
  value = _get(config, key)
  if not isinstance(value, str) or value.startswith('@'):
    return ''
  return value


def check_files(config: ml_collections.ConfigDict,
                prefix: str = 'config') -> None:
  """Every file or directory the config reads exists; a checkpoint has the
  architecture model.preset names (read from its config only)."""
  hf_path = _set(config, 'model.hf_path')
  gguf_path = _set(config, 'model.gguf_path')
  if hf_path:
    _check_hf_path(config, hf_path, prefix)
  elif gguf_path:
    if not pathlib.Path(gguf_path).is_file():
      raise _missing('model.gguf_path', gguf_path,
                     'is not a file; point it at a .gguf checkpoint', prefix)
    if config.model.get('preset'):
      from r1jax.model import gguf  # pylint: disable=g-import-not-at-top
      loading.check_architecture(config.model.preset,
                                gguf.config_from_gguf(gguf_path), gguf_path,
                                config.model.get('overrides'))
  tok = _set(config, 'tokenizer.path')
  if tok and tok != 'train' and not (
      pathlib.Path(tok) / 'tokenizer.json').is_file():
    what = ('has no tokenizer.json' if pathlib.Path(tok).is_dir()
            else 'does not exist')
    raise _missing('tokenizer.path', tok, f"{what}; point it at a directory "
                   "with tokenizer.json, or set it to '' for the "
                   "checkpoint's own", prefix)
  data_path = _set(config, 'data.path')
  if data_path and _has(config, 'data.source') and (
      config.data.source == 'jsonl'):  # sft.validate_config names an empty one
    sft_jsonl(data_path, prefix)
  local_dir = _set(config, 'data.local_dir')
  if local_dir and not pathlib.Path(local_dir).is_dir():
    raise _missing('data.local_dir', local_dir,
                   'is not a directory; point it at the raw data set files '
                   "(e.g. ../shared/data), or set it to '' to use "
                   '$R1JAX_DATA_DIR or download them', prefix)
  lcfg = lora_lib.from_config(config.get('model'), f'{prefix}.model.lora')
  if lcfg is not None and lcfg.adapter_path:
    peft.check_adapter_config(adapters.adapter_dir(lcfg.adapter_path), lcfg,
                              f'{prefix}.model.lora.adapter_path')
  teacher = _set(config, 'distill.teacher')
  if teacher and not pathlib.Path(teacher).exists():
    raise _missing('distill.teacher', teacher,
                   'does not exist; point it at an HF directory, a GGUF file '
                   "or a finished stage's workdir, or set it to '' for none",
                   prefix)


def _check_hf_path(config, hf_path: str, prefix: str) -> None:
  mc = config.model
  resolved = pathlib.Path(run_records.resolve_hf_path(hf_path))
  config_file = resolved / 'config.json'
  if not config_file.is_file():
    if mc.get('pretrain_if_missing', False):
      return  # the stage pretrains the tiny base model into it
    what = ('has no config.json' if pathlib.Path(hf_path).is_dir()
            else 'does not exist')
    hint = (f', or set {prefix}.model.pretrain_if_missing=True to build the '
            'tiny base model there' if 'pretrain_if_missing' in mc and
            config.get('stage') != 'rejection_sampling' else '')
    raise _missing('model.hf_path', hf_path,
                   f'{what}; point it at a Hugging Face model directory or at '
                   f'the workdir of a finished stage{hint}', prefix)
  if mc.get('preset'):
    cfg = hf.config_from_hf(json.loads(config_file.read_text()))
    loading.check_architecture(mc.preset, cfg, str(resolved), mc.get('overrides'))


def sft_jsonl(path: str, prefix: str = 'config') -> pathlib.Path:
  """The JSONL file config.data.path names: the file itself, or a finished
  rejection_sampling workdir's sft.jsonl (MissingFileError otherwise)."""
  p = pathlib.Path(path)
  if p.is_dir():
    if not (p / run_records.SFT_FILE).is_file():
      raise _missing('data.path', path,
                     f'is a directory without {run_records.SFT_FILE}; point '
                     'it at a JSONL file or at the workdir of a finished '
                     'rejection_sampling stage', prefix)
    return p / run_records.SFT_FILE
  if not p.exists():
    raise _missing('data.path', path,
                   'does not exist; point it at a JSONL file of {prompt, '
                   'completion} lines or at the workdir of a finished '
                   'rejection_sampling stage', prefix)
  return p
