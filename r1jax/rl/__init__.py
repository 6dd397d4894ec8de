"""GRPO's algorithm core: small pure functions, each registered by name.

A config switches GRPO variants with strings:

  rl.advantage     ADVANTAGES          'grpo' | 'drgrpo' | 'rloo' | 'opo' |
                                       'reinforce_pp' |
                                       'reinforce_pp_baseline' | 'remax'
  rl.policy_loss   POLICY_LOSSES       'clipped_token' | 'clipped_sequence' |
                                       'gspo' | 'gspo_token' | 'cispo' |
                                       'sapo' | 'gmpo' | 'clip_cov' | 'kl_cov'
  rl.aggregation   LOSS_AGGREGATIONS   'seq_mean_token_mean' | 'token_mean' |
                                       'seq_sum_norm'
  rl.kl_estimator  KL_ESTIMATORS       'k1' | 'k2' | 'k3' | 'k1+' | 'k2+' |
                                       'k3+'

and keyword options of `grpo_loss` (delta, policy_options, seq_weights_B,
top_entropy_quantile, entropy_coef, entropy_target, rollout_correction and
its thresholds, offpolicy_mask_threshold), of the estimators (scale,
lengths_PxG, baseline_P) and `multi_reward_advantages` (GDPO).

`VARIANTS` below spells out the published variants in those strings.
"""

from r1jax.rl.advantages import ADVANTAGES
from r1jax.rl.advantages import compute_advantages
from r1jax.rl.advantages import multi_reward_advantages
from r1jax.rl.dynamic_sampling import filter_groups
from r1jax.rl.dynamic_sampling import GroupSelection
from r1jax.rl.entropy import high_entropy_mask
from r1jax.rl.entropy import update_entropy_coef
from r1jax.rl.kl import kl_penalized_rewards
from r1jax.rl.kl import KL_ESTIMATORS
from r1jax.rl.losses import grpo_loss
from r1jax.rl.losses import LOSS_AGGREGATIONS
from r1jax.rl.losses import POLICY_LOSSES
from r1jax.rl.losses import PolicyLossOutput
from r1jax.rl.metrics import rollout_metrics
from r1jax.rl.rollout_correction import ROLLOUT_CORRECTIONS

