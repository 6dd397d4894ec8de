r"""Which GRPO configs fit which device: r1jax.memory's estimate per device
for Qwen2.5-0.5B, 1.5B and 7B, full fine-tuning and LoRA, against 16, 24
and 80 GiB.

    python scripts/memory_table.py                  # both rollouts below
    python scripts/memory_table.py --lora_rank=64 --devices=16,40,80

Two rollouts, both on one device:
  paper   experiments/zero.py:model=<m> as it is (the R1-Zero settings: 32
          prompts x 16 samples, 512 prompt + 1024 new tokens, 16
          mini-batches x 4 micro-batches, remat, bfloat16 compute)
  small   the same with 8 prompts x 8 samples, 256 + 512 tokens, 4
          mini-batches x 2 micro-batches (a single-GPU / Colab size)
Full fine-tuning keeps float32 master weights (model.param_dtype); LoRA
(--lora_rank, all seven projections, alpha = rank) a bfloat16 frozen base
and float32 adapters. "fits" means the estimate is at most the device's
memory; on a GPU, JAX takes 75% of it unless XLA_PYTHON_CLIENT_MEM_FRACTION
is raised.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax.numpy as jnp  # pylint: disable=wrong-import-position

from experiments import zero  # pylint: disable=wrong-import-position
from r1jax import memory  # pylint: disable=wrong-import-position
from r1jax.model import config as model_config  # pylint: disable=wrong-import-position

MODELS = ('qwen2.5-0.5b', 'qwen2.5-1.5b', 'qwen2.5-7b')
_GIB = 2 ** 30


class _OneDevice:
  shape = {'data': 1, 'fsdp': 1, 'tensor': 1}


def _config(model: str, rollout: str, lora_rank: int):
  c = zero.get_config(f'model={model}')
  if rollout == 'small':
    c.rl.prompts_per_step, c.rl.group_size = 8, 8
    c.sampling.max_prompt_tokens, c.sampling.max_new_tokens = 256, 512
    c.rl.num_minibatches, c.rl.grad_accum = 4, 2
  if lora_rank:
    c.model.lora.rank = lora_rank
    c.model.lora.alpha = float(lora_rank)
    c.model.param_dtype = 'bfloat16'
  return c


def estimate(model: str, rollout: str, lora_rank: int) -> memory.Estimate:
  c = _config(model, rollout, lora_rank)
  cfg = model_config.get_config(
      model, dtype=jnp.dtype(c.model.dtype),
      param_dtype=jnp.dtype(c.model.param_dtype), remat=bool(c.model.remat))
  return memory.estimate_for_config(c, cfg, _OneDevice())


def table(rollout: str, lora_rank: int, devices: tuple[int, ...]) -> str:
  head = ('| model | training | resident | peak (phase) | '
          + ' | '.join(f'{d} GiB' for d in devices) + ' |')
  lines = [head, '|' + '---|' * (4 + len(devices))]
  for model in MODELS:
    for rank in (0, lora_rank):
      est = estimate(model, rollout, rank)
      what = 'full (f32 weights)' if not rank else f'LoRA r={rank} (bf16 base)'
      fits = ['fits' if est.total <= d * _GIB else 'no' for d in devices]
      lines.append(
          f'| {model} | {what} | {est.resident / _GIB:.1f} GiB | '
          f'{est.total / _GIB:.1f} GiB ({est.peak_phase}) | '
          + ' | '.join(fits) + ' |')
  return '\n'.join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--lora_rank', type=int, default=16)
  p.add_argument('--devices', default='16,24,80', help='GiB, comma-separated')
  p.add_argument('--rollout', default='paper,small')
  args = p.parse_args()
  devices = tuple(int(d) for d in args.devices.split(','))
  for rollout in args.rollout.split(','):
    print(f'\n{rollout} rollout (per device, one device):\n')
    print(table(rollout, args.lora_rank, devices))


if __name__ == '__main__':
  main()
