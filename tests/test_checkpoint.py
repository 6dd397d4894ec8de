"""Checkpoint round trip, keep-last-N, resharding, mismatches, partial steps."""

import functools
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax import checkpoint, parallel
from r1jax.checkpoint import Checkpointer, abstract_like
from r1jax.model import config as model_config
from r1jax.model import functional as F

REPO = pathlib.Path(__file__).resolve().parents[1]


def _model_arrays(preset, seed):
  """Params after one AdamW step, the optimizer state, the initial params."""
  _, params = F.init(model_config.get_config(preset), seed)
  tx = optax.adamw(1e-2)
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, params


def _train_state(preset='tiny-test', seed=0, abstract=False):
  """A realistic train state (ShapeDtypeStructs for arrays if abstract)."""
  make = functools.partial(_model_arrays, preset, seed)
  params, opt_state, ref_params = jax.eval_shape(make) if abstract else make()
  return {
      'params': params,
      'opt_state': opt_state,
      'ref_params': ref_params,
      'step': 1,
      'rng': jax.random.split(jax.random.key(seed))[1],
      'data_state': {'epoch': 3, 'cursor': np.int64(17),
                     'order': np.arange(10, dtype=np.int64)[::-1].copy()},
  }


def _host_copy(tree):
  """numpy copies of every leaf (typed keys as key data, numpy scalars 0-d)."""
  def one(x):
    if isinstance(x, jax.Array):
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
      return np.array(x)
    if isinstance(x, np.generic):
      return np.asarray(x)
    return x
  return jax.tree.map(one, tree)


def _assert_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                          jax.tree.leaves(want)):
    name = jax.tree_util.keystr(path)
    assert type(g) is type(w) or isinstance(g, jax.Array), name
    if isinstance(w, (np.ndarray, np.generic)):
      assert g.dtype == w.dtype, name
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=name)


def test_round_trip_is_exact_and_keeps_structure(tmp_path):
  state = _train_state()
  want = _host_copy(state)
  abstract = abstract_like(state)
  with Checkpointer(tmp_path / 'ck') as ckpt:
    assert ckpt.save(1, state, metadata={'note': 'first', 'tokens': 123})
    # Async save returns once arrays are copied: the caller may donate them.
    for x in jax.tree.leaves(state):
      if isinstance(x, jax.Array):
        x.delete()
    ckpt.wait()
    assert ckpt.all_steps() == [1] and ckpt.latest_step() == 1
    got = ckpt.restore(abstract_state=abstract)
    assert ckpt.metadata(1) == {'note': 'first', 'tokens': 123}
  # Same pytree types: nnx.State, optax's namedtuples, a typed key, ints.
  assert jax.tree.structure(got) == jax.tree.structure(abstract)
  assert type(got['opt_state'][0]) is optax.ScaleByAdamState
  assert type(got['params']) is type(abstract['params'])
  assert jax.dtypes.issubdtype(got['rng'].dtype, jax.dtypes.prng_key)
  assert got['step'] == 1 and type(got['step']) is int
  assert isinstance(got['data_state']['order'], np.ndarray)
  # numpy scalars come back as 0-d arrays of the same dtype.
  assert got['data_state']['cursor'].shape == ()
  _assert_equal(_host_copy(got), want)
  # The restored key draws the same numbers.
  key = jax.random.wrap_key_data(jnp.asarray(want['rng']))
  np.testing.assert_array_equal(jax.random.uniform(got['rng'], (3,)),
                                jax.random.uniform(key, (3,)))


def _small(step):
  return {'w': jnp.full((4, 4), float(step)), 'step': step}


def test_keep_last_n_interval_force_and_existing_steps(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2) as ckpt:
    saved = [ckpt.save(s, _small(s)) for s in range(1, 7)]
    assert saved == [False, True, False, True, False, True]
    assert ckpt.save(7, _small(7), force=True)
    assert not ckpt.save(7, _small(70), force=True)  # already there
    ckpt.wait()
    assert ckpt.all_steps() == [6, 7]
    got = ckpt.restore(7, abstract_like(_small(7)))
  assert float(got['w'][0, 0]) == 7.0
  assert sorted(p.name for p in tmp_path.iterdir()) == ['6', '7']


def test_keep_every_n_steps_survive_keep_last_n(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=1, keep_every_n_steps=3,
                    async_save=False) as ckpt:
    for s in range(1, 8):
      ckpt.save(s, _small(s))
    assert ckpt.all_steps() == [3, 6, 7]


