"""What the benchmark scripts share: a measured matmul peak, model FLOPs,
peak bf16 FLOP/s by accelerator, timing helpers, and the GRPO-step work that
bench_vs_trl.py and bench_vs_tunix.py give both sides (with r1jax's side).

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
import pathlib
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


# ================================================ a GRPO step on an HF model
# The work bench_vs_trl.py and bench_vs_tunix.py give both sides: a tiny
# random Qwen2 written as a Hugging Face directory, P arithmetic prompts
# (R1-Zero template) x G samples of exactly L tokens, r1jax's rewards, one
# optimizer step of K micro-batches per generation; and r1jax's side of it.

GRPO_TEMPLATE = 'r1_zero_short'
GRPO_REWARD_WEIGHTS = {'arithmetic': 1.0, 'format': 0.5}


def add_grpo_step_args(p):
  """The flags of the shared GRPO-step work (bench_vs_trl's defaults)."""
  p.add_argument('--prompts', type=int, default=8, help='P prompts per step')
  p.add_argument('--group', type=int, default=8, help='G samples per prompt')
  p.add_argument('--new_tokens', type=int, default=64, help='L, exactly')
  p.add_argument('--grad_accum', type=int, default=2,
                 help='K micro-batches per optimizer step')
  p.add_argument('--beta', type=float, default=0.001)
  p.add_argument('--lr', type=float, default=1e-6)
  p.add_argument('--hidden', type=int, default=192)
  p.add_argument('--intermediate', type=int, default=512)
  p.add_argument('--layers', type=int, default=4)
  p.add_argument('--heads', type=int, default=6)
  p.add_argument('--kv_heads', type=int, default=2)
  p.add_argument('--vocab', type=int, default=512)
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--steps', type=int, default=4, help='timed steps per side')
  p.add_argument('--tiny', action='store_true',
                 help='seconds: 2 prompts x 2 samples x 8 tokens, 2 layers')


def apply_tiny(args):
  """--tiny: the smallest work that still runs every piece."""
  if args.tiny:
    args.prompts, args.group, args.new_tokens, args.grad_accum = 2, 2, 8, 2
    args.hidden, args.intermediate, args.layers = 64, 128, 2
    args.heads, args.kv_heads, args.vocab = 4, 2, 384
    args.steps = 1
  return args


def write_grpo_model(args, out):
  """A random tiny Qwen2 + a BPE tokenizer as an HF directory at `out`."""
  from r1jax.data import corpus  # pylint: disable=g-import-not-at-top
  from r1jax.model import functional as fn  # pylint: disable=g-import-not-at-top
  from r1jax.model import hf  # pylint: disable=g-import-not-at-top
  from r1jax.tokenizer import train_bpe  # pylint: disable=g-import-not-at-top
  texts = corpus.tokenizer_training_texts(
      corpus.CorpusConfig(r1_template=GRPO_TEMPLATE), n_docs=300, seed=0)
  tok = train_bpe(texts, args.vocab, config={
      'eos_token': '<|endoftext|>', 'pad_token': '<|pad|>',
      'chat_format': 'plain'})
  cfg = bench_model_config(
      hidden=args.hidden, layers=args.layers, vocab=args.vocab,
      heads=args.heads, kv_heads=args.kv_heads,
      intermediate=args.intermediate)
  _, params = fn.init(cfg, seed=0)
  hf.save_pretrained(out, cfg, params, tokenizer=tok)
  return out


def grpo_problems(args) -> list[dict]:
  from r1jax.data import synthetic  # pylint: disable=g-import-not-at-top
  return synthetic.generate('arithmetic', args.prompts, seed=0, split='train',
                            num_operands=(2, 4), max_digits=1, operators='+-')


def grpo_loss_config(args):
  """Clipped token surrogate (epsilon 0.2), mean over each sequence's tokens
  then over sequences, k3 KL in the loss with args.beta."""
  from r1jax import rl  # pylint: disable=g-import-not-at-top
  return rl.LossConfig(policy_loss='clipped_token',
                       aggregation='seq_mean_token_mean', kl_estimator='k3',
                       beta=args.beta, epsilon_low=0.2, epsilon_high=0.2)


def grpo_prompt_batch(model_dir, records):
  """(ids, mask, width): the records' R1-Zero prompts as r1jax tokenizes
  them, left-padded with the tokenizer's pad id to the longest."""
  from r1jax.data import templates  # pylint: disable=g-import-not-at-top
  from r1jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  tok = Tokenizer.from_dir(model_dir)
  seqs = [templates.prompt_ids(GRPO_TEMPLATE, r['problem'], tok)
          for r in records]
  width = max(len(s) for s in seqs)
  ids = np.full((len(seqs), width), tok.pad_id, np.int32)
  mask = np.zeros((len(seqs), width), bool)
  for i, s in enumerate(seqs):
    ids[i, width - len(s):] = s
    mask[i, width - len(s):] = True
  return ids, mask, width


class _SameBatch:
  """The PromptBatcher interface: the same P prompts every step."""

  def __init__(self, batch):
    self.batch = batch

  def __next__(self):
    return self.batch


def _grpo_r1jax_config(args):
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  c.sampling = dict(max_new_tokens=args.new_tokens, temperature=1.0,
                    top_p=1.0, top_k=0)
  c.rl = grpo_rl_section(
      args.group, prompts_per_step=args.prompts, dynamic_sampling=False,
      max_sampling_rounds=1)
  c.rewards = dict(weights=GRPO_REWARD_WEIGHTS, options={},
                   accuracy='arithmetic')
  return c


def bench_r1jax_grpo(args, model_dir, records, trace_dir=None):
  """r1jax's GRPO step on the shared work: (per-step timing spans after
  --warmup steps, info). Each step is the GRPO stage's loop body
  (stages/grpo.py) minus logging: grpo_rollout.Rollout (Sampler with no stop
  ids + rewards), the reference log-prob program, advantages, the update
  (num_minibatches 1, grad_accum K). With `trace_dir`, the timed steps run
  under jax.profiler's trace, written there."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from r1jax import parallel  # pylint: disable=g-import-not-at-top
  from r1jax.model import functional as fn  # pylint: disable=g-import-not-at-top
  from r1jax.model import hf  # pylint: disable=g-import-not-at-top
  from r1jax.run import console  # pylint: disable=g-import-not-at-top
  from r1jax.run import train_state  # pylint: disable=g-import-not-at-top
  from r1jax.sampling import Sampler  # pylint: disable=g-import-not-at-top
  from r1jax.stages import grpo_rollout  # pylint: disable=g-import-not-at-top
  from r1jax.stages import grpo_update  # pylint: disable=g-import-not-at-top
  from r1jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  cfg, _, params = hf.load_pretrained(model_dir)
  graphdef, _ = fn.abstract(cfg)
  tok = Tokenizer.from_dir(model_dir)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  ids, mask, width = grpo_prompt_batch(model_dir, records)
  batch = dict(prompt_ids=ids, prompt_mask=mask, examples=records)
  config = _grpo_r1jax_config(args)
  sampler = Sampler(graphdef, cfg, pad_id=tok.pad_id, eos_ids=(),
                    prompt_buckets=(width,), mesh=mesh)
  rollout = grpo_rollout.Rollout(config, sampler, tok, _SameBatch(batch))
  opt = train_state.make_optimizer(ml_collections.ConfigDict(dict(
      lr=args.lr, warmup_steps=0, steps=1000, min_lr_ratio=1.0, clip_norm=1.0,
      b1=0.9, b2=0.999, weight_decay=0.0)))
  state, _ = train_state.init_train_state(params, opt, 0, mesh)
  ref_params = grpo_update.copy_tree(state['params']) if args.beta else None
  update_fn = grpo_update.make_update_fn(
      graphdef, opt, loss_config=grpo_loss_config(args), num_iterations=1,
      num_minibatches=1, grad_accum=args.grad_accum, mesh=mesh,
      group_size=args.group)
  logprobs_fn = grpo_update.make_logprobs_fn(graphdef, group_size=args.group)
  timer = console.Timer()
  key = jax.random.key(0)
  steps = []
  for step in range(args.warmup + args.steps):
    if trace_dir is not None and step == args.warmup:
      jax.profiler.start_trace(str(trace_dir))
    t0 = time.perf_counter()
    # ---- the GRPO stage's loop body (stages/grpo.py), minus logging
    host = rollout(state['params'], jax.random.fold_in(key, step), timer)
    state, m = grpo_device_step(
        host, config, mesh, state, update_fn, logprobs_fn, ref_params, timer)
    times = timer.pop()
    times['step'] = time.perf_counter() - t0
    times['other'] = times['step'] - sum(
        v for k, v in times.items() if k != 'step')
    assert float(m['loss_finite']) == 1.0
    assert int(host.sample.lengths.min()) == args.new_tokens  # no early stop
    steps.append(times)
  if trace_dir is not None:
    jax.profiler.stop_trace()
  return steps[args.warmup:], dict(width=width, first=steps[0]['step'],
                                   cfg=cfg)


def describe_grpo_work(args, model_dir) -> str:
  rows = args.prompts * args.group
  return (f'model: {args.layers} layers, hidden {args.hidden}, vocab '
          f'{args.vocab} (random Qwen2, float32, {model_dir.name}/ in HF '
          f'format); {args.prompts} prompts x {args.group} samples = {rows} '
          f'rows, {args.new_tokens} new tokens each, grad_accum '
          f'{args.grad_accum}, beta {args.beta}; median of {args.steps} steps '
          f'after {args.warmup} warm-up')


def report_r1jax_grpo(args, r_steps, r_info) -> tuple[float, float]:
  """Prints r1jax's median step, its split and its share of the measured
  matmul peak; returns (median step s, the step's model FLOPs at 100% of
  that peak in s)."""
  rows = args.prompts * args.group
  r_med = median([s['step'] for s in r_steps])
  print(f'r1jax: {r_med:.3f} s per step (steps '
        f'{[round(s["step"], 3) for s in r_steps]}; first step '
        f'{r_info["first"]:.1f} s with compilation; prompt width '
        f'{r_info["width"]})')
  spans = ('sample', 'reward', 'reference', 'update', 'other')
  split = {k: median([s.get(k, 0.0) for s in r_steps]) for k in spans}
  print('  split (median s): ' + ', '.join(
      f'{k} {v:.3f} ({100 * v / r_med:.0f}%)' for k, v in split.items()))
  print(f'  {rows * args.new_tokens / split["sample"]:.0f} sampled tokens/s')
  # The step's model FLOPs (this module's conventions): sampling, the
  # reference forward pass, the update's forward + backward, over whole
  # rows (the work as TRL computes it).
  cfg, width, new = r_info['cfg'], r_info['width'], args.new_tokens
  seq = width + new - 1
  step_flops = (
      generate_flops(cfg, rows, width, new, prompts=args.prompts)
      + (forward_flops(cfg, rows, seq, head_positions=new) if args.beta else 0)
      + train_flops(cfg, rows, seq, head_positions=new))
  # What r1jax computes: each pass runs a group's shared prompt (its first
  # width - 1 tokens) once per part's rows of the group
  # (grpo_update.part_prompt_group).
  from r1jax.stages import grpo_update  # pylint: disable=g-import-not-at-top
  done_flops = generate_flops(cfg, rows, width, new, prompts=args.prompts)
  for passes, parts in (((1.0 if args.beta else 0.0), 1),
                        (3.0, args.grad_accum)):
    shared = rows // grpo_update.part_prompt_group(args.group, parts)
    done_flops += passes * (
        forward_flops(cfg, shared, width - 1, head_positions=0)
        + forward_flops(cfg, rows, new, head_positions=new, prefix=width - 1))
  peak = matmul_peak(sizes=[128] if args.tiny else [512, 1024, 2048])
  floor_s = step_flops / peak['flops']
  print(f'  {step_flops / 1e9:.1f} GFLOP of work (model, whole rows) per '
        f'step -> {step_flops / r_med / 1e9:.1f} GFLOP/s = '
        f'{100 * floor_s / r_med:.0f}% of the measured matmul peak '
        f'({peak["flops"] / 1e9:.0f} GFLOP/s); at 100% of it the step '
        f'would take {floor_s:.3f} s')
  print(f'  {done_flops / 1e9:.1f} GFLOP computed (each group\'s prompt once '
        f'per pass part) -> {done_flops / r_med / 1e9:.1f} GFLOP/s = '
        f'{100 * done_flops / peak["flops"] / r_med:.0f}% of the peak')
  return r_med, floor_s


def r1jax_grpo_side(args, tmp: pathlib.Path):
  """The r1jax half of a GRPO comparison: writes the shared model to
  tmp/model, prints the work and the load, times r1jax's step and reports
  it. Returns (model_dir, records, median step s, step s at 100% of peak)
  for the other side."""
  model_dir = write_grpo_model(args, tmp / 'model')
  records = grpo_problems(args)
  print(describe_grpo_work(args, model_dir))
  print(f'load average before: {load_average()}')
  r_steps, r_info = bench_r1jax_grpo(args, model_dir, records)
  r_med, floor_s = report_r1jax_grpo(args, r_steps, r_info)
  return model_dir, records, r_med, floor_s
