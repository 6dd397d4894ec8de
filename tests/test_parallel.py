"""Mesh, sharding rules, sharded init and forward passes on 8 simulated CPUs."""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax import parallel
from r1jax.model import config as model_config
from r1jax.model import functional as F

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_make_mesh_fills_the_wildcard_and_orders_axes():
  mesh = parallel.make_mesh({'tensor': 2, 'data': -1})
  assert mesh.axis_names == ('data', 'tensor')
  assert dict(mesh.shape) == {'data': 4, 'tensor': 2}
  # ConfigDict sorts its keys; the layout follows AXIS_ORDER regardless.
  cfg = ml_collections.ConfigDict({'fsdp': 2, 'tensor': 1, 'data': -1})
  mesh = parallel.make_mesh(cfg)
  assert mesh.axis_names == ('data', 'fsdp', 'tensor')
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2, 'tensor': 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize('axes, needle', [
    ({'data': 3}, 'data=3'),
    ({'data': 2, 'fsdp': 2}, 'fsdp=2'),
    ({'data': -1, 'tensor': 3}, 'tensor=3'),
    ({'data': -1, 'fsdp': -1}, 'at most one -1'),
])
def test_make_mesh_bad_sizes_name_axes_and_devices(axes, needle):
  with pytest.raises(ValueError) as err:
    parallel.make_mesh(axes)
  assert needle in str(err.value)
  if 'one -1' not in needle:
    assert '8' in str(err.value)


def _specs(shardings):
  return {parallel.path_str(k): s.spec
          for k, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}


@pytest.mark.parametrize('preset', ['tiny-test', 'tiny-test-llama'])
def test_every_param_gets_a_sharding(preset):
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  _, abstract = F.abstract(model_config.get_config(preset))
  shardings = parallel.param_shardings(mesh, abstract)
  assert (jax.tree.structure(shardings) == jax.tree.structure(abstract))
  specs = _specs(shardings)
  assert len(specs) == len(jax.tree.leaves(abstract))
  assert all(isinstance(s, NamedSharding)
             for s in jax.tree.leaves(shardings))
  assert specs['embed_tokens/embedding'] == P('tensor', 'fsdp')
  assert specs['layers/0/self_attn/q_proj/kernel'] == P('fsdp', 'tensor')
  assert specs['layers/1/mlp/down_proj/kernel'] == P('tensor', 'fsdp')
  assert specs['norm/weight'] == P()
  if preset == 'tiny-test':
    assert specs['layers/0/self_attn/k_proj/bias'] == P('tensor')
  else:
    assert specs['lm_head/kernel'] == P('fsdp', 'tensor')


def test_indivisible_dims_and_missing_axes_fall_back_to_replicated():
  mesh = parallel.make_mesh({'fsdp': 8})
  # No 'tensor' axis in this mesh: that half of the rule is dropped.
  assert parallel.spec_for('a/q_proj/kernel', (64, 12), mesh) == P('fsdp')
  assert parallel.spec_for('a/o_proj/kernel', (12, 64), mesh) == P(None,
                                                                    'fsdp')
  # 12 columns cannot be split 8 ways: replicated, not an error.
  assert parallel.spec_for('a/o_proj/kernel', (64, 12), mesh) == P()
  with pytest.raises(ValueError, match='more entries'):
    parallel.spec_for('a/q_proj/kernel', (64,), mesh)


def test_unmatched_param_raises_naming_it():
  mesh = parallel.make_mesh({'data': -1})
  tree = {'adapter': {'scale': jax.ShapeDtypeStruct((4, 4), jnp.float32)}}
  with pytest.raises(ValueError, match='adapter/scale'):
    parallel.param_shardings(mesh, tree)
  # State shardings (optimizer counters etc.) replicate the unmatched.
  assert parallel.state_shardings(mesh, tree)['adapter']['scale'].spec == P()


def test_batch_sharding_uses_data_and_fsdp():
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  assert parallel.batch_sharding(mesh).spec == P(('data', 'fsdp'))
  assert parallel.batch_size_divisor(mesh) == 4
  assert parallel.batch_sharding(parallel.make_mesh({'fsdp': 8})).spec == P(
      'fsdp')
  assert parallel.batch_sharding(parallel.make_mesh({'tensor': 8})).spec == P()


def _batch(vocab, b=8, t=12, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (b, t)).astype(np.int32)
  input_mask = np.ones((b, t), bool)
  input_mask[1, :3] = False  # one left-padded row
  positions = np.asarray(F.positions_from_mask(jnp.asarray(input_mask)))
  mask = np.asarray(F.causal_mask(jnp.asarray(input_mask)))
  return tokens, positions, mask


_REFERENCE = {}


