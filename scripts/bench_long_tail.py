r"""The GRPO step's device work on long-tailed rollouts: padded vs length-aware.

    python scripts/bench_long_tail.py                 # the main job's shapes
    python scripts/bench_long_tail.py --new_tokens=256 --prompt_tokens=64

One rollout of P x G rows whose completion lengths follow a long-tailed
distribution (`--dist=long_tail`, the default: 70% uniform in [1, L/4], 25%
uniform in (L/4, L), 5% exactly L; or `--dist=late`, the main job's after
its first ~20 steps: 30% at L, the rest uniform in [L/2, L)) and whose prompts are 60-100% of the prompt width,
on the tiny CPU model (`tiny-cpu`, 1.7M parameters) with random tokens.
Each side runs the reference pass and the update of the GRPO stage on the
same rollout (groups of `--group` rows with one prompt) and params: padded
whole rows (`grpo_update.make_logprobs_fn` + `make_update_fn`), padded with
each group's prompt computed once per part (`group_size`, what
`rl.length_buckets=0` runs), and `grpo_lengths.LengthAware` with
`--buckets` (each group's prompt once per mini-batch, each row trimmed to
its length's bucket); the figure is the median over `--steps` repetitions
after one warm-up (compiles excluded; the compiled shapes are counted). Sampling and
rewards are the same for both and not timed. Both sides run in this one
process, one after the other; the load average is printed beside the
figures.
"""

import argparse
import os
import statistics
import time

import jax
import numpy as np
import optax

from r1jax import parallel
from r1jax import rl
from r1jax.model import get_config, init
from r1jax.stages import grpo_lengths
from r1jax.stages import grpo_update


