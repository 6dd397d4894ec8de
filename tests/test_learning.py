"""R1-Zero learns: GRPO from a checked tiny base raises held-out accuracy.

The base (tests/fixtures/tiny_base) is experiments/pretrain_tiny.py's model
for seed 0, made by this code and committed with its ability record
(base_ability.json), so the test spends its time on RL only. It runs the
main command, `python -m r1jax.train --config=experiments/zero.py`, on one
CPU device, shortened, and asserts that held-out pass@1 rises by a clear
margin. It fails when RL stops learning (checked: with the learning rate at
1e-12 pass@1 went 0.268 -> 0.268, with the advantage's sign flipped 0.268 ->
0.004; as committed 0.268 -> 0.582).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = _ROOT / 'tests' / 'fixtures' / 'tiny_base'
STEPS = 40
MIN_GAIN = 0.15


def run_zero(workdir: pathlib.Path, *overrides: str) -> dict:
  """The main command from the fixture base; returns its done.json."""
  cmd = [sys.executable, '-m', 'r1jax.train', '--config=experiments/zero.py',
         f'--workdir={workdir}', f'--config.model.hf_path={FIXTURE}',
         '--config.model.pretrain_if_missing=False',
         f'--config.train.steps={STEPS}', '--config.eval.every=0',
         '--config.eval.num_problems=128', '--config.eval.greedy=False',
         '--config.export.hf=False', '--config.train.checkpoint_every=1000',
         *overrides]
  # One device: the real command as a user runs it on a CPU (the suite's
  # 8 simulated devices would only add partitioning overhead here).
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads((workdir / 'done.json').read_text())


@pytest.mark.slow
def test_grpo_from_the_checked_base_raises_held_out_pass_at_1(tmp_path):
  done = run_zero(tmp_path / 'run')
  before, after = done['base/pass@1'], done['eval/pass@1']
  print(f'held-out pass@1 {before:.3f} -> {after:.3f} in {STEPS} GRPO steps, '
        f'format {done["eval/format_rate"]:.3f}')
  assert after - before >= MIN_GAIN, (
      f'R1-Zero stopped learning: held-out pass@1 {before:.3f} -> {after:.3f} '
      f'in {STEPS} GRPO steps (needs +{MIN_GAIN})')
  assert done['eval/format_rate'] >= 0.9
