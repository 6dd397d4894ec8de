r"""Which model and GRPO config fit this device: the notebook's choice.

    choice = device_fit.for_this_device()     # reads jax's devices
    print(choice.report())                    # every candidate's estimate
    model_dir = device_fit.download(choice, '/content/models')  # accelerators
    config = choice.config(model_dir)         # experiments/zero.py:<arg> + flags
    print(choice.command(model_dir, 'runs/zero'))  # the same run from a shell

On a GPU or TPU the choice is the first of `CANDIDATES` (largest first: R1-Zero
with LoRA on GSM8K, Qwen2.5-Math-1.5B or Qwen2.5-0.5B-Instruct) whose memory
estimate per device (r1jax.memory, the estimate the GRPO stage checks at
start-up) is at most `HEADROOM` of the device's memory (`bytes_limit` of
`memory_stats()`; on a GPU JAX takes 75% of the card unless
XLA_PYTHON_CLIENT_MEM_FRACTION is raised). A device that reports no limit (CPU)
runs the tiny default, `experiments/zero.py` as the README runs it; so does a
device too small for every candidate, with the reason printed.

A candidate is `experiments/zero.py:model=...,data=gsm8k,lora=R` (the paper's
GRPO settings, a LoRA on every projection over a bfloat16 base) with a smaller
rollout, given as --config.* overrides: `Choice.config` applies them to the
config, `Choice.command` writes them as flags, and tests/test_device_choice.py
checks that the command's flags, read by the CLI's own parser, give the same
config. This module has no get_config: it is not an experiment.
"""

import dataclasses
import pathlib
import shlex
import types
from typing import Any

import ml_collections

from experiments import zero

_GIB = 2 ** 30
# A candidate fits when its estimate is at most this share of the device's
# memory: the estimate leaves out XLA's scratch space (cuBLAS / cuDNN
# workspaces), allocator fragmentation and the final base-vs-trained
# evaluation's second copy of the weights.
HEADROOM = 0.9
# GSM8K's longest prompt under the r1_zero template is 312 tokens with the
# SmolLM2 tokenizer (all 8,792 train + test problems); Qwen2.5's larger
# vocabulary needs fewer. A longer prompt stops the run at start-up.
PROMPT_TOKENS = 384
# Rows per mini-batch (optimizer step), as in the paper's 512 rows over 16
# mini-batches; the rollout size sets how many optimizer steps a step takes.
ROWS_PER_MINIBATCH = 32
DEFAULT_STEPS = 100      # GRPO steps of a real model (the tiny one: 40)
TINY_STEPS = 40
# LoRA wants a higher learning rate than full fine-tuning: about 10x in
# Thinking Machines' "LoRA Without Regret" (2025) for SFT and RL alike;
# zero.py's full fine-tuning uses the paper's 3e-6. Not tuned here.
LORA_LR = 3e-5
# What a checkpoint directory needs (config, safetensors, tokenizer files):
# not the repository's other formats.
HF_PATTERNS = ('*.json', '*.safetensors', '*.txt')
ZERO = 'experiments/zero.py'


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A real model with LoRA and its rollout (per step, on one device)."""
  hf_repo: str         # the Hugging Face hub repository
  model: str           # zero.py's model= (the architecture preset)
  lora_rank: int
  prompts: int         # rl.prompts_per_step
  group: int           # rl.group_size
  new_tokens: int      # sampling.max_new_tokens (and the evaluation's)
  micro_rows: int      # rows per update micro-batch: the update's memory

  @property
  def arg(self) -> str:
    return f'model={self.model},data=gsm8k,lora={self.lora_rank}'


# Largest first: the first one that fits is chosen. The estimate is mostly
# the update's [micro_rows, completion, vocab] logits and the KV cache of
# prompts x group rows: 27.7, 12.3 and 4.0 GiB on one device (`report()`
# prints them; estimates, not measured on a device). So an 80 GB A100 / H100
# runs the first, a 24 GB L4 or a 16 GiB TPU v5e the second, a 16 GB T4
# (11 GiB for JAX) the third.
CANDIDATES = (
    Candidate('Qwen/Qwen2.5-Math-1.5B', 'qwen2.5-math-1.5b', lora_rank=32,
              prompts=16, group=8, new_tokens=1024, micro_rows=8),
    Candidate('Qwen/Qwen2.5-Math-1.5B', 'qwen2.5-math-1.5b', lora_rank=16,
              prompts=8, group=8, new_tokens=768, micro_rows=4),
    Candidate('Qwen/Qwen2.5-0.5B-Instruct', 'qwen2.5-0.5b', lora_rank=16,
              prompts=8, group=8, new_tokens=512, micro_rows=2),
)


def overrides(candidate: Candidate | None, num_devices: int = 1,
              steps: int = 0) -> dict[str, Any]:
  """The --config.* values of `candidate` (None: the tiny default) on
  `num_devices` data-parallel devices, `steps` GRPO steps (0: the default).

  The micro-batch keeps `micro_rows` rows per device where the rollout
  allows it: more devices take fewer micro-batches each (grad_accum), not a
  different optimizer (num_minibatches)."""
  if candidate is None:
    steps = steps or TINY_STEPS
    return {'train.steps': steps, 'eval.every': max(steps // 2, 1)}
  c = candidate
  steps = steps or DEFAULT_STEPS
  rows = c.prompts * c.group
  minibatches = max(1, rows // ROWS_PER_MINIBATCH)
  per_device = rows // num_devices // minibatches
  return {
      'rl.prompts_per_step': c.prompts,
      'rl.group_size': c.group,
      'rl.num_minibatches': minibatches,
      'rl.grad_accum': max(1, per_device // c.micro_rows),
      'sampling.max_prompt_tokens': PROMPT_TOKENS,
      'sampling.max_new_tokens': c.new_tokens,
      'eval.max_new_tokens': c.new_tokens,
      'eval.num_problems': 128,
      'eval.every': max(steps // 2, 1),
      'train.steps': steps,
      'train.lr': LORA_LR,
      'train.checkpoint_every': 25,
  }


def build_config(arg: str, values: dict[str, Any],
                 hf_path: str = '') -> ml_collections.ConfigDict:
  """experiments/zero.py:`arg` with `values` (dotted keys) and, when given,
  model.hf_path set: what the command's flags do."""
  config = zero.get_config(arg)
  if hf_path:
    values = {**values, 'model.hf_path': str(hf_path)}
  for dotted, value in values.items():
    *parents, leaf = dotted.split('.')
    node = config
    for part in parents:
      node = node[part]
    if leaf not in node:  # a typo here must not add a key the run ignores
      raise KeyError(f'{dotted}: no such field in {ZERO}:{arg}')
    node[leaf] = value
  return config


