r"""Dr. GRPO (Liu et al. 2025) over the R1-Zero experiment: no std in the
advantage, no length normalisation in the loss, no KL.

    python -m r1jax.train --config=experiments/dr_grpo.py --workdir=runs/dr_grpo

Takes the same arguments as experiments/zero.py.
"""

from experiments import zero


def get_config(arg: str = ''):
  c = zero.get_config(arg)
  c.rl.advantage = 'drgrpo'             # r - mean(group)
  c.rl.aggregation = 'seq_sum_norm'     # sum / (B * max_len), a constant
  c.rl.beta = 0.0
  return c
