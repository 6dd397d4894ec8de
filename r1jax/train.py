r"""Entry point: one config, one command, every stage of the recipe.

    python -m r1jax.train --config=experiments/pretrain_tiny.py --workdir=runs/tiny
    python -m r1jax.train --config=experiments/pretrain_tiny.py:runlocal \
        --workdir=runs/tiny --config.train.steps=50

`config.stage` picks the trainer; each stage module exposes
`train_and_evaluate(config, workdir) -> dict` of final metrics.
"""

import importlib
import os

from absl import app, flags, logging
from ml_collections import config_flags

# Stage name -> module with train_and_evaluate(config, workdir).
STAGES = {
    'sft': 'r1jax.stages.sft',
    'grpo': 'r1jax.stages.grpo',
    'rejection_sampling': 'r1jax.stages.rejection',
}

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (ml_collections).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics and samples.')
flags.mark_flags_as_required(['config', 'workdir'])


def get_stage(name: str):
  """The module implementing stage `name` (a clear error for unknown names)."""
  if name not in STAGES:
    raise ValueError(f'config.stage={name!r} is not a known stage; known: '
                     f'{sorted(STAGES)}')
  return importlib.import_module(STAGES[name])


def run(config, workdir: str) -> dict:
  stage = get_stage(config.stage)
  return stage.train_and_evaluate(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # orbax and absl log every checkpoint step at INFO; progress goes to stdout.
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  workdir = os.path.abspath(_WORKDIR.value)
  logging.info('stage=%s workdir=%s', config.stage, workdir)
  run(config, workdir)


if __name__ == '__main__':
  app.run(main)
