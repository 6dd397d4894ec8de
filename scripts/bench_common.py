"""What the benchmark scripts share: a measured matmul peak, model FLOPs,
peak bf16 FLOP/s by accelerator, timing helpers.

Imported as `bench_common` by scripts/bench_*.py (their directory is on
sys.path when they run as `python scripts/bench_x.py`).

FLOP conventions (the ones MFU papers use):
  * a matmul of [m, k] x [k, n] is 2 m k n FLOPs;
  * a token's forward pass through the weights is 2 x (matmul parameters):
    every attention and MLP kernel, plus the LM head (D x V) where logits
    are computed; embedding look-ups, norms and biases are not counted;
  * attention is 4 x heads x head_dim FLOPs per (query, key) pair it scores
    (QK^T and PV), counted over the keys the model uses (causal: the keys at
    or before the query);
  * a training step is 3x its forward (forward + backward of activations and
    of weights) -- the "6 x params x tokens" rule.
"""

import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets (without
# sparsity), by jax's device_kind (matched case-insensitively as a
# substring; the first match wins, so longer names come first).
PEAK_BF16_FLOPS = (
    ('h100 pcie', 756e12),
    ('h100', 989e12),      # SXM
    ('h200', 989e12),
    ('gh200', 989e12),
    ('b200', 2250e12),
    ('a100', 312e12),
    ('l4', 121e12),
    ('a10', 125e12),
    ('tpu v4', 275e12),
    ('tpu v5 lite', 197e12),  # v5e
    ('tpu v5e', 197e12),
    ('tpu v5p', 459e12),
    ('tpu v5', 459e12),
    ('tpu v6 lite', 918e12),  # v6e (Trillium)
    ('tpu v6e', 918e12),
    ('tpu7x', 2307e12),
)


def peak_bf16_flops(device_kind: str) -> float | None:
  """The data-sheet dense bf16 peak of one chip, or None when unknown."""
  kind = device_kind.lower()
  for name, flops in PEAK_BF16_FLOPS:
    if name in kind:
      return flops
  return None


def load_average() -> str:
  return ' '.join(f'{x:.1f}' for x in os.getloadavg())


def time_calls(fn: Callable[[], object], repeats: int,
               warmup: int = 1) -> list[float]:
  """Wall seconds of `repeats` calls of fn (blocked on its result) after
  `warmup` untimed calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times


def median(xs) -> float:
  return statistics.median(xs)


def matmul_peak(dtype=jnp.float32, sizes=(512, 1024, 2048), repeats: int = 5,
                min_seconds: float = 0.2) -> dict:
  """The best FLOP/s of a jitted jnp.dot of square [n, n] matrices.

  Each size runs enough back-to-back dots (one jitted program: a fori_loop
  of dots) to take at least `min_seconds`; the best of `repeats` runs per
  size is kept, and the best size is the peak. Returns
  {'flops': best, 'by_size': {n: flops}, 'dtype': name}.
  """
  by_size = {}
  for n in sizes:
    key = jax.random.key(n)
    a = jax.random.normal(key, (n, n), dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)

    @jax.jit
    def many(a, b, k):
      def body(_, acc):  # acc feeds back so no dot can be hoisted
        return jnp.dot(a + acc[:1, :1], b).astype(dtype) * 1e-3
      return jax.lax.fori_loop(0, k, body, jnp.zeros((n, n), dtype))

    flops_one = 2.0 * n ** 3
    jax.block_until_ready(many(a, b, 1))
    t0 = time.perf_counter()
    jax.block_until_ready(many(a, b, 1))
    one = max(time.perf_counter() - t0, 1e-6)
    k = int(max(1, min(1000, min_seconds / one)))
    best = min(time_calls(lambda: many(a, b, k), repeats, warmup=0))
    by_size[n] = flops_one * k / best
  return dict(flops=max(by_size.values()), by_size=by_size,
              dtype=jnp.dtype(dtype).name)


def describe_peak(peak: dict) -> str:
  sizes = ', '.join(f'{n}: {f / 1e9:.0f}' for n, f in peak['by_size'].items())
  return (f'measured {peak["dtype"]} matmul peak {peak["flops"] / 1e9:.1f} '
          f'GFLOP/s (best of jnp.dot sizes; GFLOP/s by size {sizes})')


# ===================================================================== FLOPs


def matmul_params(cfg) -> int:
  """Weights of the transformer blocks' matmuls (no embedding, no head)."""
  d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
  attn = d * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
  return cfg.num_layers * (attn + 3 * d * f)


def head_params(cfg) -> int:
  return cfg.hidden_size * cfg.vocab_size


def attention_flops(cfg, pairs: float) -> float:
  """Forward FLOPs of scoring `pairs` (query, key) pairs in every layer."""
  return 4.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * pairs


def causal_pairs(prefix: int, length: int) -> float:
  """(query, key) pairs of `length` queries after a `prefix` of keys, each
  seeing the prefix and itself and the queries before it."""
  return length * prefix + length * (length + 1) / 2


def forward_flops(cfg, rows: int, seq: int, head_positions: int | None = None,
                  prefix: int = 0) -> float:
  """Forward FLOPs of [rows, seq] tokens (causal, after `prefix` cached
  keys), the LM head over `head_positions` positions per row (default:
  all)."""
  head_positions = seq if head_positions is None else head_positions
  return rows * (2.0 * matmul_params(cfg) * seq +
                 2.0 * head_params(cfg) * head_positions +
                 attention_flops(cfg, causal_pairs(prefix, seq)))


def generate_flops(cfg, rows: int, prompt: int, new_tokens: int,
                   prompts: int | None = None) -> float:
  """Model FLOPs of sampling `new_tokens` for `rows` rows: the prefill of
  `prompts` prompts (default: rows; GRPO's group shares one) with the LM
  head on their last position, then one token per row per step, attending
  over the filled slots only (what the model needs, not what a fixed-size
  cache reads)."""
  prompts = rows if prompts is None else prompts
  prefill = forward_flops(cfg, prompts, prompt, head_positions=1)
  steps = new_tokens - 1  # the first token comes from the prefill's logits
  decode = rows * (steps * 2.0 * (matmul_params(cfg) + head_params(cfg)) +
                   attention_flops(cfg, causal_pairs(prompt, steps)))
  return prefill + decode


def train_flops(cfg, rows: int, seq: int, head_positions: int | None = None
                ) -> float:
  """A training step's FLOPs: 3 x forward (6 x params x tokens + attention)."""
  return 3.0 * forward_flops(cfg, rows, seq, head_positions)


def bench_model_config(hidden: int = 512, layers: int = 6, vocab: int = 8192,
                       heads: int = 8, kv_heads: int = 2,
                       intermediate: int | None = None, dtype=jnp.float32,
                       remat: bool = False):
  """The width-`hidden` Qwen2-style model the CPU benchmarks use (bench_sampler's
  22.3M-parameter model at the defaults)."""
  from r1jax.model import config as model_config  # pylint: disable=g-import-not-at-top
  return model_config.ModelConfig(
      vocab_size=vocab, hidden_size=hidden,
      intermediate_size=intermediate or 3 * hidden, num_layers=layers,
      num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
      qkv_bias=True, tie_embeddings=True, family='qwen2',
      max_position_embeddings=4096, rms_norm_eps=1e-6, dtype=dtype,
      param_dtype=jnp.float32, remat=remat)


def random_prompts(rows: int, width: int, vocab: int, seed: int = 0):
  """(ids, mask) of full-width random prompts (no padding, ids >= 2)."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, vocab, (rows, width), dtype=np.int32)
  return ids, np.ones((rows, width), bool)


def grpo_device_step(host, config, mesh, state, update_fn, logprobs_fn,
                     ref_params, timer):
  """The device side of a GRPO step as stages/grpo.py runs it (the
  `grpo_rollout.HostRollout` to a batch on the mesh with its reference
  log-probs and advantages, then the update), timed into `timer`'s
  'reference' and 'update' spans. `config` needs the rl fields
  `grpo_update.make_batch` reads (`grpo_rl_section`).

  Returns (state, metrics on the host).
  """
  from r1jax.stages import grpo_update  # pylint: disable=g-import-not-at-top
  batch, _ = grpo_update.make_batch(host, config, mesh,
                                    ref_params=ref_params,
                                    logprobs_fn=logprobs_fn, timer=timer)
  with timer('update'):
    state, m = update_fn(state, batch)
    m = jax.device_get(m)
  return state, m


def grpo_rl_section(group_size: int, **more) -> dict:
  """The config.rl fields `grpo_device_step` reads: the GRPO advantage,
  nothing masked."""
  return dict(group_size=group_size, advantage='grpo', eps=1e-6,
              advantage_options={}, mask_truncated=False, **more)
