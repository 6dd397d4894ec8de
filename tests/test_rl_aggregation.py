"""Loss aggregations: one registry holds each with its unit count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import rl
from r1jax.rl import accumulation
from r1jax.rl import aggregation
from r1jax.rl import losses

# Row 1 is batch padding (no completion token); rows differ in length.
MASK = np.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1],
                 [1, 1, 0, 0], [1, 1, 1, 0]], np.int32)
EXPECTED_UNITS = {'seq_mean_token_mean': 5.0, 'token_mean': 13.0,
                  'seq_sum_norm': 6.0}


def test_the_package_exports_the_one_registry():
  assert rl.LOSS_AGGREGATIONS is aggregation.LOSS_AGGREGATIONS
  assert rl.LOSS_AGGREGATIONS.names() == sorted(EXPECTED_UNITS)


@pytest.mark.parametrize('name', aggregation.LOSS_AGGREGATIONS.names())
def test_every_registered_aggregation_has_a_unit_count(name):
  entry = aggregation.LOSS_AGGREGATIONS.get(name)
  assert isinstance(entry, aggregation.Aggregation)
  assert callable(entry.aggregate) and callable(entry.units)
  units = entry.units(jnp.asarray(MASK))
  assert units.shape == () and units.dtype == jnp.float32
  assert float(units) == EXPECTED_UNITS[name]
  assert float(accumulation.aggregation_units(name, jnp.asarray(MASK))) == (
      EXPECTED_UNITS[name])


@pytest.mark.parametrize('call', [
    lambda: accumulation.aggregation_units('row_mean', jnp.asarray(MASK)),
    lambda: accumulation.micro_weight('row_mean', jnp.asarray(MASK),
                                      jnp.float32(6.0)),
    lambda: losses.grpo_loss(jnp.zeros(MASK.shape), jnp.zeros(MASK.shape),
                             None, jnp.zeros(MASK.shape[0]),
                             jnp.asarray(MASK), beta=0.0,
                             aggregation='row_mean'),
])
def test_an_unknown_aggregation_raises_naming_the_known_ones(call):
  # No silent fallback to a mean over rows: that would weigh micro-batches
  # wrongly under gradient accumulation.
  with pytest.raises(KeyError, match=r"loss aggregation 'row_mean'.*"
                     r"seq_mean_token_mean.*token_mean"):
    call()


def test_an_aggregation_cannot_be_registered_without_units():
  with pytest.raises(TypeError):
    aggregation.register('no_units')  # pylint: disable=missing-kwoa
  with pytest.raises(TypeError, match='units'):
    aggregation.register('bad_units', units=3.0)
  assert 'no_units' not in aggregation.LOSS_AGGREGATIONS
  assert 'bad_units' not in aggregation.LOSS_AGGREGATIONS


@pytest.mark.parametrize('name', aggregation.LOSS_AGGREGATIONS.names())
@pytest.mark.parametrize('num_micro', [2, 3])
def test_unit_weighted_micro_batches_give_the_whole_loss(name, num_micro):
  rng = np.random.default_rng(0)
  logp = jnp.asarray(rng.normal(-1.0, 0.5, MASK.shape), jnp.float32)
  old = jnp.asarray(logp + rng.normal(0.0, 0.2, MASK.shape), jnp.float32)
  adv = jnp.asarray(rng.normal(size=MASK.shape[0]), jnp.float32)
  mask = jnp.asarray(MASK)

  def loss(lp, o, a, m):
    return losses.grpo_loss(lp, o, None, a, m, beta=0.0, aggregation=name)[0]

  def grad(lp, o, a, m):
    return jax.grad(loss)(lp, o, a, m)

  total_units = accumulation.aggregation_units(name, mask)
  parts = [accumulation.split_rows(x, num_micro)
           for x in (logp, old, adv, mask)]
  acc_loss, acc_grad = 0.0, jnp.zeros_like(logp)
  for i in range(num_micro):
    lp, o, a, m = (p[i] for p in parts)
    w = accumulation.micro_weight(name, m, total_units)
    acc_loss = acc_loss + w * loss(lp, o, a, m)
    # Put the micro-batch's gradient rows back where split_rows took them.
    acc_grad = acc_grad.at[i::num_micro].set(w * grad(lp, o, a, m))
  np.testing.assert_allclose(acc_loss, loss(logp, old, adv, mask), rtol=1e-6)
  np.testing.assert_allclose(acc_grad, grad(logp, old, adv, mask), rtol=1e-5,
                             atol=1e-7)
