"""Policy losses, aggregations, gradients and metrics of grpo_loss."""

import functools
import math

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import losses
from r1jax.rl import policy_losses

B, T = 3, 4
EPS_LOW, EPS_HIGH, DUAL = 0.2, 0.3, 3.0
# The policy losses built on PPO's clipped objective, which take dual_clip.
DUAL_CLIP_LOSSES = ('clipped_token', 'clipped_sequence', 'gspo', 'gspo_token',
                    'clip_cov')


def _loss(logp, old, adv, mask, **kw):
  kw.setdefault('beta', 0.0)
  return losses.grpo_loss(logp, old, None, adv, mask, **kw)


# --- Hand-computed case ------------------------------------------------------
# Three sequences, T = 3, eps_low = eps_high = 0.2; old log-probs are -1 and the
# current ones -1 + log(ratio), so the token ratios are exactly:
#   seq 0: adv +2, ratios (1.1, 1.5, 0.5), all valid
#   seq 1: adv -1, ratios (1.1, 1.5, 0.5), last token padding
#   seq 2: adv -1, ratios (0.5, 1.0, 4.0), all valid
RATIOS = np.array([[1.1, 1.5, 0.5], [1.1, 1.5, 0.5], [0.5, 1.0, 4.0]])
HAND_MASK = jnp.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
HAND_ADV = jnp.array([2.0, -1.0, -1.0])
HAND_OLD = jnp.full((3, 3), -1.0)
HAND_LOGP = HAND_OLD + jnp.log(jnp.asarray(RATIOS, jnp.float32))


def _hand(**kw):
  return _loss(HAND_LOGP, HAND_OLD, HAND_ADV, HAND_MASK, epsilon_low=0.2,
               epsilon_high=0.2, **kw)


# Per-token loss -min(r A, clip(r, 0.8, 1.2) A):
#   seq 0: -min(2.2, 2.2) = -2.2; -min(3.0, 2.4) = -2.4; -min(1.0, 1.6) = -1.0
#   seq 1: -min(-1.1, -1.1) = 1.1; -min(-1.5, -1.2) = 1.5; (padding)
#   seq 2: -min(-0.5, -0.8) = 0.8; 1.0; -min(-4.0, -1.2) = 4.0
#   dual-clip c = 3 on seq 2's last token: -max(-4.0, -3.0) = 3.0
# Sums -5.6 (3 tokens), 2.6 (2 tokens), 5.8 (3 tokens; 4.8 with dual-clip).
@pytest.mark.parametrize(
    'aggregation, dual_clip, expected',
    [
        ('seq_mean_token_mean', None, (-5.6 / 3 + 2.6 / 2 + 5.8 / 3) / 3),
        ('seq_mean_token_mean', 3.0, (-5.6 / 3 + 2.6 / 2 + 4.8 / 3) / 3),
        ('token_mean', None, (-5.6 + 2.6 + 5.8) / 8),
        ('token_mean', 3.0, (-5.6 + 2.6 + 4.8) / 8),
        ('seq_sum_norm', None, (-5.6 + 2.6 + 5.8) / (3 * 3)),  # max_len = T
    ],
)
def test_clipped_token_hand_computed(aggregation, dual_clip, expected):
  loss, m = _hand(aggregation=aggregation, dual_clip=dual_clip)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(m['policy_loss'], expected, rtol=1e-5)
  # 8 valid tokens; clipped high: seq 0 token 1 (A > 0, 1.5 > 1.2); clipped
  # low: seq 2 token 0 (A < 0, 0.5 < 0.8); dual: seq 2 token 2 (4 > 3).
  np.testing.assert_allclose(m['clip_frac_high'], 1 / 8)
  np.testing.assert_allclose(m['clip_frac_low'], 1 / 8)
  np.testing.assert_allclose(m['clip_frac_dual'],
                             0 if dual_clip is None else 1 / 8)
  # Valid ratios sum to 1.1 + 1.5 + 0.5 + 1.1 + 1.5 + 0.5 + 1 + 4 = 11.2.
  np.testing.assert_allclose(m['ratio_mean'], 11.2 / 8, rtol=1e-5)
  np.testing.assert_allclose(m['ratio_min'], 0.5, rtol=1e-5)
  np.testing.assert_allclose(m['ratio_max'], 4.0, rtol=1e-5)


