"""Each benchmark script runs end to end at a tiny size (`--tiny`), and so
does the accelerator check (scripts/device_check.py --tiny).

In-process main() calls (no new interpreter, jax already imported); the
figures themselves are benchmarks, not tested. The TRL / transformers sides
run only where torch, transformers and trl are installed (they are not r1jax
dependencies); tunix's side only where R1JAX_TUNIX_PYTHON names a venv with
tunix.
"""

import importlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from r1jax.model import config as model_config

SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / 'scripts'


def _script(name):
  if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))
  return importlib.import_module(name)


def _has(*modules) -> bool:
  try:
    for m in modules:
      importlib.import_module(m)
  except ImportError:
    return False
  return True


def test_bench_common_flops_and_peak_table():
  bc = _script('bench_common')
  cfg = bc.bench_model_config()  # bench_sampler's model: 22.3M params
  assert bc.matmul_params(cfg) + bc.head_params(cfg) == 22282240
  # The figure: a decode step at batch 64 is 2.85 GFLOP of weights.
  step = bc.generate_flops(cfg, 64, 64, 3) - bc.generate_flops(cfg, 64, 64, 2)
  weights = 2 * 64 * (bc.matmul_params(cfg) + bc.head_params(cfg))
  assert weights == pytest.approx(2.852e9, rel=1e-3)
  assert step == pytest.approx(weights + bc.attention_flops(cfg, 64 * 66))
  # Training is 3x forward.
  assert bc.train_flops(cfg, 2, 16) == 3 * bc.forward_flops(cfg, 2, 16)
  for kind, tflops in (('NVIDIA H100 80GB HBM3', 989), ('NVIDIA H200', 989),
                       ('NVIDIA A100-SXM4-80GB', 312), ('TPU v4', 275),
                       ('TPU v5 lite', 197), ('TPU v5p', 459),
                       ('TPU v6 lite', 918), ('NVIDIA H100 PCIe', 756)):
    assert bc.peak_bf16_flops(kind) == tflops * 1e12, kind
  assert bc.peak_bf16_flops('cpu') is None
  peak = bc.matmul_peak(sizes=(64,), repeats=1, min_seconds=0.001)
  assert peak['flops'] > 0 and set(peak['by_size']) == {64}


def test_bench_sampler_tiny(capsys):
  argv = ['--tiny', '--variants'] + (
      [] if _has('torch', 'transformers') else ['--skip_hf'])
  _script('bench_sampler').main(argv)
  out = capsys.readouterr().out
  assert 'of the measured matmul peak' in out
  assert 'GRPO shape: 8 rows = 2 prompts x 4 samples' in out
  for variant in ('default (float32 cache', 'bfloat16 KV cache',
                  'one decode segment'):
    assert variant in out


def test_bench_train_tiny(capsys):
  out = _script('bench_train').main(['--tiny'])
  assert set(out) == {'sft_mfu', 'grpo_mfu'}
  assert all(v > 0 for v in out.values())
  text = capsys.readouterr().out
  assert 'MFU' in text and 'where the time goes' in text


def test_bench_vs_trl_tiny_r1jax_side(capsys):
  _script('bench_vs_trl').main(['--tiny', '--skip_trl'])
  out = capsys.readouterr().out
  assert 'r1jax:' in out and 'split (median s): sample' in out


