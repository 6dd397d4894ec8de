"""grpo_loss's token selection, masking, entropy bonus and rollout correction.

Reference numbers follow TRL's formulas (trl/trainer/grpo_trainer.py:
get_high_entropy_mask, get_off_policy_mask, the vllm importance-sampling
modes, the entropy bonus) and verl's (rollout_corr_helper.py), in float64
numpy on the same small tensors.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import entropy
from r1jax.rl import losses
from r1jax.rl import rollout_correction

# The hand case of test_rl_losses (eps 0.2): per-token clipped losses
#   seq 0 (A +2, r 1.1, 1.5, 0.5): -2.2, -2.4, -1.0
#   seq 1 (A -1, r 1.1, 1.5, pad): 1.1, 1.5, (0)
#   seq 2 (A -1, r 0.5, 1.0, 4.0): 0.8, 1.0, 4.0
RATIOS = np.array([[1.1, 1.5, 0.5], [1.1, 1.5, 0.5], [0.5, 1.0, 4.0]])
MASK = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
ADV = np.array([2.0, -1.0, -1.0])
OLD = np.full((3, 3), -1.0)
LOGP = OLD + np.log(RATIOS)
PER_TOKEN = np.array([[-2.2, -2.4, -1.0], [1.1, 1.5, 0.0], [0.8, 1.0, 4.0]])
# Distinct entropies; padding's is huge and must not matter.
ENT = np.array([[1.0, 5.0, 2.0], [8.0, 3.0, 99.0], [6.0, 4.0, 7.0]])


def _f32(x):
  return None if x is None else jnp.asarray(x, jnp.float32)


def _loss(logp=LOGP, old=OLD, adv=ADV, mask=MASK, entropy_BxT=None,
          sampler=None, **kw):
  kw.setdefault('beta', 0.0)
  kw.setdefault('aggregation', 'token_mean')
  return losses.grpo_loss(_f32(logp), _f32(old), kw.pop('ref', None),
                          _f32(adv), jnp.asarray(mask),
                          entropy_BxT=_f32(entropy_BxT),
                          sampler_logp_BxT=_f32(sampler), **kw)


def _grad(logp=LOGP, **kw):
  return np.asarray(jax.grad(lambda lp: _loss(lp, **kw)[0])(_f32(logp)))


def test_defaults_reproduce_the_plain_loss_bit_for_bit():
  ref = OLD - 0.3
  base = _loss(ref=_f32(ref), beta=0.04, entropy_BxT=ENT)
  explicit = _loss(ref=_f32(ref), beta=0.04, entropy_BxT=ENT, delta=None,
                   policy_options=None,
                   top_entropy_quantile=None, entropy_coef=0.0,
                   entropy_target=None, rollout_correction=None,
                   offpolicy_mask_threshold=None)
  assert float(base[0]) == float(explicit[0])
  assert base[1].keys() == explicit[1].keys()
  for k in base[1]:
    assert float(base[1][k]) == float(explicit[1][k]), k
  np.testing.assert_allclose(base[1]['policy_loss'],
                             PER_TOKEN.sum() / 8, rtol=1e-5)


# --- Top-q entropy tokens ("80/20") -----------------------------------------
def _trl_high_entropy_mask(ent, mask, q):
  thr = np.quantile(ent[mask > 0], 1 - q)  # torch.quantile: linear
  return (ent * mask >= thr) & (mask > 0)


@pytest.mark.parametrize('q', [0.25, 0.2, 0.5, 1.0, 0.0])
def test_high_entropy_mask_matches_trl(q):
  got = np.asarray(entropy.high_entropy_mask(_f32(ENT), jnp.asarray(MASK), q))
  np.testing.assert_array_equal(got, _trl_high_entropy_mask(ENT, MASK, q))


def test_top_entropy_quantile_hand_computed():
  # Valid entropies 1..8; q = 0.25: quantile(0.75) at position 5.25 of the
  # sorted values = 6.25 -> tokens with entropy 7 (seq 2 t2) and 8 (seq 1
  # t0). Their losses 4.0 and 1.1, normalised by all 8 valid tokens (TRL).
  loss, m = _loss(entropy_BxT=ENT, top_entropy_quantile=0.25)
  np.testing.assert_allclose(loss, (4.0 + 1.1) / 8, rtol=1e-5)
  np.testing.assert_allclose(m['entropy_selected_frac'], 2 / 8)
  g = _grad(entropy_BxT=ENT, top_entropy_quantile=0.25)
  keep = np.zeros((3, 3), bool)
  keep[1, 0] = keep[2, 2] = True
  assert np.all(g[~keep] == 0.0)
  # seq 1 t0: -A r / 8 = 1.1 / 8 (unclipped); seq 2 t2: clipped? A < 0,
  # r = 4 > 1.2: the unclipped branch, -A r / 8 = 4 / 8.
  np.testing.assert_allclose(g[keep], [1.1 / 8, 4.0 / 8], rtol=1e-5)


def test_masked_quantile_matches_numpy():
  x = np.array([[3.0, 1.0, 4.0, 1.0], [5.0, 9.0, 2.0, 6.0]])
  mask = np.array([[1, 1, 0, 1], [1, 0, 1, 1]])
  for q in (0.0, 0.1, 0.5, 0.8, 1.0):
    np.testing.assert_allclose(
        entropy.masked_quantile(_f32(x), jnp.asarray(mask), q),
        np.quantile(x[mask > 0], q), rtol=1e-6)
  assert float(entropy.masked_quantile(_f32(x), jnp.zeros((2, 4)), 0.5)) == 0


# --- Entropy bonus and its adaptive coefficient ------------------------------
def test_entropy_bonus_hand_computed():
  # Mean valid entropy (1 + 5 + 2 + 8 + 3 + 6 + 4 + 7) / 8 = 4.5.
  ent = _f32(ENT)
  l0, _ = _loss(entropy_BxT=ent)
  l1, m = _loss(entropy_BxT=ent, entropy_coef=0.01)
  np.testing.assert_allclose(l1 - l0, -0.01 * 4.5, rtol=1e-4)
  np.testing.assert_allclose(m['entropy_bonus'], 4.5)
  np.testing.assert_allclose(m['entropy_coef_applied'], 0.01)
  g = jax.grad(lambda e: _loss(entropy_BxT=e, entropy_coef=0.01)[0])(ent)
  np.testing.assert_allclose(g, -0.01 * MASK / 8, rtol=1e-6)
  # Target below the current entropy: the bonus does not act (Skywork-OR1).
  l2, m2 = _loss(entropy_BxT=ent, entropy_coef=0.01, entropy_target=4.0)
  assert float(l2) == float(l0) and float(m2['entropy_coef_applied']) == 0.0
  l3, _ = _loss(entropy_BxT=ent, entropy_coef=0.01, entropy_target=5.0)
  np.testing.assert_allclose(l3, l1, rtol=1e-6)
  # With the top-q selection the bonus is over the same tokens: (8 + 7) / 2.
  _, m4 = _loss(entropy_BxT=ent, entropy_coef=0.01, top_entropy_quantile=0.25)
  np.testing.assert_allclose(m4['entropy_bonus'], 7.5)


def test_traced_entropy_coef():
  f = jax.jit(lambda c: _loss(entropy_BxT=ENT, entropy_coef=c)[0])
  np.testing.assert_allclose(f(jnp.float32(0.01)),
                             _loss(entropy_BxT=ENT, entropy_coef=0.01)[0],
                             rtol=1e-6)


# --- Rollout correction (TIS / MIS) ------------------------------------------
# Sampler weights w = pi_old / pi_sampler per token.
W = np.array([[0.5, 3.0, 1.0], [1.0, 1.5, 7.0], [2.5, 0.25, 1.0]])
SAMPLER = OLD - np.log(W)


def _trl_is_weight(mode, cmax, cmin=None):
  """TRL: token_* on exp(old - sampler) per token, sequence_* on the masked
  sum; *_truncate clamps to [cmin, cmax], *_mask zeroes outside."""
  d = (OLD - SAMPLER) * MASK
  if mode.endswith('seq'):
    d = d.sum(1, keepdims=True) * np.ones_like(d)
  w = np.exp(d)
  lo = -np.inf if cmin is None else cmin
  if mode.startswith('tis'):
    return np.clip(w, cmin, cmax)
  return np.where((w < lo) | (w > cmax), 0.0, w)


@pytest.mark.parametrize('mode', rollout_correction.ROLLOUT_CORRECTIONS)
@pytest.mark.parametrize('cmin', [None, 0.4])
def test_rollout_correction_matches_trl(mode, cmin):
  w = _trl_is_weight(mode, 2.0, cmin)
  loss, m = _loss(sampler=SAMPLER, rollout_correction=mode,
                  rollout_correction_threshold=2.0,
                  rollout_correction_threshold_low=cmin)
  np.testing.assert_allclose(loss, (PER_TOKEN * w * MASK).sum() / 8,
                             rtol=1e-5)
  np.testing.assert_allclose(m['rollout_is_weight_max'], (w * MASK).max(),
                             rtol=1e-5)
  # The weight is a constant: the gradient is the plain one times w.
  g = _grad(sampler=SAMPLER, rollout_correction=mode,
            rollout_correction_threshold=2.0,
            rollout_correction_threshold_low=cmin)
  g0 = _grad()
  np.testing.assert_allclose(g, g0 * w * MASK, rtol=1e-5, atol=1e-8)


def test_rollout_correction_hand_computed():
  # tis_token, C = 2: weights (0.5, 2, 1), (1, 1.5, pad), (2, 0.25, 1).
  loss, m = _loss(sampler=SAMPLER, rollout_correction='tis_token')
  expected = (-2.2 * 0.5 - 2.4 * 2 - 1.0 + 1.1 + 1.5 * 1.5 + 0.8 * 2
              + 1.0 * 0.25 + 4.0) / 8
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert float(m['rollout_is_masked_frac']) == 0.0
  # mis_token drops 3.0 and 2.5: (0.5, 0, 1), (1, 1.5), (0, 0.25, 1).
  loss, m = _loss(sampler=SAMPLER, rollout_correction='mis_token')
  expected = (-2.2 * 0.5 - 1.0 + 1.1 + 1.5 * 1.5 + 1.0 * 0.25 + 4.0) / 8
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(m['rollout_is_masked_frac'], 2 / 8)
  # mis_seq: sequence weights 1.5, 1.5, 0.625; all within C = 2.
  loss, _ = _loss(sampler=SAMPLER, rollout_correction='mis_seq')
  np.testing.assert_allclose(
      loss, (1.5 * -5.6 + 1.5 * 2.6 + 0.625 * 5.8) / 8, rtol=1e-5)
  # Gap metrics: |log w| over valid tokens (padding's 7.0 ignored).
  lw = np.abs(np.log(W))[MASK > 0]
  np.testing.assert_allclose(m['rollout_logp_gap_mean'], lw.mean(), rtol=1e-5)
  np.testing.assert_allclose(m['rollout_logp_gap_max'], lw.max(), rtol=1e-5)
  # rollout_kl = mean(sampler - old) = mean(-log w).
  np.testing.assert_allclose(m['rollout_kl'],
                             -np.log(W)[MASK > 0].mean(), rtol=1e-5)


def test_sampler_logp_alone_only_reports_the_gap():
  l0, _ = _loss()
  l1, m = _loss(sampler=SAMPLER)
  assert float(l0) == float(l1)
  assert 'rollout_logp_gap_mean' in m and 'rollout_is_weight_mean' not in m


# --- DeepSeek-V3.2 off-policy sequence mask ----------------------------------
def test_offpolicy_mask_hand_computed_and_trl():
  # Sampler log-probs above the current ones by 1.0 (seq 0), 0.5 (seq 1) and
  # 0.05 (seq 2) per token: mean log(pi_sampler / pi) = 1.0, 0.5, 0.05. With
  # delta 0.1 only seq 1 (A < 0 and 0.5 > 0.1) is dropped; seq 0 has A > 0.
  sampler = LOGP + np.array([[1.0], [0.5], [0.05]])
  d = (sampler - LOGP) * MASK
  keep = (ADV >= 0) | (d.sum(1) / MASK.sum(1) <= 0.1)  # TRL
  assert keep.tolist() == [True, False, True]
  loss, m = _loss(sampler=sampler, offpolicy_mask_threshold=0.1)
  np.testing.assert_allclose(loss, (-5.6 + 5.8) / 8, rtol=1e-5)
  np.testing.assert_allclose(
      loss, (PER_TOKEN * keep[:, None]).sum() / 8, rtol=1e-5)
  np.testing.assert_allclose(m['offpolicy_masked_frac'], 1 / 3)
  g = _grad(sampler=sampler, offpolicy_mask_threshold=0.1)
  assert np.all(g[1] == 0) and np.any(g[0] != 0)
  # Without sampler log-probs it uses old_logp: mean log(pi_old / pi) is
  # -(ln 1.1 + ln 1.5) / 2 (seq 1) and -(ln .5 + ln 4) / 3 (seq 2), both < 0.
  _, m = _loss(offpolicy_mask_threshold=0.1)
  assert float(m['offpolicy_masked_frac']) == 0.0


# --- Everything at once: masking, jit ----------------------------------------
ALL_ON = dict(top_entropy_quantile=0.5, entropy_coef=0.01, delta=3.0,
              rollout_correction='tis_seq', offpolicy_mask_threshold=0.1,
              aggregation='seq_mean_token_mean')


def test_masked_positions_irrelevant_with_every_option_on():
  garbage = np.zeros((3, 3))
  garbage[1, 2] = 1e4
  ref = _f32(OLD - 0.2)
  base = dict(ALL_ON, beta=0.05)

  def run(lp, old, samp, ent, r):
    return _loss(lp, old=old, sampler=samp, entropy_BxT=ent, ref=r, **base)

  (l1, m1) = run(LOGP, OLD, SAMPLER, ENT, ref)
  (l2, m2) = run(LOGP - garbage, OLD + garbage, SAMPLER - garbage,
                 ENT + garbage, ref - garbage)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  for k in m1:
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-6, err_msg=k)
  g = jax.grad(lambda lp: run(lp, OLD + garbage, SAMPLER - garbage,
                              ENT + garbage, ref - garbage)[0])(
                                  _f32(LOGP - garbage))
  assert float(g[1, 2]) == 0.0


def test_jit_with_every_option_on():
  fn = functools.partial(losses.grpo_loss, beta=0.0, **ALL_ON)
  args = (_f32(LOGP), _f32(OLD), None, _f32(ADV), jnp.asarray(MASK))
  kw = dict(entropy_BxT=_f32(ENT), sampler_logp_BxT=_f32(SAMPLER))
  eager, m_e = fn(*args, **kw)
  jitted, m_j = jax.jit(lambda a, b, d, e, k: fn(a, b, None, d, e, **k))(
      args[0], args[1], args[3], args[4], kw)
  np.testing.assert_allclose(eager, jitted, rtol=1e-6)
  for k in m_e:
    np.testing.assert_allclose(m_e[k], m_j[k], rtol=1e-6, err_msg=k)


@pytest.mark.parametrize('kw, match', [
    (dict(top_entropy_quantile=0.2), 'entropy_BxT'),
    (dict(entropy_coef=0.1), 'entropy_BxT'),
    (dict(rollout_correction='tis_token'), 'sampler_logp_BxT'),
    (dict(rollout_correction='tis', sampler=SAMPLER), 'rollout_correction'),
    (dict(rollout_correction='tis_seq', sampler=SAMPLER,
          rollout_correction_threshold=0.0), 'threshold'),
    (dict(top_entropy_quantile=1.5, entropy_BxT=ENT), 'top_entropy_quantile'),
    (dict(offpolicy_mask_threshold=-1.0), 'offpolicy_mask_threshold'),
])
def test_bad_options_fail_loudly(kw, match):
  with pytest.raises(ValueError, match=match):
    _loss(**kw)
