"""LoRA: low-rank adapters on the decoder's linear layers, the base frozen.

    lcfg = lora.from_config(config.model)           # None while rank is 0
    graphdef, abstract = functional.abstract_lora(cfg, lcfg)
    adapters = lora.init_adapters(abstract, key)    # A random, B zero
    model = lora.merge(graphdef, adapters, base)    # base: the plain model's params

A targeted projection y = x W (+ b) becomes y = x W (+ b) + s (x A) B with
A [in, r], B [r, out] and s = alpha / r (`LoRALinear`, an nnx.Linear whose
kernel and bias keep their paths, so the frozen base is exactly the plain
model's parameter tree). The adapters are `LoRAParam` variables, split off
the model with `nnx.split(model, LoRAParam, ...)`: the trainer differentiates
and optimises that tree only, and passes the base as a second, frozen tree.
B starts at zero, so step 0 is the base model exactly. Adapters are float32
(their master weights) whatever the base's storage dtype; the delta is
computed in the model's compute dtype.

Dropout (on the adapter's input, as PEFT applies it) needs a key, which only
the trainers give (`merge(..., dropout_key=)`); the sampler, the evaluation
and the reference pass never drop.

Switching the adapters off (the GRPO reference policy) is `off(adapters)`:
zero adapters add exactly 0 to every projection, in the same compiled
program, with no second copy of the base.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.errors import ConfigError

# Short target name -> (sub-module of a block, projection): the names PEFT's
# target_modules use are the projections'.
TARGETS = {'q': ('self_attn', 'q_proj'), 'k': ('self_attn', 'k_proj'),
           'v': ('self_attn', 'v_proj'), 'o': ('self_attn', 'o_proj'),
           'gate': ('mlp', 'gate_proj'), 'up': ('mlp', 'up_proj'),
           'down': ('mlp', 'down_proj')}

# config.model.lora's fields and defaults (experiments/common.py writes the
# same section, with comments; tests/test_lora.py checks that they agree).
DEFAULTS = dict(rank=0, alpha=16.0, dropout=0.0,
                targets=('q', 'k', 'v', 'o', 'gate', 'up', 'down'),
                adapter_path='')


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Rank r, alpha (the delta is scaled by alpha / r), dropout on the
  adapter's input, the targeted projections (short names of `TARGETS`), and
  a PEFT adapter directory to start from ('' = fresh adapters)."""
  rank: int
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple[str, ...] = DEFAULTS['targets']
  adapter_path: str = ''

  @property
  def scaling(self) -> float:
    return self.alpha / self.rank

  def targets_projection(self, projection: str) -> bool:
    return any(TARGETS[t][1] == projection for t in self.targets)


def _short_target(name: str) -> str | None:
  """'q' for 'q' or PEFT's 'q_proj'; None for a name no block has."""
  if name in TARGETS:
    return name
  for short, (_, proj) in TARGETS.items():
    if name == proj:
      return short
  return None


def from_config(model_section, key: str = 'config.model.lora'
                ) -> LoRAConfig | None:
  """The LoRAConfig of a config's model section, or None when LoRA is off
  (rank 0, or no `lora` section). Raises ConfigError, naming the key, for a
  negative rank, other LoRA keys set while rank is 0, a target the
  architecture does not have, alpha <= 0 or a dropout outside [0, 1)."""
  if model_section is None or 'lora' not in model_section:
    return None
  lc = model_section.lora
  rank = lc.get('rank', 0)
  if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
    raise ConfigError(f'{key}.rank={rank!r} must be an int >= 0 (0: LoRA off)')
  if rank == 0:
    changed = [k for k, v in DEFAULTS.items()
               if k != 'rank' and k in lc and _differs(lc[k], v)]
    if changed:
      name = changed[0]
      raise ConfigError(
          f'{key}.{name}={_value(lc[name])!r} is set but {key}.rank=0 means '
          f'LoRA is off; set {key}.rank > 0, or leave {key}.{name} at its '
          f'default ({DEFAULTS[name]!r})')
    return None
  targets = []
  for name in lc.get('targets', DEFAULTS['targets']):
    short = _short_target(name)
    if short is None:
      raise ConfigError(
          f'{key}.targets has {name!r}, which this architecture does not '
          f'have; LoRA targets: {", ".join(TARGETS)} (or their projection '
          'names, q_proj ...)')
    if short not in targets:
      targets.append(short)
  if not targets:
    raise ConfigError(f'{key}.targets is empty: name at least one of '
                      f'{", ".join(TARGETS)}')
  alpha = lc.get('alpha', DEFAULTS['alpha'])
  dropout = lc.get('dropout', DEFAULTS['dropout'])
  if not alpha > 0:
    raise ConfigError(f'{key}.alpha={alpha!r} must be > 0 (the delta is '
                      'scaled by alpha / rank)')
  if not 0 <= dropout < 1:
    raise ConfigError(f'{key}.dropout={dropout!r} must be in [0, 1)')
  return LoRAConfig(rank=rank, alpha=float(alpha), dropout=float(dropout),
                    targets=tuple(targets),
                    adapter_path=str(lc.get('adapter_path', '')))


def _value(v):
  return tuple(v) if isinstance(v, list) else v


def _differs(value, default) -> bool:
  if isinstance(default, tuple):
    return tuple(value) != default
  return value != default


# ==================================================================== layers


class LoRAParam(nnx.Param):
  """An adapter matrix: the only variables a LoRA run trains."""


