"""Sampling throughput: r1jax's Sampler against transformers' generate, CPU.

Both sides run the same weights: a randomly initialised Qwen2 model (~22M
parameters, vocab 8192, float32) is built with transformers and its state
dict imported into r1jax. Each side samples 128 new tokens for 64 prompts of
64 tokens, temperature 1, no top-k / top-p, with no early stop (EOS disabled
on both sides), after a warm-up; tokens per second and their ratio are
measured in the same run.

Each call's achieved GFLOP/s (model FLOPs: 2 x matmul params per token plus
attention over the filled cache slots, prefill included; bench_common.py)
is printed against a float32 matmul peak measured in the same run. A second
shape at GRPO scale follows: 512 rows = 32 prompts x 16 samples sharing each
prompt's prefill, 256 new tokens (r1jax only unless --grpo_shape_hf).

    source .venv/bin/activate
    python scripts/bench_sampler.py               # sampling at temperature 1
    python scripts/bench_sampler.py --greedy      # greedy decoding on both sides
    python scripts/bench_sampler.py --hf_threads 2 1   # torch at 2 and 1 threads
    python scripts/bench_sampler.py --skip_hf --tiny   # r1jax only, seconds
    python scripts/bench_sampler.py --skip_hf --variants --grpo_new_tokens 0
        # bf16 cache and one decode segment against the default

The machine may be shared: the load average is printed next to the figures.
torch, transformers: only this script imports them (never r1jax/ or tests/);
without them use --skip_hf (the weights are then r1jax's own random init), or
`pip install torch==2.13.0 transformers`.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import bench_common
from r1jax.model import functional
from r1jax.model.hf import config_from_hf, params_from_hf
from r1jax.sampling import Sampler

torch = transformers = None  # imported in main() unless --skip_hf

_COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                   '/jax/core/compile/jaxpr_to_mlir_module_duration',
                   '/jax/core/compile/backend_compile_duration')


def hf_model(args):
  config = transformers.Qwen2Config(
      vocab_size=args.vocab, hidden_size=args.hidden,
      intermediate_size=args.intermediate, num_hidden_layers=args.layers,
      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
      head_dim=args.hidden // args.heads, tie_word_embeddings=True,
      max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-6)
  torch.manual_seed(0)
  return transformers.Qwen2ForCausalLM(config).eval()


def check_same_model(graphdef, params, model, ids_np):
  """The two forward passes agree on the prompt logits (same weights)."""
  with torch.no_grad():
    ref = model(torch.from_numpy(ids_np[:2].astype(np.int64))).logits.numpy()
  mask = np.ones(ids_np[:2].shape, bool)
  logits, _ = functional.apply(graphdef, params, ids_np[:2],
                               functional.positions_from_mask(mask),
                               functional.causal_mask(mask))
  err = float(np.abs(np.asarray(logits) - ref).max())
  print(f'max |logits r1jax - logits HF| on 2 prompts: {err:.2e}')
  if err > 1e-3:
    raise SystemExit('r1jax and HF disagree: the weights did not map.')


_COMPILE_S = []


def _listen_compiles():
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **_: _COMPILE_S.append(secs)
      if event in _COMPILE_EVENTS else None)


def make_sampler(graphdef, cfg, ids_np, **kw) -> Sampler:
  """A sampler without stop ids (no early stop) for prompts as wide as
  ids_np's; `kw` go to Sampler()."""
  return Sampler(graphdef, cfg, pad_id=0, eos_ids=(),
                 prompt_buckets=(ids_np.shape[1],), **kw)


def bench_r1jax(args, graphdef, cfg, params, ids_np, *, new_tokens=None, n=1,
                repeats=None):
  """Times Sampler.generate of n samples per prompt; the first call
  compiles and is reported apart."""
  new_tokens = new_tokens or args.new_tokens
  repeats = repeats or args.repeats
  del _COMPILE_S[:]
  sampler = make_sampler(graphdef, cfg, ids_np)
  mask = np.ones(ids_np.shape, bool)
  kw = dict(max_new_tokens=new_tokens, temperature=0.0 if args.greedy else
            1.0, n=n)

  def run(seed):
    out = sampler.generate(params, (ids_np, mask), seed=seed, **kw)
    jax.block_until_ready(out)
    return out

  t0 = time.perf_counter()
  out = run(0)
  first_s = time.perf_counter() - t0
  times = []
  for seed in range(1, repeats + 1):
    t0 = time.perf_counter()
    out = run(seed)
    times.append(time.perf_counter() - t0)
  assert int(np.asarray(out.lengths).min()) == new_tokens
  assert sum(sampler.traces.values()) == 2, sampler.traces
  return dict(seconds=statistics.median(times), all=times, first=first_s,
              compile=sum(_COMPILE_S),
              cache_bytes=sampler.cache_bytes(len(ids_np) * n, ids_np.shape[1],
                                              new_tokens))


