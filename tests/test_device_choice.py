"""experiments/device_fit.py: which model and config the notebook runs on a
device of a given memory (fake sizes here; the CPU is the real one)."""

import pathlib
import shlex
import sys
import types

from absl import flags
from ml_collections import config_flags
import pytest

from experiments import device_fit
from experiments import zero
from r1jax import memory
from r1jax.run import loading
from r1jax.stages import grpo

GIB = 2 ** 30
QWEN_MATH, QWEN_HALF = 'Qwen/Qwen2.5-Math-1.5B', 'Qwen/Qwen2.5-0.5B-Instruct'


def _mesh(n: int = 1):
  return types.SimpleNamespace(shape={'data': n, 'fsdp': 1, 'tensor': 1})


def _estimate(config, n: int = 1) -> memory.Estimate:
  return memory.estimate_for_config(config, loading.model_config_of(config),
                                    _mesh(n))


def test_cpu_runs_the_tiny_default():
  choice = device_fit.choose(None)
  assert choice.candidate is None and choice.hf_repo == '' and not choice.arg
  expected = zero.get_config('')
  expected.train.steps, expected.eval.every = 40, 20
  assert choice.config().to_dict() == expected.to_dict()
  assert 'no device memory limit reported (CPU)' in choice.report()
  assert device_fit.choose(None, steps=6).config().eval.every == 3
  # The test's own (CPU) devices report no limit: the same choice.
  here = device_fit.for_this_device()
  assert here.candidate is None and here.limit is None
  assert '(cpu)' in here.report()


# (device, bytes_limit in GiB, the chosen repository, its LoRA rank). On a
# GPU JAX takes 75% of the card; a TPU reports nearly all of its HBM.
DEVICES = [
    ('T4 16 GB, 75% for JAX', 0.75 * 15.0, QWEN_HALF, 16),
    ('16 GiB (TPU v5e)', 16.0, QWEN_MATH, 16),
    ('L4 24 GB, 75% for JAX', 0.75 * 22.5, QWEN_MATH, 16),
    ('24 GiB', 24.0, QWEN_MATH, 16),
    ('A100 / H100 80 GB, 75% for JAX', 0.75 * 79.2, QWEN_MATH, 32),
    ('80 GiB', 80.0, QWEN_MATH, 32),
]


@pytest.mark.parametrize('device, gib, repo, rank', DEVICES,
                         ids=[d[0] for d in DEVICES])
def test_the_largest_candidate_that_fits_is_chosen(device, gib, repo, rank,
                                                    monkeypatch):
  limit = int(gib * GIB)
  choice = device_fit.choose(limit, device=device)
  assert (choice.hf_repo, choice.candidate.lora_rank) == (repo, rank)
  budget = device_fit.HEADROOM * limit
  index = device_fit.CANDIDATES.index(choice.candidate)
  totals = [_estimate(device_fit.build_config(
      c.arg, device_fit.overrides(c))).total for c in device_fit.CANDIDATES]
  assert totals == sorted(totals, reverse=True)  # largest first
  assert totals[index] <= budget < min(totals[:index], default=float('inf'))
  # The printed estimate is the one of the config that runs, and the GRPO
  # stage's own start-up check passes it on this device.
  config = choice.config()
  assert choice.estimate == _estimate(config)
  monkeypatch.setattr(memory, 'device_memory_limit', lambda *_: limit)
  memory.check_grpo(config, loading.model_config_of(config), _mesh(),
                    log=lambda _: None)
  report = choice.report()
  assert f'{gib:.1f} GiB per device' in report
  assert report.count('<- chosen') == 1 and f'chosen: {repo}' in report
  assert 'memory estimate per device (r1jax.memory)' in report


@pytest.mark.parametrize('candidate', device_fit.CANDIDATES,
                         ids=lambda c: f'{c.model}-r{c.lora_rank}')