def test_profile_grpo_step_sorts_ops_by_program_and_kind(tmp_path):
  """Every op of the traced step is found in the HLO dump and sorted into
  the sampler, reference and update programs; matmuls are found."""
  prof = _script('profile_grpo_step')
  hlo = """HloModule jit_f, entry_computation_layout={()->f32[]}

%fused_dot (p0: f32[2,2], p1: f32[2,2]) -> f32[2,2] {
  %p0 = f32[2,2]{1,0} parameter(0)
  %p1 = f32[2,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[2,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}
}

%fused_max (p0: f32[2,2]) -> f32[2] {
  %p0 = f32[2,2]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %reduce.3 = f32[2]{0} reduce(%p0, %c), dimensions={1}
}

ENTRY %main.9 (a: f32[2,2]) -> f32[2] {
  %a = f32[2,2]{1,0} parameter(0)
  %ynn_fusion = f32[2,2]{1,0} fusion(%a, %a), kind=kCustom, calls=%fused_dot
  %copy.2 = f32[2,2]{0,1} copy(%ynn_fusion)
  %while.4 = (f32[2,2]) while(%t), condition=%cond, body=%body
  ROOT %fusion.7 = f32[2]{0} fusion(%copy.2), kind=kInput, calls=%fused_max
}
"""
  assert prof.parse_hlo(hlo) == {
      'p0': 'data', 'p1': 'data', 'dot.1': 'matmul', 'c': 'data',
      'reduce.3': 'reduction', 'a': 'data', 'ynn_fusion': 'matmul',
      'copy.2': 'data', 'while.4': 'container', 'fusion.7': 'reduction'}
  # Its own process: XLA reads the HLO dump flag when jax starts.
  run = subprocess.run(
      [sys.executable, str(SCRIPTS / 'profile_grpo_step.py'), '--tiny',
       '--keep', str(tmp_path)], capture_output=True, text=True, timeout=600,
      cwd=SCRIPTS.parent, check=False)
  out = run.stdout
  assert run.returncode == 0, run.stderr[-2000:]
  for span in ('sample', 'reference', 'update'):
    assert re.search(rf'  {span} +[0-9.]+ s: matmul', out), span
  assert 'not found in the HLO dump' not in out


@pytest.mark.slow
@pytest.mark.skipif(not _has('torch', 'transformers', 'trl', 'datasets'),
                    reason='TRL side needs torch, transformers, trl')
def test_bench_vs_trl_tiny_both_sides(capsys):
  _script('bench_vs_trl').main(['--tiny'])
  out = capsys.readouterr().out
  assert 'TRL GRPOTrainer:' in out and 'ratio TRL / r1jax' in out


def test_bench_vs_trl_says_what_to_install(monkeypatch, capsys):
  mod = _script('bench_vs_trl')
  monkeypatch.setitem(sys.modules, 'trl', None)  # import trl -> ImportError
  assert 'pip install torch==2.13.0' in mod.trl_missing()


def test_bench_vs_tunix_tiny_r1jax_side(capsys):
  assert _script('bench_vs_tunix').main(['--tiny', '--skip_tunix']) == 0
  out = capsys.readouterr().out
  assert 'r1jax:' in out and 'split (median s): sample' in out
  assert 'tunix GRPOLearner' not in out


def test_bench_vs_tunix_says_what_to_install(tmp_path, capsys):
  mod = _script('bench_vs_tunix')
  install = 'pip install google-tunix==0.1.7'
  assert install in mod.tunix_missing(None)
  assert install in mod.tunix_missing(str(tmp_path / 'no-python'))
  # Without --tunix_python it stops before any work, non-zero.
  assert mod.main(['--tiny']) == 2
  out = capsys.readouterr().out
  assert install in out and 'r1jax:' not in out
  if not _has('tunix'):  # r1jax's own venv must not hold tunix
    msg = mod.tunix_missing(sys.executable)
    assert 'tunix does not import' in msg and install in msg


# tunix lives in its own venv (bench_vs_tunix.py's docstring says how to make
# it); the comparison runs where R1JAX_TUNIX_PYTHON names its interpreter.
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get('R1JAX_TUNIX_PYTHON'),
                    reason='R1JAX_TUNIX_PYTHON (a venv with tunix) not set')
def test_bench_vs_tunix_tiny_both_sides(capsys):
  assert _script('bench_vs_tunix').main(
      ['--tiny', '--tunix_python', os.environ['R1JAX_TUNIX_PYTHON']]) == 0
  out = capsys.readouterr().out
  assert 'tunix GRPOLearner:' in out and 'ratio tunix / r1jax' in out
  assert 'same prompt token ids as r1jax: True' in out


def test_bench_accelerator_tiny(capsys):
  med = _script('bench_accelerator').main(['--tiny'])
  assert med['step'] > 0
  out = capsys.readouterr().out
  for needle in ('sampler:', 'tokens/s/device', 'MFU', 'memory estimate'):
    assert needle in out