def print_r1jax(label, r, rows, new_tokens, flops, peak):
  tps = rows * new_tokens / r['seconds']
  gflops = flops / r['seconds'] / 1e9
  print(f'{label}{tps:9.1f} tokens/s  ({r["seconds"]:.2f} s per call; '
        f'runs {[round(t, 2) for t in r["all"]]})')
  print(f'  {flops / 1e9:.1f} GFLOP per call -> {gflops:.1f} GFLOP/s = '
        f'{100 * gflops * 1e9 / peak:.0f}% of the measured matmul peak '
        f'({peak / 1e9:.0f} GFLOP/s)')
  print(f'  first call {r["first"]:.1f} s, of which compilation '
        f'{r["compile"]:.1f} s (trace + lower + XLA compile)')
  print(f'  KV cache: {r["cache_bytes"]} bytes '
        f'({r["cache_bytes"] / 2**20:.1f} MiB)')
  return tps


def bench_hf(args, model, ids_np, threads):
  torch.set_num_threads(threads)
  ids = torch.from_numpy(ids_np.astype(np.int64))
  kw = dict(attention_mask=torch.ones_like(ids), do_sample=not args.greedy,
            eos_token_id=None, pad_token_id=0)
  if not args.greedy:
    kw.update(temperature=1.0, top_k=0, top_p=1.0)
  with torch.no_grad():
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
    times = []
    for _ in range(args.hf_repeats):
      t0 = time.perf_counter()
      out = model.generate(ids, max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, **kw)
      times.append(time.perf_counter() - t0)
  assert out.shape == (len(ids_np), ids_np.shape[1] + args.new_tokens)
  return dict(seconds=statistics.median(times), all=times)