# Published recipes as option strings. 'advantage' and 'dynamic_sampling' are
# for the trainer; 'loss' holds keyword arguments of grpo_loss (the trainer's
# config.rl.loss_options). Where a paper does not fix a setting (aggregation,
# KL), the choice of the reference implementation it names is used.
VARIANTS = {
    # DeepSeekMath / DeepSeek-R1-Zero as commonly implemented: token ratio,
    # symmetric clip, per-sequence token mean, k3 KL with beta 0.001.
    'grpo': dict(
        advantage='grpo',
        dynamic_sampling=False,
        loss=dict(policy_loss='clipped_token',
                  aggregation='seq_mean_token_mean', kl_estimator='k3',
                  beta=0.001, epsilon_low=0.2, epsilon_high=0.2),
    ),
    # DAPO: clip-higher (0.2 / 0.28), token-level mean, no KL, dynamic sampling.
    'dapo': dict(
        advantage='grpo',
        dynamic_sampling=True,
        loss=dict(policy_loss='clipped_token', aggregation='token_mean',
                  beta=0.0, epsilon_low=0.2, epsilon_high=0.28),
    ),
    # Dr. GRPO: no std in the advantage, no length normalisation, no KL.
    'drgrpo': dict(
        advantage='drgrpo',
        dynamic_sampling=False,
        loss=dict(policy_loss='clipped_token', aggregation='seq_sum_norm',
                  beta=0.0, epsilon_low=0.2, epsilon_high=0.2),
    ),
    # GSPO: length-normalised sequence ratio with its small clip ranges.
    'gspo': dict(
        advantage='grpo',
        dynamic_sampling=False,
        loss=dict(policy_loss='gspo', aggregation='seq_mean_token_mean',
                  beta=0.0, epsilon_low=3e-4, epsilon_high=4e-4),
    ),
    # CISPO (MiniMax-M1): clipped stop-gradient IS weight, token-level mean,
    # no lower bound on the weight, upper cap 1 + 4 = 5 (ScaleRL's / TRL's
    # recommended epsilon_max), no KL.
    'cispo': dict(
        advantage='grpo',
        dynamic_sampling=False,
        loss=dict(policy_loss='cispo', aggregation='token_mean', beta=0.0,
                  epsilon_low=0.999, epsilon_high=4.0),
    ),
    # GMPO: geometric-mean ratio clipped in log space to (-0.4, 0.4), each
    # sequence counted once (verl's geo_mean).
    'gmpo': dict(
        advantage='grpo',
        dynamic_sampling=False,
        loss=dict(policy_loss='gmpo', aggregation='seq_mean_token_mean',
                  beta=0.0, epsilon_low=0.4, epsilon_high=0.4),
    ),
    # SAPO (Qwen): soft gate with tau_pos 1.0, tau_neg 1.05, sequence mean.
    'sapo': dict(
        advantage='grpo',
        dynamic_sampling=False,
        loss=dict(policy_loss='sapo', aggregation='seq_mean_token_mean',
                  beta=0.0,
                  policy_options=dict(tau_pos=1.0, tau_neg=1.05)),
    ),
    # INTELLECT-2: two-sided clip delta = 4 on top of clip-higher (0.2 /
    # 0.28), token-level mean, no KL.
    'intellect2': dict(
        advantage='grpo',
        dynamic_sampling=False,
        loss=dict(policy_loss='clipped_token', aggregation='token_mean',
                  beta=0.0, epsilon_low=0.2, epsilon_high=0.28, delta=4.0),
    ),
    # Clip-Cov / KL-Cov (the entropy-mechanism paper), with verl's defaults
    # on top of DAPO-style clip-higher and token-level mean.
    'clip_cov': dict(
        advantage='grpo',
        dynamic_sampling=False,
        loss=dict(policy_loss='clip_cov', aggregation='token_mean', beta=0.0,
                  epsilon_low=0.2, epsilon_high=0.28,
                  policy_options=dict(clip_cov_ratio=2e-4, clip_cov_lb=1.0,
                                      clip_cov_ub=5.0)),
    ),
    'kl_cov': dict(
        advantage='grpo',
        dynamic_sampling=False,
        loss=dict(policy_loss='kl_cov', aggregation='token_mean', beta=0.0,
                  policy_options=dict(kl_cov_ratio=2e-4, kl_cov_coef=1.0)),
    ),
    # "Beyond the 80/20 rule": DAPO trained on the top 20% entropy tokens.
    'dapo_top20_entropy': dict(
        advantage='grpo',
        dynamic_sampling=True,
        loss=dict(policy_loss='clipped_token', aggregation='token_mean',
                  beta=0.0, epsilon_low=0.2, epsilon_high=0.28,
                  top_entropy_quantile=0.2),
    ),
    # REINFORCE++-baseline (Hu et al.): group mean, batch std, PPO's clipped
    # token ratio, k2 KL in the loss with beta 1e-3 (OpenRLHF's recipe:
    # --use_kl_loss --kl_estimator k2).
    'reinforce_pp_baseline': dict(
        advantage='reinforce_pp_baseline',
        dynamic_sampling=False,
        loss=dict(policy_loss='clipped_token', aggregation='token_mean',
                  kl_estimator='k2', beta=0.001, epsilon_low=0.2,
                  epsilon_high=0.2),
    ),
}

__all__ = [
    'ADVANTAGES',
    'GroupSelection',
    'KL_ESTIMATORS',
    'LOSS_AGGREGATIONS',
    'POLICY_LOSSES',
    'PolicyLossOutput',
    'ROLLOUT_CORRECTIONS',
    'VARIANTS',
    'compute_advantages',
    'filter_groups',
    'grpo_loss',
    'high_entropy_mask',
    'kl_penalized_rewards',
    'multi_reward_advantages',
    'rollout_metrics',
    'update_entropy_coef',
]
