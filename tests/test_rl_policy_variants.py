"""CISPO, SAPO, GMPO, INTELLECT-2 delta, Clip-Cov and KL-Cov.

Reference numbers come from TRL's (trl/trainer/grpo_trainer.py,
`_compute_loss`) and verl's (verl/trainer/ppo/core_algos.py,
`compute_policy_loss_*`) formulas, written here in float64 numpy on the same
small tensors; no torch at test time.
"""

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

from experiments import variants
from r1jax.rl import losses
from r1jax.stages import grpo

# The hand case of test_rl_losses: token ratios exactly
#   seq 0: adv +2, ratios (1.1, 1.5, 0.5), all valid
#   seq 1: adv -1, ratios (1.1, 1.5, 0.5), last token padding
#   seq 2: adv -1, ratios (0.5, 1.0, 4.0), all valid
RATIOS = np.array([[1.1, 1.5, 0.5], [1.1, 1.5, 0.5], [0.5, 1.0, 4.0]])
MASK = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
ADV = np.array([2.0, -1.0, -1.0])
OLD = np.full((3, 3), -1.0)
LOGP = OLD + np.log(RATIOS)
N_VALID = 8


def _loss(policy_loss, logp=LOGP, old=OLD, adv=ADV, mask=MASK, **kw):
  kw.setdefault('beta', 0.0)
  kw.setdefault('aggregation', 'token_mean')
  return losses.grpo_loss(jnp.asarray(logp, jnp.float32),
                          jnp.asarray(old, jnp.float32), None,
                          jnp.asarray(adv, jnp.float32), jnp.asarray(mask),
                          policy_loss=policy_loss, **kw)


def _grad(policy_loss, logp=LOGP, **kw):
  return np.asarray(jax.grad(lambda lp: _loss(policy_loss, lp, **kw)[0])(
      jnp.asarray(logp, jnp.float32)))


def _token_mean(per_token, mask=MASK):
  return float((per_token * mask).sum() / mask.sum())


def _seq_mean_token_mean(per_token, mask=MASK):
  return float(((per_token * mask).sum(1) / mask.sum(1)).mean())


# --- CISPO -------------------------------------------------------------------
def test_cispo_hand_computed():
  # clip(r, 0.8, 1.2): seq 0 and 1 (1.1, 1.2, 0.8), seq 2 (0.8, 1.0, 1.2).
  # loss_t = -w_t A logp_t with logp_t = -1 + ln r_t:
  #   seq 0 token 0: -1.1 * 2 * (-1 + ln 1.1) = 2.2 (1 - ln 1.1)
  loss, m = _loss('cispo', epsilon_low=0.2, epsilon_high=0.2)
  w = np.clip(RATIOS, 0.8, 1.2)
  per_token = -w * ADV[:, None] * LOGP  # verl compute_policy_loss_cispo
  np.testing.assert_allclose(per_token[0, 0], 2.2 * (1 - math.log(1.1)))
  np.testing.assert_allclose(loss, _token_mean(per_token), rtol=1e-5)
  # Weights clipped: 1.5 (twice) and 4.0 above 1.2; 0.5 below 0.8 at seq 0
  # t2 and seq 2 t0 (seq 1 t2 is padding).
  np.testing.assert_allclose(m['cispo_clip_frac_high'], 3 / 8)
  np.testing.assert_allclose(m['cispo_clip_frac_low'], 2 / 8)
  # No gradient is stopped: clip_frac_* stay 0.
  assert float(m['clip_frac_high']) == float(m['clip_frac_low']) == 0.0


def test_cispo_gradient_flows_through_clipped_tokens():
  """d loss / d logp_t = -sg(w_t) A / N on every valid token."""
  g = _grad('cispo', epsilon_low=0.2, epsilon_high=0.2)
  w = np.clip(RATIOS, 0.8, 1.2)
  np.testing.assert_allclose(g, -w * ADV[:, None] * MASK / N_VALID,
                             rtol=1e-5, atol=1e-8)
  assert np.all(g[MASK > 0] != 0)


