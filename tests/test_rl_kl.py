"""KL estimators and the KL term of grpo_loss."""

import math

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import kl
from r1jax.rl import losses

KL = kl.KL_ESTIMATORS
LN2 = math.log(2.0)

_logp = st.floats(-30.0, 0.0, width=32)
_logp_pair = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.float32, (2, n), elements=_logp),
        hnp.arrays(np.float32, (2, n), elements=_logp),
    )
)


def test_registry_names():
  assert KL.names() == ['k1', 'k1+', 'k2', 'k2+', 'k3', 'k3+']


def test_hand_computed():
  # Token 0: pi = 1/2, pi_ref = 1/4, so log(pi_ref / pi) = -ln 2.
  #   k1 = ln 2, k2 = (ln 2)^2 / 2, k3 = 1/2 + ln 2 - 1.
  # Token 1: pi = 1/4, pi_ref = 1/2, so log(pi_ref / pi) = ln 2.
  #   k1 = -ln 2, k2 = (ln 2)^2 / 2, k3 = 2 - ln 2 - 1.
  logp = jnp.log(jnp.array([[0.5, 0.25]]))
  ref = jnp.log(jnp.array([[0.25, 0.5]]))
  np.testing.assert_allclose(KL.get('k1')(logp, ref), [[LN2, -LN2]], rtol=1e-6)
  np.testing.assert_allclose(
      KL.get('k2')(logp, ref), [[LN2**2 / 2, LN2**2 / 2]], rtol=1e-6
  )
  np.testing.assert_allclose(
      KL.get('k3')(logp, ref), [[LN2 - 0.5, 1 - LN2]], rtol=1e-6
  )


@settings(max_examples=50, deadline=None)
@given(pair=_logp_pair)
def test_k3_and_k2_nonnegative_and_zero_on_agreement(pair):
  logp, ref = map(jnp.asarray, pair)
  for name in ('k2', 'k3'):
    assert np.all(np.asarray(KL.get(name)(logp, ref)) >= 0), name
    np.testing.assert_array_equal(KL.get(name)(logp, logp),
                                  np.zeros(logp.shape))


@settings(max_examples=30, deadline=None)
@given(
    logits=hnp.arrays(np.float64, (2, 5), elements=st.floats(-4, 4)),
)
def test_k1_and_k3_are_unbiased(logits):
  """E_{y ~ pi}[k(y)] = KL(pi || ref) exactly, summing over a small vocab."""
  logp = jax.nn.log_softmax(jnp.asarray(logits[0], jnp.float32))
  ref = jax.nn.log_softmax(jnp.asarray(logits[1], jnp.float32))
  p = np.exp(np.asarray(logp, np.float64))
  exact = float(np.sum(p * (np.asarray(logp, np.float64) - np.asarray(ref))))
  for name in ('k1', 'k3'):
    k = np.asarray(KL.get(name)(logp[None], ref[None])[0], np.float64)
    np.testing.assert_allclose(np.sum(p * k), exact, atol=1e-5, err_msg=name)


def _inputs():
  # B = 2, T = 3; the last position of sequence 1 is padding.
  logp = jnp.log(jnp.array([[0.5, 0.25, 0.5], [0.5, 0.5, 0.9]]))
  ref = jnp.log(jnp.array([[0.25, 0.5, 0.5], [0.5, 0.5, 0.1]]))
  mask = jnp.array([[1, 1, 1], [1, 1, 0]])
  adv = jnp.array([1.0, -1.0])
  return logp, ref, adv, mask


def test_kl_term_hand_computed():
  """loss(beta) - loss(0) = beta * aggregated k3; metric kl = token mean."""
  logp, ref, adv, mask = _inputs()
  # k3 per valid token: (ln2 - 1/2, 1 - ln2, 0) and (0, 0).
  a, b = LN2 - 0.5, 1 - LN2
  kl_seq_mean = ((a + b) / 3 + 0.0) / 2  # seq_mean_token_mean
  kl_tok_mean = (a + b) / 5
  beta = 0.04
  for agg, expected in (('seq_mean_token_mean', kl_seq_mean),
                        ('token_mean', kl_tok_mean)):
    with_kl, m = losses.grpo_loss(logp, logp, ref, adv, mask, beta=beta,
                                  aggregation=agg)
    without, _ = losses.grpo_loss(logp, logp, None, adv, mask, beta=0.0,
                                  aggregation=agg)
    np.testing.assert_allclose(with_kl - without, beta * expected, rtol=1e-5)
    np.testing.assert_allclose(m['kl'], kl_tok_mean, rtol=1e-5)


