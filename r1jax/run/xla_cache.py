"""Where r1jax keeps what it can make again, and the persistent XLA
compilation cache of the command-line entry points.

`root()` is $R1JAX_CACHE (default ~/.cache/r1jax): the tiny base models
(`tiny_base`) and, under xla/, compiled XLA programs. With the compilation
cache on (`enable`, which `python -m r1jax.train`, `r1jax.pipeline`,
`r1jax.evaluate` and `r1jax.generate` call at start-up) a program compiled
once is read back by every later process that builds the same one: a
study's later stages and seeds, a resumed or repeated run. The length-aware
GRPO passes compile a program per micro-batch shape (5-20 s each on a
2-core CPU), so this is where it counts. The programs are the same
compiled code, so results do not change. R1JAX_XLA_CACHE=off turns it off;
R1JAX_XLA_CACHE=PATH puts it at PATH.
"""

import os

import jax

# Programs that compile faster than this are not worth a file.
MIN_COMPILE_SECONDS = 1.0


def root() -> str:
  """$R1JAX_CACHE, or ~/.cache/r1jax."""
  return os.environ.get('R1JAX_CACHE') or os.path.expanduser('~/.cache/r1jax')


def enable() -> str | None:
  """Turns JAX's persistent compilation cache on at $R1JAX_XLA_CACHE
  (default root()/xla); returns that directory, or None when
  R1JAX_XLA_CACHE is 'off' (or '0')."""
  where = os.environ.get('R1JAX_XLA_CACHE', '')
  if where.lower() in ('off', '0', 'false', 'no'):
    return None
  where = os.path.abspath(os.path.expanduser(where or os.path.join(
      root(), 'xla')))
  jax.config.update('jax_compilation_cache_dir', where)
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    MIN_COMPILE_SECONDS)
  return where