def test_clip_higher_hand_computed():
  # epsilon_high = 0.6 (clip range (0.8, 1.6)): seq 0 token 1 is no longer
  # clipped, -min(3.0, 3.2) = -3.0, so seq 0 sums to -6.2; seqs 1, 2 keep 2.6
  # and 5.8 (their upper-side tokens have A < 0, where the upper clip is not
  # the active branch), and seq 2 token 0 is still clipped low.
  loss, m = _loss(HAND_LOGP, HAND_OLD, HAND_ADV, HAND_MASK, epsilon_low=0.2,
                  epsilon_high=0.6, aggregation='token_mean')
  np.testing.assert_allclose(loss, (-6.2 + 2.6 + 5.8) / 8, rtol=1e-5)
  assert float(m['clip_frac_high']) == 0.0
  np.testing.assert_allclose(m['clip_frac_low'], 1 / 8)


def test_clip_regions_enumerated():
  """Asymmetric ranges (0.8, 1.3) and dual-clip 3: one ratio in each region."""
  ratios = np.array([0.65, 0.75, 0.85, 1.15, 1.25, 1.35, 2.5, 3.5])
  old = jnp.full((2, 8), -2.0)
  logp = old + jnp.log(jnp.asarray(np.stack([ratios, ratios]), jnp.float32))
  adv = jnp.array([1.0, -1.0])
  mask = jnp.ones((2, 8), jnp.int32)
  grad = np.asarray(jax.grad(lambda lp: _loss(
      lp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.3, dual_clip=3.0,
      aggregation='token_mean')[0])(logp))
  # A > 0: zero gradient only above 1 + eps_high = 1.3.
  np.testing.assert_array_equal(grad[0] == 0, ratios > 1.3)
  # A < 0: zero below 1 - eps_low = 0.8, and above the dual-clip c = 3.
  np.testing.assert_array_equal(grad[1] == 0, (ratios < 0.8) | (ratios > 3.0))
  # Elsewhere the gradient is that of -A r / 16.
  live = grad != 0
  np.testing.assert_allclose(
      grad[live], (-np.array([[1.0], [-1.0]]) * ratios / 16)[live], rtol=1e-5)


def test_seq_sum_norm_uses_constant_max_len():
  loss, _ = _hand(aggregation='seq_sum_norm', max_len=10)
  np.testing.assert_allclose(loss, (-5.6 + 2.6 + 5.8) / (3 * 10), rtol=1e-5)


def test_clipped_sequence_hand_computed():
  # Sequence ratios: 1.1 * 1.5 * 0.5 = 0.825; 1.1 * 1.5 = 1.65; 0.5 * 4 = 2.
  #   seq 0: -min(0.825 * 2, 0.825 * 2) = -1.65
  #   seq 1: -min(-1.65, -1.2) = 1.65
  #   seq 2: -min(-2.0, -1.2) = 2.0
  loss, m = _hand(policy_loss='clipped_sequence')
  np.testing.assert_allclose(loss, (-1.65 + 1.65 + 2.0) / 3, rtol=1e-5)
  loss, _ = _hand(policy_loss='clipped_sequence', aggregation='token_mean')
  np.testing.assert_allclose(loss, (-1.65 * 3 + 1.65 * 2 + 2.0 * 3) / 8,
                             rtol=1e-5)
  np.testing.assert_allclose(m['ratio_max'], 2.0, rtol=1e-5)
  np.testing.assert_allclose(m['ratio_min'], 0.825, rtol=1e-5)
  assert float(m['clip_frac_low']) == float(m['clip_frac_high']) == 0.0


@pytest.mark.parametrize('policy_loss', ['gspo', 'gspo_token'])
def test_gspo_hand_computed(policy_loss):
  # Geometric-mean ratios: 0.825^(1/3) = 0.9379, 1.65^(1/2) = 1.2845,
  # 2^(1/3) = 1.2599, all with clip range (0.8, 1.2):
  #   seq 0: -2 * 0.825^(1/3)          (inside the range)
  #   seq 1: -min(-1.65^(1/2), -1.2) = 1.65^(1/2)
  #   seq 2: -min(-2^(1/3), -1.2) = 2^(1/3)
  s0, s1, s2 = 0.825 ** (1 / 3), 1.65**0.5, 2 ** (1 / 3)
  loss, m = _hand(policy_loss=policy_loss)
  np.testing.assert_allclose(loss, (-2 * s0 + s1 + s2) / 3, rtol=1e-5)
  np.testing.assert_allclose(m['ratio_max'], s1, rtol=1e-5)
  np.testing.assert_allclose(m['ratio_min'], s0, rtol=1e-5)
  # No clip is active: seq 0 has A > 0 and s0 < 1.2; seqs 1, 2 have A < 0 and
  # s > 1, where the unclipped (pessimistic) branch is taken.
  assert float(m['clip_frac_high']) == float(m['clip_frac_low']) == 0.0