def test_kl_gradient_hand_computed():
  """d(beta k3)/d logp = beta (1 - pi_ref / pi); zero advantage isolates it."""
  logp, ref, _, mask = _inputs()
  beta = 0.1
  grad = jax.grad(
      lambda lp: losses.grpo_loss(lp, lp, ref, jnp.zeros(2), mask, beta=beta,
                                  aggregation='token_mean')[0]
  )(logp)
  # pi_ref / pi per valid token: (1/2, 2, 1), (1, 1); 5 valid tokens.
  expected = beta * np.array([[1 - 0.5, 1 - 2.0, 0.0], [0.0, 0.0, 0.0]]) / 5
  np.testing.assert_allclose(grad, expected, atol=1e-7)


def test_beta_zero_skips_reference():
  logp, ref, adv, mask = _inputs()
  loss_none, m_none = losses.grpo_loss(logp, logp, None, adv, mask, beta=0.0)
  loss_ref, m_ref = losses.grpo_loss(logp, logp, ref, adv, mask, beta=0)
  assert 'kl' not in m_none and 'kl' in m_ref
  assert float(loss_none) == float(loss_ref)
  # Works under jit with ref=None closed over.
  jitted = jax.jit(
      lambda a, b, c, d: losses.grpo_loss(a, b, None, c, d, beta=0.0)[0]
  )
  np.testing.assert_allclose(jitted(logp, logp, adv, mask), loss_none)


@pytest.mark.parametrize('beta', [0.001, 1])
def test_positive_beta_without_reference_fails_clearly(beta):
  logp, _, adv, mask = _inputs()
  with pytest.raises(ValueError, match='reference log-probs'):
    losses.grpo_loss(logp, logp, None, adv, mask, beta=beta)


def test_traced_beta_without_reference_fails_clearly():
  logp, _, adv, mask = _inputs()
  f = jax.jit(lambda b: losses.grpo_loss(logp, logp, None, adv, mask, beta=b))
  with pytest.raises(ValueError, match='reference log-probs'):
    f(0.0)


def test_masked_reference_garbage_is_ignored():
  logp, ref, adv, mask = _inputs()
  bad_ref = ref.at[1, 2].set(-jnp.inf)
  bad_logp = logp.at[1, 2].set(jnp.nan)
  loss_a, m_a = losses.grpo_loss(logp, logp, ref, adv, mask, beta=0.1)
  loss_b, m_b = losses.grpo_loss(bad_logp, logp, bad_ref, adv, mask, beta=0.1)
  assert float(loss_a) == float(loss_b)
  assert float(m_a['kl']) == float(m_b['kl'])


# --- Straight-through k1+ / k2+ / k3+ ---------------------------------------
@pytest.mark.parametrize('name', ['k1', 'k2', 'k3'])
def test_straight_through_value_of_kn_gradient_of_k2(name):
  """verl kl_penalty('kn+'): forward kn, backward 0.5 (logp - ref)^2."""
  logp, ref, _, _ = _inputs()
  plus = KL.get(name + '+')
  np.testing.assert_allclose(plus(logp, ref), KL.get(name)(logp, ref),
                             rtol=1e-6)
  g_plus = jax.grad(lambda lp: jnp.sum(plus(lp, ref)))(logp)
  # d/dlogp 0.5 (logp - ref)^2 = logp - ref; token 0: ln .5 - ln .25 = ln 2.
  np.testing.assert_allclose(g_plus, np.asarray(logp - ref), rtol=1e-6)
  np.testing.assert_allclose(g_plus[0, :2], [LN2, -LN2], rtol=1e-6)