class LoRADropoutKey(nnx.Variable):
  """The dropout key a trainer sets on a LoRA layer for one forward pass."""


class LoRALinear(nnx.Linear):
  """nnx.Linear plus a low-rank delta: x W (+ b) + s * drop(x) A B.

  The kernel and bias are the plain layer's (same names, same init), so a
  LoRA model's frozen tree is the plain model's parameter tree.
  """

  def __init__(self, in_features: int, out_features: int, *,
               lora: LoRAConfig, **linear_kw):
    super().__init__(in_features, out_features, **linear_kw)
    # Values come from `init_adapters` (or a PEFT directory); building the
    # layer draws no random numbers, so the base's init is the plain one's.
    self.lora_a = LoRAParam(jnp.zeros((in_features, lora.rank), jnp.float32))
    self.lora_b = LoRAParam(jnp.zeros((lora.rank, out_features), jnp.float32))
    self.lora_scaling = lora.scaling
    self.lora_dropout = lora.dropout
    # A trainer's `merge` sets `dropout_key` (a LoRADropoutKey) for a pass.

  def __call__(self, x: jax.Array) -> jax.Array:
    y = super().__call__(x)
    dtype = y.dtype
    x_in = x
    key = getattr(self, 'dropout_key', None)
    if key is not None and self.lora_dropout > 0:
      keep = 1.0 - self.lora_dropout
      mask = jax.random.bernoulli(key[...], keep, x.shape)
      x_in = jnp.where(mask, x / jnp.asarray(keep, x.dtype),
                       jnp.zeros((), x.dtype))
    h = jnp.dot(x_in.astype(dtype), self.lora_a[...].astype(dtype),
                precision=self.precision)
    delta = jnp.dot(h, self.lora_b[...].astype(dtype), precision=self.precision)
    return y + (delta * jnp.asarray(self.lora_scaling, dtype)).astype(dtype)


# ============================================================ the two trees


def init_adapters(abstract_adapters: nnx.State, key: jax.Array) -> nnx.State:
  """Adapter values: A uniform in +-1/sqrt(in) (PEFT's kaiming-uniform with
  a = sqrt(5)), B zero, so the delta starts at exactly zero.

  Each A draws from `key` folded with its position in the tree, so the
  values do not depend on the mesh."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_adapters)
  out = []
  for i, (path, leaf) in enumerate(leaves):
    name = str(getattr(path[-1], 'key', getattr(path[-1], 'name', '')))
    if name == 'value':
      name = str(getattr(path[-2], 'key', getattr(path[-2], 'name', '')))
    if name == 'lora_a':
      bound = 1.0 / (leaf.shape[0] ** 0.5)
      out.append(jax.random.uniform(jax.random.fold_in(key, i), leaf.shape,
                                    jnp.float32, -bound, bound))
    else:
      out.append(jnp.zeros(leaf.shape, jnp.float32))
  return jax.tree_util.tree_unflatten(treedef, out)


@jax.jit
def off(adapters: nnx.State) -> nnx.State:
  """Adapters switched off: zeros, so base + delta is the base exactly
  (laid out as `adapters`)."""
  return jax.tree.map(jnp.zeros_like, adapters)


def combine(adapters: nnx.State, base: nnx.State) -> nnx.State:
  """One state of both trees (no copy: the same arrays), for the code that
  only reads the model: the sampler, the evaluation, log-prob passes."""
  return nnx.merge_state(adapters, base)


def merge(graphdef: nnx.GraphDef, params: nnx.State, frozen: Any = None,
          dropout_key: jax.Array | None = None):
  """The module of `params` (with LoRA: the adapters) and `frozen` (the
  base, or None), with a dropout key on every LoRA layer when given."""
  if frozen is None:
    model = nnx.merge(graphdef, params)
  else:
    model = nnx.merge(graphdef, params, frozen)
  if dropout_key is not None:
    layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, LoRALinear)]
    for i, layer in enumerate(layers):
      layer.dropout_key = LoRADropoutKey(jax.random.fold_in(dropout_key, i))
  return model


def _pure(tree):
  return tree.to_pure_dict() if isinstance(tree, nnx.State) else tree


def merged_params(adapters: nnx.State, base: nnx.State,
                  lcfg: LoRAConfig) -> dict:
  """The base's parameter tree (a pure dict) with every adapted kernel
  replaced by W + s A B, in the base's dtype (float32 arithmetic): what the
  merged Hugging Face export holds."""
  merged = jax.tree.map(lambda x: x, _pure(base))

  def walk(a_node, m_node):
    for k, v in a_node.items():
      if isinstance(v, dict) and 'lora_a' in v:
        w = m_node[k]['kernel']
        m_node[k]['kernel'] = merged_kernel(w, v['lora_a'], v['lora_b'],
                                            lcfg.scaling)
      elif isinstance(v, dict):
        walk(v, m_node[k])
  walk(_pure(adapters), merged)
  return merged


@jax.jit
def _merge_kernel(w, a, b, scaling):
  delta = jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST) * scaling
  return (w.astype(jnp.float32) + delta).astype(w.dtype)


def merged_kernel(w: jax.Array, a: jax.Array, b: jax.Array,
                  scaling: float) -> jax.Array:
  """W + s A B for one [in, out] kernel, in W's dtype."""
  return _merge_kernel(w, a, b, jnp.float32(scaling))


def count(adapters: nnx.State) -> int:
  return sum(x.size for x in jax.tree.leaves(adapters))
