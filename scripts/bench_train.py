"""Train-step MFU: the SFT step and the GRPO update of a width-512 model.

Model FLOPs utilisation = model FLOPs of the step / step time, against a
float32 matmul peak measured in the same run (the best of jitted jnp.dot
sizes). Model FLOPs are 3 x forward: 6 x matmul params x tokens (the LM
head where logits are taken) plus causal attention, 4 x heads x head_dim per
(query, key) pair per layer, x 3 (bench_common.py). The model is
bench_sampler's 22.3M-parameter Qwen2-style one (width 512, 6 layers, vocab
8192, float32), random weights; steps are the stages' own jitted programs:

  SFT    r1jax.stages.sft_update.make_train_step on a [batch, seq] packed batch
  GRPO   r1jax.stages.grpo_update.make_update_fn on a rollout of
         rows = prompts x group, prompt P + completion L tokens, with the KL
         term (a reference log-prob array) and the entropy, split into
         num_minibatches optimizer steps

Where the time goes: the forward loss alone, forward + backward (the
gradient), and the whole step (+ AdamW) are timed apart.

    source .venv/bin/activate
    python scripts/bench_train.py
    python scripts/bench_train.py --tiny        # seconds (tests)

The machine may be shared: the load average is printed next to the figures;
run it twice.
"""

import argparse

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import bench_common
from r1jax import parallel
from r1jax import rl
from r1jax.model import functional as fn
from r1jax.run import train_state
from r1jax.stages import grpo_update
from r1jax.stages import sft
from r1jax.stages import sft_update


def optimizer():
  return train_state.make_optimizer(ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=0, steps=1000, min_lr_ratio=1.0, clip_norm=1.0,
      b1=0.9, b2=0.99, weight_decay=0.1)))


def fresh_state(params, opt, mesh):
  """The stages' train state on `mesh` (a copy: the step donates it)."""
  return train_state.init_train_state(jax.tree.map(jnp.copy, params), opt, 0,
                                 mesh)[0]


def time_step(step, state, batch, repeats):
  """Median seconds of step(state, batch) -> (state, metrics), donated.
  Two untimed calls: the first compiles, the second shows any recompile
  for the returned state's layout (none expected)."""
  box = [state]

  def run():
    box[0], metrics = step(box[0], batch)
    return metrics
  return bench_common.median(bench_common.time_calls(run, repeats, warmup=2))


def sft_batch(args, cfg):
  rng = np.random.default_rng(0)
  b, t = args.sft_batch, args.sft_seq
  return dict(
      tokens=jnp.asarray(rng.integers(2, cfg.vocab_size, (b, t)), jnp.int32),
      positions=jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
      segment_ids=jnp.ones((b, t), jnp.int32),
      loss_mask=jnp.ones((b, t), bool))


def bench_sft(args, cfg, graphdef, params, peak):
  batch = sft_batch(args, cfg)
  opt = optimizer()
  flops = bench_common.train_flops(cfg, args.sft_batch, args.sft_seq)
  step = sft_update.make_train_step(graphdef, opt, args.sft_grad_accum)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  t_step = time_step(step, fresh_state(params, opt, mesh), batch, args.repeats)
  loss = jax.jit(lambda p, b: sft_update.nll_sum(graphdef, p, b)[0])
  grad = jax.jit(jax.grad(lambda p, b: sft_update.nll_sum(graphdef, p, b)[0]))
  t_fwd = bench_common.median(bench_common.time_calls(
      lambda: loss(params, batch), args.repeats))
  t_grad = bench_common.median(bench_common.time_calls(
      lambda: grad(params, batch), args.repeats))
  report(f'SFT step ({args.sft_batch} x {args.sft_seq} tokens, grad_accum '
         f'{args.sft_grad_accum})', flops, t_step, t_fwd, t_grad, peak)
  return flops / t_step / peak


def grpo_batch(args, cfg):
  rng = np.random.default_rng(1)
  b, p, l = args.prompts * args.group, args.prompt_len, args.new_tokens
  ones = lambda *s: jnp.ones(s, bool)
  return grpo_update.Batch(
      completions=grpo_update.Completions(
          prompt_tokens=jnp.asarray(rng.integers(2, cfg.vocab_size, (b, p)),
                                    jnp.int32),
          prompt_mask=ones(b, p),
          tokens=jnp.asarray(rng.integers(2, cfg.vocab_size, (b, l)),
                             jnp.int32),
          mask=ones(b, l)),
      loss_mask=ones(b, l),
      old_logp=jnp.asarray(rng.normal(-3, 0.1, (b, l)), jnp.float32),
      ref_logp=jnp.asarray(rng.normal(-3, 0.1, (b, l)), jnp.float32),
      adv=jnp.asarray(rng.normal(0, 1, (b,)), jnp.float32))


