"""Hugging Face checkpoints (Llama / Qwen2 safetensors) in and out of r1jax.

    cfg, graphdef, params = load_pretrained('path/to/Qwen2.5-0.5B')
    save_pretrained('out/dir', cfg, params, tokenizer=tok)

A directory holds config.json and either one `model.safetensors` or several
shards listed in `model.safetensors.index.json`. The mapping is a renaming plus
a transpose of the linear kernels (HF stores [out, in], r1jax [in, out]), so an
import followed by an export reproduces every tensor bit for bit, under the
same name and dtype. Tensors are read one at a time, so a load never holds more
than one tensor beyond the parameters themselves on the host.
"""

import contextlib
import json
import os
import pathlib
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors import safe_open
from safetensors.numpy import save_file

from r1jax import atomic
from r1jax.model.config import ModelConfig
from r1jax.model.hf_config import config_from_hf, config_to_hf  # config_from_hf: re-exported
from r1jax.model.functional import abstract

INDEX_FILE = 'model.safetensors.index.json'
SINGLE_FILE = 'model.safetensors'
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # the hub's customary shard size

PyTree = Any



# --------------------------------------------------------------- tensors
def _layout(cfg: ModelConfig) -> list[tuple[str, tuple, bool]]:
  """(HF name, r1jax param path, is a transposed kernel) for every tensor."""
  rows = [('model.embed_tokens.weight', ('embed_tokens', 'embedding'), False)]
  for i in range(cfg.num_layers):
    hf, r1 = f'model.layers.{i}.', ('layers', i)
    for norm in ('input_layernorm', 'post_attention_layernorm'):
      rows.append((f'{hf}{norm}.weight', r1 + (norm, 'weight'), False))
    for proj in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
      rows.append((f'{hf}self_attn.{proj}.weight',
                   r1 + ('self_attn', proj, 'kernel'), True))
      if cfg.qkv_bias and proj != 'o_proj':
        rows.append((f'{hf}self_attn.{proj}.bias',
                     r1 + ('self_attn', proj, 'bias'), False))
    for proj in ('gate_proj', 'up_proj', 'down_proj'):
      rows.append((f'{hf}mlp.{proj}.weight', r1 + ('mlp', proj, 'kernel'),
                   True))
  rows.append(('model.norm.weight', ('norm', 'weight'), False))
  if not cfg.tie_embeddings:
    rows.append(('lm_head.weight', ('lm_head', 'kernel'), True))
  return rows


def _zero_o_bias_names(cfg: ModelConfig) -> list[str]:
  """HF Llama's attention_bias adds an o_proj bias r1jax does not have."""
  if cfg.family != 'llama' or not cfg.qkv_bias:
    return []
  return [f'model.layers.{i}.self_attn.o_proj.bias'
          for i in range(cfg.num_layers)]


def _ignorable(name: str, cfg: ModelConfig) -> bool:
  # Old checkpoints carry the rotary buffers; tied ones sometimes a copy of
  # the embedding as lm_head (transformers ignores it too).
  return name.endswith('rotary_emb.inv_freq') or (
      cfg.tie_embeddings and name == 'lm_head.weight')


def _get(tree: Mapping, path: tuple) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple, value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _as_pure_dict(tree: PyTree) -> PyTree:
  return tree.to_pure_dict() if isinstance(tree, nnx.State) else tree


