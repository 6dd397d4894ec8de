"""Prepares the datasets ahead of time (e.g. before going offline).

    python -m r1jax.data.builders --local_dir=../shared/data [--data_dir=DIR]
    python -m r1jax.data.builders gsm8k --rebuild
    python -m r1jax.data.builders mbpp humaneval
"""

import argparse
import sys
from typing import Sequence

from r1jax.data.builders.datasets import prepare


def main(argv: Sequence[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--local_dir', default=None,
                      help='raw jsonl files (default $R1JAX_DATA_DIR, else '
                      'download)')
  parser.add_argument('--data_dir', default=None,
                      help='prepared datasets (default $R1JAX_TFDS_DIR or '
                      '~/.cache/r1jax/tfds)')
  parser.add_argument('--rebuild', action='store_true')
  parser.add_argument('names', nargs='*',
                      default=['gsm8k', 'math', 'aime24', 'amc23', 'mbpp',
                               'humaneval'])
  args = parser.parse_args(argv)
  for name in args.names:
    builder = prepare(name, args.data_dir, args.local_dir, args.rebuild)
    sizes = {s: info.num_examples for s, info in builder.info.splits.items()}
    print(f'{name}: {sizes} in {builder.data_dir}')


if __name__ == '__main__':
  main(sys.argv[1:])
