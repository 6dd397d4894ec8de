"""GRPO steps of a Qwen2.5-0.5B-sized model on whatever accelerator JAX sees.

Random weights (float32 master params, bfloat16 compute), random prompt
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
    bench_common.py) / update time / devices, against the data-sheet bf16
    peak of the device (bench_common.PEAK_BF16_FLOPS by device_kind: H100,
    H200, A100, TPU v4 / v5e / v5p / v6e, ...) and against a bf16 matmul peak
    measured in the same run;
  * tokens/s/device over the whole step, verl's definition: (prompt +
    completion tokens) / step time / devices;
  * the split: sample, reward, reference, update.

The reference pass runs as the GRPO stage runs it, one update micro-batch
of rows at a time (the whole rollout's [rows, L, vocab] float32 logits, 160 GB
here, would fit no device); r1jax/memory.py's estimate is printed first.

    python scripts/bench_accelerator.py                    # the full size
    python scripts/bench_accelerator.py --tiny             # CPU, seconds
    python scripts/bench_accelerator.py --layers 4 --prompts 8 --group 4 \\
        --new_tokens 64                                    # shrink any part
"""

import argparse
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
from r1jax.sampling import SampleOutput
from r1jax.sampling import Sampler
from r1jax.run import console
from r1jax.run import train_state
from r1jax.stages import grpo_rollout
from r1jax.stages import grpo_update


def model_cfg(args):
  over = {k: getattr(args, k) for k in (
      'layers', 'hidden', 'intermediate', 'heads', 'kv_heads', 'head_dim',
      'vocab') if getattr(args, k)}
  names = dict(layers='num_layers', hidden='hidden_size',
               intermediate='intermediate_size', heads='num_heads',
               kv_heads='num_kv_heads', head_dim='head_dim',
               vocab='vocab_size')
  return model_config.get_config(
      args.preset, dtype=jnp.dtype(args.dtype),
      param_dtype=jnp.dtype(args.param_dtype), remat=args.remat,
      **{names[k]: v for k, v in over.items()})


def rl_config(group_size: int):
  c = ml_collections.ConfigDict()
  c.rl = bench_common.grpo_rl_section(group_size)
  return c


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
  p.add_argument('--param_dtype', default='float32')
  p.add_argument('--remat', action='store_true')
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
  args = p.parse_args(argv)
  if args.tiny:
    args.layers, args.hidden, args.intermediate, args.heads = 2, 64, 128, 4
    args.kv_heads, args.head_dim, args.vocab = 2, 16, 512
    args.prompts, args.group, args.prompt_len, args.new_tokens = 4, 2, 8, 8
    args.minibatches, args.grad_accum, args.steps = 2, 2, 1
    args.dtype, args.peak_sizes = 'float32', [128]

  devices = jax.devices()
  kind = devices[0].device_kind
  on_cpu = devices[0].platform == 'cpu'
  cfg = model_cfg(args)
  mesh = parallel.make_mesh({'data': -1})
  n_dev = len(devices)
  rows = args.prompts * args.group
  rows_dev = rows // n_dev
  print(f'devices: {n_dev} x {kind} ({devices[0].platform}); model '
        f'{args.preset}-sized: {cfg.num_params() / 1e6:.0f}M params, '
        f'{cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab '
        f'{cfg.vocab_size}, {jnp.dtype(cfg.dtype).name} compute, '
        f'{jnp.dtype(cfg.param_dtype).name} params, remat {cfg.remat}')
  print(f'rollout: {args.prompts} prompts x {args.group} samples = {rows} '
        f'rows, prompt {args.prompt_len} + {args.new_tokens} new tokens; '
        f'update {args.minibatches} mini-batches x grad_accum '
        f'{args.grad_accum} ({rows_dev // (args.minibatches * args.grad_accum)}'
        f' rows per micro-batch per device)')
  est = memory.grpo_estimate(
      cfg, prompts_per_step=args.prompts, group_size=args.group,
      prompt_tokens=args.prompt_len, max_new_tokens=args.new_tokens,
      num_minibatches=args.minibatches, grad_accum=args.grad_accum,
      use_reference=args.beta > 0, batch_devices=n_dev)
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
  graphdef, params = parallel.init_sharded(cfg, mesh, 0)
  opt = train_state.make_optimizer(ml_collections.ConfigDict(dict(
      lr=1e-6, warmup_steps=0, steps=1000, min_lr_ratio=1.0, clip_norm=1.0,
      b1=0.9, b2=0.99, weight_decay=0.1)))
  state, _ = train_state.init_train_state(params, opt, 0, mesh)
  ref_params = grpo_update.copy_tree(state['params']) if args.beta else None
  sampler = Sampler(graphdef, cfg, pad_id=0, eos_ids=(),
                    prompt_buckets=(args.prompt_len,), mesh=mesh)
  update_fn = grpo_update.make_update_fn(
      graphdef, opt, loss_config=rl.LossConfig(beta=args.beta),
      num_iterations=1,
      num_minibatches=args.minibatches, grad_accum=args.grad_accum, mesh=mesh)
  logprobs_fn = grpo_update.make_logprobs_fn(
      graphdef, mesh, num_chunks=args.minibatches * args.grad_accum)
  ids, mask = bench_common.random_prompts(args.prompts, args.prompt_len,
                                          cfg.vocab_size)
  rng = np.random.default_rng(0)
  config = rl_config(args.group)
  timer = console.Timer()
  steps = []
  for step in range(args.warmup + args.steps):
    t0 = time.perf_counter()
    with timer('sample'):
      out = sampler.generate(state['params'], (ids, mask),
                             max_new_tokens=args.new_tokens, n=args.group,
                             temperature=1.0, seed=step)
      sample = SampleOutput(*(parallel.host_rows(v) for v in out))
    with timer('reward'):  # random rewards: the host side is not measured
      host = grpo_rollout.HostRollout(
          sample=sample, rewards=rng.normal(size=rows).astype(np.float32),
          per_reward={}, reward_metrics={}, texts=[], examples=[])
    state, m = bench_common.grpo_device_step(
        host, config, mesh, state, update_fn, logprobs_fn, ref_params, timer)
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
  update_flops = bench_common.train_flops(cfg, rows, seq,
                                          head_positions=args.new_tokens)
  achieved = update_flops / med['update'] / n_dev
  print(f'--- median of {len(steps)} step(s), {n_dev} x {kind}')
  print(f'sampler: {new / med["sample"]:.0f} tokens/s '
        f'({new / med["sample"] / n_dev:.0f} per device; {med["sample"]:.2f}'
        f' s for {new} tokens)')
  vs_sheet = (f'MFU {100 * achieved / sheet:.1f}% of the data-sheet bf16 '
              f'peak ({_rate(sheet)})' if sheet else
              f'MFU vs data sheet: n/a ({kind!r} is not in the table)')
  print(f'update: {update_flops / 1e12:.3f} TFLOP (model) in '
        f'{med["update"]:.2f} s -> {_rate(achieved)} per device; {vs_sheet}')
  print(f'  {100 * achieved / measured["flops"]:.1f}% of the measured '
        f'{measured["dtype"]} matmul peak ({_rate(measured["flops"])})')
  print(f'tokens/s/device (prompt + completion tokens / step time / '
        f'devices): {med["tokens"] / med["step"] / n_dev:.0f}')
  print('split: ' + ', '.join(
      f'{k} {med[k]:.2f} s ({100 * med[k] / med["step"]:.0f}%)'
      for k in ('sample', 'reward', 'reference', 'update')) +
        f'; step {med["step"]:.2f} s')
  return med


if __name__ == '__main__':
  main()
