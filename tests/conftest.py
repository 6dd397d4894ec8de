"""Test set-up: 8 simulated CPU devices, float32, strict rank promotion."""

import os

# Must be set before jax is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

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
