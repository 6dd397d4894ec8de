"""The persistent compilation cache of the entry points (r1jax/run/xla_cache)."""

import os
import subprocess
import sys

from r1jax.run import xla_cache

_PROGRAM = '''
from r1jax.run import xla_cache
xla_cache.MIN_COMPILE_SECONDS = 0.0
print(xla_cache.enable())
import jax, jax.numpy as jnp
jax.jit(lambda x: jnp.tanh(x @ x.T) * 3)(jnp.ones((8, 8))).block_until_ready()
'''


def _run(env):
  out = subprocess.run([sys.executable, '-c', _PROGRAM], env=env, check=True,
                       capture_output=True, text=True, timeout=120)
  return out.stdout.strip().splitlines()[-1]


def test_programs_are_kept_under_the_cache_root(tmp_path):
  env = dict(os.environ, R1JAX_CACHE=str(tmp_path / 'cache'))
  env.pop('R1JAX_XLA_CACHE', None)
  where = _run(env)
  assert where == str(tmp_path / 'cache' / 'xla')
  first = sorted(os.listdir(where))
  assert first  # the program was written
  assert _run(env) == where
  assert sorted(os.listdir(where)) == first  # read back, not written again


def test_off_and_elsewhere(tmp_path, monkeypatch):
  monkeypatch.setenv('R1JAX_XLA_CACHE', 'off')
  assert xla_cache.enable() is None  # nothing set
  env = dict(os.environ, R1JAX_XLA_CACHE=str(tmp_path / 'x'),
             R1JAX_CACHE=str(tmp_path / 'cache'))
  assert _run(env) == str(tmp_path / 'x')
  assert os.listdir(tmp_path / 'x') and not (tmp_path / 'cache').exists()


def test_root(monkeypatch):
  monkeypatch.setenv('R1JAX_CACHE', '/some/where')
  assert xla_cache.root() == '/some/where'
  monkeypatch.delenv('R1JAX_CACHE')
  assert xla_cache.root() == os.path.expanduser('~/.cache/r1jax')
