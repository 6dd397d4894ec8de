"""The model + tokenizer a run starts from, sharded onto its mesh."""

import json
import pathlib

import jax.numpy as jnp

from r1jax import errors
from r1jax import parallel
from r1jax.data import corpus
from r1jax.model import config as model_config
from r1jax.model import functional as fn
from r1jax.model import hf
from r1jax.run import records
from r1jax.sampling import Sampler
from r1jax.tokenizer import Tokenizer, train_bpe


# Fields compared between a named preset and a checkpoint's own config.
_ARCH_FIELDS = ('vocab_size', 'hidden_size', 'intermediate_size', 'num_layers',
                'num_heads', 'num_kv_heads', 'head_dim', 'tie_embeddings')


def check_architecture(preset: str, cfg, source: str,
                       overrides: dict | None = None) -> None:
  """A checkpoint must be the architecture its config names (when it names
  one: `preset` with `overrides` applied)."""
  if not preset:
    return
  want = model_config.get_config(preset, **dict(overrides or {}))
  diffs = [f'{f} {getattr(cfg, f)} (preset: {getattr(want, f)})'
           for f in _ARCH_FIELDS if getattr(cfg, f) != getattr(want, f)]
  if diffs:
    raise errors.ConfigError(
        f'{source} is not a {preset!r} checkpoint: {", ".join(diffs)}. Point '
        f"config.model.hf_path / gguf_path at a {preset} checkpoint, or set "
        "config.model.preset='' to take the checkpoint's own architecture.")


def model_config_of(config) -> model_config.ModelConfig:
  """The run's ModelConfig from its config alone (no weights loaded): the
  checkpoint's own config.json or GGUF metadata, else model.preset with
  model.overrides; with the run's dtypes and remat."""
  mc = config.model
  overrides = dict(dtype=jnp.dtype(mc.dtype),
                   param_dtype=jnp.dtype(mc.param_dtype), remat=bool(mc.remat))
  if mc.hf_path:
    config_file = pathlib.Path(records.resolve_hf_path(mc.hf_path)) / 'config.json'
    if not config_file.is_file():
      raise errors.MissingFileError(
          f'config.model.hf_path={mc.hf_path!r}: no config.json there; '
          'point it at a Hugging Face model directory or at the workdir of a '
          'finished stage.')
    return hf.config_from_hf(json.loads(config_file.read_text()), **overrides)
  if mc.gguf_path:
    from r1jax.model import gguf  # pylint: disable=g-import-not-at-top
    return gguf.config_from_gguf(mc.gguf_path).replace(**overrides)
  return model_config.get_config(mc.preset, **dict(mc.get('overrides', {})),
                                 **overrides)


