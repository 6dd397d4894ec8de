r"""Writes the transformers-parity fixtures under tests/fixtures/parity/.

Needs torch and transformers (CI has neither; the tests read the committed
files). For each tiny model it writes a genuine HF checkpoint made by
transformers itself, a left-padded input batch and the reference float32
logits; then it checks r1jax against them and checks that a directory written
by r1jax's save_pretrained loads in transformers with the same logits:

    JAX_PLATFORMS=cpu python scripts/make_parity_fixtures.py

Fixtures:
  qwen2/       Qwen2: GQA (4 heads, 2 kv heads), q/k/v biases, tied embeddings.
  llama/       Llama: 1 kv head, untied lm_head, llama3 rope scaling whose
               original context (32) puts head frequencies in all three bands.
  qwen2_bf16/  the qwen2 weights cast to bfloat16 by torch (no logits).
qwen2/ and llama/ hold reference.npz: tokens_BxT, mask_BxT, logits_BxTxV.
"""

import argparse
import pathlib
import shutil
import tempfile

import jax
import numpy as np
import torch
import transformers

from r1jax.model import functional, hf

ROOT = pathlib.Path(__file__).resolve().parents[1] / 'tests/fixtures/parity'
PAD_LENGTHS = (0, 4, 9)  # left padding of each row of the batch
SEQ_LEN = 12


def hf_configs() -> dict:
  common = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                num_attention_heads=4, head_dim=16,
                attn_implementation='eager', bos_token_id=1, eos_token_id=2)
  return {
      'qwen2': transformers.Qwen2Config(
          intermediate_size=128, num_key_value_heads=2, rope_theta=10000.0,
          rms_norm_eps=1e-6, tie_word_embeddings=True,
          max_position_embeddings=128, **common),
      'llama': transformers.LlamaConfig(
          intermediate_size=96, num_key_value_heads=1, rope_theta=10000.0,
          rope_scaling=dict(rope_type='llama3', factor=4.0,
                            low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=32),
          rms_norm_eps=1e-5, tie_word_embeddings=False,
          max_position_embeddings=128, **common),
  }


def randomize(model: torch.nn.Module, seed: int) -> None:
  """Weights at scales where a wrong mapping shows (HF's init is too small).

  Norm weights away from 1 and non-zero biases, so a dropped or swapped one
  changes the logits; q/k scaled up so attention is far from uniform.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if 'norm' in name:
        p.copy_(1.0 + 0.2 * noise)
      elif name.endswith('bias'):
        p.copy_(0.5 * noise)
      elif 'embed' in name:
        p.copy_(noise)
      else:
        scale = 2.0 if ('q_proj' in name or 'k_proj' in name) else 1.0
        p.copy_(scale * noise / p.shape[1] ** 0.5)


def make_inputs(seed: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, vocab, (len(PAD_LENGTHS), SEQ_LEN)).astype(np.int32)
  mask = np.ones_like(tokens, dtype=bool)
  for row, pad in enumerate(PAD_LENGTHS):
    mask[row, :pad] = False
    tokens[row, :pad] = 0
  return tokens, mask


def hf_logits(model, tokens, mask) -> np.ndarray:
  m = torch.tensor(mask.astype(np.int64))
  positions = torch.clamp(torch.cumsum(m, -1) - 1, min=0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens.astype(np.int64)),
                attention_mask=m, position_ids=positions)
  return out.logits.float().numpy()


def r1jax_logits(path, tokens, mask) -> np.ndarray:
  cfg, graphdef, params = hf.load_pretrained(path, dtype='float32')
  logits, _ = functional.apply(
      graphdef, params, tokens, functional.positions_from_mask(mask),
      functional.causal_mask(mask))
  return np.asarray(logits)


def max_diff(a, b, mask) -> float:
  return float(np.abs(a - b)[mask].max())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=str(ROOT))
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  torch.manual_seed(0)
  jax.config.update('jax_default_matmul_precision', 'highest')
  for seed, (name, config) in enumerate(hf_configs().items()):
    model_cls = {'qwen2': transformers.Qwen2ForCausalLM,
                 'llama': transformers.LlamaForCausalLM}[name]
    model = model_cls(config).float().eval()
    randomize(model, seed)
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokens, mask = make_inputs(seed, config.vocab_size)
    ref = hf_logits(model, tokens, mask)
    np.savez(folder / 'reference.npz', tokens_BxT=tokens, mask_BxT=mask,
             logits_BxTxV=ref)
    mine = r1jax_logits(folder, tokens, mask)
    print(f'{name}: |logits| max {np.abs(ref[mask]).max():.2f}; '
          f'r1jax vs transformers max abs diff {max_diff(mine, ref, mask):.3e}')

    # The other direction: r1jax writes, transformers reads. Sharded too.
    cfg, _, params = hf.load_pretrained(folder)
    for shard_bytes in (hf.DEFAULT_MAX_SHARD_BYTES, 100_000):
      with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp, cfg, params, max_shard_bytes=shard_bytes)
        back = transformers.AutoModelForCausalLM.from_pretrained(
            tmp, attn_implementation='eager').float().eval()
        files = sorted(p.name for p in pathlib.Path(tmp).iterdir())
        diff = max_diff(hf_logits(back, tokens, mask), ref, mask)
        print(f'  r1jax save_pretrained ({len(files)} files) -> transformers '
              f'max abs diff {diff:.3e}')

    if name == 'qwen2':
      bf16 = out / 'qwen2_bf16'
      shutil.rmtree(bf16, ignore_errors=True)
      model.to(torch.bfloat16).save_pretrained(bf16, safe_serialization=True)
      mine = r1jax_logits(bf16, tokens, mask)
      print(f'  bf16 checkpoint, float32 compute: max abs diff vs float32 '
            f'reference {max_diff(mine, ref, mask):.3e}')

  sizes = sum(p.stat().st_size for p in out.rglob('*') if p.is_file())
  print(f'fixtures under {out}: {sizes / 1e6:.2f} MB')


if __name__ == '__main__':
  main()
