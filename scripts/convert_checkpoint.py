r"""Converts a GGUF checkpoint (llama.cpp) into a Hugging Face directory.

    python scripts/convert_checkpoint.py \
        --gguf=SmolLM2-135M-Instruct.Q4_1.gguf --out=/tmp/smollm2-hf

Quantized tensors (Q4_*, Q8_0, K-quants, ...) are dequantized; the directory
(model.safetensors, config.json, tokenizer.json, tokenizer_config.json with the
chat template) loads with `r1jax.model.hf.load_pretrained` and with
`transformers`. --dtype sets the stored dtype (default float32).
"""

import argparse
import pathlib
import sys

import jax.numpy as jnp

from r1jax.model import gguf


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--gguf', required=True, help='input .gguf file')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--dtype', default='float32',
                      choices=('float32', 'bfloat16', 'float16'),
                      help='dtype of the written tensors')
  parser.add_argument('--overwrite', action='store_true',
                      help='write into --out even if it holds a config.json')
  args = parser.parse_args(argv)

  src, out = pathlib.Path(args.gguf), pathlib.Path(args.out)
  if not src.is_file():
    parser.error(f'--gguf={src}: no such file')
  if (out / 'config.json').exists() and not args.overwrite:
    parser.error(f'--out={out} already holds a checkpoint; pass --overwrite')
  try:
    cfg = gguf.gguf_to_hf(src, out, param_dtype=jnp.dtype(args.dtype))
  except (ValueError, KeyError, NotImplementedError) as e:
    print(f'error: cannot convert {src}: {e}', file=sys.stderr)
    return 1
  print(f'Wrote {cfg.family} model ({cfg.num_params() / 1e6:.1f}M params, '
        f'{args.dtype}) to {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
