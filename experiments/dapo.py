r"""DAPO (Yu et al. 2025) over the R1-Zero experiment: clip-higher, token-level
loss, no KL, dynamic sampling and overlong reward shaping.

    python -m r1jax.train --config=experiments/dapo.py --workdir=runs/dapo

Takes the same arguments as experiments/zero.py (e.g. `:model=qwen2.5-math-1.5b`).
"""

from experiments import zero


def get_config(arg: str = ''):
  c = zero.get_config(arg)
  c.rl.epsilon_high = 0.28              # clip-higher
  c.rl.aggregation = 'token_mean'       # every token weighs the same
  c.rl.beta = 0.0                       # no KL term, no reference model
  c.rl.dynamic_sampling = True          # drop groups with equal rewards
  c.rl.mask_truncated = False           # soft overlong punishment instead
  budget = c.sampling.max_new_tokens
  c.rewards.weights['overlong'] = 1.0   # DAPO eq. 13, added to the reward
  c.rewards.options['overlong'] = {'max_len': budget, 'buffer': budget // 4}
  return c