def test_cispo_matches_trl_cap_form():
  """TRL's cispo: clamp(coef, max=epsilon_high) only; ours with
  epsilon_low -> 1 (no lower bound) and epsilon_high = TRL's - 1."""
  trl_cap = 1.3
  per_token = -np.minimum(RATIOS, trl_cap) * ADV[:, None] * LOGP
  loss, _ = _loss('cispo', epsilon_low=0.999999, epsilon_high=trl_cap - 1)
  np.testing.assert_allclose(loss, _token_mean(per_token), rtol=1e-5)


# --- SAPO --------------------------------------------------------------------
def _sapo_ref(tau_pos, tau_neg):
  # TRL: temperatures = where(A > 0, pos, neg);
  #      loss = -sigmoid(tau (coef_1 - 1)) * 4 / tau * A
  tau = np.where(ADV[:, None] > 0, tau_pos, tau_neg) * np.ones_like(RATIOS)
  sig = 1 / (1 + np.exp(-tau * (RATIOS - 1)))
  return -sig * 4 / tau * ADV[:, None]


@pytest.mark.parametrize('taus', [(1.0, 1.05), (2.0, 5.0)])
def test_sapo_matches_trl_and_verl(taus):
  ref = _sapo_ref(*taus)
  # Hand check of one entry: seq 0 token 0, tau 1: -4 sigmoid(0.1) * 2.
  if taus == (1.0, 1.05):
    np.testing.assert_allclose(ref[0, 0], -8 / (1 + math.exp(-0.1)))
  opts = dict(tau_pos=taus[0], tau_neg=taus[1])
  loss, m = _loss('sapo', policy_options=opts,
                  aggregation='seq_mean_token_mean')
  np.testing.assert_allclose(loss, _seq_mean_token_mean(ref), rtol=1e-5)
  assert float(m['clip_frac_high']) == 0.0


def test_sapo_gradient_is_the_soft_gate():
  """d/dlogp of -(4/tau) s(tau (r - 1)) A = -4 s (1 - s) r A."""
  tau = np.where(ADV[:, None] > 0, 1.0, 1.05)
  s = 1 / (1 + np.exp(-tau * (RATIOS - 1)))
  g = _grad('sapo')
  np.testing.assert_allclose(
      g, -4 * s * (1 - s) * RATIOS * ADV[:, None] * MASK / N_VALID,
      rtol=1e-4, atol=1e-8)


# --- GMPO --------------------------------------------------------------------
def _gmpo_ref(eps_low, eps_high):
  """verl compute_policy_loss_geo_mean, per sequence, then mean."""
  lr = np.log(RATIOS)
  sgn = np.sign(ADV)[:, None]
  lr_c = np.clip(lr, -eps_low, eps_high)
  lr_min = sgn * np.minimum(sgn * lr, sgn * lr_c)
  ratio = np.exp((lr_min * MASK).sum(1) / MASK.sum(1))
  return -ADV * ratio


def test_gmpo_hand_computed_and_verl():
  # seq 0 (A > 0): log r = (ln 1.1, ln 1.5, ln .5) -> min with the clamp to
  #   +-0.4: (ln 1.1, 0.4, ln .5); ratio exp(mean) = 0.936177.
  # seq 1 (A < 0): max -> (ln 1.1, ln 1.5) unclipped: sqrt(1.65) = 1.284523.
  # seq 2 (A < 0): (ln .5, 0, ln 4) -> (-0.4, 0, ln 4): exp(0.328765).
  s0 = math.exp((math.log(1.1) + 0.4 + math.log(0.5)) / 3)
  s2 = math.exp((-0.4 + math.log(4.0)) / 3)
  expected = (-2 * s0 + math.sqrt(1.65) + s2) / 3
  np.testing.assert_allclose(_gmpo_ref(0.4, 0.4).mean(), expected)
  loss, m = _loss('gmpo', epsilon_low=0.4, epsilon_high=0.4,
                  aggregation='seq_mean_token_mean')
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  # Flags: seq 0 token 1 (A > 0, ln 1.5 > 0.4), seq 2 token 0 (A < 0,
  # ln .5 < -0.4).
  np.testing.assert_allclose(m['clip_frac_high'], 1 / 8)
  np.testing.assert_allclose(m['clip_frac_low'], 1 / 8)


