"""Device mesh, parameter sharding rules, sharded init, multi-host start-up.

Parallelism is expressed purely by sharding: a `jax.make_mesh` mesh with axes
such as ('data', 'fsdp', 'tensor'), a `NamedSharding` for every parameter
(from a small ordered table of path regex -> PartitionSpec) and for the batch,
and `jax.jit` with those shardings. The compiler inserts the collectives.

    mesh = make_mesh({'data': -1, 'fsdp': 2, 'tensor': 1})
    graphdef, params = init_sharded(cfg, mesh, seed=0)
    batch = host_local_to_global(local_batch_np, mesh)   # each host its shard

Mesh axes are `AxisType.Auto`: the model code carries no sharding
annotations, so the compiler propagates shardings from the inputs
(`jax.make_mesh` defaults to Explicit axes, which would require an
`out_sharding` at every ambiguous op). A NamedSharding carries its mesh, so
jitted steps need no mesh context; `jax.set_mesh(mesh)` is only needed by
code that uses bare PartitionSpecs (sharding constraints, `jax.shard_map`).
"""

from collections.abc import Mapping, Sequence
import math
import os
import re
from typing import Any

from absl import logging
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from r1jax.model import functional
from r1jax.model.config import ModelConfig

# Outermost to innermost. Tensor-parallel collectives run inside every layer,
# so that axis is innermost (neighbouring devices); data parallelism only
# all-reduces gradients once per step, so it is outermost.
AXIS_ORDER = ('data', 'fsdp', 'tensor')
# The axes the batch dimension is split over.
BATCH_AXES = ('data', 'fsdp')

# (path regex, spec), first match wins. Paths are '/'-joined keys such as
# 'layers/0/self_attn/q_proj/kernel' (an nnx.Param's '.value' is dropped);
# `re.search` is used so the same rules fit optimizer states, whose paths
# carry a prefix such as 'opt_state/0/mu/'.
Rules = Sequence[tuple[str, P]]
DEFAULT_RULES: Rules = (
    (r'(^|/)embed_tokens/embedding$', P('tensor', 'fsdp')),      # [V, D]
    (r'(^|/)lm_head/kernel$', P('fsdp', 'tensor')),              # [D, V]
    (r'(^|/)(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$',
     P('fsdp', 'tensor')),                                       # [D, X]
    (r'(^|/)(o_proj|down_proj)/kernel$', P('tensor', 'fsdp')),   # [X, D]
    (r'(^|/)(q_proj|k_proj|v_proj)/bias$', P('tensor')),         # [X]
    # LoRA adapters (r1jax/model/lora.py): A [in, r], B [r, out], each laid
    # out as its kernel along in / out, the rank replicated.
    (r'(^|/)(q_proj|k_proj|v_proj|gate_proj|up_proj)/lora_a$', P('fsdp')),
    (r'(^|/)(q_proj|k_proj|v_proj|gate_proj|up_proj)/lora_b$',
     P(None, 'tensor')),
    (r'(^|/)(o_proj|down_proj)/lora_a$', P('tensor')),
    (r'(^|/)(o_proj|down_proj)/lora_b$', P(None, 'fsdp')),
    (r'norm/weight$', P()),                                      # [D]
)


def make_mesh(axes: Mapping[str, int] | Any,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over all (or the given) devices with named axes.

  Args:
    axes: axis name -> size, e.g. {'data': -1, 'fsdp': 2, 'tensor': 1} or an
      ml_collections.ConfigDict of the same. One size may be -1 for "all the
      remaining devices". Known axes are laid out in AXIS_ORDER whatever the
      order given (ConfigDict sorts its keys); other names follow them.
    devices: defaults to jax.devices().

  Raises:
    ValueError: sizes that do not multiply to the device count (or do not
      divide it, with -1), naming every axis and the device count.
  """
  given = dict(axes.items())
  if not given:
    raise ValueError('make_mesh needs at least one axis, e.g. {"data": -1}.')
  names = [a for a in AXIS_ORDER if a in given]
  names += [a for a in given if a not in AXIS_ORDER]
  sizes = [int(given[a]) for a in names]
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  described = ', '.join(f'{a}={s}' for a, s in zip(names, sizes))
  wild = [i for i, s in enumerate(sizes) if s == -1]
  if len(wild) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'Mesh axes ({described}): sizes must be positive, with '
                     f'at most one -1.')
  known = math.prod(s for s in sizes if s != -1)
  if wild:
    if n % known:
      raise ValueError(
          f'Mesh axes ({described}): the fixed axes hold {known} devices, '
          f'which does not divide the {n} devices available.')
    sizes[wild[0]] = n // known
  elif known != n:
    raise ValueError(
        f'Mesh axes ({described}) hold {known} devices, but {n} devices are '
        f'available; make the sizes multiply to {n} or use -1 for one axis.')
  return jax.make_mesh(tuple(sizes), tuple(names),
                       axis_types=(AxisType.Auto,) * len(names),
                       devices=devices)


def path_str(keypath) -> str:
  """'layers/0/self_attn/q_proj/kernel' for a pytree key path."""
  parts = []
  for k in keypath:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  if parts and parts[-1] == 'value':  # nnx.Variable's payload
    parts.pop()
  return '/'.join(parts)


def _fit_spec(mesh: Mesh, spec: P, shape: tuple[int, ...], name: str) -> P:
  """`spec` restricted to the mesh's axes, with indivisible dims replicated."""
  if len(spec) > len(shape):
    raise ValueError(f'Sharding rule {spec} has more entries than {name} has '
                     f'dimensions {shape}.')
  fitted = []
  padded = tuple(spec) + (None,) * (len(shape) - len(spec))
  for dim, entry in zip(shape, padded):
    entry_axes = (entry,) if isinstance(entry, str) else tuple(entry or ())
    entry_axes = tuple(a for a in entry_axes if a in mesh.shape)
    size = math.prod(mesh.shape[a] for a in entry_axes)
    if entry_axes and dim % size:
      logging.warning('%s: dim of size %d is not divisible by mesh axes %s '
                      '(%d devices); replicating it.', name, dim, entry_axes,
                      size)
      entry_axes = ()
    fitted.append(None if not entry_axes else
                  entry_axes[0] if len(entry_axes) == 1 else entry_axes)
  while fitted and fitted[-1] is None:
    fitted.pop()
  return P(*fitted)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh,
             rules: Rules = DEFAULT_RULES, default: P | None = None) -> P:
  """The PartitionSpec of one array; `default=None` raises when none match."""
  for pattern, spec in rules:
    if re.search(pattern, path):
      return _fit_spec(mesh, spec, shape, path)
  if default is None:
    raise ValueError(
        f'No sharding rule matches parameter {path!r} (shape {shape}); add '
        f'one to the rules. Patterns: {[p for p, _ in rules]}')
  return _fit_spec(mesh, default, shape, path)


