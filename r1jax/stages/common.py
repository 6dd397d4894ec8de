"""What an SFT run starts from: config checks, model + tokenizer, examples."""

import json
import pathlib
from typing import Any

import jax.numpy as jnp
import ml_collections

from r1jax import parallel
from r1jax.model import config as model_config
from r1jax.tokenizer import Tokenizer, train_bpe

DATA_SOURCES = ('synthetic_corpus', 'jsonl', 'cold_start')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails at start-up with a message that names the bad key."""
  tc = config.train
  checks = [
      ('train.steps', tc.steps > 0, 'must be positive'),
      ('train.batch_size', tc.batch_size > 0, 'must be positive'),
      ('train.grad_accum', tc.grad_accum > 0 and tc.batch_size % tc.grad_accum == 0,
       f'must divide train.batch_size={tc.batch_size}'),
      ('train.lr', tc.lr > 0, 'must be positive'),
      ('train.warmup_steps', 0 <= tc.warmup_steps <= tc.steps,
       f'must be in [0, train.steps={tc.steps}]'),
      ('data.source', config.data.source in DATA_SOURCES,
       f'must be one of {DATA_SOURCES}'),
      ('data.seq_len', config.data.seq_len > 1, 'must be > 1'),
      ('model.preset', config.model.preset in model_config.PRESETS
       or bool(config.model.hf_path or config.model.gguf_path),
       f'unknown preset; known: {model_config.PRESETS.names()}'),
  ]
  for key, ok, why in checks:
    if not ok:
      raise ValueError(f'config.{key}={_get(config, key)!r} {why}')
  if config.data.source == 'jsonl' and not config.data.path:
    raise ValueError("config.data.path must name a JSONL file when "
                     "config.data.source='jsonl'")


def _get(config, dotted: str) -> Any:
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


# ======================================================== model + tokenizer


def _dtype(name: str):
  return jnp.dtype(name)


def load_model_and_tokenizer(config, workdir: pathlib.Path, mesh):
  """(ModelConfig, graphdef, sharded params, Tokenizer) for this run.

  Sources, in order: a Hugging Face directory (`model.hf_path`), a GGUF file
  (`model.gguf_path`), else a random init of `model.preset`. The tokenizer
  comes with the checkpoint, from `tokenizer.path`, or is trained on the
  synthetic corpus (`tokenizer.path='train'`) and kept in the workdir so that
  a resumed run uses the very same one.
  """
  mc = config.model
  overrides = dict(dtype=_dtype(mc.dtype), param_dtype=_dtype(mc.param_dtype),
                   remat=mc.remat)
  if mc.hf_path:
    from r1jax.model import hf  # pylint: disable=g-import-not-at-top
    cfg = hf.config_from_hf(
        json.loads((pathlib.Path(mc.hf_path) / 'config.json').read_text()),
        **overrides)
    graphdef, abstract = _abstract(cfg)  # with this run's dtypes and remat
    shardings = parallel.param_shardings(mesh, abstract)
    _, _, params = hf.load_pretrained(
        mc.hf_path, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        shardings=shardings)
    tokenizer = Tokenizer.from_dir(config.tokenizer.path or mc.hf_path)
    return cfg, graphdef, params, tokenizer
  if mc.gguf_path:
    from r1jax.model import gguf  # pylint: disable=g-import-not-at-top
    cfg, _, params = gguf.load_gguf(mc.gguf_path, dtype=overrides['dtype'],
                                    param_dtype=overrides['param_dtype'])
    cfg = cfg.replace(remat=mc.remat)
    graphdef, abstract = _abstract(cfg)
    params = parallel.shard_params(params, parallel.param_shardings(mesh, abstract))
    return cfg, graphdef, params, gguf.tokenizer_from_gguf(mc.gguf_path)

  tokenizer = _tokenizer_for_preset(config, workdir)
  cfg = model_config.get_config(mc.preset, **dict(mc.overrides), **overrides)
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(
        f'tokenizer has {tokenizer.vocab_size} tokens but model preset '
        f'{mc.preset!r} has vocab_size={cfg.vocab_size}; set '
        'config.tokenizer.vocab_size <= the model vocabulary')
  graphdef, params = parallel.init_sharded(cfg, mesh, config.seed)
  return cfg, graphdef, params, tokenizer


def _abstract(cfg):
  from r1jax.model import functional as fn  # pylint: disable=g-import-not-at-top
  return fn.abstract(cfg)


def _tokenizer_for_preset(config, workdir: pathlib.Path) -> Tokenizer:
  tc = config.tokenizer
  saved = workdir / 'tokenizer'
  if (saved / 'tokenizer.json').exists():
    return Tokenizer.from_dir(saved)
  if tc.path and tc.path != 'train':
    return Tokenizer.from_dir(tc.path)
  if config.data.source != 'synthetic_corpus':
    raise ValueError("config.tokenizer.path='train' needs "
                     "config.data.source='synthetic_corpus'")
  from r1jax.data import corpus  # pylint: disable=g-import-not-at-top
  texts = corpus.tokenizer_training_texts(
      corpus.CorpusConfig(**config.data.corpus.to_dict()), n_docs=tc.train_docs,
      seed=config.seed)
  tokenizer = train_bpe(texts, tc.vocab_size, config={
      'eos_token': '<|endoftext|>', 'pad_token': '<|pad|>',
      'chat_format': 'plain'})
  tokenizer.save(saved)
  return tokenizer


# ================================================================ examples


def read_jsonl_examples(path: str) -> list[dict[str, str]]:
  """prompt / completion pairs; a bad line raises naming file and line."""
  # The data builders' reader already names file:line for bad JSON.
  from r1jax.data.builders.raw import read_jsonl  # pylint: disable=g-import-not-at-top
  out = []
  for lineno, row in read_jsonl(path):
    if 'completion' not in row:
      raise ValueError(f"{path}:{lineno}: expected an object with a "
                       f"'completion' field (and optionally 'prompt')")
    out.append({'prompt': str(row.get('prompt', '')),
                'completion': str(row['completion'])})
  if not out:
    raise ValueError(f'{path}: no examples')
  return out


def build_examples(config, tokenizer) -> tuple[list[dict], list[dict]]:
  """Train and eval lists of {'prompt', 'completion'} for the SFT batcher."""
  dc = config.data
  if dc.source == 'synthetic_corpus':
    from r1jax.data import corpus  # pylint: disable=g-import-not-at-top
    ccfg = corpus.CorpusConfig(**dc.corpus.to_dict())
    train = corpus.corpus_documents(ccfg, n_docs=dc.num_docs, seed=config.seed)
    evals = corpus.corpus_documents(ccfg, n_docs=dc.num_eval_docs,
                                    seed=config.seed + 10_000)
    as_ex = lambda docs: [{'prompt': '', 'completion': d} for d in docs]
    return as_ex(train), as_ex(evals)
  if dc.source == 'jsonl':
    examples = read_jsonl_examples(dc.path)
    n_eval = min(dc.num_eval_docs, len(examples) // 10)
    return examples[n_eval:], examples[:n_eval]
  # cold_start: readable <think> traces from reference solutions.
  from r1jax.data import builders, cold_start  # pylint: disable=g-import-not-at-top
  examples = []
  for name in dc.datasets:
    records = builders.load_dataset(name, 'train', local_dir=dc.local_dir or None)
    examples += cold_start.cold_start_examples(records, source=name,
                                               template=dc.template)
  n_eval = min(dc.num_eval_docs, len(examples) // 10)
  return examples[n_eval:], examples[:n_eval]