# --- Gradients ---------------------------------------------------------------
_valid_mask = hnp.arrays(np.int32, (B, T), elements=st.integers(0, 1)).map(
    lambda m: np.concatenate([np.ones((B, 1), np.int32), m[:, 1:]], axis=1)
)
_adv = hnp.arrays(np.float32, (B,), elements=st.floats(-3, 3, width=32))
_logp = hnp.arrays(np.float32, (B, T),
                   elements=st.floats(-8.0, -1 / 64, width=32))


def _reinforce_grad(adv, mask, aggregation, policy_loss):
  """Hand gradient of the loss w.r.t. logp at ratio 1 (no clip active).

  Token level: loss_bt = -A_b r_bt, d/dlogp_bt = -A_b. Sequence level: the
  sequence loss -A_b r_b sits on each token and r_b = exp(sum_t or mean_t of
  the log-ratio), so d/dlogp_bt = -A_b (sum) or -A_b / len_b (mean), times the
  aggregation weight of that sequence's tokens.
  """
  mask = mask.astype(np.float64)
  len_b = mask.sum(1, keepdims=True)
  n = mask.shape[0]
  weight = {  # d aggregation / d per-token loss at a valid token
      'seq_mean_token_mean': mask / len_b / n,
      'token_mean': mask / mask.sum(),
      'seq_sum_norm': mask / (n * mask.shape[1]),
  }[aggregation]
  a = -np.asarray(adv, np.float64)[:, None]
  if policy_loss == 'clipped_token':
    return a * weight
  # A sequence loss appears on len_b tokens: dL/dr_b = sum_t weight_bt.
  seq_w = weight.sum(1, keepdims=True)
  per_tok = a * seq_w * mask
  return per_tok / len_b if policy_loss in ('gspo', 'gspo_token') else per_tok


@settings(max_examples=30, deadline=None)
@given(
    logp=_logp, adv=_adv, mask=_valid_mask,
    aggregation=st.sampled_from(['seq_mean_token_mean', 'token_mean',
                                 'seq_sum_norm']),
    policy_loss=st.sampled_from(['clipped_token', 'clipped_sequence', 'gspo',
                                 'gspo_token']),
    dual=st.sampled_from([None, DUAL]),
)
def test_ratio_one_gives_reinforce_gradient(logp, adv, mask, aggregation,
                                            policy_loss, dual):
  logp, adv, mask = map(jnp.asarray, (logp, adv, mask))
  kw = dict(policy_loss=policy_loss, aggregation=aggregation,
            epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, dual_clip=dual)
  # old_logp = logp itself (the on-policy case): ratio 1, and the loss must
  # treat old_logp as a constant, or the gradient would vanish.
  grad = jax.grad(lambda lp: _loss(lp, lp, adv, mask, **kw)[0])(logp)
  expected = _reinforce_grad(np.asarray(adv), np.asarray(mask), aggregation,
                             policy_loss)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def _off_boundary(r):
  # Keep ratios away from the clip edges, where min/clip split the gradient.
  edges = (1 - EPS_LOW, 1 + EPS_HIGH, DUAL)
  return all(abs(r - e) > 1e-2 for e in edges)


# Half the draws near the clip edges, where mistakes in the ranges show.
_ratio = st.one_of(st.floats(0.05, 6.0), st.floats(0.6, 1.5)).filter(
    _off_boundary)


@settings(max_examples=40, deadline=None)
@given(
    ratios=hnp.arrays(np.float64, (B, T), elements=_ratio),
    adv=_adv.filter(lambda a: np.all(np.abs(a) > 1e-3)),
    dual=st.sampled_from([None, DUAL]),
)
def test_token_clipping_stops_gradient_where_the_paper_says(ratios, adv, dual):
  old = jnp.full((B, T), -2.0)
  logp = old + jnp.asarray(np.log(ratios), jnp.float32)
  adv = jnp.asarray(adv)
  mask = jnp.ones((B, T), jnp.int32)
  grad = jax.grad(lambda lp: _loss(
      lp, old, adv, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH,
      dual_clip=dual, aggregation='token_mean')[0])(logp)
  r = np.exp(np.asarray(logp, np.float64) - np.asarray(old, np.float64))
  a = np.asarray(adv, np.float64)[:, None]
  clipped_high = (a > 0) & (r > 1 + EPS_HIGH)
  clipped_low = (a < 0) & (r < 1 - EPS_LOW)
  clipped_dual = (a < 0) & (r > DUAL) if dual else np.zeros_like(r, bool)
  stopped = clipped_high | clipped_low | clipped_dual
  # Where no clip is active the loss is -A r / (B T): dL/dlogp = -A r / (B T).
  expected = np.where(stopped, 0.0, -a * r / (B * T))
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)
  assert np.all(np.asarray(grad)[stopped] == 0.0)


