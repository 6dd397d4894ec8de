"""The device side of a GRPO step: the batch, log-probs and the update.

`make_batch` turns this host's `grpo_rollout.HostRollout` into the `Batch`
the update trains on: the rows on the mesh, the reference log-probs and the
advantages (`rollout_advantages`, the one place they are computed). Two
jitted programs, both over one rollout of fixed shape:

  * `make_logprobs_fn`: log pi(y_t) of the sampled completion tokens under a
    parameter tree (the frozen reference; the same function with gradients
    inside the update);
  * `make_update_fn`: `num_iterations` passes over the rollout, each split
    into `num_minibatches` optimizer steps, each step's gradient accumulated
    over `grad_accum` micro-batches (one micro-batch's activations live at a
    time). The loss is `rl.grpo_loss`; micro-batch losses are weighted so the
    accumulated gradient equals the mini-batch's (`rl.accumulation`).

The log-prob passes read `Completions` (B = prompts x group size rows of
prompt and completion tokens); the update a `Batch` (the completions, the
loss mask, old-policy and reference log-probs, the advantages). Given the
group size, both compute a group's prompt once per part (reference chunk,
update micro-batch) rather than once per row (`completion_logprobs`'
prompt_group).

Policy, old-policy and reference log-probs are all of one distribution, the
one the rollout was sampled from (`Scoring`): the policy at the sampling
temperature, log_softmax(logits / T), as TRL's and verl's trainers score it,
and with `sampling.logprobs_nucleus` the renormalised top-k / top-p set
(recomputed from each params' own logits; `controls.policy_logits`).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from r1jax import parallel
from r1jax import rl
from r1jax.model.functional import (cached_completion_hidden,
                                    completion_hidden, gather_cache,
                                    prompt_cache, token_logprobs)
from r1jax.model import lora as lora_lib
from r1jax.rl import accumulation
from r1jax.run import adapters
from r1jax.run import console
from r1jax.sampling import controls
from r1jax.stages import grpo_rollout


@struct.dataclass
class Completions:
  """The sampled rows as a log-prob pass reads them: global arrays, the
  `sampling.SampleOutput` fields of the same names."""
  prompt_tokens: jax.Array  # int32[B, P], left-padded
  prompt_mask: jax.Array    # bool[B, P], True on real prompt tokens
  tokens: jax.Array         # int32[B, L], the completions as sampled
  mask: jax.Array           # bool[B, L], True on the sampled tokens


@struct.dataclass
class Batch:
  """What one GRPO update trains on (global arrays, B rows).

  Attributes:
    completions: the sampled rows.
    loss_mask: bool[B, L], the tokens the loss sees: the sampled ones, less
      those of truncated completions with rl.mask_truncated (DAPO's overlong
      filtering).
    old_logp: float32[B, L], log-probs of the policy that sampled (pi_old):
      the sampler's own, or with a rollout correction the trainer's pass
      over the rollout with the same params.
    adv: float32[B], one advantage per completion.
    ref_logp: float32[B, L] under the reference when rl.beta > 0, else None.
    sampler_logp: float32[B, L], the sampler's log-probs when old_logp is the
      trainer's (the behaviour policy of the rollout correction), else None.
  """
  completions: Completions
  loss_mask: jax.Array
  old_logp: jax.Array
  adv: jax.Array
  ref_logp: jax.Array | None = None
  sampler_logp: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Scoring:
  """The distribution the rollout's tokens were sampled from, as the sampler
  records their log-probs (`Sampler.generate`'s settings of the same names).

  The default (temperature 1, no nucleus) scores with log_softmax(logits)
  and no other float op: the temperature-1 program is unchanged by scoring.
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0
  nucleus: bool = False  # sampling.logprobs_nucleus

  @classmethod
  def from_config(cls, sc) -> 'Scoring':
    """From a GRPO config's `sampling` section (what the rollout passes)."""
    return cls(temperature=float(sc.temperature), top_k=int(sc.top_k),
               top_p=float(sc.top_p),
               nucleus=bool(sc.get('logprobs_nucleus', False)))

  def mode(self, vocab_size: int) -> controls.Mode:
    return controls.Mode.from_settings(self.temperature, self.top_k,
                                       self.top_p, self.min_p, vocab_size,
                                       self.nucleus)


def completion_logprobs(graphdef, params, completions: Completions, *,
                        with_entropy: bool = False,
                        scoring: Scoring = Scoring(), frozen=None,
                        dropout_key=None, prompt_group: int = 1,
                        prompt_kv=None):
  """(logp_BxL, entropy_BxL or None) of the completion tokens.

  One forward pass over [prompt, completion[:-1]]; the LM head runs only on
  the positions that predict completion tokens. Equal to the sampler's
  log-probs for the same params (the same forward code and positions, the
  same `scoring` of the logits). The entropy is that of the same
  distribution. With LoRA, `params` are the adapters and `frozen` the base
  (`lora.merge`); `dropout_key` turns LoRA dropout on. `prompt_group` > 1:
  every that many consecutive rows have the same prompt, computed once
  (`functional.completion_hidden`). `prompt_kv` = (cache, rows_B): the
  prompts' first P - 1 tokens are already in `cache` (`prompt_kv_fn`, one
  row per distinct prompt), row i's at cache row rows_B[i].
  """
  model = lora_lib.merge(graphdef, params, frozen, dropout_key)
  comp_BxL = completions.tokens
  if prompt_kv is None:
    hidden_BxLxD = completion_hidden(
        model, completions.prompt_tokens, completions.prompt_mask, comp_BxL,
        completions.mask, prompt_group=prompt_group)
  else:
    cache, rows_B = prompt_kv
    hidden_BxLxD = cached_completion_hidden(
        model, gather_cache(cache, rows_B), completions.prompt_tokens,
        completions.prompt_mask, comp_BxL, completions.mask)
  logits_BxLxV = model.logits(hidden_BxLxD)
  mode = scoring.mode(logits_BxLxV.shape[-1])
  if mode != controls.Mode():  # temperature 1, no nucleus: the logits as is
    logits_BxLxV = controls.policy_logits(
        logits_BxLxV, mode, scoring.temperature, scoring.top_p, scoring.min_p,
        comp_BxL)
  logp_BxL = token_logprobs(logits_BxLxV, comp_BxL)
  entropy_BxL = None
  if with_entropy:
    logits = jax.lax.stop_gradient(logits_BxLxV)
    logz = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    probs = jnp.exp(logits - logz)
    if mode.nucleus_logprobs:  # 0 * -inf outside the kept tokens
      entropy_BxL = (logz[..., 0] - jnp.sum(
          jnp.where(probs > 0, probs * logits, 0.0), axis=-1))
    else:
      entropy_BxL = (logz[..., 0] - jnp.sum(probs * logits, axis=-1))
  return logp_BxL, entropy_BxL


def prompt_kv_fn(graphdef):
  """(params, prompt_NxP, prompt_mask_NxP) -> the KV cache of the prompts'
  first P - 1 tokens (`functional.prompt_cache`), for `completion_logprobs`'
  prompt_kv. Not for LoRA."""
  def kv(params, prompt_NxP, prompt_mask_NxP):
    return prompt_cache(lora_lib.merge(graphdef, params, None, None),
                        prompt_NxP, prompt_mask_NxP)
  return kv


def part_prompt_group(group_size: int, parts: int) -> int:
  """Consecutive rows with one prompt in each of `parts` strided parts
  (`accumulation.split_rows`) of a rollout of groups of `group_size`
  consecutive rows: group_size / parts when it divides (part i holds rows
  i, i + parts, ... of every group, consecutive in the part), else 1."""
  return group_size // parts if group_size % parts == 0 else 1


def check_groups(prompt_tokens_BxP: np.ndarray, prompt_mask_BxP: np.ndarray,
                 group_size: int) -> None:
  """ValueError unless every `group_size` consecutive rows share their
  prompt: the prompt-sharing passes (`prompt_group`) compute it once."""
  b, p = prompt_tokens_BxP.shape
  if b % group_size:
    raise ValueError(f'{b} rollout rows are not groups of {group_size}')
  for name, x in (('tokens', prompt_tokens_BxP), ('mask', prompt_mask_BxP)):
    x = np.asarray(x).reshape(b // group_size, group_size, p)
    bad = np.flatnonzero((x != x[:, :1]).any(axis=(1, 2)))
    if bad.size:
      raise ValueError(
          f'rollout group {bad[0]} (rows {bad[0] * group_size}-'
          f'{(bad[0] + 1) * group_size - 1}) has different prompt {name} in '
          f'its rows; the GRPO passes share each group\'s prompt')


def make_logprobs_fn(graphdef, mesh=None, num_chunks: int = 1, *,
                     scoring: Scoring = Scoring(), group_size: int = 1):
  """jit (params, Completions) -> logp_BxL, zero outside the sampled tokens.

  `scoring`: the distribution the rollout was sampled from (`Scoring`).
  `group_size` > 1: every that many consecutive rows share their prompt (a
  GRPO rollout; `check_groups`), which each chunk then computes once per
  group (`completion_logprobs`' prompt_group).

  The rows go through in `num_chunks` strided parts, one after another
  (`lax.map`), so the pass holds the logits of B / num_chunks rows at a time:
  the GRPO stage uses the update's micro-batch count, so the reference pass
  never needs more memory than an update micro-batch (a [512, 1024, 152k]
  float32 logits tensor is 300+ GiB). The result does not depend on it.
  """
  batch_axes = parallel.batch_spec(mesh) if mesh is not None else ()
  row_axis = batch_axes[0] if len(batch_axes) else None

  prompt_group = part_prompt_group(group_size, num_chunks)

  def one(params, part):
    logp, _ = completion_logprobs(graphdef, params, part, scoring=scoring,
                                  prompt_group=prompt_group)
    return jnp.where(part.mask, logp, 0.0)

  @jax.jit
  def logprobs(params, completions: Completions):
    if num_chunks == 1:
      return one(params, completions)
    def split(x):
      x = accumulation.split_rows(x, num_chunks)
      if mesh is None:
        return x
      spec = P(None, row_axis, *([None] * (x.ndim - 2)))
      return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    parts = jax.tree.map(split, completions)
    logp_NxCxL = jax.lax.map(lambda part: one(params, part), parts)
    # Undo the strided split: part i holds rows i, i + n, i + 2n, ...
    logp_CxNxL = jnp.moveaxis(logp_NxCxL, 0, 1)
    return logp_CxNxL.reshape((-1,) + logp_CxNxL.shape[2:])
  return logprobs


def _combine(name: str, x: jax.Array, w: jax.Array | None = None) -> jax.Array:
  """Reduces stacked per-part metrics along axis 0: min/max stay min/max,
  counts add, the rest average (weighted by w when given)."""
  if name.endswith('_max'):
    return jnp.max(x, axis=0)
  if name.endswith('_min'):
    return jnp.min(x, axis=0)
  if name == 'num_tokens':
    return jnp.sum(x, axis=0)
  if w is None:
    return jnp.mean(x, axis=0)
  return jnp.sum(x * w, axis=0)


# Folded into a step's key for its LoRA dropout keys.
_DROPOUT_SALT = 0x4C6F5241


def make_micro_loss(graphdef, loss_config: rl.LossConfig,
                    scoring: Scoring = Scoring(), prompt_group: int = 1):
  """(params, mb: Batch, total_units, frozen=None, key=None) -> (loss * w,
  (metrics, w)): one micro-batch's `rl.grpo_loss`, weighted by its share w
  of the mini-batch's aggregation units, so the micro-batches' weighted
  losses (and gradients) sum to the mini-batch's (`rl.accumulation`). With
  LoRA, `params` are the adapters, `frozen` the base and `key` the dropout
  key (`completion_logprobs`, as are `prompt_group` and `prompt_kv`)."""
  def micro_loss(params, mb: Batch, total_units, frozen=None, key=None,
                 prompt_kv=None):
    logp, entropy = completion_logprobs(graphdef, params, mb.completions,
                                        with_entropy=True, scoring=scoring,
                                        frozen=frozen, dropout_key=key,
                                        prompt_group=prompt_group,
                                        prompt_kv=prompt_kv)
    loss, metrics = rl.grpo_loss(
        logp, mb.old_logp, mb.ref_logp, mb.adv, mb.loss_mask,
        entropy_BxT=entropy, sampler_logp_BxT=mb.sampler_logp,
        config=loss_config)
    w = accumulation.micro_weight(loss_config.aggregation, mb.loss_mask,
                                  total_units)
    return loss * w, (metrics, w)
  return micro_loss


def make_update_fn(graphdef, optimizer: optax.GradientTransformation, *,
                   loss_config: rl.LossConfig, num_iterations: int,
                   num_minibatches: int, grad_accum: int, mesh: Mesh,
                   scoring: Scoring = Scoring(), frozen=None,
                   lora_dropout: bool = False, group_size: int = 1):
  """jit (state, Batch) -> (state, metrics); the state is donated.

  With LoRA, `state['params']` are the adapters and `frozen` the base,
  passed to every call (never donated, never differentiated); with
  `lora_dropout` each micro-batch draws its dropout masks from the step's
  key (state['rng'] folded with the step), so a resumed run draws the same.

  `state` holds 'params', 'opt_state' and 'step' (GRPO steps done). Metrics
  are grpo_loss's, averaged over all optimizer steps of the update, plus
  grad_norm (before clipping; mean and max over the optimizer steps) and
  loss_finite (0 if any loss or gradient was not finite). `scoring`: the
  distribution the rollout was sampled from, which the policy's log-probs
  (and entropy) are taken under. `group_size` > 1: every that many
  consecutive rows share their prompt, computed once per micro-batch's
  rows of a group (`make_logprobs_fn`).
  """
  aggregation = loss_config.aggregation
  batch_axes = parallel.batch_spec(mesh)
  row_axis = batch_axes[0] if len(batch_axes) else None

  def split(tree, n):
    def one(x):
      x = accumulation.split_rows(x, n)
      spec = P(None, row_axis, *([None] * (x.ndim - 2)))
      return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return jax.tree.map(one, tree)

  prompt_group = part_prompt_group(group_size, num_minibatches * grad_accum)
  grad_fn = jax.value_and_grad(
      make_micro_loss(graphdef, loss_config, scoring, prompt_group),
      has_aux=True)

  def minibatch_step(carry, xs, frozen):
    params, opt_state = carry
    mb, keys = xs  # keys: [grad_accum] dropout keys, or None
    total_units = accumulation.aggregation_units(aggregation, mb.loss_mask)
    micro = split(mb, grad_accum)

    def body(g_acc, x):
      x, key = x
      (loss, (metrics, w)), g = grad_fn(params, x, total_units, frozen, key)
      return jax.tree.map(jnp.add, g_acc, g), (loss, metrics, w)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, (losses, metrics, ws) = jax.lax.scan(body, zeros, (micro, keys))
    metrics = {k: _combine(k, v, ws) for k, v in metrics.items()}
    metrics['loss'] = jnp.sum(losses)
    metrics['grad_norm'] = optax.global_norm(grads)
    metrics['grad_norm_max'] = metrics['grad_norm']
    metrics['loss_finite'] = (jnp.isfinite(metrics['loss']) &
                              jnp.isfinite(metrics['grad_norm'])
                              ).astype(jnp.float32)
    metrics['loss_finite_min'] = metrics['loss_finite']
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), metrics

  def update(state, batch: Batch, frozen=None):
    minibatches = split(batch, num_minibatches)
    keys = None
    if lora_dropout:  # [iterations, minibatches, grad_accum]
      step_key = jax.random.fold_in(
          jax.random.wrap_key_data(state['rng']), state['step'])
      keys = jax.random.split(jax.random.fold_in(step_key, _DROPOUT_SALT),
                              (num_iterations, num_minibatches, grad_accum))

    def one_pass(carry, keys_M):
      step = functools.partial(minibatch_step, frozen=frozen)
      return jax.lax.scan(step, carry, (minibatches, keys_M))

    carry = (state['params'], state['opt_state'])
    (params, opt_state), metrics = jax.lax.scan(
        one_pass, carry, keys, length=num_iterations)
    # [iterations, minibatches] -> scalars.
    metrics = {k: _combine(k, v.reshape(-1)) for k, v in metrics.items()}
    metrics['loss_finite'] = metrics.pop('loss_finite_min')
    new_state = dict(state, params=params, opt_state=opt_state,
                     step=state['step'] + 1)
    return new_state, metrics

  jitted = jax.jit(update, donate_argnums=0)
  return jitted if frozen is None else functools.partial(jitted, frozen=frozen)


@functools.partial(jax.jit, static_argnames=('group_size', 'estimator', 'eps',
                                             'options'))
def advantages(rewards_B, lengths_B=None, baseline_P=None, *,
               group_size: int, estimator: str, eps: float,
               options: tuple[tuple[str, Any], ...] = ()):
  """Group-relative advantages of flat prompt-major rewards (global array).

  `options` are the estimator's scalar keyword options as (name, value)
  pairs (static), e.g. (('scale', 'batch'),). `lengths_B` (completion
  lengths, for opo / reinforce_pp) and `baseline_P` (the greedy answer's
  reward, for remax) are passed when not None.
  """
  return rl.compute_advantages(rewards_B, group_size, estimator, eps=eps,
                               lengths_B=lengths_B, baseline_P=baseline_P,
                               **dict(options))


@functools.partial(jax.jit, static_argnames=('weights', 'group_size',
                                             'estimator', 'eps', 'options'))
def decoupled_advantages(per_reward, lengths_B=None, *, weights, group_size: int,
                         estimator: str, eps: float,
                         options: tuple[tuple[str, Any], ...] = ()):
  """GDPO's advantages of per-reward rewards (name -> [B], global arrays):
  each through `estimator` in its group, the sum weighted by `weights`
  ((name, weight) pairs) over its batch std (`rl.multi_reward_advantages`
  'norm_then_sum')."""
  return rl.multi_reward_advantages(per_reward, dict(weights), group_size,
                                    estimator, 'norm_then_sum', eps=eps,
                                    lengths_B=lengths_B, **dict(options))


def rollout_advantages(host: grpo_rollout.HostRollout, config, mesh,
                       rewards_B: jax.Array) -> jax.Array:
  """adv_B of this host's rollout (a global array): config.rl.advantage over
  its groups' `rewards_B` (the total rewards on the mesh; less the KL
  penalty with rl.kl_in_reward), with the inputs the estimator declares.
  With rl.multi_reward = 'norm_then_sum' (GDPO) the estimator sees each
  weighted reward of config.rewards.weights on its own instead."""
  rc = config.rl
  inputs = rl.ADVANTAGES.inputs(rc.advantage)
  put = lambda x: parallel.host_local_to_global(x, mesh)
  lengths_B = baseline_P = None
  if 'lengths_PxG' in inputs:
    lengths_B = put(host.sample.lengths.astype(np.float32))
  if 'baseline_P' in inputs:
    baseline_P = put(host.baseline)
  options = tuple(sorted(rc.advantage_options.to_dict().items()))
  if rc.get('multi_reward', 'sum_then_norm') == 'norm_then_sum':
    weights = config.rewards.weights.to_dict()
    per_reward = {n: put(host.per_reward[n].astype(np.float32))
                  for n in weights}
    return decoupled_advantages(
        per_reward, lengths_B, weights=tuple(sorted(weights.items())),
        group_size=rc.group_size, estimator=rc.advantage, eps=float(rc.eps),
        options=options)
  return advantages(
      rewards_B, lengths_B, baseline_P,
      group_size=rc.group_size, estimator=rc.advantage, eps=float(rc.eps),
      options=options)


_kl_penalized_rewards = jax.jit(rl.kl_penalized_rewards,
                                static_argnames=('beta', 'kl_estimator',
                                                 'reduce'))


def make_batch(host: grpo_rollout.HostRollout, config, mesh, *, logprobs_fn,
               timer: console.Timer, ref_params=None, old_params=None
               ) -> tuple[Batch, dict[str, jax.Array]]:
  """The update's batch from this host's rollout, and metrics of making it.

  The batch: the rollout's rows on the mesh, the reference log-probs (when
  `ref_params` is not None; timed as 'reference') and the advantages. With
  `old_params` (the policy that sampled), old_logp is recomputed under them
  (timed as 'old_logp') and the sampler's own log-probs become
  sampler_logp, for a rollout correction. With rl.kl_in_reward, each
  reward loses beta * sum_t KL_t (rl.kl_estimator of old_logp against
  ref_logp over the sampled tokens; `rl.kl_penalized_rewards`) before the
  advantages; the metric 'kl_in_reward' is the mean of that sum (beta
  not applied).
  """
  s = host.sample
  check_groups(s.prompt_tokens, s.prompt_mask, config.rl.group_size)
  put = lambda x: parallel.host_local_to_global(x, mesh)
  completions = put(Completions(
      prompt_tokens=s.prompt_tokens.astype(np.int32),
      prompt_mask=s.prompt_mask.astype(bool),
      tokens=s.tokens.astype(np.int32), mask=s.mask.astype(bool)))
  loss_mask = s.mask.astype(bool)
  if config.rl.mask_truncated:  # DAPO overlong filtering
    loss_mask = loss_mask & (s.finish_reason == 0)[:, None]
  ref_logp = None
  if ref_params is not None:
    with timer('reference'):
      ref_logp = logprobs_fn(ref_params, completions)
      ref_logp.block_until_ready()
  old_logp, sampler_logp = put(s.logprobs.astype(np.float32)), None
  if old_params is not None:
    with timer('old_logp'):
      old_logp, sampler_logp = logprobs_fn(old_params, completions), old_logp
      old_logp.block_until_ready()
  rc, metrics = config.rl, {}
  rewards_B = put(host.rewards.astype(np.float32))
  if rc.get('kl_in_reward', False):
    rewards_B, kl_B = _kl_penalized_rewards(
        rewards_B, old_logp, ref_logp, completions.mask, beta=float(rc.beta),
        kl_estimator=rc.kl_estimator)
    metrics['kl_in_reward'] = jnp.mean(kl_B)
  adv = rollout_advantages(host, config, mesh, rewards_B)
  return Batch(completions=completions, loss_mask=put(loss_mask),
               old_logp=old_logp, adv=adv, ref_logp=ref_logp,
               sampler_logp=sampler_logp), metrics


copy_tree = adapters.copy_tree  # the reference's copy of the policy
