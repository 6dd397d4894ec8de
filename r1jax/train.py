r"""Entry point: one config, one command, every stage of the recipe.

    python -m r1jax.train --config=experiments/pretrain_tiny.py --workdir=runs/tiny
    python -m r1jax.train --config=experiments/pretrain_tiny.py:runlocal \
        --workdir=runs/tiny --config.train.steps=50

`config.stage` picks the trainer; each stage module exposes
`validate_config(config)` and `train_and_evaluate(config, workdir) -> dict`
of final metrics. Before the stage starts, the config is checked
(r1jax/config_checks.py): a bad key, type, value, file or workdir
stops the command with one line that names it and says what to do. So do
data, checkpoint and memory errors met later (r1jax/errors.py); --verbose
or R1JAX_TRACEBACK=1 shows their traceback.

A workdir remembers its run's config (WORKDIR/run_config.json): the same
command resumes the run; another config is refused unless --overwrite, which
moves the old run to WORKDIR/overwritten-<time>/ (nothing is deleted).
"""

import difflib
import os
import pathlib
import re
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_parsers

from r1jax import config_checks
from r1jax import errors
from r1jax import tiny_base
from r1jax.run import checks
from r1jax.run import xla_cache
from r1jax.run import file_checks
from r1jax.stages import evaluate as evaluate_stage
from r1jax.stages import grpo
from r1jax.stages import rejection
from r1jax.stages import sft

# Stage name -> module with validate_config(config) and
# train_and_evaluate(config, workdir).
STAGES = {
    'sft': sft,
    'grpo': grpo,
    'rejection_sampling': rejection,
    'evaluate': evaluate_stage,
}

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (ml_collections).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics and samples.')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'When WORKDIR holds a run of another config, move it '
    'to WORKDIR/overwritten-<time>/ and start afresh (without this flag such '
    'a workdir is refused). A run of the same config always resumes.')
_VERBOSE = flags.DEFINE_bool(
    'verbose', False, 'Show the traceback of an error that is otherwise '
    'printed in one line (a config, data, checkpoint or memory error); the '
    f'environment variable {errors.TRACEBACK_ENV}=1 does the same.')
flags.mark_flags_as_required(['config', 'workdir'])


def get_stage(name: str):
  """The module implementing stage `name` (a clear error for unknown names)."""
  if name not in STAGES:
    close = difflib.get_close_matches(str(name), list(STAGES), n=1)
    hint = f'did you mean {close[0]!r}? ' if close else ''
    raise errors.ConfigError(f'config.stage={name!r} is not a known stage; '
                             f'{hint}known: {", ".join(sorted(STAGES))}')
  return STAGES[name]


def check(config, workdir: str, overwrite: bool = False) -> None:
  """Every start-up check of a stage config, before anything loads or
  compiles (raises errors.ConfigError naming the key or file)."""
  if 'stage' not in config:
    hint = (' it is a pipeline config (config.order): run it with python -m '
            'r1jax.pipeline' if 'order' in config else
            f' set config.stage to one of {", ".join(sorted(STAGES))}')
    raise errors.ConfigError(f'config has no `stage` field;{hint}')
  stage = get_stage(config.stage)
  tiny_base.resolve(config)  # model.hf_path's {base_key}: the cached tiny base
  config_checks.check_stage_config(config, stage)
  file_checks.check_files(config)
  config_checks.check_workdir(config, workdir, overwrite)


def run(config, workdir: str, overwrite: bool = False) -> dict:
  """Checks `config` (see `check`), makes sure its base model exists (the
  tiny base is pretrained first when the config asks for it and the cache
  lacks it, r1jax/tiny_base.py), then runs or resumes its stage."""
  check(config, workdir, overwrite)
  say = print if jax.process_index() == 0 else (lambda *_: None)
  tiny_base.ensure(config, pathlib.Path(workdir), say)
  return get_stage(config.stage).train_and_evaluate(config, workdir)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a misspelled --config.<key> as one line that
  suggests the closest key (ml_collections raises a KeyError traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # e.g. --config.rl.group_size=abc
    message = str(e)
    match = re.match(r'flag --config\.([\w.]+)=(.*?): (.*)', message)
    config = _config_file(argv)
    if match and config is not None:
      dotted, value, why = match.groups()
      current = checks.config_get(config, dotted)
      message = (f'--config.{dotted}={value}: config.{dotted} takes '
                 f'{type(current).__name__} values (this config: {current!r}); '
                 f'{why}')
    sys.exit(f'FATAL Flags parsing error: {message}')
  except (KeyError, AttributeError) as e:  # a key the config does not have
    message = _override_error(argv) or str(e)
    sys.exit(f'FATAL Flags parsing error: {message}')


def _config_file(argv: list[str]):
  """The config that --config names in `argv` (no overrides), or None."""
  path = None
  for i, arg in enumerate(argv[1:], 1):
    name, eq, value = arg.lstrip('-').partition('=')
    if name == 'config':
      path = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
  if path is None:
    return None
  try:
    return config_parsers.ConfigFileFlagParser('config', lock_config=False).parse(path)
  except Exception:  # pylint: disable=broad-exception-caught
    return None  # absl reports the config file's own error


def _override_error(argv: list[str]) -> str | None:
  config = _config_file(argv)
  if config is None:
    return None
  overrides = []
  for arg in argv[1:]:
    name = arg.lstrip('-').partition('=')[0]
    if name.startswith(('config.', 'noconfig.')):
      overrides.append(name.split('.', 1)[1])
  for dotted in overrides:
    message = config_checks.override_error(config, dotted)
    if message:
      return message
  return None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # orbax and absl log every checkpoint step at INFO; progress goes to stdout.
    logging.set_verbosity(logging.WARNING)
  xla_cache.enable()  # compiled programs kept for later runs
  config = _CONFIG.value
  workdir = os.path.abspath(_WORKDIR.value)
  logging.info('stage=%s workdir=%s', config.get('stage'), workdir)
  with errors.one_line(_VERBOSE.value):  # 'error: ...', no traceback
    run(config, workdir, _OVERWRITE.value)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
