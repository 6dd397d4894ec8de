"""GRPO's algorithm core: small pure functions, each registered by name.

A config switches GRPO variants with strings:

  rl.advantage     ADVANTAGES          'grpo' | 'drgrpo' | 'rloo'
  rl.policy_loss   POLICY_LOSSES       'clipped_token' | 'clipped_sequence' |
                                       'gspo' | 'gspo_token'
  rl.aggregation   LOSS_AGGREGATIONS   'seq_mean_token_mean' | 'token_mean' |
                                       'seq_sum_norm'
  rl.kl_estimator  KL_ESTIMATORS       'k1' | 'k2' | 'k3'

`VARIANTS` below spells out the published variants in those strings.
"""

from r1jax.rl.advantages import ADVANTAGES
from r1jax.rl.advantages import compute_advantages
from r1jax.rl.dynamic_sampling import filter_groups
from r1jax.rl.dynamic_sampling import GroupSelection
from r1jax.rl.kl import KL_ESTIMATORS
from r1jax.rl.losses import grpo_loss
from r1jax.rl.losses import LOSS_AGGREGATIONS
from r1jax.rl.losses import POLICY_LOSSES
from r1jax.rl.losses import PolicyLossOutput
from r1jax.rl.metrics import rollout_metrics

# Published recipes as option strings. 'advantage' and 'dynamic_sampling' are
# for the trainer; 'loss' holds keyword arguments of grpo_loss.
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
}

__all__ = [
    'ADVANTAGES',
    'GroupSelection',
    'KL_ESTIMATORS',
    'LOSS_AGGREGATIONS',
    'POLICY_LOSSES',
    'PolicyLossOutput',
    'VARIANTS',
    'compute_advantages',
    'filter_groups',
    'grpo_loss',
    'rollout_metrics',
]
