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
  assert KL.names() == ['k1', 'k2', 'k3']


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
