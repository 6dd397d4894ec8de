"""Every error r1jax means as a message for the user, in one place.

Each is a `ConfigError`: the entry points (r1jax.train, r1jax.pipeline, the
evaluation command) print its message in one line, without a traceback. The
message names the key, file or line at fault and says what to do.
"""


class ConfigError(ValueError):
  """A config that cannot run; the one-line message names the key and the fix
  (r1jax.train prints it without a traceback)."""


class MissingFileError(ConfigError, FileNotFoundError):
  """A file or directory a config names does not exist."""


class DataFormatError(ConfigError):
  """A data file has a line that is not a valid record ('file:line: why')."""


class CheckpointError(ConfigError):
  """A path is no loadable checkpoint; the message says why."""


class EvalError(ConfigError):
  """Bad input to the evaluation command."""


class MemoryBudgetError(ConfigError):
  """The estimated peak of a config exceeds the device memory."""
