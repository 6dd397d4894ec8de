r"""Chat with, or complete from, a checkpoint: a HF directory or a GGUF file.

    # One question through the model's chat template, greedy:
    python -m r1jax.generate --checkpoint=SmolLM2-135M-Instruct.Q4_1.gguf \
        --prompt='What is the capital of France?' --temperature=0

    # Interactive chat (one user turn per line; /reset clears, EOF quits):
    python -m r1jax.generate --checkpoint=/tmp/smollm2-hf

    # Plain completion, no template:
    python -m r1jax.generate --checkpoint=... --no-chat --prompt='Once upon'

Sampling runs through `r1jax.sampling.Sampler` (defaults: the R1 paper's
temperature 0.6 and top-p 0.95).
"""

import argparse
import pathlib
import sys
from typing import Any, Sequence, TextIO

import jax.numpy as jnp
import numpy as np

from r1jax.model import gguf, hf
from r1jax.run import loading
from r1jax.run import xla_cache
from r1jax.sampling import FINISH_STOP
from r1jax.tokenizer import Tokenizer

def load_checkpoint(path: str | pathlib.Path, *, dtype: Any = None):
  """(cfg, graphdef, params, tokenizer) from a HF directory or a .gguf file.

  `dtype` sets parameter and compute dtype (default: float32 for GGUF, the
  stored dtype for HF directories).
  """
  path = pathlib.Path(path)
  if path.is_file() and path.suffix == '.gguf':
    reader = gguf.open_gguf(path)
    cfg, graphdef, params = gguf.load_gguf(reader, param_dtype=dtype)
    return cfg, graphdef, params, gguf.tokenizer_from_gguf(reader)
  if path.is_dir() and (path / 'config.json').exists():
    cfg, graphdef, params = hf.load_pretrained(path, param_dtype=dtype)
    return cfg, graphdef, params, Tokenizer.from_dir(path)
  raise FileNotFoundError(
      f'{path} is neither a .gguf file nor a directory with config.json')


class Generator:
  """A loaded checkpoint plus sampler: text or chat turns in, text out."""

  def __init__(self, checkpoint, *, dtype: Any = None, **sampling):
    self.cfg, graphdef, self.params, self.tok = load_checkpoint(
        checkpoint, dtype=dtype)
    self.sampler = loading.make_sampler(
        graphdef, self.cfg, self.tok, None,
        loading.prompt_buckets(self.cfg.max_position_embeddings))
    self.sampling = sampling

  def complete_ids(self, prompt_ids: Sequence[int], seed: int = 0) -> str:
    out = self.sampler.generate(self.params, [list(prompt_ids)], seed=seed,
                                **self.sampling)
    return self.tok.decode_completions(
        np.asarray(out.tokens), np.asarray(out.lengths),
        np.asarray(out.finish_reason) == FINISH_STOP)[0]

  def complete(self, text: str, seed: int = 0) -> str:
    return self.complete_ids(self.tok.encode(text), seed)

  def chat(self, messages: Sequence[dict], seed: int = 0) -> str:
    return self.complete_ids(self.tok.apply_chat_template(messages), seed)


def _interactive(gen: Generator, chat: bool, system: str | None, seed: int,
                 stdin: TextIO, stdout: TextIO) -> None:
  history = [{'role': 'system', 'content': system}] if system else []
  start = list(history)
  turn = 0
  while True:
    stdout.write('> ' if chat else 'prompt> ')
    stdout.flush()
    line = stdin.readline()
    if not line:
      stdout.write('\n')
      return
    line = line.rstrip('\n')
    if line.strip() == '/reset':
      history = list(start)
      continue
    if not line.strip():
      continue
    try:
      if chat:
        history.append({'role': 'user', 'content': line})
        reply = gen.chat(history, seed=seed + turn)
        history.append({'role': 'assistant', 'content': reply})
      else:
        reply = gen.complete(line, seed=seed + turn)
    except ValueError as e:  # e.g. the conversation outgrew the context
      stdout.write(f'[error: {e}; /reset starts over]\n')
      history = history[:-1] if chat else history
      continue
    stdout.write(reply + '\n')
    turn += 1


def main(argv=None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', required=True,
                      help='HF directory (config.json + safetensors) or .gguf')
  parser.add_argument('--prompt', help='one prompt; without it, read stdin')
  parser.add_argument('--chat', action=argparse.BooleanOptionalAction,
                      default=True, help="wrap prompts in the model's chat "
                      'template (--no-chat: plain completion)')
  parser.add_argument('--system', help='system message for chat mode')
  parser.add_argument('--max_new_tokens', type=int, default=256)
  parser.add_argument('--temperature', type=float, default=0.6,
                      help='0 decodes greedily')
  parser.add_argument('--top_p', type=float, default=0.95)
  parser.add_argument('--top_k', type=int, default=0, help='0: off')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16', 'float16'),
                      help='param/compute dtype (default: float32 for GGUF, '
                      'stored dtype for HF)')
  args = parser.parse_args(argv)
  if args.max_new_tokens < 1:
    parser.error('--max_new_tokens must be >= 1')
  if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
    parser.error('need --temperature >= 0, 0 < --top_p <= 1, --top_k >= 0')
  if not pathlib.Path(args.checkpoint).exists():
    parser.error(f'--checkpoint={args.checkpoint}: no such file or directory')

  gen = Generator(args.checkpoint,
                  dtype=jnp.dtype(args.dtype) if args.dtype else None,
                  max_new_tokens=args.max_new_tokens,
                  temperature=args.temperature, top_p=args.top_p,
                  top_k=args.top_k)
  if args.prompt is None:
    _interactive(gen, args.chat, args.system, args.seed, stdin, stdout)
  elif args.chat:
    messages = [{'role': 'system', 'content': args.system}] if args.system else []
    messages.append({'role': 'user', 'content': args.prompt})
    stdout.write(gen.chat(messages, seed=args.seed) + '\n')
  else:
    stdout.write(gen.complete(args.prompt, seed=args.seed) + '\n')
  return 0


if __name__ == '__main__':
  xla_cache.enable()  # compiled programs kept for later runs
  sys.exit(main())