def _estimate(config, num_devices: int):
  """r1jax.memory's estimate of `config` per device: the GRPO stage's own
  start-up check (`memory.check_grpo`), on a data-parallel mesh."""
  from r1jax import memory  # pylint: disable=g-import-not-at-top
  from r1jax.run import loading  # pylint: disable=g-import-not-at-top
  mesh = types.SimpleNamespace(
      shape={'data': num_devices, 'fsdp': 1, 'tensor': 1})
  return memory.estimate_for_config(config, loading.model_config_of(config),
                                    mesh)


def _invalid(config, num_devices: int) -> str:
  """Why the GRPO stage would refuse `config` on `num_devices` devices ('' if
  it would not)."""
  from r1jax import errors  # pylint: disable=g-import-not-at-top
  from r1jax.stages import grpo  # pylint: disable=g-import-not-at-top
  try:
    grpo.validate_config(config, num_devices)
  except errors.ConfigError as e:
    return str(e)
  return ''


def describe(candidate: Candidate | None) -> str:
  if candidate is None:
    return 'the tiny model, experiments/zero.py (the README run)'
  c = candidate
  return (f'{c.hf_repo.split("/")[-1]} LoRA r={c.lora_rank}: {c.prompts} '
          f'prompts x {c.group}, {PROMPT_TOKENS} + {c.new_tokens} tokens, '
          f'{c.micro_rows} rows per micro-batch')


