"""Device-memory estimate of a GRPO run, from its config, before any compile.

    est = memory.grpo_estimate(model_cfg, prompts_per_step=32, group_size=16,
                               prompt_tokens=512, max_new_tokens=1024,
                               num_minibatches=16, grad_accum=4,
                               use_reference=True)
    print(est.table())

Bytes per device. Three things stay resident for the whole run: the
parameters, the optimizer state (AdamW: two moments in the parameter dtype)
and the frozen reference (when beta > 0). With LoRA (`lora=`, the run's
config.model.lora) the parameters are the frozen base in param_dtype plus
the float32 adapters, and the optimizer state, the gradients and the
reference (zero adapters, or their copy after a reset) are the adapters'
size only. On top of them, one phase of the step at a time:

  sample     the KV cache of every row (prompts x group size), the prefill's
             attention scores and the decode step's logits; the prefill's
             prompt-only cache, which stays alive through the decode; and,
             when the last decode segment starts, the previous segment's
             cache it is grown from (the worst case, if XLA keeps every
             layer's old cache until the last copy);
  reference  the reference log-prob pass, one update micro-batch of rows at
             a time (its [rows, L, V] float32 logits dominate for large
             vocabularies);
  update     the gradient accumulator and one micro-batch's gradient, the
             micro-batch's activations (all layers' without remat, one
             layer's inputs per layer plus one layer's worth with it) and its
             LM-head logits (log-probs, entropy and their gradient).

Parameters, optimizer state, the reference and the KV cache are exact (the
tests compare them with real arrays); activations are an estimate of what the
backward pass keeps (per token and layer: the projections, the SwiGLU
intermediates, the float32 attention scores and probabilities), which XLA's
fusion usually beats. Parameters are divided over the mesh's fsdp x tensor
axes, rows over data x fsdp.

`check_grpo` prints the estimate at start-up and fails naming the knobs when
it exceeds the device memory: `bytes_limit` of `device.memory_stats()` (GPU,
TPU). CPU devices report no limit: there the estimate (times the number of
local devices, which share the host) is compared with the host's available
memory and only a warning is printed, since host memory is shared with other
processes, swappable and changes while the run starts. R1JAX_MEMORY_CHECK=0
turns the failure into a warning on every backend.
"""

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp

from r1jax.model import lora as lora_lib
from r1jax.model.config import ModelConfig
from r1jax.sampling import sampler as sampler_lib
from r1jax.errors import MemoryBudgetError

_GIB = 2 ** 30
KNOBS = ('rl.group_size', 'rl.prompts_per_step', 'rl.num_minibatches',
         'rl.grad_accum', 'sampling.max_new_tokens', 'model.remat',
         'model.lora.rank', 'model.param_dtype')


def _budget_bucket(n: int) -> int:
  return sampler_lib.budget_bucket(n)


def _segment_ends(budget: int, segments: int | None) -> tuple[int, ...]:
  """The sampler's decode segments (None: its default count)."""
  return sampler_lib.segment_ends(budget,
                                  segments or sampler_lib.DECODE_SEGMENTS)


# ================================================================ components


def param_bytes(cfg: ModelConfig) -> int:
  """Bytes of one parameter tree in `cfg.param_dtype`."""
  return cfg.num_params() * jnp.dtype(cfg.param_dtype).itemsize


def adamw_bytes(cfg: ModelConfig) -> int:
  """AdamW's first and second moments (parameter dtype) and its counters
  (`run.train_state.make_optimizer`: clip -> adamw with a schedule)."""
  return 2 * param_bytes(cfg) + 2 * 4