def test_bench_accelerator_update_flops_match_xla():
  """The MFU's model FLOPs, full fine-tuning and LoRA (no weight gradient of
  the frozen base), against XLA's own count of the compiled gradient."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from r1jax.model import functional as fn  # pylint: disable=g-import-not-at-top
  from r1jax.model import lora as lora_lib  # pylint: disable=g-import-not-at-top
  from r1jax.stages import grpo_update  # pylint: disable=g-import-not-at-top
  ba = _script('bench_accelerator')
  cfg = model_config.get_config(
      'qwen2.5-0.5b', num_layers=2, hidden_size=256, intermediate_size=768,
      num_heads=4, num_kv_heads=2, head_dim=64, vocab_size=512,
      dtype=jnp.float32, param_dtype=jnp.float32)
  rows, p, l = 4, 32, 64
  ones = lambda *s: jnp.ones(s, bool)
  comp = grpo_update.Completions(
      prompt_tokens=jnp.ones((rows, p), jnp.int32), prompt_mask=ones(rows, p),
      tokens=jnp.ones((rows, l), jnp.int32), mask=ones(rows, l))
  graphdef, params = fn.init(cfg)
  lcfg = lora_lib.LoRAConfig(rank=16, alpha=32.0)
  lgraphdef, abstract = fn.abstract_lora(cfg, lcfg)
  adapters = lora_lib.init_adapters(abstract, jax.random.key(0))

  def xla_flops(loss, *args):
    cost = jax.jit(jax.grad(loss)).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)['flops']

  full = xla_flops(lambda w: grpo_update.completion_logprobs(
      graphdef, w, comp)[0].sum(), params)
  lora = xla_flops(lambda a, base: grpo_update.completion_logprobs(
      lgraphdef, a, comp, frozen=base)[0].sum(), adapters, params)
  seq = p + l - 1
  assert ba.update_flops(cfg, rows, seq, l) == pytest.approx(full, rel=0.1)
  assert ba.update_flops(cfg, rows, seq, l, lcfg) == pytest.approx(lora,
                                                                   rel=0.1)
  assert ba.update_flops(cfg, rows, seq, l, lcfg) < 0.8 * ba.update_flops(
      cfg, rows, seq, l)


class _Device:
  def __init__(self, stats):
    self.stats = stats

  def memory_stats(self):
    return self.stats


def test_bench_accelerator_peak_memory_against_the_estimate():
  ba = _script('bench_accelerator')
  gib = 2 ** 30
  assert ba.peak_bytes([_Device(None), _Device({})]) is None  # CPU
  devices = [_Device({'peak_bytes_in_use': 3 * gib, 'bytes_limit': 60 * gib}),
             _Device({'peak_bytes_in_use': 5 * gib}), _Device(None)]
  assert ba.peak_bytes(devices) == 5 * gib  # the fullest device
  line = ba.peak_memory_line(5 * gib, 6 * gib, 60 * gib)
  assert line.startswith('peak memory: 5.00 GiB per device')
  assert 'estimate / peak 1.20, the estimate covers it' in line
  assert 'device limit 60.00 GiB' in line
  assert 'ABOVE the estimate' in ba.peak_memory_line(5 * gib, 4 * gib, None)
  assert ba.peak_memory_line(None, 6 * gib, None) == (
      'peak memory: n/a (these devices keep no memory statistics); '
      'estimate 6.00 GiB per device')


def test_device_check_tiny(capsys):
  results = _script('device_check').main(['--tiny'])
  out = capsys.readouterr().out
  assert [mode for mode, _, _ in results] == ['full fine-tuning', 'LoRA r=16']
  full, lora = (r for _, r, _ in results)
  assert 'error' not in full and 'error' not in lora
  # Each mode prints its estimate before it runs, then its figures.
  for mode in ('full fine-tuning', 'LoRA r=16'):
    section = out.split(f'=== device check: {mode} ===')[1].split('===')[0]
    for needle in ('memory estimate per device (r1jax.memory)', 'sampler:',
                   'MFU', 'tokens/s/device', 'peak memory: n/a'):
      assert needle in section, (mode, needle)
    assert section.index('memory estimate') < section.index('sampler:')
  assert 'LoRA rank 16, alpha 32 on q,k,v,o,gate,up,down' in out
  assert '| mode | sampler tokens/s | update MFU' in out
  assert re.search(r'^\| full fine-tuning \| \d+ \| n/a; [\d.]+% \| \d+ \| '
                   r'n/a \| [\d.]+ MiB \| n/a \|', out, re.M), out
  assert re.search(r'^\| LoRA r=16 \| \d+ \|', out, re.M)
  # LoRA: no optimizer state or gradients of the frozen base. (Its update
  # FLOPs are not fewer here: rank 16 on width 64; see the XLA test above.)
  assert lora['estimate_bytes'] < full['estimate_bytes']
  assert lora['sampler_tokens_per_s'] > 0 and lora['peak_bytes'] is None


def test_device_check_runs_each_mode_in_its_own_process(capsys):
  mod = _script('device_check')
  calls = []

  def run(cmd, timeout, env):
    calls.append((cmd, timeout))
    if '--lora' in cmd:
      raise subprocess.TimeoutExpired(cmd, timeout)
    summary = dict(sampler_tokens_per_s=1000.0, update_mfu=0.25,
                   update_mfu_measured_peak=0.3, tokens_per_s_per_device=900.0,
                   peak_bytes=10 * 2**30, estimate_bytes=12 * 2**30,
                   devices=1, device_kind='NVIDIA H100 80GB HBM3')
    json_path = cmd[cmd.index('--json') + 1]
    pathlib.Path(json_path).write_text(json.dumps(summary))
    assert str(SCRIPTS.parent) in env['PYTHONPATH'].split(os.pathsep)
    return subprocess.CompletedProcess(cmd, 0)

  results = mod.main(['--timeout_s', '100', '--new_tokens', '256'], run=run)
  # One fresh interpreter per mode, the flags passed on, a summary file each.
  bench = [sys.executable, str(SCRIPTS / 'bench_accelerator.py')]
  steps = ['--warmup', '1', '--steps', '1']
  assert [c[:-1] for c, _ in calls] == [
      bench + steps + ['--new_tokens', '256', '--json'],
      bench + steps + ['--lora', '16', '--new_tokens', '256', '--json']]
  assert [t for _, t in calls] == [100, 100]
  assert results[1][1] == {'error': 'stopped after 100 s (--timeout_s)'}
  out = capsys.readouterr().out
  assert '1 x NVIDIA H100 80GB HBM3' in out
  assert ('| full fine-tuning | 1000 | 25.0%; 30.0% | 900 | 10.00 GiB | '
          '12.00 GiB | 1.20 |') in out
  assert '| LoRA r=16 | stopped after 100 s (--timeout_s) |' in out


def test_bench_accelerator_default_is_qwen_half_b():
  cfg = model_config.get_config('qwen2.5-0.5b')
  assert 490e6 < cfg.num_params() < 500e6
  # At the full size (64 x 8 rows, 512 new tokens, 16 mini-batches) the
  # stage's reference pass, one micro-batch of 32 rows at a time, holds
  # ~10 GiB of float32 logits instead of 160 GB for the whole rollout.
  from r1jax import memory
  est = memory.grpo_estimate(cfg, prompts_per_step=64, group_size=8,
                             prompt_tokens=256, max_new_tokens=512,
                             num_minibatches=16, grad_accum=1,
                             use_reference=True)
  assert est.reference_pass < 16 * 2**30, est.reference_pass


def test_bench_rewards_code_tiny(shared_data, capsys):
  if not (shared_data / 'code' / 'mbpp.jsonl').is_file():
    pytest.skip('no MBPP copy in the shared data')
  _script('bench_rewards').main(
      ['--rewards=code', f'--data_dir={shared_data}', '--code_completions=8',
       '--repeats=1'])
  out = capsys.readouterr().out
  assert re.search(r'^code: [\d,.]+ completions/s \(8 in ', out, re.M), out
  assert '4 pass' in out  # the 4 references pass, the 4 stubs fail
  assert 'a fresh interpreter per test' in out
  assert 'scores differ' not in out