def test_k3_plus_in_grpo_loss_hand_computed():
  """beta * k3+ in the loss: value of k3, gradient beta (logp - ref) / N."""
  logp, ref, _, mask = _inputs()
  beta = 0.1

  def f(lp, est):
    return losses.grpo_loss(lp, lp, ref, jnp.zeros(2), mask, beta=beta,
                            kl_estimator=est, aggregation='token_mean')

  (l3, m3), _ = jax.value_and_grad(f, has_aux=True)(logp, 'k3')
  (lp_, mp), gp = jax.value_and_grad(f, has_aux=True)(logp, 'k3+')
  np.testing.assert_allclose(lp_, l3, rtol=1e-6)
  np.testing.assert_allclose(mp['kl'], m3['kl'], rtol=1e-6)
  # logp - ref per valid token: (ln2, -ln2, 0), (0, 0); 5 valid tokens.
  expected = beta * np.array([[LN2, -LN2, 0.0], [0.0, 0.0, 0.0]]) / 5
  np.testing.assert_allclose(gp, expected, atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(
    logits=hnp.arrays(np.float64, (2, 5), elements=st.floats(-3, 3)),
)
def test_k2_gradient_is_the_true_kl_gradient_in_expectation(logits):
  """E_{y~pi}[grad k2(y)] = grad KL(pi || ref) w.r.t. pi's logits."""
  ref = jax.nn.log_softmax(jnp.asarray(logits[1], jnp.float32))

  def exact_kl(z):
    lp = jax.nn.log_softmax(z)
    return jnp.sum(jnp.exp(lp) * (lp - ref))

  z = jnp.asarray(logits[0], jnp.float32)
  g_exact = jax.grad(exact_kl)(z)
  for name in ('k1+', 'k2+', 'k3+'):
    # The loss differentiates each sampled token's kl through logp only; its
    # expectation under pi (weights sg(pi)) must be the exact KL gradient.
    g_path = jax.grad(lambda z: jnp.sum(
        jax.lax.stop_gradient(jnp.exp(jax.nn.log_softmax(z)))
        * KL.get(name)(jax.nn.log_softmax(z)[None], ref[None])[0]))(z)
    np.testing.assert_allclose(g_path, g_exact, atol=1e-5, err_msg=name)


# --- KL in the reward --------------------------------------------------------
def test_kl_penalized_rewards_hand_computed():
  """verl compute_rewards: r - beta * sum_t (logp_old - logp_ref)."""
  logp, ref, _, mask = _inputs()
  rewards = jnp.array([1.0, 0.0])
  # k1 per valid token: (ln2, -ln2, 0) -> 0; (0, 0) -> 0. Use k3 too:
  # k3: (ln2 - 1/2, 1 - ln2, 0) -> 1/2; (0, 0) -> 0.
  r1, kl1 = kl.kl_penalized_rewards(rewards, logp, ref, mask, beta=0.5)
  np.testing.assert_allclose(kl1, [0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(r1, [1.0, 0.0], atol=1e-6)
  r3, kl3 = kl.kl_penalized_rewards(rewards, logp, ref, mask, beta=0.5,
                                    kl_estimator='k3')
  np.testing.assert_allclose(kl3, [0.5, 0.0], atol=1e-6)
  np.testing.assert_allclose(r3, [0.75, 0.0], atol=1e-6)
  r3m, kl3m = kl.kl_penalized_rewards(rewards, logp, ref, mask, beta=0.5,
                                      kl_estimator='k3', reduce='mean')
  np.testing.assert_allclose(kl3m, [0.5 / 3, 0.0], atol=1e-6)
  np.testing.assert_allclose(r3m, [1 - 0.25 / 3, 0.0], atol=1e-6)
  # Masked garbage is ignored; no gradient flows.
  bad = logp.at[1, 2].set(jnp.nan)
  r_bad, _ = kl.kl_penalized_rewards(rewards, bad, ref, mask, beta=0.5,
                                     kl_estimator='k3')
  np.testing.assert_allclose(r_bad, r3, atol=1e-7)
  g = jax.grad(lambda lp: jnp.sum(kl.kl_penalized_rewards(
      rewards, lp, ref, mask, beta=0.5)[0]))(logp)
  assert np.all(np.asarray(g) == 0.0)
  with pytest.raises(ValueError, match='reduce'):
    kl.kl_penalized_rewards(rewards, logp, ref, mask, beta=0.5, reduce='max')
