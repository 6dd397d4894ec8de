"""`python -m r1jax.evaluate --checkpoint=... --datasets=...`: the evaluation
command. Its flags, checkpoint kinds and reports are r1jax/evaluate_cli.py;
the package r1jax.evaluate is the library every caller shares."""

import sys

from r1jax import evaluate_cli
from r1jax.run import xla_cache

if __name__ == '__main__':
  xla_cache.enable()  # compiled programs kept for later runs
  sys.exit(evaluate_cli.main())