def load_model_and_tokenizer(config, workdir: pathlib.Path, mesh):
  """(ModelConfig, graphdef, sharded params, Tokenizer) for this run.

  Sources, in order: a Hugging Face directory (`model.hf_path`), a GGUF file
  (`model.gguf_path`), else a random init of `model.preset`. With a
  checkpoint, a non-empty `model.preset` names the architecture it must have.
  The tokenizer comes with the checkpoint, from `tokenizer.path`, or is
  trained on the synthetic corpus (`tokenizer.path='train'`) and kept in the
  workdir so that a resumed run uses the very same one.
  """
  mc = config.model
  overrides = dict(dtype=jnp.dtype(mc.dtype),
                   param_dtype=jnp.dtype(mc.param_dtype), remat=mc.remat)
  if mc.hf_path:
    hf_path = records.resolve_hf_path(mc.hf_path)
    cfg = model_config_of(config)
    check_architecture(mc.preset, cfg, hf_path, mc.overrides)
    graphdef, abstract = fn.abstract(cfg)  # with this run's dtypes and remat
    shardings = parallel.param_shardings(mesh, abstract)
    _, _, params = hf.load_pretrained(
        hf_path, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        shardings=shardings)
    tokenizer = Tokenizer.from_dir(config.tokenizer.path or hf_path)
    return cfg, graphdef, params, tokenizer
  if mc.gguf_path:
    from r1jax.model import gguf  # pylint: disable=g-import-not-at-top
    if not pathlib.Path(mc.gguf_path).is_file():
      raise errors.MissingFileError(
          f'config.model.gguf_path={mc.gguf_path!r} is not a file.')
    cfg, _, params = gguf.load_gguf(mc.gguf_path, dtype=overrides['dtype'],
                                    param_dtype=overrides['param_dtype'])
    cfg = cfg.replace(remat=mc.remat)
    check_architecture(mc.preset, cfg, mc.gguf_path, mc.overrides)
    graphdef, abstract = fn.abstract(cfg)
    params = parallel.shard_params(params, parallel.param_shardings(mesh, abstract))
    return cfg, graphdef, params, gguf.tokenizer_from_gguf(mc.gguf_path)

  tokenizer = tokenizer_for_preset(config, workdir)
  cfg = model_config_of(config)
  if tokenizer.vocab_size > cfg.vocab_size:
    raise errors.ConfigError(
        f'tokenizer has {tokenizer.vocab_size} tokens but model preset '
        f'{mc.preset!r} has vocab_size={cfg.vocab_size}; set '
        'config.tokenizer.vocab_size <= the model vocabulary')
  graphdef, params = parallel.init_sharded(cfg, mesh, config.seed)
  return cfg, graphdef, params, tokenizer


def open_sampling_run(config, workdir):
  """The start-up of a stage that samples and trains nothing (rejection
  sampling, evaluation): WORKDIR made, its run_config.json written, the
  mesh of config.mesh, the model and tokenizer on it. Returns (workdir as
  a Path, mesh, ModelConfig, graphdef, params, Tokenizer)."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  records.write_run_config(config, workdir)
  mesh = parallel.make_mesh(dict(config.mesh))
  return (workdir, mesh, *load_model_and_tokenizer(config, workdir, mesh))


def tokenizer_for_preset(config, workdir: pathlib.Path) -> Tokenizer:
  tc = config.tokenizer
  saved = workdir / 'tokenizer'
  if (saved / 'tokenizer.json').exists():
    return Tokenizer.from_dir(saved)
  if tc.path and tc.path != 'train':
    return Tokenizer.from_dir(tc.path)
  if config.data.source != 'synthetic_corpus':
    raise errors.ConfigError("config.tokenizer.path='train' needs "
                     "config.data.source='synthetic_corpus'")
  texts = corpus.tokenizer_training_texts(
      corpus.CorpusConfig(**config.data.corpus.to_dict()), n_docs=tc.train_docs,
      seed=config.seed)
  tokenizer = train_bpe(texts, tc.vocab_size, config={
      'eos_token': '<|endoftext|>', 'pad_token': '<|pad|>',
      'chat_format': 'plain'})
  tokenizer.save(saved)
  return tokenizer


def prompt_buckets(max_len: int) -> tuple[int, ...]:
  """Powers of two from 32 up to the model's context (at most 32768)."""
  buckets, b = [], 32
  while b < min(max_len, 32768):
    buckets.append(b)
    b *= 2
  return tuple(buckets) + (min(max_len, 32768),)


def make_sampler(graphdef, model_cfg, tokenizer: Tokenizer, mesh,
                 prompt_buckets, **kw) -> Sampler:
  """The one `Sampler` of a run: pads with the tokenizer's pad id and stops
  at `tokenizer.stop_ids()` (eos and end-of-turn tokens), in every stage and
  in the evaluation command alike."""
  return Sampler(graphdef, model_cfg, pad_id=tokenizer.pad_id,
                 eos_ids=tokenizer.stop_ids(),
                 prompt_buckets=tuple(prompt_buckets), mesh=mesh, **kw)
