"""Length-aware GRPO passes: the reference pass and the update compute over
the tokens that exist (`rl.length_buckets` > 0).

A rollout is padded to the prompt width P (left padding) and the completion
budget L; real completions are often far shorter. Here the rows are sorted
by completion length and cut into micro-batches of at most the token budget
of one padded micro-batch (`rows x (P + L)`, so no micro-batch needs more
memory than the padded pass). Each micro-batch is trimmed to

  * its completion width: the longest completion among its rows, rounded up
    to a multiple of ceil(L / length_buckets);
  * the rollout's prompt width: the longest prompt of the rollout, rounded
    up to a multiple of ceil(P / length_buckets) (the leading pad columns go);

and holds as many rows as that width allows (a multiple of the data-parallel
size; the last one is filled with empty rows). So at most
length_buckets**2 shapes are ever compiled per program (`Stats.shapes`).

The prompts are not in the micro-batches: each pass (the reference pass,
each mini-batch of the update) first runs the distinct prompts of its rows
once (a GRPO group's rows share one: `group_size`), their first P - 1
tokens into a KV cache (`grpo_update.prompt_kv_fn`); each micro-batch's rows
then compute only their L tokens, attending to their own prompt's rows of
that cache. In the update the cache's gradient is summed over the
micro-batches and taken back through the prompts' pass once (`jax.vjp`), so
the mini-batch's gradient is the one of its whole rows.

The results equal the padded computation (within float rounding; tested to
1e-5 in float32): a row's log-probs do not depend on the rows beside it or on
the pad columns, and for the update

  * mini-batches keep their rows (the strided split of `make_update_fn`), so
    every optimizer step sees the same rows as the padded update;
  * inside a mini-batch, the micro-batches' gradients are weighted by their
    share of the aggregation's units (`rl.accumulation`), which makes their
    sum the mini-batch's gradient whatever rows each micro-batch holds;
  * 'seq_sum_norm' (Dr. GRPO) keeps its constant L (LossConfig.max_len);
  * metrics are combined by their own units (tokens, sequences, the
    aggregation's units), standard deviations as pooled ones (`combine`).

A pass that trimming would shrink by less than `min_saving` (15%) runs the
padded program instead (late in the main job most completions are near the
budget; many smaller micro-batches then cost more than they save); the
metric length_aware_padded_passes counts those.

Losses whose value depends on which rows share a micro-batch (batch-level
quantiles or covariances: 'clip_cov', 'kl_cov', rl.loss_options
top_entropy_quantile and entropy_target) are refused by `check_config`.
One process only (the planner sees every row), and no LoRA yet: refused.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from r1jax import errors
from r1jax import parallel
from r1jax import rl
from r1jax.rl import accumulation
from r1jax.stages import grpo_update

# Losses and options whose value depends on the rows of the micro-batch.
_ROW_COUPLED_LOSSES = ('clip_cov', 'kl_cov')
_ROW_COUPLED_OPTIONS = ('top_entropy_quantile', 'entropy_target')


def check_config(config, process_count: int) -> None:
  """ConfigError naming the key when rl.length_buckets cannot be used."""
  rc = config.rl
  n = int(rc.get('length_buckets', 0))
  if n == 0:
    return
  if n < 0:
    raise errors.ConfigError(
        f'config.rl.length_buckets={n}: must be >= 0 (0: padded passes)')
  if rc.policy_loss in _ROW_COUPLED_LOSSES:
    raise errors.ConfigError(
        f'config.rl.length_buckets={n} with config.rl.policy_loss='
        f'{rc.policy_loss!r}: that loss selects tokens by statistics of the '
        'whole micro-batch, which length-aware micro-batches change; set '
        'rl.length_buckets=0')
  for key in _ROW_COUPLED_OPTIONS:
    if rc.loss_options.get(key) is not None:
      raise errors.ConfigError(
          f'config.rl.length_buckets={n} with config.rl.loss_options.{key}: '
          'it is a statistic of the whole micro-batch, which length-aware '
          'micro-batches change; set rl.length_buckets=0')
  lora = config.model.get('lora') or {}
  if int(lora.get('rank', 0) or 0):
    raise errors.ConfigError(
        f'config.rl.length_buckets={n} with config.model.lora.rank='
        f'{lora.get("rank")}: length-aware passes do not train LoRA adapters '
        'yet; set rl.length_buckets=0')
  if process_count > 1:
    raise errors.ConfigError(
        f'config.rl.length_buckets={n}: length-aware passes run in one '
        f'process; this run has {process_count}. Set rl.length_buckets=0')


def round_up(n: int, full: int, buckets: int) -> int:
  """n rounded up to a multiple of ceil(full / buckets), at most `full`."""
  step = -(-full // buckets)
  return min(full, max(step, -(-n // step) * step))


@dataclasses.dataclass(frozen=True)
class Micro:
  """One micro-batch: `rows` (indices into the rollout, -1 for an empty
  filler row) trimmed to `prompt_width` and `completion_width`."""
  rows: np.ndarray
  prompt_width: int
  completion_width: int


def plan(lengths_B: np.ndarray, rows: np.ndarray, *, prompt_width: int,
         full_len: int, buckets: int, budget_tokens: int, divisor: int,
         call_tokens: int = 0) -> list[Micro]:
  """The micro-batches of `rows` (indices into the rollout), longest first.

  `lengths_B`: completion lengths of the whole rollout. Rows are sorted by
  length and cut into consecutive runs, each a micro-batch as wide as its
  longest row's width bucket, of `divisor` x 2^k rows (so the shapes stay
  few) that fit `budget_tokens` (rows x (prompt_width + width); at least
  `divisor` rows); the last may end in empty filler rows. The cut is the
  one of least cost, a micro-batch costing its rows x width computed tokens
  plus `call_tokens` (what one more, smaller program call costs, in
  tokens): with 0, each width bucket's rows go in as few micro-batches as
  its row count's binary digits; larger values merge short runs into wider
  micro-batches.
  """
  order = rows[np.argsort(-lengths_B[rows], kind='stable')]
  n = len(order)
  widths = [round_up(int(x), full_len, buckets) for x in lengths_B[order]]
  # best[i]: (cost, rows of the first micro-batch) of the rows from i on.
  best = [(0, 0)] * (n + 1)
  for i in range(n - 1, -1, -1):
    fit = budget_tokens // (prompt_width + widths[i])
    r, choice = divisor, None
    while True:
      # Ties go to more rows: fewer calls for the same tokens.
      cost = call_tokens + r * widths[i] + best[min(i + r, n)][0]
      if choice is None or cost <= choice[0]:
        choice = (cost, r)
      if 2 * r > fit or r >= n - i:
        break
      r *= 2
    best[i] = choice
  out, i = [], 0
  while i < n:
    r = best[i][1]
    take = order[i:i + r]
    out.append(Micro(
        rows=np.concatenate([take, -np.ones(r - len(take), take.dtype)]),
        prompt_width=prompt_width, completion_width=widths[i]))
    i += r
  return out


def _gather(x: np.ndarray, rows: np.ndarray, cols: slice) -> np.ndarray:
  """x[rows][:, cols], with zeros for the filler rows (-1)."""
  out = x[np.maximum(rows, 0)][:, cols]
  out[rows < 0] = 0
  return out


def _completion_arrays(c) -> dict:
  """name -> (host array, which columns it has) of a host Completions."""
  return {'prompt_tokens': (np.asarray(c.prompt_tokens), 'prompt'),
          'prompt_mask': (np.asarray(c.prompt_mask), 'prompt'),
          'tokens': (np.asarray(c.tokens), 'completion'),
          'mask': (np.asarray(c.mask), 'completion')}


@dataclasses.dataclass
class Stats:
  """What the length-aware passes computed, for the logs: the shapes seen
  (compiled programs) and the tokens computed against the padded ones."""
  shapes: set = dataclasses.field(default_factory=set)
  tokens: int = 0
  padded_tokens: int = 0
  padded_passes: int = 0

  def pop_metrics(self) -> dict[str, float]:
    """The shapes so far, and the share of the padded tokens computed since
    the last call."""
    out = {'length_aware_shapes': float(len(self.shapes)),
           'length_aware_token_frac': self.tokens / max(self.padded_tokens, 1),
           'length_aware_padded_passes': float(self.padded_passes)}
    self.tokens = self.padded_tokens = self.padded_passes = 0
    return out


class LengthAware:
  """The length-aware reference pass and update of one GRPO run."""

  def __init__(self, graphdef, optimizer: optax.GradientTransformation, *,
               loss_config: rl.LossConfig, num_iterations: int,
               num_minibatches: int, grad_accum: int, mesh: Mesh,
               buckets: int, prompt_len: int, completion_len: int,
               scoring: grpo_update.Scoring = grpo_update.Scoring(),
               min_saving: float = 0.15, group_size: int = 1,
               call_tokens: int = 0):
    self.min_saving, self.group_size = min_saving, group_size
    self.call_tokens = call_tokens
    if loss_config.max_len is None:  # Dr. GRPO's constant: the budget L
      loss_config = dataclasses.replace(loss_config, max_len=completion_len)
    self.mesh, self.buckets = mesh, buckets
    self.num_iterations, self.num_minibatches = num_iterations, num_minibatches
    self.grad_accum = grad_accum
    self.prompt_len, self.completion_len = prompt_len, completion_len
    self.aggregation = loss_config.aggregation
    self.divisor = parallel.batch_size_divisor(mesh)
    self.stats = Stats()
    # The padded programs, for a rollout that trimming would not shrink.
    self._padded_update = grpo_update.make_update_fn(
        graphdef, optimizer, loss_config=loss_config,
        num_iterations=num_iterations, num_minibatches=num_minibatches,
        grad_accum=grad_accum, mesh=mesh, scoring=scoring,
        group_size=group_size)
    # The padded reference pass holds one update micro-batch at a time.
    self._padded_logprobs = grpo_update.make_logprobs_fn(
        graphdef, mesh, num_chunks=num_minibatches * grad_accum,
        scoring=scoring, group_size=group_size)
    # The trimmed programs: each distinct prompt's first P - 1 tokens go
    # through the model once per pass (`_prompts`), into a KV cache that
    # every micro-batch's rows attend to (their own rows of it).
    kv_fn = grpo_update.prompt_kv_fn(graphdef)
    self._prompt_kv = jax.jit(kv_fn)

    @jax.jit
    def prompt_grad(params, prompt, prompt_mask, g_kv):
      _, vjp = jax.vjp(lambda p: kv_fn(p, prompt, prompt_mask), params)
      return vjp(g_kv)[0]
    self._prompt_grad = prompt_grad

    @jax.jit
    def logprobs(params, kv, cache_rows, completions):
      logp, _ = grpo_update.completion_logprobs(
          graphdef, params, completions, scoring=scoring,
          prompt_kv=(kv, cache_rows))
      return jnp.where(completions.mask, logp, 0.0)
    self._logprobs = logprobs
    micro_loss = grpo_update.make_micro_loss(graphdef, loss_config, scoring)

    def kv_loss(params, kv, cache_rows, mb, total_units):
      return micro_loss(params, mb, total_units, prompt_kv=(kv, cache_rows))
    # Gradients with respect to the params and the shared prompt cache.
    self._grad = jax.jit(jax.value_and_grad(kv_loss, argnums=(0, 1),
                                            has_aux=True))
    self._units = jax.jit(accumulation.aggregation_units,
                          static_argnums=0)

    @jax.jit
    def add(a, b):
      return jax.tree.map(jnp.add, a, b)
    self._add = add

    @jax.jit
    def zeros(params):
      return jax.tree.map(jnp.zeros_like, params)
    self._zeros = zeros

    def apply(params, opt_state, grads):
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, (
          optax.global_norm(grads))
    self._apply = jax.jit(apply, donate_argnums=(0, 1))

  # -------------------------------------------------------------- planning
  def _budget(self, rows: int, parts: int) -> int:
    return rows // parts * (self.prompt_len + self.completion_len)

  def _prompt_width(self, prompt_mask: np.ndarray) -> int:
    # At least 2: the prompt cache holds all but the last prompt token.
    return min(self.prompt_len, max(2, round_up(
        int(prompt_mask.sum(axis=1).max()), self.prompt_len, self.buckets)))

  def _prompts(self, arrays: dict, prompt_width: int, rows: np.ndarray):
    """(prompt_tokens, prompt_mask) of the distinct prompts of `rows` (row
    i's is that of group i // group_size; empty rows pad them to the
    data-parallel divisor), trimmed to `prompt_width`, on the mesh; sets
    arrays['cache_rows'] to each row's row of them."""
    g, p0 = self.group_size, self.prompt_len - prompt_width
    groups = np.unique(rows // g)
    slot = np.zeros(arrays['tokens'][0].shape[0] // g, np.int32)
    slot[groups] = np.arange(len(groups))
    arrays['cache_rows'] = (np.repeat(slot, g), 'row')
    out = [np.asarray(arrays[k][0][groups * g, p0:])
           for k in ('prompt_tokens', 'prompt_mask')]
    n = len(out[0])
    pad = -n % self.divisor
    out = [np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
           for x in out]
    self.stats.shapes.add(('prompts', n + pad, prompt_width))
    return parallel.host_local_to_global(tuple(out), self.mesh)

  def _kv(self, params, prompts):
    """The prompts' KV cache under `params` (`_prompt_kv`), counted."""
    self.stats.tokens += prompts[0].shape[0] * prompts[0].shape[1]
    return self._prompt_kv(params, *prompts)

  def _arrays(self, completions) -> dict:
    """`_completion_arrays`, once each group's rows are checked to share
    the prompt the passes compute once for them."""
    arrays = _completion_arrays(completions)
    grpo_update.check_groups(arrays['prompt_tokens'][0],
                             arrays['prompt_mask'][0], self.group_size)
    return arrays

  def _put(self, arrays: dict, micro: Micro, shape_key: str):
    p0 = self.prompt_len - micro.prompt_width
    cols = {'prompt': slice(p0, None),
            'completion': slice(0, micro.completion_width), 'row': None}
    out = {}
    for name, (x, kind) in arrays.items():
      out[name] = (_gather(x, micro.rows, cols[kind]) if kind != 'row' else
                   np.where(micro.rows >= 0, x[np.maximum(micro.rows, 0)], 0
                            ).astype(x.dtype))
    self.stats.shapes.add((shape_key, len(micro.rows), micro.prompt_width,
                           micro.completion_width))
    self.stats.tokens += len(micro.rows) * micro.completion_width
    self.stats.padded_tokens += int((micro.rows >= 0).sum()) * (
        self.prompt_len + self.completion_len)
    return parallel.host_local_to_global(out, self.mesh)

  def _worth_it(self, micros: list[Micro], rows: int, parts: int) -> bool:
    """Whether the micro-batches compute at least `min_saving` fewer
    completion tokens than the padded pass in `parts` strided parts; if
    not, the padded program runs (fewer, larger matmuls; the same numbers
    within rounding). Both compute each part's prompts once per group."""
    tokens = sum(len(m.rows) * m.completion_width for m in micros)
    if tokens <= (1 - self.min_saving) * rows * self.completion_len:
      return True
    g = grpo_update.part_prompt_group(self.group_size, parts)
    self.stats.tokens += rows * self.completion_len + (
        rows // g * self.prompt_len)
    self.stats.padded_tokens += rows * (self.prompt_len + self.completion_len)
    self.stats.padded_passes += 1
    return False

  # ------------------------------------------------------------ log-probs
  def logprobs(self, params, completions: grpo_update.Completions
               ) -> jax.Array:
    """logp [B, L] of the completion tokens under `params` (zero outside
    the sampled tokens), as `make_logprobs_fn` gives it, computed
    micro-batch by micro-batch, each within an update micro-batch's token
    budget."""
    arrays = self._arrays(jax.device_get(completions))
    b = arrays['tokens'][0].shape[0]
    parts = self.num_minibatches * self.grad_accum
    prompt_width = self._prompt_width(arrays['prompt_mask'][0])
    micros = plan(arrays['mask'][0].sum(axis=1), np.arange(b),
                  prompt_width=prompt_width,
                  full_len=self.completion_len, buckets=self.buckets,
                  budget_tokens=self._budget(b, parts), divisor=self.divisor,
                  call_tokens=self.call_tokens)
    if not self._worth_it(micros, b, parts):
      return self._padded_logprobs(params, completions)
    kv = self._kv(params, self._prompts(arrays, prompt_width, np.arange(b)))
    out = np.zeros(arrays['tokens'][0].shape, np.float32)
    for m in micros:
      part = self._put(arrays, m, 'logprobs')
      cache_rows = part.pop('cache_rows')
      logp = np.asarray(jax.device_get(self._logprobs(
          params, kv, cache_rows, grpo_update.Completions(**part))))
      real = m.rows >= 0
      out[m.rows[real], :m.completion_width] = logp[real]
    return parallel.host_local_to_global(out, self.mesh)

  # --------------------------------------------------------------- update
  def update(self, state, batch: grpo_update.Batch):
    """(state, metrics) as `make_update_fn`'s update gives them."""
    host = jax.device_get(batch)
    arrays = {**self._arrays(host.completions),
              'loss_mask': (np.asarray(host.loss_mask), 'completion'),
              'old_logp': (np.asarray(host.old_logp), 'completion'),
              'adv': (np.asarray(host.adv), 'row')}
    if host.ref_logp is not None:
      arrays['ref_logp'] = (np.asarray(host.ref_logp), 'completion')
    if host.sampler_logp is not None:
      arrays['sampler_logp'] = (np.asarray(host.sampler_logp), 'completion')
    b = arrays['tokens'][0].shape[0]
    lengths = arrays['mask'][0].sum(axis=1)
    prompt_width = self._prompt_width(arrays['prompt_mask'][0])
    n = self.num_minibatches
    budget = self._budget(b, n * self.grad_accum)
    plans = []
    for k in range(n):  # the strided split of accumulation.split_rows
      rows = np.arange(k, b, n)
      plans.append((rows, plan(lengths, rows, prompt_width=prompt_width,
                               full_len=self.completion_len,
                               buckets=self.buckets, budget_tokens=budget,
                               divisor=self.divisor,
                               call_tokens=self.call_tokens)))
    if not self._worth_it([m for _, ms in plans for m in ms], b,
                          n * self.grad_accum):
      state, metrics = self._padded_update(state, batch)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      metrics.update(self.stats.pop_metrics())
      return state, metrics
    params, opt_state = state['params'], state['opt_state']
    all_metrics = []
    for _ in range(self.num_iterations):
      for rows, micros in plans:
        prompts = self._prompts(arrays, prompt_width, rows)
        total_units = self._units(self.aggregation, parallel.host_local_to_global(
            arrays['loss_mask'][0][rows], self.mesh))
        kv = self._kv(params, prompts)
        grads, g_kv, parts = self._zeros(params), self._zeros(kv), []
        for m in micros:
          part = self._put(arrays, m, 'update')
          cache_rows = part.pop('cache_rows')
          mb = grpo_update.Batch(
              completions=grpo_update.Completions(
                  prompt_tokens=part['prompt_tokens'],
                  prompt_mask=part['prompt_mask'], tokens=part['tokens'],
                  mask=part['mask']),
              loss_mask=part['loss_mask'], old_logp=part['old_logp'],
              adv=part['adv'], ref_logp=part.get('ref_logp'),
              sampler_logp=part.get('sampler_logp'))
          (loss, (metrics, w)), (g, g_k) = self._grad(
              params, kv, cache_rows, mb, total_units)
          grads, g_kv = self._add((grads, g_kv), (g, g_k))
          mask = _gather(arrays['loss_mask'][0], m.rows, slice(None))
          parts.append((loss, metrics, w, float(mask.sum()),
                        float(mask.any(axis=1).sum())))
        # The prompts' share: the cache's gradient back through its pass.
        grads = self._add(grads, self._prompt_grad(params, *prompts, g_kv))
        params, opt_state, grad_norm = self._apply(params, opt_state, grads)
        all_metrics.append(_minibatch_metrics(parts, grad_norm))
    # Over iterations and mini-batches, as make_update_fn combines them.
    metrics = {k: float(grpo_update._combine(  # pylint: disable=protected-access
        k, jnp.asarray([m[k] for m in all_metrics], jnp.float32)))
               for k in all_metrics[0]}
    metrics['loss_finite'] = metrics.pop('loss_finite_min')
    metrics.update(self.stats.pop_metrics())
    return dict(state, params=params, opt_state=opt_state,
                step=state['step'] + 1), metrics


def _minibatch_metrics(parts, grad_norm) -> dict[str, float]:
  """One mini-batch's metrics from its micro-batches' (loss, metrics, w,
  tokens, sequences), each metric combined over its own unit (`combine`)."""
  got = [(float(l), {k: float(v) for k, v in jax.device_get(m).items()},
          float(w), t, s) for l, m, w, t, s in parts]
  out = combine([g[1] for g in got], [g[2] for g in got],
                [g[3] for g in got], [g[4] for g in got])
  out['loss'] = math.fsum(g[0] for g in got)
  gn = float(grad_norm)
  out['grad_norm'] = out['grad_norm_max'] = gn
  finite = float(np.isfinite(out['loss']) and np.isfinite(gn))
  out['loss_finite'] = out['loss_finite_min'] = finite
  return out


_SEQUENCE_UNIT = ('adv_', 'frac_zero_adv_seqs', 'offpolicy_masked_frac')
_AGGREGATION_UNIT = ('policy_loss',)


def combine(metrics: list[dict], ws: list[float], tokens: list[float],
            seqs: list[float]) -> dict[str, float]:
  """The metrics of the union of micro-batches from each one's metrics.

  A mean is weighted by its unit's count in each part (valid tokens, valid
  sequences, or the aggregation's weight w); min / max skip empty parts; a
  `_std` is pooled with its `_mean` (the stable form
  sum n_i (std_i^2 + (mean_i - mean)^2) / N); counts add.
  """
  out = {}
  for key in metrics[0]:
    vals = np.array([m[key] for m in metrics], np.float64)
    if key.startswith(_SEQUENCE_UNIT):
      n = np.array(seqs)
    elif key.startswith(_AGGREGATION_UNIT):
      n = np.array(ws)
    else:
      n = np.array(tokens)
    if key == 'num_tokens':
      out[key] = float(vals.sum())
    elif key.endswith(('_max', '_min')):
      keep = vals[n > 0] if (n > 0).any() else vals
      out[key] = float(keep.max() if key.endswith('_max') else keep.min())
    elif key.endswith('_std') and key[:-4] + '_mean' in metrics[0]:
      means = np.array([m[key[:-4] + '_mean'] for m in metrics], np.float64)
      total = max(n.sum(), 1e-30)
      mean = (n * means).sum() / total
      out[key] = float(np.sqrt((n * (vals ** 2 + (means - mean) ** 2)).sum()
                               / total))
    elif key.startswith(_AGGREGATION_UNIT):
      out[key] = float((n * vals).sum())
    else:
      out[key] = float((n * vals).sum() / max(n.sum(), 1e-30)) if n.sum(
      ) > 0 else 0.0
  return out
