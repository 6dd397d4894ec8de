"""GRPO steps of a Qwen2.5-0.5B-sized model on whatever accelerator JAX sees.

Random weights (float32 master params, bfloat16 compute; with --lora R, LoRA
adapters of rank R on all seven projections over a frozen bfloat16 base, as
experiments/zero.py's lora= variant trains them), random prompt
tokens and random rewards, the GRPO stage's own device programs: the Sampler
(P prompts x G samples, exactly L new tokens each: no stop ids), the
reference log-prob program, the update (rl.grpo_loss, AdamW) over
num_minibatches x grad_accum micro-batches, on a data-parallel mesh over
every device. Defaults: 64 prompts x 8 samples x 512 new tokens, prompts of
128 tokens, 4 mini-batches x 16 micro-batches (8 rows each), 1 warm-up + 2
timed steps: within 5 minutes on one H100-class GPU.

Printed per step (median of the timed steps):
  * sampler tokens/s: completion tokens / sampling time (and per device);
  * update MFU: model FLOPs of the update (3 x forward: 6 x matmul params x
    tokens, the LM head on the completion positions, causal attention;
    bench_common.py; with LoRA no weight gradient of the frozen base:
    `update_flops`) / update time / devices, against the data-sheet bf16
    peak of the device (bench_common.PEAK_BF16_FLOPS by device_kind: H100,
    H200, A100, TPU v4 / v5e / v5p / v6e, ...) and against a bf16 matmul peak
    measured in the same run;
  * tokens/s/device over the whole step, verl's definition: (prompt +
    completion tokens) / step time / devices;
  * the split: sample, reward, reference, update;
  * peak memory: the most any device had in use over the whole run
    (memory_stats' peak_bytes_in_use, GPU / TPU; CPU devices keep none)
    against r1jax.memory's estimate of the step.

The reference pass runs as the GRPO stage runs it, one update micro-batch
of rows at a time (the whole rollout's [rows, L, vocab] float32 logits, 160 GB
here, would fit no device); r1jax/memory.py's estimate is printed first.

    python scripts/bench_accelerator.py                    # the full size
    python scripts/bench_accelerator.py --lora 16          # LoRA rank 16
    python scripts/bench_accelerator.py --tiny             # CPU, seconds
    python scripts/bench_accelerator.py --layers 4 --prompts 8 --group 4 \\
        --new_tokens 64                                    # shrink any part

scripts/device_check.py runs it twice, full fine-tuning and LoRA, each in its
own process, and tables the two (--json writes what main() returns).
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import bench_common
from r1jax import memory
from r1jax import parallel
from r1jax import rl
from r1jax.model import config as model_config
from r1jax.model import lora as lora_lib
from r1jax.sampling import SampleOutput
from r1jax.sampling import Sampler
from r1jax.run import adapters
from r1jax.run import console
from r1jax.run import train_state
from r1jax.stages import grpo_rollout
from r1jax.stages import grpo_update


def _preset_overrides(args) -> dict:
  """The ModelConfig fields the flags change (--layers ... --vocab)."""
  names = dict(layers='num_layers', hidden='hidden_size',
               intermediate='intermediate_size', heads='num_heads',
               kv_heads='num_kv_heads', head_dim='head_dim',
               vocab='vocab_size')
  return {names[k]: getattr(args, k) for k in names if getattr(args, k)}


def model_cfg(args):
  return model_config.get_config(
      args.preset, dtype=jnp.dtype(args.dtype),
      param_dtype=jnp.dtype(args.param_dtype), remat=args.remat,
      **_preset_overrides(args))


def run_config(args) -> ml_collections.ConfigDict:
  """What the GRPO stage reads of a run's config here: the rl fields of
  `grpo_device_step`, and the model section `adapters.attach` reads (a
  random init of the preset; LoRA of rank --lora, alpha 2 x rank, as
  experiments/common.model_section sets it)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.rl = bench_common.grpo_rl_section(args.group)
  c.model = ml_collections.ConfigDict(dict(
      preset=args.preset, hf_path='', gguf_path='',
      overrides=_preset_overrides(args),
      lora=dict(rank=args.lora, alpha=2.0 * args.lora) if args.lora else
      dict(rank=0)))
  return c