@dataclasses.dataclass(frozen=True)
class Choice:
  """What runs here (`candidate`; None: the tiny default) and why."""
  candidate: Candidate | None
  values: dict[str, Any]       # the --config.* overrides
  estimate: Any                # memory.Estimate of the choice (None: tiny)
  limit: int | None            # bytes per device (None: no limit reported)
  num_devices: int
  device: str
  # (candidate, its estimate in bytes, or None with why it cannot run here)
  considered: tuple[tuple[Candidate, int | None, str], ...] = ()

  @property
  def hf_repo(self) -> str:
    """The hub repository to download ('' for the tiny model)."""
    return self.candidate.hf_repo if self.candidate else ''

  @property
  def arg(self) -> str:
    return self.candidate.arg if self.candidate else ''

  def config(self, hf_path: str = '') -> ml_collections.ConfigDict:
    """The run's config; `hf_path`: the downloaded checkpoint."""
    return build_config(self.arg, self.values, hf_path)

  def flags(self, hf_path: str = '') -> list[str]:
    values = dict(self.values)
    if hf_path:
      values['model.hf_path'] = str(hf_path)
    return [f'--config={ZERO}' + (f':{self.arg}' if self.arg else '')] + [
        f'--config.{k}={v}' for k, v in values.items()]

  def command(self, hf_path: str, workdir: str) -> str:
    """`python -m r1jax.train ...` of the same run (from the checkout)."""
    return shlex.join(['python', '-m', 'r1jax.train', *self.flags(hf_path),
                       f'--workdir={workdir}'])

  def report(self) -> str:
    """What was compared and chosen, then the estimate of the choice."""
    if self.limit is None:
      return (f'{self.device or "this device"}: no device memory limit '
              f'reported (CPU): {describe(None)}')
    budget = HEADROOM * self.limit
    lines = [f'{self.num_devices} x {self.device or "device"}: '
             f'{self.limit / _GIB:.1f} GiB per device (memory_stats '
             f'bytes_limit); a candidate fits when its estimate is at most '
             f'{HEADROOM:.0%} of it, {budget / _GIB:.1f} GiB']
    for cand, total, why in self.considered:
      if total is None:
        lines.append(f'  {"n/a":>9}  {"no":<4}  {describe(cand)}\n'
                     f'{"":17}({why})')
        continue
      verdict = 'fits' if total <= budget else 'no'
      mark = '  <- chosen' if cand == self.candidate else ''
      lines.append(f'  {total / _GIB:5.1f} GiB  {verdict:<4}  '
                   f'{describe(cand)}{mark}')
    if self.candidate is None:
      lines.append(f'none fits: {describe(None)}')
    else:
      lines.append(f'chosen: {self.hf_repo}, {ZERO}:{self.arg}')
      lines.append('memory estimate per device (r1jax.memory):\n'
                   + self.estimate.table())
    return '\n'.join(lines)


def choose(limit: int | None, num_devices: int = 1, *, steps: int = 0,
           device: str = '') -> Choice:
  """The first of CANDIDATES whose estimate per device is at most HEADROOM x
  `limit` bytes (the device's bytes_limit; None: a CPU, the tiny default)
  on `num_devices` data-parallel devices, else the tiny default."""
  if limit is None:
    return Choice(None, overrides(None, steps=steps), None, None, num_devices,
                  device)
  considered, chosen = [], None
  for cand in CANDIDATES:
    values = overrides(cand, num_devices, steps)
    config = build_config(cand.arg, values)
    why = _invalid(config, num_devices)
    if why:
      considered.append((cand, None, f'cannot run on {num_devices} devices: '
                                     f'{why}'))
      continue
    est = _estimate(config, num_devices)
    considered.append((cand, est.total, ''))
    if est.total <= HEADROOM * limit and chosen is None:
      chosen = Choice(cand, values, est, limit, num_devices, device)
  if chosen is None:
    return Choice(None, overrides(None, steps=steps), None, limit,
                  num_devices, device, tuple(considered))
  return dataclasses.replace(chosen, considered=tuple(considered))


def for_this_device(steps: int = 0) -> Choice:
  """`choose` for jax's devices: the first one's bytes_limit and kind, and
  the number of devices the GRPO mesh spreads the rows over."""
  import jax  # pylint: disable=g-import-not-at-top
  from r1jax import memory  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return choose(memory.device_memory_limit(device), jax.device_count(),
                steps=steps, device=f'{device.device_kind} ({device.platform})')


def download(choice: Choice, root: str | pathlib.Path) -> str:
  """The chosen checkpoint from the Hugging Face hub into root/<repo name>
  (config, safetensors and tokenizer files only); returns the directory.
  Needs the internet and huggingface_hub (Colab has both); a finished
  download is not repeated."""
  if not choice.hf_repo:
    raise ValueError('the tiny model is built locally: nothing to download')
  from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
  local = pathlib.Path(root) / choice.hf_repo.split('/')[-1]
  return str(snapshot_download(repo_id=choice.hf_repo, local_dir=str(local),
                               allow_patterns=list(HF_PATTERNS)))
