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

The clip-based losses ('clipped_token', 'clipped_sequence', 'gspo',
'gspo_token', 'clip_cov') also take `delta`, INTELLECT-2's two-sided clip;
loss-specific hyper-parameters come through grpo_loss's `policy_options`.
Every other keyword option of `grpo_loss` (losses.py) is documented in its
Args, those of the estimators (scale, lengths_PxG, baseline_P) and of
`multi_reward_advantages` (GDPO) in advantages.py.

`VARIANTS` below spells out the published variants in those strings.
"""

from r1jax.rl.advantages import ADVANTAGES
from r1jax.rl.advantages import compute_advantages
from r1jax.rl.advantages import multi_reward_advantages
from r1jax.rl.aggregation import LOSS_AGGREGATIONS
from r1jax.rl.entropy import high_entropy_mask
from r1jax.rl.kl import kl_penalized_rewards
from r1jax.rl.kl import KL_ESTIMATORS
from r1jax.rl.losses import grpo_loss
from r1jax.rl.policy_losses import POLICY_LOSSES
from r1jax.rl.policy_losses import PolicyLossOutput
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
    'KL_ESTIMATORS',
    'LOSS_AGGREGATIONS',
    'POLICY_LOSSES',
    'PolicyLossOutput',
    'ROLLOUT_CORRECTIONS',
    'VARIANTS',
    'compute_advantages',
    'grpo_loss',
    'high_entropy_mask',
    'kl_penalized_rewards',
    'multi_reward_advantages',
]
