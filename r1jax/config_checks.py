"""Start-up checks of a stage config, run before anything loads or compiles.

Each failure is one line that names the key or file and says what to do:
  keys        a key no experiment config of the stage has (the closest known
              key suggested), or one every experiment config has but this
              config lacks; compared with experiments/*.py (`stage_defaults`)
  types       a value of another type than the experiments' (a string for a
              number, a float for a count)
  names       a template, task or data set that is not registered
  files       model.hf_path, model.gguf_path, tokenizer.path, data.path,
              data.local_dir, distill.teacher pointing nowhere; a checkpoint
              of another architecture than model.preset
  workdir     WORKDIR/run_config.json of a run with another config: refused,
              or with --overwrite moved to WORKDIR/overwritten-<time>/
Impossible combinations of values are each stage's `validate_config`.
"""

import dataclasses
import difflib
import fnmatch
import functools
import importlib
import json
import os
import pathlib
import pkgutil
import time
from typing import Any, Callable

import ml_collections

import experiments
from r1jax.data import synthetic
from r1jax.data.templates import TEMPLATES
from r1jax.errors import ConfigError
from r1jax.model import config as model_config
from r1jax.model import lora
from r1jax.run import checks
from r1jax.run import records as run_records

# Sections whose keys the user chooses (reward names, task names, languages,
# model fields): not compared with the experiments' keys.
OPEN_SECTIONS = ('model.overrides', 'rewards.weights', 'rewards.options',
                 'rl.advantage_options', 'rl.loss_options', 'data.difficulty',
                 'data.languages', 'data.corpus.difficulty',
                 'data.corpus.task_weights', 'eval.difficulty',
                 'eval.languages')

# Fields a resumed run may change (fnmatch patterns): they change how long it
# runs, how often it logs, evaluates or saves, where it runs and how much
# memory it takes, not what it computes. train.steps extends a run (with a
# cosine schedule the decay then stretches to the new length); filters
# re-filter a rejection run's saved samples. Any other difference is refused.
RESUME_SAFE = (
    'train.steps',
    'train.log_every', 'train.checkpoint_every', 'train.keep_checkpoints',
    'train.eval_every', 'train.eval_batches', 'train.sample_every',
    'train.sample_tokens',
    'eval.every', 'eval.at_start', 'eval.num_texts', 'eval.batch_size',
    'train.grad_accum', 'rl.grad_accum', 'model.remat',
    'model.pretrain_if_missing', 'mesh.*', 'distributed.*', 'export.*',
    'filters.*',
)

OVERWRITTEN = 'overwritten-'  # prefix of the folders --overwrite moves runs to

# ===================================================================== keys


@functools.cache
def stage_defaults(stage: str) -> tuple[ml_collections.ConfigDict, ...]:
  """Every experiment config of `stage`: each experiments/*.py get_config(),
  and each stage of the pipeline configs there. Together they are the keys a
  config of that stage may have, and their types."""
  out = []
  for info in sorted(pkgutil.iter_modules(experiments.__path__),
                     key=lambda i: i.name):
    module = importlib.import_module(f'experiments.{info.name}')
    if not hasattr(module, 'get_config'):
      continue
    config = module.get_config('')
    parts = ([config[n] for n in config.order] if 'order' in config
             else [config])
    out += [c for c in parts if c.get('stage') == stage]
  return tuple(out)


@dataclasses.dataclass
class _Tree:
  """Known keys: section path -> child keys; field path -> example values."""
  children: dict[str, set[str]] = dataclasses.field(default_factory=dict)
  examples: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
  count: dict[str, int] = dataclasses.field(default_factory=dict)  # configs with it