def update_flops(cfg, rows: int, seq: int, head_positions: int,
                 lcfg: lora_lib.LoRAConfig | None = None) -> float:
  """Model FLOPs of the update over [rows, seq] tokens: 3 x forward
  (`bench_common.train_flops`). With LoRA the frozen base's weight
  gradients are never computed: its matmuls and LM head count 2 x forward
  (the forward and the gradient of their input), the attention 3 x, and
  the adapters (x A, then B) 3 x their own forward."""
  flops = bench_common.train_flops(cfg, rows, seq,
                                   head_positions=head_positions)
  if lcfg is None:
    return flops
  weight_grads = rows * (2.0 * bench_common.matmul_params(cfg) * seq +
                         2.0 * bench_common.head_params(cfg) * head_positions)
  adapters_fwd = 2.0 * memory.adapter_params(cfg, lcfg) * rows * seq
  return flops - weight_grads + 3 * adapters_fwd


def peak_bytes(devices) -> int | None:
  """The most any of `devices` had in use since the process started
  (memory_stats' peak_bytes_in_use), or None where none is kept (CPU)."""
  peaks = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


def _gib(n: float) -> str:
  return f'{n / 2**30:.2f} GiB' if n >= 2**30 / 10 else f'{n / 2**20:.1f} MiB'


def peak_memory_line(peak: int | None, estimate: int,
                     limit: int | None) -> str:
  """One line: the measured peak per device against r1jax.memory's
  estimate (which should not be below it: it gates the GRPO stage)."""
  if peak is None:
    return (f'peak memory: n/a (these devices keep no memory statistics); '
            f'estimate {_gib(estimate)} per device')
  verdict = ('the estimate covers it' if estimate >= peak else
             'the peak is ABOVE the estimate: r1jax.memory undercounts '
             'this step')
  return (f'peak memory: {_gib(peak)} per device (memory_stats '
          f'peak_bytes_in_use) vs estimate {_gib(estimate)}: estimate / peak '
          f'{estimate / peak:.2f}, {verdict}'
          + (f'; device limit {_gib(limit)}' if limit else ''))