def rollout(rows: int, prompt_len: int, new_tokens: int, seed: int,
            vocab: int, dist: str = 'long_tail', group: int = 1
            ) -> grpo_update.Batch:
  """Rows in groups of `group` consecutive rows with one prompt (a GRPO
  rollout's layout)."""
  rng = np.random.default_rng(seed)
  u = rng.random(rows)
  quarter = max(new_tokens // 4, 1)
  if dist == 'long_tail':
    lengths = np.where(u < 0.70, rng.integers(1, quarter + 1, rows),
                       np.where(u < 0.95, rng.integers(
                           quarter + 1, new_tokens, rows), new_tokens))
  else:  # 'late': the main job after ~20 steps (mean ~50 of 64)
    lengths = np.where(u < 0.30, new_tokens, rng.integers(
        new_tokens // 2, new_tokens, rows))
  prompt_lengths = rng.integers(int(0.6 * prompt_len), prompt_len + 1,
                                rows // group)
  prompt_mask = np.arange(prompt_len)[None] >= (prompt_len - prompt_lengths
                                               )[:, None]
  mask = np.arange(new_tokens)[None] < lengths[:, None]
  tokens = lambda shape, m: np.where(m, rng.integers(3, vocab, shape), 0
                                     ).astype(np.int32)
  prompts = np.repeat(tokens((rows // group, prompt_len), prompt_mask), group,
                      axis=0)
  prompt_mask = np.repeat(prompt_mask, group, axis=0)
  old = np.where(mask, -rng.random((rows, new_tokens)) * 3, 0
                 ).astype(np.float32)
  return grpo_update.Batch(
      completions=grpo_update.Completions(
          prompt_tokens=prompts,
          prompt_mask=prompt_mask, tokens=tokens((rows, new_tokens), mask),
          mask=mask),
      loss_mask=mask, old_logp=old,
      adv=rng.normal(size=rows).astype(np.float32),
      ref_logp=old + np.where(mask, 0.01, 0).astype(np.float32))


def timed(fn, steps: int) -> float:
  fn()  # warm-up: compiles
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--prompts', type=int, default=16)
  p.add_argument('--group', type=int, default=8)
  p.add_argument('--prompt_tokens', type=int, default=48)
  p.add_argument('--new_tokens', type=int, default=64)
  p.add_argument('--num_minibatches', type=int, default=2)
  p.add_argument('--grad_accum', type=int, default=1)
  p.add_argument('--buckets', type=int, default=4)
  p.add_argument('--call_tokens', type=int, default=None,
                 help='LengthAware call_tokens (default: its own)')
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--preset', default='tiny-cpu')
  p.add_argument('--dist', default='long_tail', choices=['long_tail', 'late'])
  args = p.parse_args()

  cfg = get_config(args.preset)
  graphdef, params = init(cfg, seed=0)
  mesh = parallel.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 1})
  rows = args.prompts * args.group
  batch = parallel.host_local_to_global(
      rollout(rows, args.prompt_tokens, args.new_tokens, 0, cfg.vocab_size,
              args.dist, args.group),
      mesh)
  optimizer = optax.adamw(1e-6)
  kw = dict(loss_config=rl.LossConfig(), num_iterations=1,
            num_minibatches=args.num_minibatches, grad_accum=args.grad_accum,
            mesh=mesh)
  chunks = args.num_minibatches * args.grad_accum
  state = {'params': params, 'opt_state': optimizer.init(params), 'step': 0}

  padded_ref = grpo_update.make_logprobs_fn(graphdef, mesh, num_chunks=chunks)
  padded_update = grpo_update.make_update_fn(graphdef, optimizer, **kw)
  shared_ref = grpo_update.make_logprobs_fn(graphdef, mesh, num_chunks=chunks,
                                            group_size=args.group)
  shared_update = grpo_update.make_update_fn(graphdef, optimizer,
                                             group_size=args.group, **kw)
  la = grpo_lengths.LengthAware(
      graphdef, optimizer, buckets=args.buckets,
      prompt_len=args.prompt_tokens, completion_len=args.new_tokens,
      group_size=args.group, **kw,
      **({} if args.call_tokens is None else
         {'call_tokens': args.call_tokens}))

  def copy(s):
    return jax.tree.map(lambda x: x.copy() if hasattr(x, 'copy') else x, s)

  results = {}
  for name, ref_fn, update_fn in (
      ('padded', lambda: padded_ref(params, batch.completions),
       lambda: padded_update(copy(state), batch)),
      ('shared prompt', lambda: shared_ref(params, batch.completions),
       lambda: shared_update(copy(state), batch)),
      ('length-aware', lambda: la.logprobs(params, batch.completions),
       lambda: la.update(copy(state), batch))):
    ref = timed(lambda: jax.block_until_ready(ref_fn()), args.steps)
    upd = timed(lambda: jax.block_until_ready(update_fn()), args.steps)
    results[name] = (ref, upd)
  la.logprobs(params, batch.completions)
  frac = la.stats.pop_metrics()  # of one reference pass
  lengths = np.asarray(jax.device_get(batch.completions.mask)).sum(1)
  print(f'rollout: {rows} rows, prompt width {args.prompt_tokens}, budget '
        f'{args.new_tokens}; lengths mean {lengths.mean():.1f}, median '
        f'{np.median(lengths):.0f}, at the budget '
        f'{(lengths == args.new_tokens).mean():.0%}; model {args.preset}, '
        f'{jax.device_count()} device(s); load average '
        f'{os.getloadavg()[0]:.2f}')
  print(f'length-aware: {int(frac["length_aware_shapes"])} compiled shapes, '
        f'{frac["length_aware_token_frac"]:.0%} of the padded tokens computed')
  print(f'{"":14s}{"reference s":>12s}{"update s":>10s}{"ref+update s":>14s}')
  for name, (ref, upd) in results.items():
    print(f'{name:14s}{ref:12.3f}{upd:10.3f}{ref + upd:14.3f}')
  (pr, pu), (lr, lu) = results['padded'], results['length-aware']
  print(f'speed-up: reference {pr / lr:.2f}x, update {pu / lu:.2f}x, '
        f'reference + update {(pr + pu) / (lr + lu):.2f}x')
  sr, su = results['shared prompt']
  print(f'shared prompt (the GRPO stage\'s padded passes, each group\'s '
        f'prompt once per part): reference {pr / sr:.2f}x, update '
        f'{pu / su:.2f}x, reference + update {(pr + pu) / (sr + su):.2f}x '
        f'faster than whole rows; length-aware against it '
        f'{(sr + su) / (lr + lu):.2f}x')


if __name__ == '__main__':
  main()
