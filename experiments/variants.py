r"""Published GRPO variants over the R1-Zero experiment, picked by name.

    python -m r1jax.train --config=experiments/variants.py:name=gspo \
      --workdir=runs/gspo

Each entry of `VARIANTS` sets `config.rl` fields of experiments/zero.py (the
names are registry entries of r1jax/rl; `loss_options` are grpo_loss
keywords, as `config.rl.loss_options`). Where a paper does not fix a setting
(aggregation, KL), the choice of the reference implementation it names is
used. experiments/dapo.py and experiments/dr_grpo.py are 'dapo' and 'drgrpo'
with their reward settings. Takes zero.py's arguments too (runlocal, model=,
data=), e.g. `:name=cispo,model=qwen2.5-math-1.5b`.
"""

import ml_collections

from experiments import common
from experiments import zero

VARIANTS = {
    # DeepSeekMath / DeepSeek-R1-Zero as commonly implemented: token ratio,
    # symmetric clip, per-sequence token mean, k3 KL with beta 0.001 (zero.py).
    'grpo': dict(advantage='grpo', dynamic_sampling=False,
                 policy_loss='clipped_token',
                 aggregation='seq_mean_token_mean', kl_estimator='k3',
                 beta=0.001, epsilon_low=0.2, epsilon_high=0.2),
    # DAPO: clip-higher (0.2 / 0.28), token-level mean, no KL, dynamic
    # sampling.
    'dapo': dict(advantage='grpo', dynamic_sampling=True,
                 policy_loss='clipped_token', aggregation='token_mean',
                 beta=0.0, epsilon_low=0.2, epsilon_high=0.28),
    # Dr. GRPO: no std in the advantage, no length normalisation, no KL.
    'drgrpo': dict(advantage='drgrpo', dynamic_sampling=False,
                   policy_loss='clipped_token', aggregation='seq_sum_norm',
                   beta=0.0, epsilon_low=0.2, epsilon_high=0.2),
    # GSPO: length-normalised sequence ratio with its small clip ranges.
    'gspo': dict(advantage='grpo', dynamic_sampling=False, policy_loss='gspo',
                 aggregation='seq_mean_token_mean', beta=0.0,
                 epsilon_low=3e-4, epsilon_high=4e-4),
    # CISPO (MiniMax-M1): clipped stop-gradient IS weight, token-level mean,
    # no lower bound on the weight, upper cap 1 + 4 = 5 (ScaleRL's / TRL's
    # recommended epsilon_max), no KL.
    'cispo': dict(advantage='grpo', dynamic_sampling=False,
                  policy_loss='cispo', aggregation='token_mean', beta=0.0,
                  epsilon_low=0.999, epsilon_high=4.0),
    # GMPO: geometric-mean ratio clipped in log space to (-0.4, 0.4), each
    # sequence counted once (verl's geo_mean).
    'gmpo': dict(advantage='grpo', dynamic_sampling=False, policy_loss='gmpo',
                 aggregation='seq_mean_token_mean', beta=0.0,
                 epsilon_low=0.4, epsilon_high=0.4),
    # SAPO (Qwen): soft gate with tau_pos 1.0, tau_neg 1.05, sequence mean.
    'sapo': dict(advantage='grpo', dynamic_sampling=False, policy_loss='sapo',
                 aggregation='seq_mean_token_mean', beta=0.0,
                 loss_options=dict(
                     policy_options=dict(tau_pos=1.0, tau_neg=1.05))),
    # INTELLECT-2: two-sided clip delta = 4 on top of clip-higher (0.2 /
    # 0.28), token-level mean, no KL.
    'intellect2': dict(advantage='grpo', dynamic_sampling=False,
                       policy_loss='clipped_token', aggregation='token_mean',
                       beta=0.0, epsilon_low=0.2, epsilon_high=0.28,
                       loss_options=dict(delta=4.0)),
    # Clip-Cov / KL-Cov (the entropy-mechanism paper), with verl's defaults
    # on top of DAPO-style clip-higher and token-level mean.
    'clip_cov': dict(advantage='grpo', dynamic_sampling=False,
                     policy_loss='clip_cov', aggregation='token_mean',
                     beta=0.0, epsilon_low=0.2, epsilon_high=0.28,
                     loss_options=dict(policy_options=dict(
                         clip_cov_ratio=2e-4, clip_cov_lb=1.0,
                         clip_cov_ub=5.0))),
    'kl_cov': dict(advantage='grpo', dynamic_sampling=False,
                   policy_loss='kl_cov', aggregation='token_mean', beta=0.0,
                   loss_options=dict(policy_options=dict(
                       kl_cov_ratio=2e-4, kl_cov_coef=1.0))),
    # "Beyond the 80/20 rule": DAPO trained on the top 20% entropy tokens.
    'dapo_top20_entropy': dict(advantage='grpo', dynamic_sampling=True,
                               policy_loss='clipped_token',
                               aggregation='token_mean', beta=0.0,
                               epsilon_low=0.2, epsilon_high=0.28,
                               loss_options=dict(top_entropy_quantile=0.2)),
    # REINFORCE++-baseline (Hu et al.): group mean, batch std, PPO's clipped
    # token ratio, k2 KL in the loss with beta 1e-3 (OpenRLHF's recipe:
    # --use_kl_loss --kl_estimator k2).
    'reinforce_pp_baseline': dict(
        advantage='reinforce_pp_baseline', dynamic_sampling=False,
        policy_loss='clipped_token', aggregation='token_mean',
        kl_estimator='k2', beta=0.001, epsilon_low=0.2, epsilon_high=0.2),
}


def apply(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets variant `name`'s fields in GRPO config `c` (in place); returns c."""
  if name not in VARIANTS:
    raise ValueError(f'unknown variant {name!r}; known: {sorted(VARIANTS)}')
  for key, value in VARIANTS[name].items():
    if key == 'loss_options':
      c.rl.loss_options.update(value)
    else:
      if key not in c.rl:
        raise KeyError(f'variant {name!r} sets rl.{key}, which zero.py lacks')
      c.rl[key] = value
  return c


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, name='grpo', **zero.ARGS)
  c = zero.get_config(common.pack_arg(**{k: args[k] for k in zero.ARGS}))
  return apply(c, args.name)