def _build_params(get_tensor, names: set[str], cfg: ModelConfig,
                  shardings: PyTree | None) -> nnx.State:
  """Reads each expected tensor via `get_tensor(name)` into an nnx.State."""
  _, state = abstract(cfg)
  expected = state.to_pure_dict()
  layout = _layout(cfg)
  extra_zero = _zero_o_bias_names(cfg)
  wanted = {hf_name for hf_name, _, _ in layout} | set(extra_zero)
  missing = sorted(wanted - names)
  unexpected = sorted(n for n in names - wanted if not _ignorable(n, cfg))
  if missing or unexpected:
    def head(names):  # a long list would bury the message
      return f'{names[:8]}{" ..." if len(names) > 8 else ""}'
    raise ValueError(
        f'Checkpoint does not match the {cfg.family} config: missing tensors '
        f'{head(missing)}, unexpected tensors {head(unexpected)}')
  for name in extra_zero:
    if np.any(np.asarray(get_tensor(name), np.float32)):
      raise ValueError(f'{name} is non-zero; r1jax has no o_proj bias')
  shardings = _as_pure_dict(shardings)
  pure = {}
  for hf_name, path, transposed in layout:
    want = _get(expected, path)
    x = get_tensor(hf_name)
    hf_shape = tuple(reversed(want.shape)) if transposed else tuple(want.shape)
    if tuple(x.shape) != hf_shape:
      raise ValueError(
          f'Checkpoint tensor {hf_name!r} has shape {tuple(x.shape)} but the '
          f'config expects {hf_shape}')
    x = np.asarray(x)
    if transposed:
      x = np.ascontiguousarray(x.T)
    x = x.astype(want.dtype, copy=False)
    if shardings is None:
      value = jax.device_put(x)
    else:
      sharding = (shardings if isinstance(shardings, jax.sharding.Sharding)
                  else _get(shardings, path))
      # Each device receives only its own slice, on every host.
      value = jax.make_array_from_callback(x.shape, sharding,
                                           lambda idx, x=x: x[idx])
    _set(pure, path, value)
    del x
  nnx.replace_by_pure_dict(state, pure)
  return state


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: ModelConfig,
                   shardings: PyTree | None = None) -> nnx.State:
  """r1jax params (cast to cfg.param_dtype) from HF-named tensors.

  Raises a ValueError naming the tensor and both shapes when a shape does not
  match `cfg`, and listing missing / unexpected names.
  """
  return _build_params(tensors.__getitem__, set(tensors), cfg, shardings)


def _iter_hf(params: PyTree, cfg: ModelConfig) -> Iterator[tuple[str, Any]]:
  """(HF name, (array, transposed)) in HF module order; no host copies yet."""
  pure = _as_pure_dict(params)
  zero_o_bias = bool(_zero_o_bias_names(cfg))
  for hf_name, path, transposed in _layout(cfg):
    x = _get(pure, path)
    yield hf_name, (x, transposed)
    if zero_o_bias and hf_name.endswith('o_proj.weight'):
      bias = np.zeros((cfg.hidden_size,), x.dtype)
      yield hf_name.removesuffix('weight') + 'bias', (bias, False)


def _to_numpy(item) -> np.ndarray:
  x, transposed = item
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  x = np.asarray(jax.device_get(x))
  return np.ascontiguousarray(x.T) if transposed else x