def test_gmpo_gradient_stops_exactly_at_log_space_clips():
  g = _grad('gmpo', epsilon_low=0.4, epsilon_high=0.4,
            aggregation='seq_mean_token_mean')
  lr = np.log(RATIOS)
  stopped = ((ADV[:, None] > 0) & (lr > 0.4)) | ((ADV[:, None] < 0)
                                                 & (lr < -0.4))
  # Live tokens: d(-A s_b)/dlogp_t = -A s_b / len_b, times 1/3 (3 sequences).
  s = -_gmpo_ref(0.4, 0.4) / ADV
  expected = np.where(stopped, 0.0,
                      -ADV[:, None] * s[:, None] / MASK.sum(1)[:, None] / 3)
  np.testing.assert_allclose(g, expected * MASK, rtol=1e-5, atol=1e-8)
  assert np.all(g[stopped] == 0.0)


# --- INTELLECT-2 delta (two-sided clip) -------------------------------------
def _delta_ref(ratios, adv, eps_low, eps_high, delta):
  # TRL: coef_2 = clamp(coef_1, 1 - el, 1 + eh); coef_1 = clamp(coef_1,
  # max=delta); loss = -min(coef_1 A, coef_2 A).
  c2 = np.clip(ratios, 1 - eps_low, 1 + eps_high)
  c1 = np.minimum(ratios, delta)
  return -np.minimum(c1 * adv[:, None], c2 * adv[:, None])


def test_delta_equals_dual_clip_above_one_plus_eps_high():
  # seq 2 token 2 (A < 0, r = 4 > delta 3): -min(-3, -1.2) = 3, as dual-clip.
  loss_delta, m = _loss('clipped_token', delta=3.0)
  loss_dual, _ = _loss('clipped_token', dual_clip=3.0)
  np.testing.assert_allclose(loss_delta, (-5.6 + 2.6 + 4.8) / 8, rtol=1e-5)
  np.testing.assert_allclose(loss_delta, loss_dual, rtol=1e-6)
  np.testing.assert_allclose(m['clip_frac_dual'], 1 / 8)


_ratio = st.floats(0.05, 6.0).filter(
    lambda r: all(abs(r - e) > 1e-2 for e in (0.8, 1.3, 1.1, 2.5)))


@settings(max_examples=30, deadline=None)
@given(ratios=hnp.arrays(np.float64, (3, 4), elements=_ratio),
       adv=hnp.arrays(np.float64, (3,), elements=st.floats(0.1, 3.0)),
       signs=hnp.arrays(np.int8, (3,), elements=st.sampled_from([-1, 1])),
       delta=st.sampled_from([1.1, 2.5]))
def test_delta_matches_trl_and_stops_gradient_where_flagged(ratios, adv,
                                                            signs, delta):
  # delta = 1.1 < 1 + eps_high = 1.3 also exercises TRL's formula where delta
  # bites on positive advantages.
  adv = adv * signs
  old = np.full((3, 4), -2.0)
  logp = old + np.log(ratios)
  mask = np.ones((3, 4), np.int32)
  kw = dict(old=old, adv=adv, mask=mask, epsilon_low=0.2, epsilon_high=0.3,
            delta=delta)
  loss, m = _loss('clipped_token', logp, **kw)
  r = np.exp(np.asarray(jnp.asarray(logp, jnp.float32), np.float64) - old)
  ref = _delta_ref(r, adv, 0.2, 0.3, delta)
  np.testing.assert_allclose(loss, ref.mean(), rtol=1e-4, atol=1e-6)
  g = _grad('clipped_token', logp, **kw)
  a = adv[:, None]
  # Where the value follows r, the gradient is -A r / N; else it is 0.
  follows = np.where(a > 0, r <= min(1.3, delta),
                     (r >= 0.8) & (r <= max(1.3, delta)))
  np.testing.assert_allclose(g, np.where(follows, -a * r / 12, 0.0),
                             rtol=1e-4, atol=1e-7)
  frac = (m['clip_frac_low'] + m['clip_frac_high'] + m['clip_frac_dual'])
  np.testing.assert_allclose(frac, 1 - follows.mean(), atol=1e-6)