@pytest.mark.parametrize('policy_loss', ['clipped_sequence', 'gspo',
                                         'gspo_token'])
def test_sequence_clipping_stops_gradient_of_whole_sequence(policy_loss):
  # Every token's log-ratio is +0.5 (seq 0, 1) or -0.5 (seq 2, 3): sequence
  # ratios e^{2} / e^{0.5} (sum / mean over 4 tokens) or their inverses.
  # seq 0: A > 0, ratio > 1 + eps_high -> clipped, zero gradient.
  # seq 1: A < 0, ratio > 1 + eps_high -> unclipped (pessimistic branch).
  # seq 2: A < 0, ratio < 1 - eps_low -> clipped, zero gradient.
  # seq 3: A > 0, ratio < 1 - eps_low -> unclipped.
  old = jnp.full((4, 4), -3.0)
  logp = old + jnp.array([[0.5], [0.5], [-0.5], [-0.5]]) * jnp.ones((1, 4))
  adv = jnp.array([1.0, -1.0, -1.0, 1.0])
  mask = jnp.ones((4, 4), jnp.int32)
  grad = np.asarray(jax.grad(lambda lp: _loss(
      lp, old, adv, mask, policy_loss=policy_loss, epsilon_low=EPS_LOW,
      epsilon_high=EPS_HIGH)[0])(logp))
  assert np.all(grad[[0, 2]] == 0.0)
  assert np.all(grad[[1, 3]] != 0.0)


def test_gspo_token_matches_gspo_value_and_gradient():
  key = jax.random.PRNGKey(0)
  k1, k2, k3 = jax.random.split(key, 3)
  logp = -jnp.exp(jax.random.normal(k1, (B, T)))
  old = logp + 0.3 * jax.random.normal(k2, (B, T))
  adv = jax.random.normal(k3, (B,))
  mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
  f = {name: (lambda lp, name=name: _loss(
      lp, old, adv, mask, policy_loss=name, epsilon_low=EPS_LOW,
      epsilon_high=EPS_HIGH)[0]) for name in ('gspo', 'gspo_token')}
  np.testing.assert_allclose(f['gspo'](logp), f['gspo_token'](logp), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(f['gspo'])(logp),
                             jax.grad(f['gspo_token'])(logp),
                             rtol=1e-5, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(
    logp=_logp, adv=_adv, mask=_valid_mask,
    garbage=hnp.arrays(np.float32, (3, B, T),
                       elements=st.floats(-1e4, 1e4, width=32)),
    policy_loss=st.sampled_from(['clipped_token', 'clipped_sequence', 'gspo',
                                 'gspo_token']),
    aggregation=st.sampled_from(['seq_mean_token_mean', 'token_mean',
                                 'seq_sum_norm']),
)
def test_masked_positions_change_neither_loss_nor_gradient(
    logp, adv, mask, garbage, policy_loss, aggregation):
  logp, adv, mask = map(jnp.asarray, (logp, adv, mask))
  old = logp + 0.1 * jnp.sin(jnp.arange(T, dtype=jnp.float32))[None, :]
  ref = logp - 0.2
  valid = mask > 0
  garbage = jnp.asarray(garbage)
  logp2, old2, ref2 = (jnp.where(valid, x, g) for x, g in
                       zip((logp, old, ref), garbage))

  def f(lp, o, r):
    return losses.grpo_loss(lp, o, r, adv, mask, policy_loss=policy_loss,
                            aggregation=aggregation, beta=0.05, dual_clip=DUAL,
                            epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH)

  (l1, m1), g1 = jax.value_and_grad(f, has_aux=True)(logp, old, ref)
  (l2, m2), g2 = jax.value_and_grad(f, has_aux=True)(logp2, old2, ref2)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  np.testing.assert_allclose(g1, g2, rtol=1e-6)
  assert np.all(np.asarray(g2)[~np.asarray(valid)] == 0.0)
  for k in m1:
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-6, err_msg=k)