def test_restore_onto_fsdp_mesh(tmp_path):
  state = _train_state()
  want = _host_copy(state)
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(5, state)
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  shardings = parallel.state_shardings(mesh, state)
  abstract = abstract_like(state, shardings)
  with Checkpointer(tmp_path) as ckpt:
    got = ckpt.restore(abstract_state=abstract)
  for (path, x), s in zip(
      jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(shardings)):
    if isinstance(x, jax.Array):
      assert x.sharding == s, jax.tree_util.keystr(path)
  # The optimizer moments follow their parameter's layout.
  mu = got['opt_state'][0].mu['layers'][0]['mlp']['gate_proj']['kernel'][...]
  assert mu.sharding.spec == jax.sharding.PartitionSpec('fsdp', 'tensor')
  assert mu.addressable_shards[0].data.shape == (32, 64)
  _assert_equal(_host_copy(got), want)


def test_mismatched_checkpoint_names_the_first_difference(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _train_state('tiny-test'))
    target = abstract_like(_train_state('tiny-test-llama', abstract=True))
    with pytest.raises(checkpoint.CheckpointMismatchError) as err:
      ckpt.restore(abstract_state=target)
  msg = str(err.value)
  # tiny-test has F=128, tiny-test-llama F=160: the first differing array.
  first = msg.split('First: ')[1].splitlines()[0]
  assert first.startswith('opt_state/0/mu/layers/0/mlp/down_proj/kernel/value')
  assert '(128, 64)' in first and '(160, 64)' in first
  problems = '\n'.join(err.value.problems)
  assert 'params/lm_head/kernel/value: in the target' in problems
  assert 'k_proj/bias/value: in the checkpoint' in problems


def test_mismatch_detects_missing_and_extra_keys(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _small(1))
    with pytest.raises(checkpoint.CheckpointMismatchError, match='extra'):
      ckpt.restore(abstract_state={**abstract_like(_small(1)), 'extra': 0})
    with pytest.raises(checkpoint.CheckpointMismatchError, match='w: in the '):
      ckpt.restore(abstract_state={'step': 0})
    with pytest.raises(FileNotFoundError, match='complete steps: \\[1\\]'):
      ckpt.restore(2)


def test_partial_step_directories_are_ignored(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    ckpt.save(2, _small(2))
  # A half-copied step (no commit marker) and an orbax temporary directory,
  # both newer than the real step.
  (tmp_path / '7').mkdir()
  (tmp_path / '7' / 'state').mkdir()
  tmp_step = tmp_path / '8.orbax-checkpoint-tmp-1700000000000000'
  tmp_step.mkdir()
  with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
    assert ckpt.all_steps() == [2] and ckpt.latest_step() == 2
    assert float(ckpt.restore(None, abstract_like(_small(2)))['w'][0, 0]) == 2
    # Keep-last-1 counts complete steps only and leaves the foreign one be.
    ckpt.save(3, _small(3))
    ckpt.wait()
    assert ckpt.all_steps() == [3]
  assert (tmp_path / '7').is_dir() and not (tmp_path / '2').exists()
  assert not tmp_step.exists()  # leftovers are cleaned up on open


_CRASH = textwrap.dedent('''
    import os, sys
    os.environ['JAX_PLATFORMS'] = 'cpu'
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from r1jax import checkpoint
    ckpt = checkpoint.Checkpointer(sys.argv[1], max_to_keep=1)
    ckpt.save(1, {'w': jnp.full((4, 4), 1.0), 'step': 1})
    ckpt.wait()
    async def die(self):
      os._exit(17)  # every byte is written; killed just before the rename
    atomicity.AtomicRenameTemporaryPath.finalize = die
    ckpt.save(2, {'w': jnp.full((4, 4), 2.0), 'step': 2})
    ckpt.wait()
    os._exit(0)
''')


def test_interrupted_save_keeps_the_previous_step(tmp_path):
  script = tmp_path / 'crash.py'
  script.write_text(_CRASH)
  root = tmp_path / 'ck'
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, str(script), str(root)], env=env,
                        capture_output=True, text=True, timeout=180)
  assert proc.returncode == 17, proc.stderr[-3000:]
  leftovers = [p.name for p in root.iterdir() if 'tmp' in p.name]
  assert len(leftovers) == 1 and leftovers[0].startswith('2.')
  with Checkpointer(root, max_to_keep=1) as ckpt:
    # Step 1 survived keep-last-1: deletion waits for the new step's commit.
    assert ckpt.all_steps() == [1]
    got = ckpt.restore(abstract_state=abstract_like(_small(1)))
    assert got['step'] == 1 and float(got['w'][0, 0]) == 1.0
    assert ckpt.save(2, _small(2))  # the step can be written again
    ckpt.wait()
    assert ckpt.all_steps() == [2]
  assert sorted(p.name for p in root.iterdir()) == ['2']