# --- Clip-Cov and KL-Cov -----------------------------------------------------
# Ratio 1 (old = logp), B = 2, T = 4, A = (+1, -1): mean A over tokens is 0,
# so cov_t = A_b (logp_t - mean logp), mean logp = -11.1 / 8 = -1.3875:
#   seq 0: 1.2875, 1.1875, -1.6125, -0.1125
#   seq 1: -1.0875, 2.6125, -0.3875, -0.3875
COV_LOGP = np.array([[-0.1, -0.2, -3.0, -1.5], [-0.3, -4.0, -1.0, -1.0]])
COV_ADV = np.array([1.0, -1.0])
COV_MASK = np.ones((2, 4), np.int32)
COV_OPTS = dict(clip_cov_lb=0.5, clip_cov_ub=5.0)


def _cov(policy_loss, old, **opts):
  kw = dict(old=old, adv=COV_ADV, mask=COV_MASK, policy_options=opts)
  loss, m = _loss(policy_loss, COV_LOGP, **kw)
  return loss, m, _grad(policy_loss, COV_LOGP, **kw)


def test_clip_cov_hand_computed():
  # Candidates in (0.5, 5): seq 0 t0, t1 and seq 1 t1. With ratio 0.375,
  # max(1, floor(0.375 * 8)) = 3 = all of them: the set verl's random pick
  # also gives. Per-token loss -A r = -A; the cut ones are 0:
  #   (0 + 0 - 1 - 1) + (1 + 0 + 1 + 1) = 1, over 8 tokens.
  loss, m, g = _cov('clip_cov', COV_LOGP, clip_cov_ratio=0.375, **COV_OPTS)
  cut = np.array([[1, 1, 0, 0], [0, 1, 0, 0]], bool)
  np.testing.assert_allclose(loss, 1 / 8, rtol=1e-6)
  np.testing.assert_allclose(m['clip_cov_frac'], 3 / 8)
  np.testing.assert_allclose(
      g, np.where(cut, 0.0, -COV_ADV[:, None] / 8 * COV_MASK), atol=1e-8)
  # ratio 0.25: floor(2) = 2 tokens, the two highest covariances (2.6125 and
  # 1.2875; verl would pick 2 of the 3 at random).
  loss, m, g = _cov('clip_cov', COV_LOGP, clip_cov_ratio=0.25, **COV_OPTS)
  np.testing.assert_allclose(loss, (-1 - 1 - 1 + 1 + 0 + 1 + 1) / 8,
                             rtol=1e-6)
  assert g[0, 0] == 0 and g[1, 1] == 0 and g[0, 1] != 0


def test_clip_cov_skips_tokens_already_clipped():
  # Push seq 1 token 1 (the top covariance) below the clip range with A < 0:
  # PPO's clip already stops it, so Clip-Cov cuts the next ones instead.
  old = COV_LOGP.copy()
  old[1, 1] += 0.5  # ratio e^-0.5 < 0.8
  loss, m, g = _cov('clip_cov', old, clip_cov_ratio=0.25, **COV_OPTS)
  np.testing.assert_allclose(m['clip_frac_low'], 1 / 8)
  np.testing.assert_allclose(m['clip_cov_frac'], 2 / 8)
  assert g[0, 0] == 0 and g[0, 1] == 0 and g[1, 1] == 0


def test_kl_cov_hand_computed_and_verl():
  # old = logp - 0.1: log r = 0.1 everywhere, r = e^0.1. verl kl_cov: loss
  # -A r on every token, + coef |log r| on the top max(1, floor(.25 * 8)) = 2
  # covariances (seq 1 t1, seq 0 t0): (-4 e^.1 + 4 e^.1 + 2 * 0.7 * 0.1) / 8.
  loss, m, g = _cov('kl_cov', COV_LOGP - 0.1, kl_cov_ratio=0.25,
                    kl_cov_coef=0.7)
  np.testing.assert_allclose(loss, 2 * 0.7 * 0.1 / 8, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m['kl_cov_frac'], 2 / 8)
  pen = np.array([[1, 0, 0, 0], [0, 1, 0, 0]])
  r = math.exp(0.1)
  np.testing.assert_allclose(
      g, (-COV_ADV[:, None] * r + 0.7 * pen) / 8, rtol=1e-5)
  # No clip at all: large ratios keep their gradient.
  assert float(m['clip_frac_high']) == 0.0


# --- Properties over all new losses -----------------------------------------
NEW = ['cispo', 'sapo', 'gmpo', 'clip_cov', 'kl_cov']


@pytest.mark.parametrize('policy_loss', NEW)
@pytest.mark.parametrize('aggregation', ['seq_mean_token_mean', 'token_mean',
                                         'seq_sum_norm'])