def param_shardings(mesh: Mesh, abstract_params, rules: Rules = DEFAULT_RULES,
                    *, default: P | None = None):
  """A NamedSharding for every array leaf, in the same tree structure.

  Args:
    mesh: the device mesh.
    abstract_params: a pytree (nnx.State, dict, optax state, ...) whose leaves
      have `.shape` (arrays or ShapeDtypeStructs).
    rules: ordered (path regex, PartitionSpec); first match wins. Axes the
      mesh lacks are ignored; a dim not divisible by its axes is replicated.
    default: spec for leaves that match no rule. None (for model params)
      raises naming the parameter; pass P() for optimizer states, whose step
      counters match no rule.

  Leaves without a shape (Python ints) get a replicated sharding.
  """
  def one(keypath, leaf):
    if not hasattr(leaf, 'shape'):
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, spec_for(path_str(keypath), tuple(leaf.shape),
                                        mesh, rules, default))
  return jax.tree_util.tree_map_with_path(one, abstract_params)


def state_shardings(mesh: Mesh, abstract_state, rules: Rules = DEFAULT_RULES):
  """Shardings for a whole train state: rules where they match, else replicated.

  Optimizer moments share their parameter's path suffix (e.g.
  'opt_state/0/mu/layers/0/mlp/up_proj/kernel'), so they get the same layout.
  """
  return param_shardings(mesh, abstract_state, rules, default=P())


def shard_params(params, shardings):
  """Moves (or reshards) existing arrays onto the given shardings."""
  return jax.device_put(params, shardings)


def init_sharded(cfg: ModelConfig, mesh: Mesh, seed: int = 0,
                 rules: Rules = DEFAULT_RULES):
  """(graphdef, params) initialised directly into their shardings.

  The initialiser runs under `jax.jit` with `out_shardings`, so each device
  computes only its own shards; the full parameter tree never sits on one
  device. Values equal `functional.init(cfg, seed)`.
  """
  graphdef, abstract_params = functional.abstract(cfg)
  shardings = param_shardings(mesh, abstract_params, rules)

  def _init():
    return functional.init(cfg, seed)[1]

  params = jax.jit(_init, out_shardings=shardings)()
  return graphdef, params


def batch_spec(mesh: Mesh) -> P:
  """The batch dim over BATCH_AXES present in the mesh, the rest replicated."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
  if not axes:
    return P()
  return P(axes[0] if len(axes) == 1 else axes)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a [B, ...] batch: B split over ('data', 'fsdp') combined."""
  return NamedSharding(mesh, batch_spec(mesh))


def batch_size_divisor(mesh: Mesh) -> int:
  """The global batch must be a multiple of this (data * fsdp)."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           *, auto_detect: bool = False) -> bool:
  """Joins a multi-host run; a no-op for a single process.

  Must be called before any other JAX call touches the devices. It calls
  `jax.distributed.initialize` when a coordinator is given (argument or the
  JAX_COORDINATOR_ADDRESS environment variable), when num_processes > 1, or
  with auto_detect=True (TPU pods, SLURM and other clusters JAX detects).

  Returns:
    True when running as part of a multi-process job.
  """
  if jax.distributed.is_initialized():
    return True
  address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if not (address or (num_processes or 1) > 1 or auto_detect):
    return False
  jax.distributed.initialize(coordinator_address=address,
                             num_processes=num_processes,
                             process_id=process_id)
  logging.info('Process %d of %d; %d local of %d global devices.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def host_local_to_global(batch_np, mesh: Mesh,
                         sharding: NamedSharding | P | None = None):
  """Global jax.Arrays from each host's own slice of the batch.

  Every host passes its [B_local, ...] numpy arrays (a pytree of them); the
  result is a [B_local * num_hosts, ...] global array per leaf, laid out by
  `sharding` (default: batch_sharding(mesh)). No host ever holds data of
  another host. With one process this is a device_put.
  """
  if sharding is None:
    sharding = batch_sharding(mesh)
  elif isinstance(sharding, P):
    sharding = NamedSharding(mesh, sharding)

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(one, batch_np)


def host_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, as numpy.

  With one process it is the whole array. Rows are those of the addressable
  shards, in order, each row once (replicas skipped).
  """
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  seen, parts = set(), []
  for shard in sorted(x.addressable_shards,
                      key=lambda s: s.index[0].start or 0):
    start = shard.index[0].start or 0
    if start in seen:
      continue
    seen.add(start)
    parts.append(np.asarray(shard.data))
  return np.concatenate(parts, axis=0)