def _tree(configs, open_sections=OPEN_SECTIONS) -> _Tree:
  tree = _Tree()

  def walk(node, path):
    tree.children.setdefault(path, set())
    for key in node.keys():
      dotted = _join(path, key)
      value = node[key]
      tree.children[path].add(key)
      tree.examples.setdefault(dotted, []).append(value)
      tree.count[dotted] = tree.count.get(dotted, 0) + 1
      if _is_section(value) and dotted not in open_sections:
        walk(value, dotted)

  for c in configs:
    walk(c, '')
  return tree


@functools.cache
def _stage_tree(stage: str) -> _Tree:
  return _tree(stage_defaults(stage))


def _join(path: str, key: str) -> str:
  return f'{path}.{key}' if path else key


def _is_section(value) -> bool:
  return isinstance(value, (ml_collections.ConfigDict, dict))


def check_keys(config: ml_collections.ConfigDict, stage: str,
               prefix: str = 'config') -> None:
  """Unknown keys, missing keys and wrong types, against the experiments of
  `stage`; `prefix` is how the messages name the config's root."""
  defaults = stage_defaults(stage)
  if not defaults:
    return
  tree = _stage_tree(stage)

  def walk(node, path):
    for key in node.keys():
      dotted = _join(path, key)
      if key not in tree.children.get(path, ()):
        raise ConfigError(unknown_key(prefix, dotted, tree))
      value = node[key]
      why = _type_error(value, tree.examples[dotted])
      if why:
        raise ConfigError(f'{prefix}.{dotted}={_short(value)} {why}')
      if _is_section(value) and dotted not in OPEN_SECTIONS:
        walk(value, dotted)

  walk(config, '')
  for dotted, n in sorted(tree.count.items()):
    parent, _, key = dotted.rpartition('.')
    if n == len(defaults) and _has(config, parent) and key not in _get(
        config, parent):
      raise ConfigError(
          f'{prefix}.{dotted} is missing; every {stage} experiment sets it '
          f'(e.g. {_short(tree.examples[dotted][0])}): add it to the config')
  overrides = _get(config, 'model.overrides') if _has(
      config, 'model.overrides') else {}
  if overrides:
    fields = sorted(f.name for f in dataclasses.fields(model_config.ModelConfig))
    for key in overrides.keys():
      if key not in fields:
        close = difflib.get_close_matches(key, fields, n=1)
        hint = (f'did you mean {prefix}.model.overrides.{close[0]}?' if close
                else f'model fields: {", ".join(fields)}')
        raise ConfigError(f'unknown key {prefix}.model.overrides.{key} (not a '
                          f'model config field); {hint}')


def _has(config, dotted: str) -> bool:
  try:
    _get(config, dotted)
    return True
  except (KeyError, AttributeError, TypeError):
    return False


def _get(config, dotted: str):
  return checks.config_get(config, dotted) if dotted else config


def unknown_key(prefix: str, dotted: str, tree: _Tree) -> str:
  """'unknown key config.rl.grup_size; did you mean config.rl.group_size?'"""
  parent, _, key = dotted.rpartition('.')
  siblings = sorted(tree.children.get(parent, ()))
  close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
  guess = _join(parent, close[0]) if close else None
  if guess is None:  # the right name in another section?
    elsewhere = sorted(p for p in tree.examples if p.rpartition('.')[2] == key)
    guess = elsewhere[0] if elsewhere else None
  if guess is None:
    close = difflib.get_close_matches(dotted, sorted(tree.examples), n=1,
                                      cutoff=0.75)
    guess = close[0] if close else None
  if guess is not None:
    return f'unknown key {prefix}.{dotted}; did you mean {prefix}.{guess}?'
  section = _join(prefix, parent) if parent else prefix
  return (f'unknown key {prefix}.{dotted}; the keys of {section} are: '
          f'{", ".join(siblings)}')


def override_error(config, dotted: str, prefix: str = 'config') -> str | None:
  """The unknown-key line of a command-line override --config.<dotted> of
  `config` (the loaded config file), or None when the key exists."""
  parts = dotted.split('.')
  node = config
  for i, part in enumerate(parts):
    if not _is_section(node):
      return (f'{prefix}.{".".join(parts[:i])} is a value, not a section: '
              f'--{prefix}.{dotted} cannot be set')
    if part not in node:
      tree = _tree([config], open_sections=())
      return unknown_key(prefix, '.'.join(parts[:i + 1]), tree)
    node = node[part]
  return None