def _rate(flops: float) -> str:
  return (f'{flops / 1e12:.1f} TFLOP/s' if flops >= 1e12 else
          f'{flops / 1e9:.1f} GFLOP/s')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--preset', default='qwen2.5-0.5b')
  for k in ('layers', 'hidden', 'intermediate', 'heads', 'kv_heads',
            'head_dim', 'vocab'):
    p.add_argument(f'--{k}', type=int, default=0, help='override the preset')
  p.add_argument('--dtype', default='bfloat16', help='compute dtype')
  p.add_argument('--param_dtype', default='',
                 help="master (with LoRA: frozen base) weights; '' = float32,"
                 ' or with --lora the compute dtype')
  p.add_argument('--remat', action='store_true')
  p.add_argument('--lora', type=int, default=0,
                 help='LoRA rank on all seven projections (0: full '
                 'fine-tuning)')
  p.add_argument('--prompts', type=int, default=64)
  p.add_argument('--group', type=int, default=8)
  p.add_argument('--prompt_len', type=int, default=128)
  p.add_argument('--new_tokens', type=int, default=512)
  p.add_argument('--minibatches', type=int, default=4)
  p.add_argument('--grad_accum', type=int, default=16)
  p.add_argument('--beta', type=float, default=0.001)
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--steps', type=int, default=2)
  p.add_argument('--peak_sizes', type=int, nargs='+', default=None,
                 help='matmul sizes for the measured peak (default: 4096 '
                 '8192 on accelerators, 512 1024 on CPU)')
  p.add_argument('--tiny', action='store_true',
                 help='a CPU smoke run: 2 layers of width 64, 4 x 2 x 8')
  p.add_argument('--json', default='',
                 help='write the summary main() returns to this file')
  args = p.parse_args(argv)
  if args.tiny:
    args.layers, args.hidden, args.intermediate, args.heads = 2, 64, 128, 4
    args.kv_heads, args.head_dim, args.vocab = 2, 16, 512
    args.prompts, args.group, args.prompt_len, args.new_tokens = 4, 2, 8, 8
    args.minibatches, args.grad_accum, args.steps = 2, 2, 1
    args.dtype, args.peak_sizes = 'float32', [128]
  # As experiments/zero.py's lora= variant: a frozen base in the compute
  # dtype (bfloat16 halves it), master weights in float32 otherwise.
  args.param_dtype = args.param_dtype or (args.dtype if args.lora
                                          else 'float32')

  devices = jax.devices()
  kind = devices[0].device_kind
  on_cpu = devices[0].platform == 'cpu'
  cfg = model_cfg(args)
  config = run_config(args)
  lcfg = lora_lib.from_config(config.model)
  mesh = parallel.make_mesh({'data': -1})
  n_dev = len(devices)
  rows = args.prompts * args.group
  rows_dev = rows // n_dev
  mode = f'LoRA r={args.lora}' if lcfg else 'full fine-tuning'
  print(f'devices: {n_dev} x {kind} ({devices[0].platform}); model '
        f'{args.preset}-sized: {cfg.num_params() / 1e6:.0f}M params, '
        f'{cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab '
        f'{cfg.vocab_size}, {jnp.dtype(cfg.dtype).name} compute, '
        f'{jnp.dtype(cfg.param_dtype).name} params, remat {cfg.remat}; '
        f'{mode}')
  print(f'rollout: {args.prompts} prompts x {args.group} samples = {rows} '
        f'rows, prompt {args.prompt_len} + {args.new_tokens} new tokens; '
        f'update {args.minibatches} mini-batches x grad_accum '
        f'{args.grad_accum} ({rows_dev // (args.minibatches * args.grad_accum)}'
        f' rows per micro-batch per device)')
  est = memory.grpo_estimate(
      cfg, prompts_per_step=args.prompts, group_size=args.group,
      prompt_tokens=args.prompt_len, max_new_tokens=args.new_tokens,
      num_minibatches=args.minibatches, grad_accum=args.grad_accum,
      use_reference=args.beta > 0, batch_devices=n_dev, lora=lcfg)
  limit = memory.device_memory_limit()
  print(f'memory estimate per device (r1jax.memory), device limit '
        f'{"n/a" if limit is None else f"{limit / 2**30:.1f} GiB"}:\n'
        f'{est.table()}')

  peak_sizes = args.peak_sizes or ([512, 1024] if on_cpu else [4096, 8192])
  peak_dtype = jnp.float32 if on_cpu else jnp.bfloat16
  measured = bench_common.matmul_peak(dtype=peak_dtype, sizes=peak_sizes)
  sheet = bench_common.peak_bf16_flops(kind)
  print(bench_common.describe_peak(measured) + '; data-sheet bf16 peak: ' +
        (f'{sheet / 1e12:.0f} TFLOP/s' if sheet else f'unknown for {kind!r}'))

  # ------------------------------------------------------------ the programs
  # As the GRPO stage builds them (stages/grpo.py): with LoRA the state holds
  # the adapters, the base is frozen, the reference is the adapters off.
  graphdef, params = parallel.init_sharded(cfg, mesh, 0)
  w = adapters.attach(config, cfg, graphdef, params, mesh)
  opt = train_state.make_optimizer(ml_collections.ConfigDict(dict(
      lr=1e-6, warmup_steps=0, steps=1000, min_lr_ratio=1.0, clip_norm=1.0,
      b1=0.9, b2=0.99, weight_decay=0.1)))
  state, _ = train_state.init_train_state(w.params, opt, 0, mesh)
  ref_params = w.reference(state['params']) if args.beta else None
  sampler = Sampler(w.graphdef, cfg, pad_id=0, eos_ids=(),
                    prompt_buckets=(args.prompt_len,), mesh=mesh)
  update_fn = grpo_update.make_update_fn(
      w.graphdef, opt, loss_config=rl.LossConfig(beta=args.beta),
      num_iterations=1,
      num_minibatches=args.minibatches, grad_accum=args.grad_accum, mesh=mesh,
      frozen=w.frozen, lora_dropout=w.dropout)
  logprobs_fn = grpo_update.make_logprobs_fn(
      w.graphdef, mesh, num_chunks=args.minibatches * args.grad_accum)
  ids, mask = bench_common.random_prompts(args.prompts, args.prompt_len,
                                          cfg.vocab_size)
  rng = np.random.default_rng(0)
  timer = console.Timer()
  steps = []
  for step in range(args.warmup + args.steps):
    t0 = time.perf_counter()
    with timer('sample'):
      out = sampler.generate(w.full(state['params']), (ids, mask),
                             max_new_tokens=args.new_tokens, n=args.group,
                             temperature=1.0, seed=step)
      sample = SampleOutput(*(parallel.host_rows(v) for v in out))
    with timer('reward'):  # random rewards: the host side is not measured
      host = grpo_rollout.HostRollout(
          sample=sample, rewards=rng.normal(size=rows).astype(np.float32),
          per_reward={}, reward_metrics={}, texts=[], examples=[])
    state, m = bench_common.grpo_device_step(
        host, config, mesh, state, update_fn, logprobs_fn,
        None if ref_params is None else w.full(ref_params), timer)
    times = timer.pop()
    times['step'] = time.perf_counter() - t0
    times['tokens'] = float(sample.prompt_mask.sum() + sample.lengths.sum())
    assert int(sample.lengths.min()) == args.new_tokens
    print(f'step {step}{" (warm-up)" if step < args.warmup else ""}: '
          + ', '.join(f'{k} {v:.2f} s' for k, v in times.items()
                      if k != 'tokens') + f'; loss {float(m["loss"]):.4f}')
    if step >= args.warmup:
      steps.append(times)

  med = {k: bench_common.median([s.get(k, 0.0) for s in steps])
         for k in ('sample', 'reward', 'reference', 'update', 'step',
                   'tokens')}
  new = rows * args.new_tokens
  seq = args.prompt_len + args.new_tokens - 1
  flops = update_flops(cfg, rows, seq, args.new_tokens, lcfg)
  achieved = flops / med['update'] / n_dev
  print(f'--- median of {len(steps)} step(s), {n_dev} x {kind}, {mode}')
  print(f'sampler: {new / med["sample"]:.0f} tokens/s '
        f'({new / med["sample"] / n_dev:.0f} per device; {med["sample"]:.2f}'
        f' s for {new} tokens)')
  vs_sheet = (f'MFU {100 * achieved / sheet:.1f}% of the data-sheet bf16 '
              f'peak ({_rate(sheet)})' if sheet else
              f'MFU vs data sheet: n/a ({kind!r} is not in the table)')
  print(f'update: {flops / 1e12:.3f} TFLOP (model) in '
        f'{med["update"]:.2f} s -> {_rate(achieved)} per device; {vs_sheet}')
  print(f'  {100 * achieved / measured["flops"]:.1f}% of the measured '
        f'{measured["dtype"]} matmul peak ({_rate(measured["flops"])})')
  tokens_dev = med['tokens'] / med['step'] / n_dev
  print(f'tokens/s/device (prompt + completion tokens / step time / '
        f'devices): {tokens_dev:.0f}')
  print('split: ' + ', '.join(
      f'{k} {med[k]:.2f} s ({100 * med[k] / med["step"]:.0f}%)'
      for k in ('sample', 'reward', 'reference', 'update')) +
        f'; step {med["step"]:.2f} s')
  peak = peak_bytes(jax.local_devices())
  print(peak_memory_line(peak, est.total, limit))
  summary = dict(
      med, mode=mode, device_kind=kind, devices=n_dev,
      sampler_tokens_per_s=new / med['sample'],
      update_flops=flops, update_flops_per_s_per_device=achieved,
      update_mfu=achieved / sheet if sheet else None,
      update_mfu_measured_peak=achieved / measured['flops'],
      tokens_per_s_per_device=tokens_dev, peak_bytes=peak,
      estimate_bytes=est.total, limit_bytes=limit)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(summary, f, default=float)
  return summary


if __name__ == '__main__':
  main()