def test_every_candidate_is_a_lora_gsm8k_run_the_stage_accepts(candidate):
  config = device_fit.build_config(candidate.arg,
                                   device_fit.overrides(candidate))
  grpo.validate_config(config, 1)
  assert config.model.preset == candidate.model
  assert config.model.lora.rank == candidate.lora_rank
  assert config.model.param_dtype == 'bfloat16'  # the frozen base
  assert config.data.source == 'gsm8k' and config.data.template == 'r1_zero'
  assert config.train.lr == device_fit.LORA_LR
  rows = config.rl.prompts_per_step * config.rl.group_size
  assert rows // (config.rl.num_minibatches * config.rl.grad_accum) == (
      candidate.micro_rows)
  # The evaluation's sampler calls are no larger than the rollout's, so the
  # estimate's sample phase covers them.
  assert config.eval.batch_size <= rows
  assert config.eval.max_new_tokens == config.sampling.max_new_tokens
  assert config.sampling.max_prompt_tokens >= 312  # GSM8K's longest prompt


def test_headroom_is_the_rule():
  smallest = device_fit.CANDIDATES[-1]
  total = _estimate(device_fit.build_config(
      smallest.arg, device_fit.overrides(smallest))).total
  enough = int(total / device_fit.HEADROOM) + 1
  assert device_fit.choose(enough).candidate == smallest
  too_small = device_fit.choose(enough - 2)
  assert too_small.candidate is None and too_small.hf_repo == ''
  assert 'none fits: the tiny model' in too_small.report()
  assert too_small.config().to_dict()['model'] == (
      zero.get_config('').to_dict()['model'])


def test_several_devices_split_the_rows():
  # A TPU v2-8: 8 devices of 8 GiB (7.5 for JAX).
  choice = device_fit.choose(int(7.5 * GIB), 8)
  config = choice.config()
  grpo.validate_config(config, 8)
  c = choice.candidate
  rows_per_device = c.prompts * c.group // 8
  assert rows_per_device // (config.rl.num_minibatches *
                             config.rl.grad_accum) == c.micro_rows
  assert choice.estimate == _estimate(config, 8)
  assert choice.estimate.kv_cache < _estimate(config, 1).kv_cache
  # 16 devices: 8 prompts cannot be split over them; the stage's own check
  # says why, and the candidate is not chosen.
  choice16 = device_fit.choose(16 * GIB, 16)
  assert choice16.candidate.prompts % 16 == 0
  assert 'cannot run on 16 devices' in choice16.report()
  grpo.validate_config(choice16.config(), 16)


def _parse_like_the_cli(command: str):
  """The command's --config flags through ml_collections' config file flag,
  the parser of `python -m r1jax.train`."""
  argv = shlex.split(command)
  assert argv[:3] == ['python', '-m', 'r1jax.train']
  assert argv[-1].startswith('--workdir=')
  argv = ['r1jax.train', *argv[3:-1]]
  fv = flags.FlagValues()
  # It reads the overrides from sys.argv unless told the command line.
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


@pytest.mark.parametrize('gib', [None, 11.0, 16.0, 80.0])
def test_the_printed_command_is_the_same_run(gib, monkeypatch):
  monkeypatch.chdir(pathlib.Path(zero.__file__).parents[1])  # the checkout
  choice = device_fit.choose(None if gib is None else int(gib * GIB))
  hf_path = '' if gib is None else '/content/models/with space/Qwen'
  cli = _parse_like_the_cli(choice.command(hf_path, '/tmp/runs/zero'))
  assert cli.to_dict() == choice.config(hf_path).to_dict()
  if hf_path:
    assert cli.model.hf_path == hf_path


def test_download_asks_the_hub_for_the_checkpoint_files(tmp_path, monkeypatch):
  calls = []

  def snapshot_download(**kw):
    calls.append(kw)
    return kw['local_dir']

  monkeypatch.setitem(sys.modules, 'huggingface_hub', types.SimpleNamespace(
      snapshot_download=snapshot_download))
  choice = device_fit.choose(16 * GIB)
  path = device_fit.download(choice, tmp_path)
  assert path == str(tmp_path / 'Qwen2.5-Math-1.5B')
  assert calls == [dict(repo_id=QWEN_MATH, local_dir=path,
                        allow_patterns=['*.json', '*.safetensors', '*.txt'])]
  with pytest.raises(ValueError, match='nothing to download'):
    device_fit.download(device_fit.choose(None), tmp_path)
  assert len(calls) == 1