def test_ratio_one_gives_the_reinforce_gradient(policy_loss, aggregation):
  """At ratio 1 every new loss gives -A grad log pi (gmpo: / len, per seq)."""
  mask = MASK.astype(np.float64)
  len_b = mask.sum(1, keepdims=True)
  weight = {'seq_mean_token_mean': mask / len_b / 3,
            'token_mean': mask / mask.sum(),
            'seq_sum_norm': mask / 9}[aggregation]
  g = _grad(policy_loss, LOGP, old=LOGP, aggregation=aggregation)
  if policy_loss == 'gmpo':
    expected = -ADV[:, None] * weight.sum(1, keepdims=True) * mask / len_b
  else:
    expected = -ADV[:, None] * weight
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize('policy_loss', ['cispo', 'sapo', 'gmpo', 'clip_cov'])
def test_zero_advantage_gives_zero_gradient(policy_loss):
  """A zero-spread group (all advantages 0) teaches nothing. (kl_cov's
  penalty is a regulariser and acts whatever the advantage.)"""
  g = _grad(policy_loss, LOGP, adv=np.zeros(3))
  np.testing.assert_array_equal(g, np.zeros_like(g))


@pytest.mark.parametrize('policy_loss', NEW)
def test_masked_positions_change_neither_loss_nor_gradient(policy_loss):
  garbage = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1e4], [0.0, 0.0, 0.0]])
  base = dict(policy_options={'clip_cov_ratio': 0.3, 'clip_cov_lb': 0.0}
              if policy_loss == 'clip_cov' else None)
  l1, m1 = _loss(policy_loss, LOGP, **base)
  l2, m2 = _loss(policy_loss, LOGP - garbage, old=OLD + garbage, **base)
  g1 = _grad(policy_loss, LOGP, **base)
  g2 = _grad(policy_loss, LOGP - garbage, old=OLD + garbage, **base)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  np.testing.assert_allclose(g1, g2, rtol=1e-6)
  assert g2[1, 2] == 0.0
  for k in m1:
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-6, err_msg=k)


@pytest.mark.parametrize('policy_loss', NEW)
def test_jit_matches_eager(policy_loss):
  fn = functools.partial(_loss, policy_loss, epsilon_low=0.3,
                         epsilon_high=0.4)
  f = lambda lp: fn(lp)  # noqa: E731
  eager, m_e = f(jnp.asarray(LOGP, jnp.float32))
  jitted, m_j = jax.jit(f)(jnp.asarray(LOGP, jnp.float32))
  np.testing.assert_allclose(eager, jitted, rtol=1e-6)
  for k in m_e:
    np.testing.assert_allclose(m_e[k], m_j[k], rtol=1e-6, err_msg=k)


@pytest.mark.parametrize('policy_loss, kw, match', [
    ('sapo', dict(dual_clip=3.0), 'dual_clip'),
    ('cispo', dict(delta=2.0), 'does not take'),
    ('gmpo', dict(policy_options={'tau_pos': 1.0}), 'does not take'),
    ('sapo', dict(policy_options={'tau_pos': 0.0}), 'temperatures'),
    ('clipped_token', dict(delta=1.0), 'delta'),
])
def test_bad_policy_options_fail_loudly(policy_loss, kw, match):
  with pytest.raises(ValueError, match=match):
    _loss(policy_loss, **kw)


@pytest.mark.parametrize('name', sorted(variants.VARIANTS))
def test_every_published_variant_runs(name):
  """experiments/variants.py: each recipe is a valid GRPO config whose loss
  runs (registered names, grpo_loss keywords)."""
  c = variants.get_config(f'name={name}')
  grpo.validate_config(c)
  config = grpo.loss_config(c.rl)
  ent = jnp.ones((3, 3)) if config.top_entropy_quantile else None
  ref = jnp.asarray(OLD, jnp.float32) if config.beta else None
  loss, m = losses.grpo_loss(
      jnp.asarray(LOGP, jnp.float32), jnp.asarray(OLD, jnp.float32), ref,
      jnp.asarray(ADV, jnp.float32), jnp.asarray(MASK), entropy_BxT=ent,
      config=config)
  assert np.isfinite(float(loss)) and 'policy_loss' in m