def _reference(preset):
  """Single-device params, batch and logits, computed once per preset."""
  if preset not in _REFERENCE:
    cfg = model_config.get_config(preset)
    graphdef, params = F.init(cfg, seed=1)
    batch = _batch(cfg.vocab_size)
    dev = jax.devices()[0]
    params1, batch1 = jax.device_put((params, batch), dev)
    logits = jax.jit(lambda p, *b: F.apply(graphdef, p, *b)[0])(
        params1, *batch1)
    _REFERENCE[preset] = (graphdef, params, batch, np.asarray(logits))
  return _REFERENCE[preset]


@pytest.mark.parametrize('preset, axes', [
    ('tiny-test', {'data': 8}),
    ('tiny-test', {'data': 2, 'fsdp': 2, 'tensor': 2}),
    ('tiny-test', {'fsdp': 8}),
    ('tiny-test-llama', {'data': 2, 'fsdp': 2, 'tensor': 2}),
])
def test_sharded_forward_equals_single_device(preset, axes):
  graphdef, params, batch, want = _reference(preset)
  mesh = parallel.make_mesh(axes)
  shardings = parallel.param_shardings(mesh, params)
  sharded = parallel.shard_params(params, shardings)
  batch = parallel.host_local_to_global(batch, mesh)
  kernel = sharded['layers'][0]['mlp']['up_proj']['kernel'][...]
  if 'fsdp' in axes:  # really split, not silently replicated
    assert kernel.addressable_shards[0].data.size < kernel.size
  assert batch[0].sharding.spec == parallel.batch_spec(mesh)
  forward = jax.jit(lambda p, *b: F.apply(graphdef, p, *b)[0],
                    out_shardings=parallel.batch_sharding(mesh))
  logits = forward(sharded, *batch)
  np.testing.assert_allclose(np.asarray(logits), want, atol=1e-5, rtol=0)


def test_init_sharded_places_every_param_and_matches_plain_init():
  cfg = model_config.get_config('tiny-test')
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  graphdef, params = parallel.init_sharded(cfg, mesh, seed=3)
  want_graphdef, want = F.init(cfg, seed=3)
  assert graphdef == want_graphdef
  expected = parallel.param_shardings(mesh, params)
  for (path, x), s in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(expected)):
    name = parallel.path_str(path)
    assert x.sharding == s, name
    if s.spec != P():
      # Each device holds a strict part of the array.
      shard = x.addressable_shards[0].data
      assert shard.size < x.size, name
  emb = params['embed_tokens']['embedding'][...]
  assert emb.addressable_shards[0].data.shape == (128, 32)
  # Same numbers as the unsharded initialiser (up to XLA fusion rounding).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), atol=1e-6, rtol=0), params, want)


def test_host_local_to_global_single_process():
  mesh = parallel.make_mesh({'data': 4, 'tensor': 2})
  local = {'tokens': np.arange(24, dtype=np.int32).reshape(8, 3)}
  out = parallel.host_local_to_global(local, mesh)['tokens']
  assert out.shape == (8, 3)
  assert out.sharding == parallel.batch_sharding(mesh)
  np.testing.assert_array_equal(np.asarray(out), local['tokens'])
  with pytest.raises(ValueError):  # 6 rows cannot be split 4 ways
    parallel.host_local_to_global(np.zeros((6, 3)), mesh)


def test_initialize_distributed_is_a_noop_for_one_process(monkeypatch):
  monkeypatch.delenv('JAX_COORDINATOR_ADDRESS', raising=False)
  assert parallel.initialize_distributed() is False
  assert parallel.initialize_distributed(num_processes=1) is False
  assert not jax.distributed.is_initialized()


_TWO_HOSTS = textwrap.dedent('''
    import os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
    os.environ['JAX_PLATFORMS'] = 'cpu'
    import jax
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    import numpy as np
    from r1jax import parallel
    port, pid = sys.argv[1], int(sys.argv[2])
    assert parallel.initialize_distributed(f'localhost:{port}', 2, pid)
    mesh = parallel.make_mesh({'data': -1})
    # Host p holds rows (p + 1) * [1, 2]: no host sees the other's rows.
    local = (pid + 1) * np.arange(1, 3, dtype=np.int32)[:, None] * np.ones(
        (1, 3), np.int32)
    x = parallel.host_local_to_global({'tokens': local}, mesh)['tokens']
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sums = jax.jit(lambda a: a.sum(axis=1), out_shardings=replicated)(x)
    print('RESULT', x.shape, jax.device_count(), np.asarray(sums).tolist())
    jax.distributed.shutdown()
''')


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_each_feed_their_own_shard(tmp_path):
  script = tmp_path / 'host.py'
  script.write_text(_TWO_HOSTS)
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.pop('XLA_FLAGS', None)
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, str(script), str(port), str(pid)], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for pid in range(2)]
  outs = [p.communicate(timeout=180) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    result = [line for line in out.splitlines() if line.startswith('RESULT')]
    # Global batch of 4 rows over 4 devices on 2 hosts; row sums 3 * value.
    assert result == ['RESULT (4, 3) 4 [3, 6, 6, 12]'], out