def params_to_hf(params: PyTree, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """HF-named numpy tensors ([out, in] weights) in each param's own dtype."""
  return {name: _to_numpy(item) for name, item in _iter_hf(params, cfg)}


# --------------------------------------------------------- directories
_SAFETENSORS_DTYPES = {'BF16': jnp.bfloat16, 'F16': np.float16,
                      'F32': np.float32, 'F64': np.float64}


@contextlib.contextmanager
def _open_dir(path: pathlib.Path):
  """Yields (get_tensor, get_dtype, names) over a directory's safetensors."""
  index = path / INDEX_FILE
  if index.exists():
    weight_map = json.loads(index.read_text())['weight_map']
    files = sorted(set(weight_map.values()))
  else:
    files = sorted(p.name for p in path.glob('*.safetensors'))
    if not files:
      raise FileNotFoundError(f'No *.safetensors files in {path}')
    weight_map = None
  with contextlib.ExitStack() as stack:
    handles = {f: stack.enter_context(safe_open(path / f, framework='numpy'))
               for f in files}
    if weight_map is None:
      weight_map = {k: f for f, h in handles.items() for k in h.keys()}

    def get_tensor(name):
      return handles[weight_map[name]].get_tensor(name)

    def get_dtype(name):  # from the header, without reading the data
      code = handles[weight_map[name]].get_slice(name).get_dtype()
      return np.dtype(_SAFETENSORS_DTYPES[code])

    yield get_tensor, get_dtype, set(weight_map)


def load_pretrained(path: str | os.PathLike, *, dtype: Any = None,
                    param_dtype: Any = None, shardings: PyTree | None = None,
                    ) -> tuple[ModelConfig, nnx.GraphDef, nnx.State]:
  """Loads a HF Llama / Qwen2 directory: (config, graphdef, params).

  Args:
    path: directory with config.json and *.safetensors (+ index when sharded).
    dtype: compute dtype; defaults to param_dtype.
    param_dtype: storage dtype of the params; defaults to the dtype the
      checkpoint's tensors are stored in (so a re-export is bit-exact).
    shardings: a Sharding for every param (a pytree matching params, or one
      Sharding for all). Each tensor goes straight to its devices as it is
      read; without it, params land on the default device.
  """
  path = pathlib.Path(path)
  hf_config = json.loads((path / 'config.json').read_text())
  with _open_dir(path) as (get_tensor, get_dtype, names):
    embed = 'model.embed_tokens.weight'
    if param_dtype is None and embed in names:
      param_dtype = get_dtype(embed)
    cfg = config_from_hf(hf_config)  # dtypes from config.json's torch_dtype
    param_dtype = cfg.param_dtype if param_dtype is None else param_dtype
    cfg = cfg.replace(param_dtype=jnp.dtype(param_dtype),
                      dtype=jnp.dtype(param_dtype if dtype is None else dtype))
    params = _build_params(get_tensor, names, cfg, shardings)
  graphdef, _ = abstract(cfg)
  return cfg, graphdef, params


def _nbytes(x) -> int:
  return int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize


def _plan_shards(items: list[tuple[str, Any]], max_shard_bytes: int):
  """Greedy, in order: a new shard whenever the next tensor would overflow."""
  shards, current, size = [], [], 0
  for name, (x, _) in items:
    if current and size + _nbytes(x) > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(name)
    size += _nbytes(x)
  shards.append(current)
  return shards


def _is_weight_file(name: str) -> bool:
  return (name == INDEX_FILE or
          (name.startswith('model') and name.endswith('.safetensors')))


def save_pretrained(path: str | os.PathLike, cfg: ModelConfig, params: PyTree,
                    tokenizer=None,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                    extra_files: Mapping[str, str] | None = None) -> None:
  """Writes a directory `transformers` (and `load_pretrained`) can load.

  config.json takes its dtype from the stored params. Checkpoints over
  `max_shard_bytes` are split into model-0000i-of-0000n.safetensors plus an
  index. `tokenizer` (an r1jax Tokenizer) is saved alongside when given, and
  `extra_files` (name -> text, e.g. the tiny base's ability record) with it.

  The directory is written in full beside `path` and then takes its place
  (r1jax/atomic.py), so a kill at any moment leaves the old export or the new
  one, never a mix. Weight files of the old export go with it (none is left
  stale); other files in it (a README a user put there) are kept. On several
  hosts every process must call this (params are gathered); process 0 writes.
  """
  write = jax.process_index() == 0
  items = list(_iter_hf(params, cfg))
  lookup = dict(items)
  shards = _plan_shards(items, max_shard_bytes)
  keep = lambda name: not _is_weight_file(name)
  with (atomic.replaced_dir(path, keep=keep) if write
        else contextlib.nullcontext()) as out:
    weight_map = {}
    for i, names in enumerate(shards):
      fname = (SINGLE_FILE if len(shards) == 1 else
               f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors')
      # Only this shard's tensors are on the host at once.
      tensors = {n: _to_numpy(lookup[n]) for n in names}
      if write:
        save_file(tensors, str(out / fname), metadata={'format': 'pt'})
      weight_map.update({n: fname for n in names})
    if not write:
      return
    if len(shards) > 1:
      total = sum(_nbytes(x) for x, _ in lookup.values())
      index = {'metadata': {'total_size': total},
               'weight_map': dict(sorted(weight_map.items()))}
      (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    embed_dtype = _as_pure_dict(params)['embed_tokens']['embedding'].dtype
    hf = config_to_hf(cfg.replace(param_dtype=jnp.dtype(embed_dtype)))
    if tokenizer is not None:
      tokenizer.save(out)
      hf.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                pad_token_id=tokenizer.pad_id)
    (out / 'config.json').write_text(json.dumps(hf, indent=2) + '\n')
    for name, text in (extra_files or {}).items():
      (out / name).write_text(text, encoding='utf-8')