_KINDS = ((bool, 'a bool'), (int, 'an int'), (float, 'a float'),
          (str, 'a string'), ((tuple, list), 'a tuple'),
          ((ml_collections.ConfigDict, dict), 'a section'))


def _kind(value) -> str:
  if value is None:
    return 'None'
  for types, name in _KINDS:
    if isinstance(value, types):
      return name
  return type(value).__name__


def _type_error(value, examples) -> str | None:
  """Why `value` does not fit a field whose experiment values are
  `examples`, or None when it does."""
  wanted = {_kind(e) for e in examples}
  got = _kind(value)
  if got in wanted or 'None' in wanted:
    return None
  if got == 'an int' and 'a float' in wanted:  # 1 for 1.0
    return None
  expected = ' or '.join(sorted(wanted))
  return (f'is {got}, but this field takes {expected} (e.g. '
          f'{_short(examples[0])}); set it to a value of that type')


def _short(value) -> str:
  """A one-line repr; a section shows its keys."""
  if _is_section(value):
    return '{' + ', '.join(f'{k}: ...' for k in value.keys()) + '}'
  return repr(value)


# ============================================================ names, files


def check_names(config: ml_collections.ConfigDict,
                prefix: str = 'config') -> None:
  """Templates, synthetic tasks and data sets the config names exist."""
  for key in ('data.template', 'eval.template'):
    _known(config, key, TEMPLATES, prefix)
  for key in ('data.tasks', 'eval.tasks'):
    if _has(config, key):
      for task in _get(config, key):
        if task not in synthetic.TASKS:
          raise ConfigError(
              f'{prefix}.{key} has {task!r}, which is not a synthetic task; '
              f'known: {synthetic.TASKS.names()}')
  if _has(config, 'eval.dataset') and config.eval.dataset not in (
      '', 'synthetic'):
    from r1jax.data.builders import DATASETS  # pylint: disable=g-import-not-at-top
    _known(config, 'eval.dataset', DATASETS, prefix, also=('synthetic',))


def _known(config, key: str, registry, prefix: str, also=()) -> None:
  if not _has(config, key):
    return
  value = _get(config, key)
  names = sorted(registry.names()) + list(also)
  if value not in registry and value not in also:
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f'did you mean {close[0]!r}? ' if close else ''
    raise ConfigError(f'{prefix}.{key}={value!r} is not known; {hint}known: '
                      f'{", ".join(names)}')


# ================================================================= workdir

_ABSENT = '<absent>'

# Keys added after runs were saved without them, with the value that means
# what those runs did: a saved config lacking one resumes when the new
# config leaves it at that value (a run from before LoRA is a rank-0 run).
ADDED_KEYS = {
    'eval.few_shot': 0,
    'eval.few_shot_seed': 0,
    'rl.length_buckets': 0,
    'data.corpus.p_check': 0.0,      # the checking corpus (pretrain_tiny:check)
    'data.corpus.p_slip': 0.15,
    **{f'model.lora.{k}': json.loads(json.dumps(v))
       for k, v in lora.DEFAULTS.items()},
}