# --- Metrics, jit, dtype, validation ----------------------------------------
def test_metrics_hand_computed():
  logp = jnp.log(jnp.array([[0.5, 0.25, 0.9], [0.5, 0.5, 0.1]]))
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  adv = jnp.array([0.0, 2.0])
  ent = jnp.array([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
  _, m = _loss(logp, logp, adv, mask, entropy_BxT=ent)
  # -mean(ln .5, ln .25, ln .5) = (ln 2 + 2 ln 2 + ln 2) / 3.
  np.testing.assert_allclose(m['entropy_mc'], 4 * math.log(2) / 3, rtol=1e-6)
  np.testing.assert_allclose(m['entropy'], 2.0, rtol=1e-6)
  assert float(m['frac_zero_adv_seqs']) == 0.5
  assert float(m['adv_mean']) == 1.0 and float(m['adv_std']) == 1.0
  assert float(m['adv_min']) == 0.0 and float(m['adv_max']) == 2.0
  assert float(m['num_tokens']) == 3.0
  assert float(m['ratio_mean']) == 1.0


def test_empty_rows_are_left_out_of_seq_mean():
  # Row 1 has no completion tokens (batch padding): the mean is over row 0.
  logp = jnp.log(jnp.array([[0.5, 0.5], [0.5, 0.5]]))
  mask = jnp.array([[1, 1], [0, 0]])
  loss, m = _loss(logp, logp, jnp.array([1.0, 5.0]), mask)
  np.testing.assert_allclose(loss, -1.0)  # -A * ratio for the one sequence
  assert float(m['adv_mean']) == 1.0


@pytest.mark.parametrize('policy_loss', sorted(policy_losses.POLICY_LOSSES))
def test_jit_matches_eager_and_bf16_inputs_give_f32(policy_loss):
  logp = HAND_LOGP.astype(jnp.bfloat16)
  old = HAND_OLD.astype(jnp.bfloat16)
  ref = (HAND_OLD - 0.1).astype(jnp.bfloat16)
  dual = DUAL if policy_loss in DUAL_CLIP_LOSSES else None
  fn = functools.partial(losses.grpo_loss, policy_loss=policy_loss,
                         dual_clip=dual, beta=0.01)
  eager, m_eager = fn(logp, old, ref, HAND_ADV, HAND_MASK)
  jitted, m_jit = jax.jit(fn)(logp, old, ref, HAND_ADV, HAND_MASK)
  assert eager.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in m_eager.values())
  np.testing.assert_allclose(eager, jitted, rtol=1e-6)
  for k in m_eager:
    np.testing.assert_allclose(m_eager[k], m_jit[k], rtol=1e-6, err_msg=k)


def test_static_argnames_jit():
  f = jax.jit(losses.grpo_loss,
              static_argnames=('policy_loss', 'aggregation', 'kl_estimator',
                               'beta', 'dual_clip', 'max_len'))
  loss, _ = f(HAND_LOGP, HAND_OLD, None, HAND_ADV, HAND_MASK, beta=0.0,
              aggregation='token_mean', epsilon_low=0.2, epsilon_high=0.2)
  np.testing.assert_allclose(loss, (-5.6 + 2.6 + 5.8) / 8, rtol=1e-5)


@pytest.mark.parametrize('kw, match', [
    (dict(policy_loss='ppo'), 'policy loss'),
    (dict(aggregation='mean'), 'loss aggregation'),
    (dict(kl_estimator='k4', beta=0.1), 'KL estimator'),
    (dict(dual_clip=1.0), 'dual_clip'),
    (dict(epsilon_low=1.0), 'epsilon_low'),
    (dict(max_len=0), 'max_len'),
])
def test_bad_options_fail_loudly(kw, match):
  kw.setdefault('beta', 0.0)
  ref = HAND_OLD if kw['beta'] else None
  with pytest.raises((KeyError, ValueError), match=match):
    losses.grpo_loss(HAND_LOGP, HAND_OLD, ref, HAND_ADV, HAND_MASK, **kw)


def test_shape_mismatch_fails():
  with pytest.raises(ValueError, match='adv_B'):
    _loss(HAND_LOGP, HAND_OLD, jnp.zeros(4), HAND_MASK)
  with pytest.raises(ValueError, match='old_logp_BxT'):
    _loss(HAND_LOGP, HAND_OLD[:, :2], HAND_ADV, HAND_MASK)
