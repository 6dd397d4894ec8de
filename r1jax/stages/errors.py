"""The errors of a config that cannot run (r1jax.train and r1jax.pipeline
print them in one line, without a traceback).

Apart from `common` so that `run_records`, which `common` imports, raises them
too.
"""


class ConfigError(ValueError):
  """A config that cannot run; the one-line message names the key and the fix
  (r1jax.train prints it without a traceback)."""


class MissingFileError(ConfigError, FileNotFoundError):
  """A file or directory a config names does not exist."""
