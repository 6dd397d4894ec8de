"""The SFT stage's device side: teacher-forced loss (NLL, with a teacher the
distillation mix), the jitted step with gradient accumulation, the eval step.

With LoRA (r1jax/run/adapters.py) `params` are the adapters and `frozen` the
base, an argument of every compiled program that is never differentiated.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from r1jax.data import batching
from r1jax.model import functional as fn
from r1jax.rl import distill as distill_lib
from r1jax.stages import distill_teacher


def _logits(graphdef, params, batch, frozen=None,
            dropout_key=None) -> jax.Array:
  """Teacher-forced logits [B, T, V] of a packed / bucketed batch."""
  mask_BxTxT = batching.segment_mask(batch['segment_ids'])
  logits_BxTxV, _ = fn.apply(graphdef, params, batch['tokens'],
                             batch['positions'], mask_BxTxT, frozen=frozen,
                             dropout_key=dropout_key)
  return logits_BxTxV


def _nll_from_logits(logits_BxTxV, batch) -> tuple[jax.Array, jax.Array]:
  logp_BxT1 = fn.token_logprobs(logits_BxTxV[:, :-1], batch['tokens'][:, 1:])
  w_BxT1 = batch['loss_mask'][:, 1:].astype(jnp.float32)
  return -(logp_BxT1 * w_BxT1).sum(), w_BxT1.sum()


def nll_sum(graphdef, params, batch, frozen=None
            ) -> tuple[jax.Array, jax.Array]:
  """Summed next-token NLL over target tokens, and the number of targets.

  `batch['loss_mask'][b, t]` marks tokens[b, t] as a target predicted from the
  tokens before it in the same segment.
  """
  return _nll_from_logits(_logits(graphdef, params, batch, frozen), batch)


def loss_sum(graphdef, params, batch,
             teacher: distill_teacher.Teacher | None = None,
             teacher_params=None, frozen=None, dropout_key=None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The summed SFT loss of a (micro-)batch and its parts {nll, kl, n}.

  Without a teacher: the summed NLL. With one: (1 - w) * NLL + w * KL, where
  KL is `distill_lib.distill_kl_sum` of the student's and the teacher's
  next-token distributions over the same target positions as the NLL. Both
  are sums; the caller divides by the number of targets over all
  micro-batches.
  """
  logits_BxTxV = _logits(graphdef, params, batch, frozen, dropout_key)
  nll, n = _nll_from_logits(logits_BxTxV, batch)
  if teacher is None:
    return nll, {'nll': nll, 'kl': jnp.zeros(()), 'n': n}
  teacher_logits_BxTxV = jax.lax.stop_gradient(
      _logits(teacher.graphdef, teacher_params, batch))
  kl = distill_lib.distill_kl_sum(
      logits_BxTxV[:, :-1], teacher_logits_BxTxV[:, :-1],
      batch['loss_mask'][:, 1:], kind=teacher.kind,
      temperature=teacher.temperature, vocab_size=teacher.vocab_size)
  w = teacher.weight
  return (1.0 - w) * nll + w * kl, {'nll': nll, 'kl': kl, 'n': n}


# Folded into a step's key for its LoRA dropout keys.
_DROPOUT_SALT = 0x4C6F5241


def make_train_step(graphdef, optimizer, grad_accum: int,
                    teacher: distill_teacher.Teacher | None = None,
                    frozen=None, lora_dropout: bool = False):
  """A jitted step: (state, batch) -> (state, metrics); state is donated.

  The batch is split into `grad_accum` micro-batches along its leading axis;
  gradients of the summed loss are accumulated and divided by the total number
  of target tokens, so the update equals the one of the whole batch. With a
  `teacher`, its logits are computed on each micro-batch inside the step (its
  params are an argument of the compiled program, never updated). With LoRA,
  `frozen` is the base; with `lora_dropout` each micro-batch draws its masks
  from state['rng'] folded with the step (the same after a resume).
  """

  def step(state, batch, teacher_params, frozen):
    params = state['params']
    micro = jax.tree.map(
        lambda x: x.reshape((grad_accum, x.shape[0] // grad_accum) + x.shape[1:]),
        batch)
    keys = None
    if lora_dropout:
      step_key = jax.random.fold_in(
          jax.random.wrap_key_data(state['rng']), state['step'])
      keys = jax.random.split(jax.random.fold_in(step_key, _DROPOUT_SALT),
                              grad_accum)
    grad_fn = jax.value_and_grad(
        lambda p, b, k: loss_sum(graphdef, p, b, teacher, teacher_params,
                                 frozen, k),
        has_aux=True)

    def body(carry, xs):
      g_acc, sums = carry
      mb, key = xs
      (loss, parts), g = grad_fn(params, mb, key)
      g_acc = jax.tree.map(jnp.add, g_acc, g)
      sums = jax.tree.map(jnp.add, sums, dict(parts, loss=loss))
      return (g_acc, sums), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    sums0 = {k: jnp.zeros(()) for k in ('loss', 'nll', 'kl', 'n')}
    (grads, sums), _ = jax.lax.scan(body, (zeros, sums0), (micro, keys))
    n = sums['n']
    denom = jnp.maximum(n, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = optimizer.update(grads, state['opt_state'], params)
    new_params = optax.apply_updates(params, updates)
    metrics = {
        'loss': sums['loss'] / denom,
        'grad_norm': optax.global_norm(grads),
        'target_tokens': n,
    }
    if teacher is not None:
      metrics['nll'] = sums['nll'] / denom
      metrics['distill/kl'] = sums['kl'] / denom
    new_state = dict(state, params=new_params, opt_state=opt_state,
                     step=state['step'] + 1)
    return new_state, metrics

  jitted = jax.jit(step, donate_argnums=0)
  teacher_params = None if teacher is None else teacher.params
  return lambda state, batch: jitted(state, batch, teacher_params, frozen)


def make_eval_step(graphdef, frozen=None):
  @jax.jit
  def eval_step(params, batch, frozen):
    return nll_sum(graphdef, params, batch, frozen)
  return functools.partial(eval_step, frozen=frozen)