def main(argv=None):
  global torch, transformers
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--prompt_len', type=int, default=64)
  p.add_argument('--new_tokens', type=int, default=128)
  p.add_argument('--vocab', type=int, default=8192)
  p.add_argument('--hidden', type=int, default=512)
  p.add_argument('--intermediate', type=int, default=1536)
  p.add_argument('--layers', type=int, default=6)
  p.add_argument('--heads', type=int, default=8)
  p.add_argument('--kv_heads', type=int, default=2)
  p.add_argument('--greedy', action='store_true')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--hf_repeats', type=int, default=1)
  p.add_argument('--hf_threads', type=int, nargs='+', default=[2],
                 help='torch thread counts to time (the first sets the ratio '
                 'target; on a shared machine 2 OpenMP threads can be much '
                 'slower than 1, so `--hf_threads 2 1` shows both)')
  p.add_argument('--skip_hf', action='store_true',
                 help='r1jax only (no torch needed; random r1jax weights)')
  p.add_argument('--grpo_prompts', type=int, default=32,
                 help='the GRPO-scale shape: prompts ...')
  p.add_argument('--grpo_group', type=int, default=16,
                 help='... x samples each (rows = their product) ...')
  p.add_argument('--grpo_new_tokens', type=int, default=256,
                 help='... x new tokens; 0 skips the shape')
  p.add_argument('--grpo_repeats', type=int, default=1)
  p.add_argument('--grpo_shape_hf', action='store_true',
                 help='also time transformers at the GRPO shape (slow: '
                 'num_return_sequences, no shared prefill)')
  p.add_argument('--peak_sizes', type=int, nargs='+', default=[512, 1024, 2048])
  p.add_argument('--variants', action='store_true',
                 help='also time sampler variants at the batch shape, one '
                 'call of each in turn: a bfloat16 KV cache, and one decode '
                 'segment (attending over all P + L slots every step)')
  p.add_argument('--tiny', action='store_true',
                 help='a seconds-long smoke run (tests): a 2-layer width-64 '
                 'model, 4 prompts x 8 tokens, GRPO shape 2 x 4 x 8')
  args = p.parse_args(argv)
  if args.tiny:
    args.batch, args.prompt_len, args.new_tokens = 4, 8, 8
    args.vocab, args.hidden, args.intermediate = 256, 64, 128
    args.layers, args.heads, args.kv_heads = 2, 4, 2
    args.repeats = args.hf_repeats = 1
    args.grpo_prompts, args.grpo_group, args.grpo_new_tokens = 2, 4, 8
    args.peak_sizes = [128]
  _listen_compiles()

  if args.skip_hf:
    model = None
    cfg = bench_common.bench_model_config(
        hidden=args.hidden, layers=args.layers, vocab=args.vocab,
        heads=args.heads, kv_heads=args.kv_heads,
        intermediate=args.intermediate)
    graphdef, params = functional.init(cfg)
  else:
    try:
      import torch as _torch  # pylint: disable=g-import-not-at-top
      import transformers as _transformers  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise SystemExit('bench_sampler.py compares with transformers: '
                       '`pip install torch==2.13.0 transformers` (CPU), or '
                       'run with --skip_hf for r1jax alone.') from None
    torch, transformers = _torch, _transformers
    model = hf_model(args)
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = config_from_hf(model.config.to_dict())
    params = params_from_hf(tensors, cfg)
    graphdef, _ = functional.abstract(cfg)
  print(f'model: {functional.count_params(params) / 1e6:.1f}M params, '
        f'{cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab '
        f'{cfg.vocab_size}; batch {args.batch} x prompt {args.prompt_len} + '
        f'{args.new_tokens} new tokens, '
        f'{"greedy" if args.greedy else "sampling at temperature 1"}')
  ids_np, _ = bench_common.random_prompts(args.batch, args.prompt_len,
                                          args.vocab)
  if model is not None:
    check_same_model(graphdef, params, model, ids_np)

  print(f'load average before: {bench_common.load_average()}')
  peak = bench_common.matmul_peak(sizes=args.peak_sizes)
  print(bench_common.describe_peak(peak))
  flops = bench_common.generate_flops(cfg, args.batch, args.prompt_len,
                                      args.new_tokens)
  r = bench_r1jax(args, graphdef, cfg, params, ids_np)
  r_tps = print_r1jax('r1jax:        ', r, args.batch, args.new_tokens, flops,
                      peak['flops'])
  if model is not None:
    for threads in args.hf_threads:
      h = bench_hf(args, model, ids_np, threads)
      h_tps = args.batch * args.new_tokens / h['seconds']
      print(f'transformers: {h_tps:9.1f} tokens/s  ({h["seconds"]:.2f} s per '
            f'call, torch {torch.__version__}, {threads} threads; '
            f'{flops / h["seconds"] / 1e9:.1f} GFLOP/s)')
      print(f'ratio r1jax / transformers ({threads} threads): '
            f'{r_tps / h_tps:.1f}x')
      floor_s = flops / peak['flops']
      print(f'  bound: at 100% of the measured peak a call takes '
            f'{floor_s:.2f} s, at most {h["seconds"] / floor_s:.1f}x '
            f'transformers')

  if args.variants:
    print('sampler variants (batch shape, runs interleaved):')
    variants = {'default (float32 cache, 4 decode segments)': {},
                'bfloat16 KV cache': dict(cache_dtype=jnp.bfloat16),
                'one decode segment': dict(decode_segments=1)}
    samplers = {k: make_sampler(graphdef, cfg, ids_np, **kw)
                for k, kw in variants.items()}
    mask = np.ones(ids_np.shape, bool)
    kw = dict(max_new_tokens=args.new_tokens, n=1,
              temperature=0.0 if args.greedy else 1.0)
    times = {k: [] for k in samplers}
    for seed in range(args.repeats + 1):
      for k, sampler in samplers.items():
        t0 = time.perf_counter()
        jax.block_until_ready(sampler.generate(params, (ids_np, mask),
                                               seed=seed, **kw))
        if seed:  # the first round compiles
          times[k].append(time.perf_counter() - t0)
    for k, ts in times.items():
      sec = statistics.median(ts)
      print(f'  {k:44s} {args.batch * args.new_tokens / sec:8.1f} tokens/s '
            f'({sec:.2f} s per call)')

  if args.grpo_new_tokens:
    rows = args.grpo_prompts * args.grpo_group
    print(f'GRPO shape: {rows} rows = {args.grpo_prompts} prompts x '
          f'{args.grpo_group} samples, prompt {args.prompt_len} + '
          f'{args.grpo_new_tokens} new tokens')
    g_ids = ids_np[:args.grpo_prompts]
    if len(g_ids) < args.grpo_prompts:
      g_ids, _ = bench_common.random_prompts(args.grpo_prompts,
                                             args.prompt_len, args.vocab, 1)
    g_flops = bench_common.generate_flops(
        cfg, rows, args.prompt_len, args.grpo_new_tokens,
        prompts=args.grpo_prompts)
    g = bench_r1jax(args, graphdef, cfg, params, g_ids,
                    new_tokens=args.grpo_new_tokens, n=args.grpo_group,
                    repeats=args.grpo_repeats)
    g_tps = print_r1jax('r1jax (GRPO shape): ', g, rows, args.grpo_new_tokens,
                        g_flops, peak['flops'])
    if model is not None and args.grpo_shape_hf:
      hargs = argparse.Namespace(**{**vars(args), 'new_tokens':
                                    args.grpo_new_tokens})
      h = bench_hf(hargs, model, np.repeat(g_ids, args.grpo_group, axis=0),
                   args.hf_threads[0])
      h_tps = rows * args.grpo_new_tokens / h['seconds']
      print(f'transformers (GRPO shape): {h_tps:9.1f} tokens/s; ratio '
            f'{g_tps / h_tps:.1f}x')
  print(f'load average after: {bench_common.load_average()}')


if __name__ == '__main__':
  main()
