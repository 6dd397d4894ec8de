r"""Checks r1jax's LoRA exports against Hugging Face `peft` and `transformers`.

    python scripts/check_peft.py --torch_python=/path/to/venv/bin/python

torch, transformers and peft are not r1jax dependencies: install them in a
separate virtual environment (pip install torch transformers peft) and name
its interpreter. The script

  1. (here, with r1jax) makes a tiny random Qwen2 base as a Hugging Face
     directory, LoRA adapters on it (rank 4, alpha 8, all seven projections,
     B moved off zero), and writes them with r1jax's two exports: the PEFT
     directory (r1jax.model.peft) and the merged Hugging Face directory;
     records r1jax's logits of base + adapters on a fixed batch;
  2. (there, with torch) loads the base with transformers,
     `peft.PeftModel.from_pretrained(base, peft_dir)`, and the merged
     directory, and prints the largest logit differences from r1jax's (both
     must be within 1e-4);
  3. with --write_fixture, records the tensor names and shapes
     `peft.get_peft_model` gives a tiny Qwen2 (rank 2 on q_proj, v_proj) in
     tests/fixtures/peft/, which tests/test_lora.py checks r1jax's layout
     against without torch.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = REPO / 'tests' / 'fixtures' / 'peft' / 'qwen2_tiny_r2_qv.json'
TOL = 1e-4


# ------------------------------------------------------------- r1jax side
def make_exports(out: pathlib.Path) -> None:
  sys.path.insert(0, str(REPO))
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from r1jax.model import config as model_config  # pylint: disable=g-import-not-at-top
  from r1jax.model import functional as fn  # pylint: disable=g-import-not-at-top
  from r1jax.model import hf, lora, peft  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_default_matmul_precision', 'highest')

  cfg = model_config.get_config('tiny-test')
  _, base = fn.init(cfg, seed=0)
  lcfg = lora.LoRAConfig(rank=4, alpha=8.0)
  lgraphdef, abstract = fn.abstract_lora(cfg, lcfg)
  adapters = lora.init_adapters(abstract, jax.random.key(1))
  adapters = jax.tree.map(
      lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape),
      adapters)
  hf.save_pretrained(out / 'base', cfg, base)
  peft.save_adapters(out / 'peft', cfg, lcfg, adapters,
                     base_name=str(out / 'base'))
  hf.save_pretrained(out / 'merged', cfg,
                     lora.merged_params(adapters, base, lcfg))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 24))
  mask = jnp.ones(tokens.shape, bool)
  logits, _ = fn.apply(lgraphdef, adapters, jnp.asarray(tokens),
                       fn.positions_from_mask(mask), fn.causal_mask(mask),
                       frozen=base)
  plain, _ = fn.apply(fn.abstract(cfg)[0], base, jnp.asarray(tokens),
                      fn.positions_from_mask(mask), fn.causal_mask(mask))
  np.savez(out / 'r1jax.npz', tokens=tokens, logits=np.asarray(logits),
           base_logits=np.asarray(plain))
  print(f'r1jax: wrote base, PEFT adapters and merged model to {out}; '
        f'adapters move the logits by up to '
        f'{float(np.max(np.abs(np.asarray(logits) - np.asarray(plain)))):.3g}')


# ------------------------------------------------------------- torch side
def torch_side(out: pathlib.Path, write_fixture: bool) -> int:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import peft  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_grad_enabled(False)
  ref = np.load(out / 'r1jax.npz')
  tokens = torch.as_tensor(ref['tokens'])
  base = transformers.AutoModelForCausalLM.from_pretrained(
      out / 'base', dtype=torch.float32)
  model = peft.PeftModel.from_pretrained(base, str(out / 'peft'))
  model.eval()
  got = model(tokens).logits.numpy()
  d_peft = float(np.max(np.abs(got - ref['logits'])))
  with model.disable_adapter():
    d_base = float(np.max(np.abs(model(tokens).logits.numpy()
                                 - ref['base_logits'])))
  merged = transformers.AutoModelForCausalLM.from_pretrained(
      out / 'merged', dtype=torch.float32)
  d_merged = float(np.max(np.abs(merged(tokens).logits.numpy()
                                 - ref['logits'])))
  print(f'torch {torch.__version__}, transformers {transformers.__version__}'
        f', peft {peft.__version__}')
  print(f'max |logit| difference from r1jax (base + adapters): '
        f'PeftModel.from_pretrained {d_peft:.3g}, merged HF directory '
        f'{d_merged:.3g}; adapters disabled vs r1jax base {d_base:.3g} '
        f'(tolerance {TOL:g})')
  ok = max(d_peft, d_merged, d_base) <= TOL
  if write_fixture:
    qcfg = transformers.Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=True)
    tiny = transformers.Qwen2ForCausalLM(qcfg)
    lcfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=['q_proj',
                                                               'v_proj'],
                           task_type='CAUSAL_LM')
    pm = peft.get_peft_model(tiny, lcfg)
    state = peft.get_peft_model_state_dict(pm)
    saved = tempfile.mkdtemp()
    pm.save_pretrained(saved)
    adapter_config = json.loads(
        (pathlib.Path(saved) / 'adapter_config.json').read_text())
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps({
        'made_by': f'scripts/check_peft.py --write_fixture (peft '
                   f'{peft.__version__}, transformers '
                   f'{transformers.__version__})',
        'r1jax_model': dict(vocab_size=128, hidden_size=32,
                            intermediate_size=64, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, qkv_bias=True,
                            tie_embeddings=True, family='qwen2'),
        'tensors': {k: list(v.shape) for k, v in sorted(state.items())},
        'adapter_config': {k: adapter_config[k] for k in (
            'peft_type', 'r', 'lora_alpha', 'target_modules')},
    }, indent=1, sort_keys=True) + '\n')
    print(f'wrote {FIXTURE}')
  print('PEFT check: ' + ('OK' if ok else 'FAILED'))
  return 0 if ok else 1


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--torch_python', default='',
                 help='an interpreter with torch, transformers and peft')
  p.add_argument('--write_fixture', action='store_true')
  p.add_argument('--torch_side', default='', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.torch_side:
    return torch_side(pathlib.Path(args.torch_side), args.write_fixture)
  if not args.torch_python:
    p.error('--torch_python is required (torch, transformers, peft there)')
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp)
    make_exports(out)
    cmd = [args.torch_python, __file__, f'--torch_side={out}']
    if args.write_fixture:
      cmd.append('--write_fixture')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    return subprocess.run(cmd, env=env, check=False).returncode


if __name__ == '__main__':
  sys.exit(main())
