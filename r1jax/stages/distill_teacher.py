"""The frozen teacher of token-level distillation (`config.distill`).

The SFT stage's switch: with distill.teacher set (an HF directory, a GGUF
file, or a finished stage's workdir), `load_teacher` checks that the teacher
shares the student's tokenizer, loads it onto the run's mesh in the student's
dtypes, and returns a `Teacher` that `sft_update.loss_sum` runs on the same batch
inside the jitted step.
"""

import pathlib
from typing import Any, NamedTuple

import ml_collections

from r1jax.model import functional as fn
from r1jax.run import loading
from r1jax.run import records as run_records
from r1jax.tokenizer import Tokenizer


# Token-level distillation, off unless config.distill.teacher is set; a
# config without a `distill` section (pretraining) has it off.
DISTILL_DEFAULTS = dict(teacher='', kind='forward', weight=1.0,
                        temperature=1.0)


def distill_config(config) -> ml_collections.ConfigDict:
  """config.distill with the defaults filled in (all of them without one)."""
  given = config.distill.to_dict() if 'distill' in config else {}
  return ml_collections.ConfigDict({**DISTILL_DEFAULTS, **given})


class Teacher(NamedTuple):
  """A frozen teacher for token-level distillation (`config.distill`)."""
  graphdef: Any
  params: Any
  kind: str            # a name in distill_lib.DISTILL_DIVERGENCES
  weight: float        # loss = (1 - weight) * NLL + weight * KL
  temperature: float
  vocab_size: int      # the shared tokenizer's vocabulary


def load_teacher(config, mesh, tokenizer, log=print) -> Teacher | None:
  """The frozen teacher of `config.distill`, or None when distill.teacher=''.

  The teacher (an HF directory, a GGUF file, or a finished stage's workdir)
  may have any architecture and size, but must share the student's
  tokenizer; that is checked before its weights are read. Its params go onto
  the run's mesh, in the student's dtypes.
  """
  dc = distill_config(config)
  if not dc.teacher:
    return None
  path = dc.teacher
  is_gguf = pathlib.Path(path).is_file()
  if is_gguf:
    from r1jax.model import gguf  # pylint: disable=g-import-not-at-top
    teacher_tokenizer = gguf.tokenizer_from_gguf(path)
  else:
    path = run_records.resolve_hf_path(path)
    if not (pathlib.Path(path) / 'config.json').is_file():
      raise FileNotFoundError(
          f'config.distill.teacher={dc.teacher!r} is not a GGUF file, a '
          'Hugging Face directory (with config.json) or the workdir of a '
          'finished stage.')
    teacher_tokenizer = Tokenizer.from_dir(path)
  check_same_tokenizer(tokenizer, teacher_tokenizer, dc.teacher)
  mc = config.model
  teacher_config = ml_collections.ConfigDict({
      'seed': config.seed,
      'model': {'preset': '', 'overrides': {}, 'dtype': mc.dtype,
                'param_dtype': mc.param_dtype, 'remat': False,
                'hf_path': '' if is_gguf else path,
                'gguf_path': path if is_gguf else ''},
      'tokenizer': {'path': ''}})
  cfg, graphdef, params, _ = loading.load_model_and_tokenizer(
      teacher_config, None, mesh)
  if cfg.vocab_size < tokenizer.vocab_size:
    raise ValueError(
        f'config.distill.teacher={dc.teacher!r} has vocab_size='
        f'{cfg.vocab_size}, fewer rows than its tokenizer\'s '
        f'{tokenizer.vocab_size} tokens')
  log(f'distill: {dc.kind} KL to teacher {dc.teacher} ({cfg.num_layers} '
      f'layers, {fn.count_params(params):,} params), weight {dc.weight}, '
      f'temperature {dc.temperature}')
  return Teacher(graphdef=graphdef, params=params, kind=dc.kind,
                 weight=float(dc.weight), temperature=float(dc.temperature),
                 vocab_size=tokenizer.vocab_size)


def check_same_tokenizer(student: Tokenizer, teacher: Tokenizer,
                         teacher_path: str) -> None:
  """Token-level distillation compares distributions id by id: the two
  tokenizers must map the same tokens to the same ids."""
  vocab_s = student.tok.get_vocab(with_added_tokens=True)
  vocab_t = teacher.tok.get_vocab(with_added_tokens=True)
  if vocab_s == vocab_t:
    return
  token, _ = min(set(vocab_s.items()) ^ set(vocab_t.items()),
                 key=lambda kv: (kv[1], kv[0]))
  raise ValueError(
      f'config.distill.teacher={teacher_path!r}: token-level distillation '
      'needs a shared tokenizer (the same token -> id map), but the '
      f"teacher's has {len(vocab_t)} tokens and the student's {len(vocab_s)}, "
      f'and they differ (e.g. {token!r}: student id {vocab_s.get(token)}, '
      f'teacher id {vocab_t.get(token)}). Sequence-level distillation '
      "(distill.teacher='': SFT on the teacher's traces) works across "
      'tokenizers.')
