r"""DAPO (Yu et al. 2025) over the R1-Zero experiment: clip-higher, token-level
loss, no KL, dynamic sampling (experiments/variants.py 'dapo') and overlong
reward shaping.

    python -m r1jax.train --config=experiments/dapo.py --workdir=runs/dapo

Takes the same arguments as experiments/zero.py (e.g. `:model=qwen2.5-math-1.5b`).
"""

from experiments import variants
from experiments import zero


def get_config(arg: str = ''):
  # Clip-higher (epsilon_high 0.28), every token weighs the same
  # (token_mean), no KL term and no reference model (beta 0), groups with
  # equal rewards dropped (dynamic_sampling).
  c = variants.apply(zero.get_config(arg), 'dapo')
  c.rl.mask_truncated = False           # soft overlong punishment instead
  budget = c.sampling.max_new_tokens
  c.rewards.weights['overlong'] = 1.0   # DAPO eq. 13, added to the reward
  c.rewards.options['overlong'] = {'max_len': budget, 'buffer': budget // 4}
  return c
