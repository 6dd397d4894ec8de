"""GRPO's algorithm core: small pure functions, each registered by name.

The one table of the strings a GRPO config picks variants with (the key in
the stage config; for the loss keys, also grpo_loss's keyword of that name):

  rl.advantage     ADVANTAGES (advantages.py)
                   'grpo' | 'drgrpo' | 'rloo' | 'opo' | 'reinforce_pp' |
                   'reinforce_pp_baseline' | 'remax'
  rl.policy_loss   POLICY_LOSSES (policy_losses.py, policy_losses_extra.py)
                   'clipped_token'     PPO/GRPO token-level ratio, clip-higher
                                       (epsilon_low != epsilon_high, DAPO),
                                       optional dual-clip
                   'clipped_sequence'  ratio of whole-sequence probabilities,
                                       exp(sum_t log-ratio), clipped per
                                       sequence (the R1 paper's equations)
                   'gspo'              exp(mean_t log-ratio), clipped per
                                       sequence (GSPO, Zheng et al. 2025)
                   'gspo_token'        GSPO-token: the same value, gradient
                                       through each token via stop-gradient
                   'cispo'             MiniMax-M1: clipped, stop-gradient IS
                                       weight times log-prob; clipped tokens
                                       keep their gradient
                   'sapo'              SAPO: sigmoid-gated soft clip, its
                                       temperatures per advantage sign
                   'gmpo'              GMPO: geometric mean of token ratios,
                                       clipped per token in log space
                   'clip_cov'          Clip-Cov: 'clipped_token' with the
                                       gradient of a few high-covariance
                                       tokens cut
                   'kl_cov'            KL-Cov: unclipped ratio with a |log
                                       ratio| penalty on the highest-
                                       covariance tokens
  rl.aggregation   LOSS_AGGREGATIONS (aggregation.py, each with its unit count)
                   'seq_mean_token_mean'  token mean per sequence, then mean
                                          over sequences (DeepSeekMath eq. 3)
                   'token_mean'           mean over all tokens of the batch
                                          (DAPO)
                   'seq_sum_norm'         sum / (B * max_len), Dr. GRPO
  rl.kl_estimator  KL_ESTIMATORS (kl.py)
                   'k1' | 'k2' | 'k3' (default) | 'k1+' | 'k2+' | 'k3+'
  rl.multi_reward  MULTI_REWARD_NORMALIZE (advantages.py)
                   'sum_then_norm' (default) | 'norm_then_sum' (GDPO,
                                       multi_reward_advantages)
  rl.kl_in_reward  False | True: the KL in the reward (kl_penalized_rewards),
                   not in the loss
  rl.loss_options  LossConfig's other fields, e.g. rollout_correction
                   ROLLOUT_CORRECTIONS (rollout_correction.py)

The clip-based losses ('clipped_token', 'clipped_sequence', 'gspo',
'gspo_token', 'clip_cov') also take `delta`, INTELLECT-2's two-sided clip;
loss-specific hyper-parameters come through grpo_loss's `policy_options`.
Every other option of `grpo_loss` (losses.py) is a field of `LossConfig`,
documented there (the GRPO stage's `rl.loss_options`); those of the
estimators (scale; the inputs lengths_PxG, baseline_P) and of
`multi_reward_advantages` (GDPO) in advantages.py.

experiments/variants.py spells out the published variants (DAPO, Dr. GRPO,
GSPO, CISPO, ...) in those strings, as GRPO configs.
"""

from r1jax.rl.advantages import ADVANTAGES
from r1jax.rl.advantages import compute_advantages
from r1jax.rl.advantages import MULTI_REWARD_NORMALIZE
from r1jax.rl.advantages import multi_reward_advantages
from r1jax.rl.aggregation import LOSS_AGGREGATIONS
from r1jax.rl.entropy import high_entropy_mask
from r1jax.rl.kl import kl_penalized_rewards
from r1jax.rl.kl import KL_ESTIMATORS
from r1jax.rl.losses import grpo_loss
from r1jax.rl.losses import LossConfig
from r1jax.rl.policy_losses import POLICY_LOSSES
from r1jax.rl.policy_losses import PolicyLossOutput
from r1jax.rl.rollout_correction import ROLLOUT_CORRECTIONS

__all__ = [
    'ADVANTAGES',
    'KL_ESTIMATORS',
    'LOSS_AGGREGATIONS',
    'LossConfig',
    'MULTI_REWARD_NORMALIZE',
    'POLICY_LOSSES',
    'PolicyLossOutput',
    'ROLLOUT_CORRECTIONS',
    'compute_advantages',
    'grpo_loss',
    'high_entropy_mask',
    'kl_penalized_rewards',
    'multi_reward_advantages',
]