def bench_grpo(args, cfg, graphdef, params, peak):
  batch = grpo_batch(args, cfg)
  opt = optimizer()
  rows = args.prompts * args.group
  seq = args.prompt_len + args.new_tokens - 1
  flops = args.iterations * bench_common.train_flops(
      cfg, rows, seq, head_positions=args.new_tokens)
  mesh = parallel.make_mesh({'data': 1}, devices=jax.devices()[:1])
  update = grpo_update.make_update_fn(
      graphdef, opt, loss_config=rl.LossConfig(beta=0.001),
      num_iterations=args.iterations,
      num_minibatches=args.minibatches, grad_accum=args.grad_accum, mesh=mesh)
  t_step = time_step(update, fresh_state(params, opt, mesh), batch,
                     args.repeats)
  logp = grpo_update.make_logprobs_fn(graphdef)
  t_fwd = bench_common.median(bench_common.time_calls(
      lambda: logp(params, batch.completions), args.repeats)
  ) * args.iterations
  grad = jax.jit(jax.grad(lambda p, b: jnp.sum(
      grpo_update.completion_logprobs(graphdef, p, b.completions,
                                      with_entropy=True)[0] *
      b.adv[:, None])))
  t_grad = bench_common.median(bench_common.time_calls(
      lambda: grad(params, batch), args.repeats)) * args.iterations
  report(f'GRPO update ({rows} rows = {args.prompts} x {args.group}, prompt '
         f'{args.prompt_len} + {args.new_tokens}; {args.minibatches} '
         f'mini-batches x grad_accum {args.grad_accum}, '
         f'{args.iterations} iteration(s))', flops, t_step, t_fwd, t_grad,
         peak)
  return flops / t_step / peak


def report(name, flops, t_step, t_fwd, t_grad, peak):
  print(f'{name}:')
  print(f'  {flops / 1e9:.1f} GFLOP (model) in {t_step * 1e3:.0f} ms -> '
        f'{flops / t_step / 1e9:.1f} GFLOP/s = MFU {100 * flops / t_step / peak:.0f}% '
        f'of the measured peak ({peak / 1e9:.0f} GFLOP/s)')
  print(f'  where the time goes: forward {t_fwd * 1e3:.0f} ms '
        f'({100 * flops / 3 / t_fwd / peak:.0f}% of peak), forward + backward '
        f'{t_grad * 1e3:.0f} ms ({100 * flops / t_grad / peak:.0f}%), '
        + (f'optimizer and the rest of the step {(t_step - t_grad) * 1e3:.0f} '
           'ms' if t_step > t_grad else
           'the whole step (one program) faster than forward + backward '
           'timed on their own'))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--hidden', type=int, default=512)
  p.add_argument('--layers', type=int, default=6)
  p.add_argument('--vocab', type=int, default=8192)
  p.add_argument('--heads', type=int, default=8)
  p.add_argument('--kv_heads', type=int, default=2)
  p.add_argument('--remat', action='store_true')
  p.add_argument('--sft_batch', type=int, default=16)
  p.add_argument('--sft_seq', type=int, default=256)
  p.add_argument('--sft_grad_accum', type=int, default=1)
  p.add_argument('--prompts', type=int, default=4)
  p.add_argument('--group', type=int, default=8)
  p.add_argument('--prompt_len', type=int, default=64)
  p.add_argument('--new_tokens', type=int, default=128)
  p.add_argument('--minibatches', type=int, default=2)
  p.add_argument('--grad_accum', type=int, default=1)
  p.add_argument('--iterations', type=int, default=1)
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--peak_sizes', type=int, nargs='+', default=[512, 1024, 2048])
  p.add_argument('--skip_sft', action='store_true')
  p.add_argument('--skip_grpo', action='store_true')
  p.add_argument('--tiny', action='store_true',
                 help='a seconds-long smoke run (tests)')
  args = p.parse_args(argv)
  if args.tiny:
    args.hidden, args.layers, args.vocab, args.heads = 64, 2, 256, 4
    args.sft_batch, args.sft_seq = 4, 16
    args.prompts, args.group, args.prompt_len, args.new_tokens = 2, 2, 8, 8
    args.repeats, args.peak_sizes = 1, [128]
  cfg = bench_common.bench_model_config(
      hidden=args.hidden, layers=args.layers, vocab=args.vocab,
      heads=args.heads, kv_heads=args.kv_heads, remat=args.remat)
  graphdef, params = fn.init(cfg)
  print(f'model: {fn.count_params(params) / 1e6:.1f}M params '
        f'({bench_common.matmul_params(cfg) / 1e6:.1f}M in block matmuls, '
        f'{bench_common.head_params(cfg) / 1e6:.1f}M LM head), width '
        f'{cfg.hidden_size}, {cfg.num_layers} layers, vocab {cfg.vocab_size}, '
        f'float32{", remat" if cfg.remat else ""}; '
        f'{jax.devices()[0].device_kind}')
  print(f'load average before: {bench_common.load_average()}')
  peak = bench_common.matmul_peak(sizes=args.peak_sizes)
  print(bench_common.describe_peak(peak))
  out = {}
  if not args.skip_sft:
    out['sft_mfu'] = bench_sft(args, cfg, graphdef, params, peak['flops'])
  if not args.skip_grpo:
    out['grpo_mfu'] = bench_grpo(args, cfg, graphdef, params, peak['flops'])
  print(f'load average after: {bench_common.load_average()}')
  return out


if __name__ == '__main__':
  main()
