"""The cache of tiny CPU base models, keyed by what made each one.

experiments/zero.py (and the configs built on it) start from a tiny base
model that `experiments/pretrain_tiny.py` pretrains on first use. Its
`model.hf_path` is a template, `$R1JAX_CACHE/tiny_base/{base_key}`: the key
names the seed (the RL config's own
`seed`, so `--config.seed=S` varies both) and a hash of every pretraining
field that changes the weights, with the corpus version. A changed config
or seed therefore gets a base of its own and never reuses another.

A cached base is complete when its weights and `base_ability.json`
(r1jax/base_ability.py) are there: the pretraining exports both in one
directory swap (r1jax/atomic.py), so a kill leaves the whole base or none.
`ensure` checks that before RL:
  * missing: pretrain it (in WORKDIR/pretrain_tiny/<key>; a killed
    pretraining resumes there);
  * incomplete (weights without the ability record: a pretraining killed
    during export, or a base of older code; only in a directory of the
    cache, named by the key, never in one a user named): moved aside to
    `<dir>.incomplete-<time>` (nothing is deleted), then pretrained again;
  * made by another config (its record names another key): refused, one
    line;
  * failed the ability check: refused, one line with the figures and what to
    change, unless `model.require_ability` is False.
Processes that need the same base of the cache (a pipeline's stages run side
by side, r1jax/pipeline_jobs.py) take turns on a lock file beside it
(`.<key>.lock`): one pretrains, the others wait and then load it.
"""

import contextlib
import fcntl
import pathlib
import time
from typing import Callable

import ml_collections

from experiments import pretrain_tiny
from r1jax import base_ability
from r1jax import errors
from r1jax.run import records as run_records
from r1jax.stages import sft

BASE_KEY = '{base_key}'


def pretrain_config(config) -> ml_collections.ConfigDict:
  """The pretraining config of the tiny base `config` starts from."""
  mc = config.model
  pre = pretrain_tiny.get_config(mc.get('pretrain_arg', ''))
  pre.seed = int(config.seed)
  return pre


def resolve(config) -> None:
  """Fills `{base_key}` in config.model.hf_path and config.tokenizer.path
  (in place; idempotent)."""
  for section, field in (('model', 'hf_path'), ('tokenizer', 'path')):
    node = config.get(section)
    if node is not None and BASE_KEY in node.get(field, ''):
      node[field] = node[field].replace(
          BASE_KEY, base_ability.base_key(pretrain_config(config)))


def missing(config) -> pathlib.Path | None:
  """The cache directory of the tiny base `config` starts from when the
  config asks for it to be pretrained and it is not there yet (a pipeline
  pretrains it before the stages that need it); else None."""
  config = ml_collections.ConfigDict(config.to_dict())
  resolve(config)
  mc = config.get('model')
  if (mc is None or not mc.get('hf_path')
      or not mc.get('pretrain_if_missing', False)):
    return None
  path = pathlib.Path(mc.hf_path)
  if path.name != base_ability.base_key(pretrain_config(config)):
    return None  # not a directory of the cache
  if ((path / 'config.json').is_file()
      and (path / base_ability.ABILITY_FILE).is_file()):
    return None
  return path


def _set_aside(path: pathlib.Path, why: str) -> pathlib.Path:
  dest = path.with_name(f'{path.name}.{why}-{time.strftime("%Y%m%d-%H%M%S")}')
  path.rename(dest)
  return dest


@contextlib.contextmanager
def _turn(path: pathlib.Path, log: Callable[[str], None]):
  """Holds the lock file of the base at `path` (module doc); without one
  where the directory is read-only (a base made there before is only read)."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path.parent / f'.{path.name}.lock', 'a')
  except OSError:
    yield
    return
  with f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      log(f'stage pretrain_tiny: another process is making the base at '
          f'{path}; waiting for it')
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def ensure(config, workdir: pathlib.Path, log: Callable[[str], None]) -> None:
  """Makes config.model.hf_path a complete, checked base (module doc)."""
  resolve(config)
  mc = config.model
  if not mc.hf_path:
    return
  path = pathlib.Path(mc.hf_path)
  tiny = bool(mc.get('pretrain_if_missing', False))
  # A directory of the cache (named by this config's key) follows the cache
  # rules; any other directory is the user's: never moved, nothing written
  # beside it.
  cached = tiny and path.name == base_ability.base_key(pretrain_config(config))
  if not cached:
    _ensure(config, path, tiny, cached, workdir, log)
    return
  with _turn(path, log):
    _ensure(config, path, tiny, cached, workdir, log)


def _ensure(config, path: pathlib.Path, tiny: bool, cached: bool,
            workdir: pathlib.Path, log: Callable[[str], None]) -> None:
  mc = config.model
  # A finished stage's workdir stands for the model it exported.
  resolved = (pathlib.Path(run_records.resolve_hf_path(mc.hf_path))
              if path.is_dir() else path)
  complete = (resolved / 'config.json').is_file()
  record = base_ability.load(resolved) if complete else None
  if cached and path.is_dir() and any(path.iterdir()) and record is None:
    dest = _set_aside(path, 'incomplete')
    log(f'stage pretrain_tiny: {path} holds no {base_ability.ABILITY_FILE} '
        '(a pretraining killed during export, or a base of older code); '
        f'moved it to {dest} and pretraining the base again')
    complete = False
  if not complete:
    if not tiny:
      raise errors.MissingFileError(
          f'config.model.hf_path={mc.hf_path!r} has no config.json. Point it '
          'at a Hugging Face model directory, or set '
          'config.model.pretrain_if_missing=True to build the tiny base model.')
    _pretrain(config, path, workdir, log)
    resolved, record = path, base_ability.load(path)
  if record is not None:
    _check_record(config, resolved, record, cached, log)


def _pretrain(config, path: pathlib.Path, workdir: pathlib.Path, log) -> None:
  pre = pretrain_config(config)
  pre.export.hf_dir = str(path)
  key = base_ability.base_key(pre)
  sub = workdir / 'pretrain_tiny' / key
  arg = config.model.get('pretrain_arg', '')
  log(f'stage pretrain_tiny: no base model at {path}; pretraining it first '
      f'in {sub} (experiments/pretrain_tiny.py:{arg}, seed {pre.seed})')
  sft.train_and_evaluate(pre, str(sub))
  log(f'stage pretrain_tiny: done; base model exported to {path}')


def _check_record(config, path, record, cached: bool, log) -> None:
  figures = record.get('figures', {})
  log(f'base model {path}: ability {base_ability.describe(figures)} '
      f'({"passed" if record.get("passed") else "FAILED"} the check)')
  if cached:
    expected = base_ability.made_by(pretrain_config(config))['base_key']
    got = record.get('made_by', {}).get('base_key')
    if got != expected:
      raise errors.ConfigError(
          f'{path} holds a base made by another config (key {got!r}, this '
          f'config: {expected!r}); move it away or point config.model.hf_path '
          'elsewhere')
  if not record.get('passed', False) and config.model.get(
      'require_ability', True):
    raise errors.ConfigError(
        f'the base model at {path} failed the ability check R1-Zero needs ('
        + '; '.join(record.get('failures', [])) + '): RL would have nothing '
        'to find. Pretrain longer (experiments/pretrain_tiny.py '
        'ability.max_steps), try another --config.seed, or set '
        'config.model.require_ability=False to run anyway')
