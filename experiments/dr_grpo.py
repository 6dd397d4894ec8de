r"""Dr. GRPO (Liu et al. 2025) over the R1-Zero experiment: no std in the
advantage, no length normalisation in the loss, no KL (experiments/variants.py
'drgrpo').

    python -m r1jax.train --config=experiments/dr_grpo.py --workdir=runs/dr_grpo

Takes the same arguments as experiments/zero.py.
"""

from experiments import variants
from experiments import zero


def get_config(arg: str = ''):
  return variants.apply(zero.get_config(arg), 'drgrpo')
