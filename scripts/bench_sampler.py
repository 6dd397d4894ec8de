"""Sampling throughput: r1jax's Sampler against transformers' generate, CPU.

Both sides run the same weights: a randomly initialised Qwen2 model (~22M
parameters, vocab 8192, float32) is built with transformers and its state
dict imported into r1jax. Each side samples 128 new tokens for 64 prompts of
64 tokens, temperature 1, no top-k / top-p, with no early stop (EOS disabled
on both sides), after a warm-up; tokens per second and their ratio are
measured in the same run.

    source .venv/bin/activate
    python scripts/bench_sampler.py               # sampling at temperature 1
    python scripts/bench_sampler.py --greedy      # greedy decoding on both sides
    python scripts/bench_sampler.py --hf_threads 2 1   # torch at 2 and 1 threads

The machine may be shared: the load average is printed next to the figures.
torch, transformers: only this script imports them (never r1jax/ or tests/).
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from r1jax.model import functional
from r1jax.model.hf import config_from_hf, params_from_hf
from r1jax.sampling import Sampler

_COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                   '/jax/core/compile/jaxpr_to_mlir_module_duration',
                   '/jax/core/compile/backend_compile_duration')


def hf_model(args) -> transformers.Qwen2ForCausalLM:
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


def bench_r1jax(args, graphdef, cfg, params, ids_np):
  compile_s = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **_: compile_s.append(secs)
      if event in _COMPILE_EVENTS else None)
  sampler = Sampler(graphdef, cfg, pad_id=0, eos_ids=())
  mask = np.ones(ids_np.shape, bool)
  kw = dict(max_new_tokens=args.new_tokens, temperature=0.0 if args.greedy else
            1.0)

  def run(seed):
    out = sampler.generate(params, (ids_np, mask), seed=seed, **kw)
    jax.block_until_ready(out)
    return out

  t0 = time.perf_counter()
  out = run(0)
  first_s = time.perf_counter() - t0
  times = []
  for seed in range(1, args.repeats + 1):
    t0 = time.perf_counter()
    out = run(seed)
    times.append(time.perf_counter() - t0)
  assert int(np.asarray(out.lengths).min()) == args.new_tokens
  assert sum(sampler.traces.values()) == 2, sampler.traces
  return dict(seconds=statistics.median(times), all=times, first=first_s,
              compile=sum(compile_s),
              cache_bytes=sampler.cache_bytes(len(ids_np), ids_np.shape[1],
                                              args.new_tokens))


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


def main():
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
  p.add_argument('--skip_hf', action='store_true')
  args = p.parse_args()

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
  rng = np.random.default_rng(0)
  ids_np = rng.integers(2, args.vocab, (args.batch, args.prompt_len),
                        dtype=np.int32)
  check_same_model(graphdef, params, model, ids_np)

  new = args.batch * args.new_tokens
  print(f'load average before: {os.getloadavg()}')
  r = bench_r1jax(args, graphdef, cfg, params, ids_np)
  r_tps = new / r['seconds']
  print(f'r1jax:        {r_tps:9.1f} tokens/s  ({r["seconds"]:.2f} s per call; '
        f'runs {[round(t, 2) for t in r["all"]]})')
  print(f'  first call {r["first"]:.1f} s, of which compilation '
        f'{r["compile"]:.1f} s (trace + lower + XLA compile)')
  print(f'  KV cache: {r["cache_bytes"]} bytes '
        f'({r["cache_bytes"] / 2**20:.1f} MiB)')
  if args.skip_hf:
    return
  for threads in args.hf_threads:
    h = bench_hf(args, model, ids_np, threads)
    h_tps = new / h['seconds']
    print(f'transformers: {h_tps:9.1f} tokens/s  ({h["seconds"]:.2f} s per '
          f'call, torch {torch.__version__}, {threads} threads)')
    print(f'ratio r1jax / transformers ({threads} threads): '
          f'{r_tps / h_tps:.1f}x')
  print(f'load average after: {os.getloadavg()}')


if __name__ == '__main__':
  main()