def adapter_params(cfg: ModelConfig, lora: lora_lib.LoRAConfig) -> int:
  """Parameters of the LoRA adapters: r (in + out) per targeted projection
  and layer."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  dims = {'q': (d, q), 'k': (d, kv), 'v': (d, kv), 'o': (q, d),
          'gate': (d, f), 'up': (d, f), 'down': (f, d)}
  return cfg.num_layers * lora.rank * sum(sum(dims[t]) for t in lora.targets)


def adapter_bytes(cfg: ModelConfig, lora: lora_lib.LoRAConfig) -> int:
  """The adapters in float32 (their master weights)."""
  return adapter_params(cfg, lora) * 4


def _lora_activation_bytes(cfg: ModelConfig, lora: lora_lib.LoRAConfig,
                           rows: int, seq: int) -> int:
  """Per layer: each adapter's [tokens, r] intermediate, and with dropout
  the dropped copy of its input."""
  e = jnp.dtype(cfg.dtype).itemsize
  d, f = cfg.hidden_size, cfg.intermediate_size
  inputs = {'q': d, 'k': d, 'v': d, 'o': cfg.num_heads * cfg.head_dim,
            'gate': d, 'up': d, 'down': f}
  per_token = sum(lora.rank + (inputs[t] if lora.dropout else 0)
                  for t in lora.targets) * e
  return rows * seq * per_token


def kv_cache_bytes(cfg: ModelConfig, rows: int, prompt_width: int,
                   max_new_tokens: int, cache_dtype=None, *,
                   exact_slots: bool = False) -> int:
  """The sampler's decode cache: K and V per layer, rows x (P + L) slots
  (L: the completion budget rounded up to its bucket, or max_new_tokens
  itself with exact_slots)."""
  slots = prompt_width + (max_new_tokens if exact_slots else
                          _budget_bucket(max_new_tokens))
  itemsize = jnp.dtype(cache_dtype or cfg.dtype).itemsize
  return (2 * cfg.num_layers * rows * slots * cfg.num_kv_heads *
          cfg.head_dim * itemsize)


def _layer_activation_bytes(cfg: ModelConfig, rows: int, seq: int) -> int:
  """What one block keeps for its backward pass (no remat), [rows, seq]."""
  e = jnp.dtype(cfg.dtype).itemsize
  d, f, n, k, h = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                   cfg.num_kv_heads, cfg.head_dim)
  # residuals and norm outputs (4 D), q/k/v before and after rope and the
  # attention output (3 N H + 3 K H), SwiGLU gate/up/silu/product (4 F);
  # the two RMSNorms' float32 inputs (2 D x 4 bytes).
  per_token = (4 * d + 3 * n * h + 3 * k * h + 4 * f) * e + 2 * d * 4
  scores = n * seq * (4 + e)  # float32 scores + probabilities per query
  return rows * seq * (per_token + scores)


def activation_bytes(cfg: ModelConfig, rows: int, seq: int,
                     remat: bool | None = None) -> int:
  """Activations of a teacher-forced forward + backward over [rows, seq]
  (the LM head's logits not included: see `logits_bytes`)."""
  remat = cfg.remat if remat is None else remat
  e = jnp.dtype(cfg.dtype).itemsize
  layer = _layer_activation_bytes(cfg, rows, seq)
  mask = rows * seq * seq  # the bool attention mask, shared by the layers
  embed = 2 * rows * seq * cfg.hidden_size * e  # embeddings, final norm
  if remat:  # each block's input, plus one block recomputed at a time
    return cfg.num_layers * rows * seq * cfg.hidden_size * e + layer + mask + embed
  return cfg.num_layers * layer + mask + embed


def logits_bytes(cfg: ModelConfig, rows: int, positions: int) -> int:
  """LM-head logits over [rows, positions] in the update: compute-dtype
  logits and their float32 copy, the log-softmax, the entropy's
  probabilities and the logits' gradient."""
  e = jnp.dtype(cfg.dtype).itemsize
  return rows * positions * cfg.vocab_size * (e + 4 + 4 + 8)


# ================================================================== estimate


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes per device of each part of a GRPO step (see the module doc)."""
  params: int
  optimizer: int
  reference: int
  kv_cache: int
  sample_other: int   # prefill attention, decode logits, token buffers
  reference_pass: int
  gradients: int
  activations: int
  update_logits: int
  adapters: int = 0   # LoRA: the float32 adapters (params: the frozen base)

  @property
  def resident(self) -> int:
    return self.params + self.adapters + self.optimizer + self.reference

  @property
  def phases(self) -> dict[str, int]:
    return {'sample': self.kv_cache + self.sample_other,
            'reference': self.reference_pass,
            'update': self.gradients + self.activations + self.update_logits}

  @property
  def peak_phase(self) -> str:
    return max(self.phases, key=self.phases.get)

  @property
  def total(self) -> int:
    return self.resident + max(self.phases.values())

  def table(self) -> str:
    rows = [('params', self.params)]
    if self.adapters:
      rows = [('params (frozen)', self.params), ('LoRA adapters', self.adapters)]
    rows += [('optimizer (AdamW)', self.optimizer),
            ('reference', self.reference), ('kv cache', self.kv_cache),
            ('sample, other', self.sample_other),
            ('reference pass', self.reference_pass),
            ('gradients', self.gradients), ('activations', self.activations),
            ('update logits', self.update_logits)]
    lines = [f'  {name:<18} {_fmt(v):>10}' for name, v in rows]
    lines.append(f'  {"peak (" + self.peak_phase + ")":<18} '
                 f'{_fmt(self.total):>10}  = resident {_fmt(self.resident)} '
                 f'+ {self.peak_phase} {_fmt(self.phases[self.peak_phase])}')
    return '\n'.join(lines)


def _fmt(n: int) -> str:
  return f'{n / _GIB:.2f} GiB' if n >= _GIB / 10 else f'{n / 2**20:.1f} MiB'


def grpo_estimate(cfg: ModelConfig, *, prompts_per_step: int, group_size: int,
                  prompt_tokens: int, max_new_tokens: int,
                  num_minibatches: int, grad_accum: int, use_reference: bool,
                  batch_devices: int = 1, param_shards: int = 1,
                  remat: bool | None = None,
                  decode_segments: int | None = None,
                  lora: lora_lib.LoRAConfig | None = None) -> Estimate:
  """Bytes per device of one GRPO step (see the module doc).

  Args:
    cfg: the model (its param_dtype, dtype and, unless `remat` is given,
      remat are used).
    prompts_per_step, group_size: the rollout is their product in rows.
    prompt_tokens: the prompt width (sampling.max_prompt_tokens).
    max_new_tokens: the completion budget (rounded up to its bucket).
    num_minibatches, grad_accum: rows per device of one micro-batch are
      rows / batch_devices / num_minibatches / grad_accum.
    use_reference: beta > 0 (a reference tree and its log-prob pass).
    batch_devices: devices the rows are split over (mesh data x fsdp).
    param_shards: devices a parameter is split over (mesh fsdp x tensor).
    decode_segments: the sampler's (sampling.decode_segments; None: the
      Sampler's default).
    lora: the run's LoRA (None: every weight trained).
  """
  rows = prompts_per_step * group_size
  rows_dev = -(-rows // batch_devices)
  prompts_dev = -(-prompts_per_step // batch_devices)
  micro = max(1, rows_dev // max(1, num_minibatches * grad_accum))
  budget = _budget_bucket(max_new_tokens)
  seq = prompt_tokens + budget - 1  # [prompt, completion[:-1]]
  p = -(-param_bytes(cfg) // param_shards)
  e = jnp.dtype(cfg.dtype).itemsize
  prefill = (prompts_dev * cfg.num_heads * prompt_tokens ** 2 * (4 + e) +
             prompts_dev * prompt_tokens ** 2)
  decode_logits = rows_dev * cfg.vocab_size * 4 * 3
  buffers = rows_dev * budget * (4 + 4 + 1)  # tokens, log-probs, mask
  prompt_cache = kv_cache_bytes(cfg, rows_dev, prompt_tokens, 0,
                                exact_slots=True)
  ends = _segment_ends(budget, decode_segments)
  grow = (kv_cache_bytes(cfg, rows_dev, prompt_tokens, ends[-2],
                         exact_slots=True) if len(ends) > 1 else 0)
  ref_pass = 0
  if use_reference:
    # Forward only, one update micro-batch of rows at a time (the stage's
    # make_logprobs_fn chunks): XLA frees each layer's scores before the next
    # and fuses the log-softmax into the logits; the float32 logits over the
    # chunk's rows and completion positions remain (plus their compute-dtype
    # copy below f32).
    ref_pass = (micro * budget * cfg.vocab_size * (4 + (e if e < 4 else 0))
                + micro * cfg.num_heads * seq * seq * 4 + micro * seq * seq)
  trained, adapters, optimizer = p, 0, -(-adamw_bytes(cfg) // param_shards)
  activations = activation_bytes(cfg, micro, seq, remat)
  if lora is not None:  # the base is frozen; adapters and AdamW in float32
    trained = adapters = -(-adapter_bytes(cfg, lora) // param_shards)
    optimizer = 2 * adapters + 2 * 4
    layers = 1 if (cfg.remat if remat is None else remat) else cfg.num_layers
    activations += layers * _lora_activation_bytes(cfg, lora, micro, seq)
  return Estimate(
      params=p,
      adapters=adapters,
      optimizer=optimizer,
      reference=trained if use_reference else 0,
      kv_cache=kv_cache_bytes(cfg, rows_dev, prompt_tokens, max_new_tokens),
      sample_other=prefill + decode_logits + buffers + prompt_cache + grow,
      reference_pass=ref_pass,
      gradients=2 * trained,  # the accumulator + one micro-batch's gradient
      activations=activations,
      update_logits=logits_bytes(cfg, micro, budget))


# ================================================================ the check


def device_memory_limit(device=None) -> int | None:
  """The device's `bytes_limit` (GPU, TPU), or None where none is reported
  (CPU)."""
  device = device or jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  return int(stats['bytes_limit']) if stats and 'bytes_limit' in stats else None


def host_available_bytes() -> int | None:
  """MemAvailable of /proc/meminfo (Linux), else None."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def estimate_for_config(config, model_cfg: ModelConfig, mesh) -> Estimate:
  """`grpo_estimate` of a GRPO experiment config on `mesh`."""
  rc, sc = config.rl, config.sampling
  shape = dict(mesh.shape)
  return grpo_estimate(
      model_cfg, prompts_per_step=rc.prompts_per_step,
      group_size=rc.group_size, prompt_tokens=sc.max_prompt_tokens,
      max_new_tokens=sc.max_new_tokens, num_minibatches=rc.num_minibatches,
      grad_accum=rc.grad_accum, use_reference=rc.beta > 0,
      batch_devices=shape.get('data', 1) * shape.get('fsdp', 1),
      param_shards=shape.get('fsdp', 1) * shape.get('tensor', 1),
      decode_segments=sc.decode_segments,
      lora=lora_lib.from_config(config.model))


def over_budget_message(est: Estimate, limit: int, where: str,
                        devices: int = 1) -> str:
  """The failure message, one line: the figures, the largest phase, the
  knobs (the estimate's table is printed before it, by `check_grpo`)."""
  phase = est.peak_phase
  hint = {
      'sample': 'the KV cache grows with rl.prompts_per_step x '
                'rl.group_size x (prompt + sampling.max_new_tokens); '
                'sampling.decode_segments=1 drops the copy made when the '
                'last decode segment grows it',
      'reference': 'the reference pass scores one micro-batch of rows '
                   '(rows / (rl.num_minibatches x rl.grad_accum)) at a '
                   'time: raise either, or lower sampling.max_new_tokens',
      'update': 'a micro-batch is rows / (rl.num_minibatches x '
                'rl.grad_accum); raise either, or set model.remat=True',
  }[phase]
  if not est.adapters and est.resident > est.phases[phase]:
    hint += ('; the resident weights are most of it: train LoRA adapters '
             '(model.lora.rank > 0) on a frozen bfloat16 base '
             "(model.param_dtype='bfloat16')")
  total = (f'{_fmt(est.total)} per device' if devices == 1 else
           f'{_fmt(est.total)} per device x {devices} devices')
  return (f'estimated peak memory {total} exceeds {where} '
          f'({_fmt(limit)}); the {phase} phase is largest: {hint}. '
          f'Knobs: {", ".join(KNOBS)} (the estimate per phase is printed '
          'above; R1JAX_MEMORY_CHECK=0 makes this a warning)')


def check_grpo(config, model_cfg: ModelConfig, mesh,
               log: Callable[[str], None] = print) -> Estimate:
  """Prints the estimate; raises MemoryBudgetError when it exceeds the
  device's memory (warns only on CPU, or with R1JAX_MEMORY_CHECK=0)."""
  est = estimate_for_config(config, model_cfg, mesh)
  log(f'memory estimate per device (r1jax.memory):\n{est.table()}')
  limit = device_memory_limit()
  enforce = os.environ.get('R1JAX_MEMORY_CHECK', '1') != '0'
  devices = 1
  if limit is not None:
    where = f'the device memory of {jax.local_devices()[0].device_kind}'
  else:  # CPU: local devices share the host's memory; warn only
    limit = host_available_bytes()
    where = 'the host memory available'
    devices = jax.local_device_count()
    enforce = False
  if limit is not None and est.total * devices > limit:
    msg = over_budget_message(est, limit, where, devices)
    if enforce:
      raise MemoryBudgetError(msg)
    log(f'warning: {msg}')
  return est