def _flat(tree, path: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    dotted = _join(path, key)
    if isinstance(value, dict) and value:
      out.update(_flat(value, dotted))
    else:
      out[dotted] = value
  return out


def _as_json(config) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def run_config_diff(old: ml_collections.ConfigDict | None,
                    new: ml_collections.ConfigDict, finished: bool = False
                    ) -> list[tuple[str, Any, Any]]:
  """(key, old value, new value) of each field that differs between a saved
  run config and `new`, except the RESUME_SAFE ones (but FINISHED_KEYS when
  the saved run has `finished`)."""
  if old is None:
    return []
  a, b = _flat(_as_json(old)), _flat(_as_json(new))
  safe = [p for p in RESUME_SAFE if not (finished and p in FINISHED_KEYS)]
  out = []
  for key in sorted(set(a) | set(b)):
    va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
    if va == _ABSENT and key in ADDED_KEYS and vb == ADDED_KEYS[key]:
      continue
    if va != vb and not any(fnmatch.fnmatchcase(key, p) for p in safe):
      out.append((key, va, vb))
  return out


# Resume-safe for a stage that is still training, but what a finished
# stage's results are: a pipeline compares them too (it skips finished stages).
FINISHED_KEYS = ('train.steps',)


def describe_diff(diffs, limit: int = 6) -> str:
  shown = [f'{k} {v_old!r} -> {v_new!r}' for k, v_old, v_new in diffs[:limit]]
  if len(diffs) > limit:
    shown.append(f'and {len(diffs) - limit} more')
  return ', '.join(shown)


def check_workdir(config: ml_collections.ConfigDict, workdir,
                  overwrite: bool = False,
                  log: Callable[[str], None] = print) -> None:
  """Refuses a workdir whose run_config.json is another config's (one line
  listing the differing keys); with `overwrite`, moves that run aside."""
  workdir = pathlib.Path(workdir)
  if not has_saved_work(workdir):
    return  # e.g. a start that failed before its first checkpoint
  diffs = run_config_diff(run_records.read_run_config(workdir), config)
  if not diffs:
    return
  if not overwrite:
    raise ConfigError(
        f'{workdir} holds a run of another config ({run_records.RUN_CONFIG} '
        f'differs: {describe_diff(diffs)}); use a new --workdir, or pass '
        f'--overwrite to move the old run to {workdir}/{OVERWRITTEN}<time>/ '
        'and start afresh')
  dest = move_aside(workdir)
  log(f'--overwrite: {workdir} held a run of another config '
      f'({describe_diff(diffs)}); moved it to {dest}')


# What a run saves: a workdir with none of these (non-empty) has nothing to
# protect, so a start that failed after writing run_config.json may be retried
# with a corrected config.
SAVED_WORK = ('checkpoints', run_records.DONE, run_records.SAMPLES_FILE,
              run_records.SFT_FILE, run_records.EXPORT_DIR)


def has_saved_work(workdir) -> bool:
  for name in SAVED_WORK:
    path = pathlib.Path(workdir) / name
    if path.is_dir() and any(path.iterdir()):
      return True
    if path.is_file() and path.stat().st_size > 0:
      return True
  return False


def move_aside(workdir: pathlib.Path) -> pathlib.Path:
  """Moves everything in `workdir` (but earlier moved runs) into
  WORKDIR/overwritten-<time>/; returns that folder. Nothing is deleted.

  <time> is the old run_config.json's modification time, so that every
  process of a multi-host run moves into the same folder (an entry another
  process moved first is skipped).
  """
  workdir = pathlib.Path(workdir)
  record = workdir / run_records.RUN_CONFIG
  t = record.stat().st_mtime if record.exists() else time.time()
  dest = workdir / (OVERWRITTEN + time.strftime('%Y%m%d-%H%M%S',
                                                time.localtime(t)))
  dest.mkdir(exist_ok=True)
  for entry in sorted(workdir.iterdir()):
    if entry.name.startswith(OVERWRITTEN):
      continue
    try:
      os.replace(entry, dest / entry.name)
    except FileNotFoundError:
      pass
  return dest


# ==================================================================== all


def check_stage_config(config: ml_collections.ConfigDict, stage_module,
                       prefix: str = 'config') -> None:
  """Keys, types, names and the stage's own value checks (no files, no
  devices): what can be known of a config before anything runs."""
  check_keys(config, config.stage, prefix)
  check_names(config, prefix)
  stage_module.validate_config(config)
