"""Every error r1jax means as a message for the user, in one place.

Each is a `ConfigError`: the entry points (r1jax.train, r1jax.pipeline, the
evaluation command) print its message in one line, without a traceback
(`one_line`). The message names the key, file or line at fault and says what
to do. `--verbose` (r1jax.train, r1jax.pipeline) or R1JAX_TRACEBACK=1 shows
the traceback instead.
"""

import contextlib
import logging
import os
import sys

# Set to 1 to see the traceback of the errors printed in one line.
TRACEBACK_ENV = 'R1JAX_TRACEBACK'


class ConfigError(ValueError):
  """A config that cannot run; the one-line message names the key and the fix
  (r1jax.train prints it without a traceback)."""


class MissingFileError(ConfigError, FileNotFoundError):
  """A file or directory a config names does not exist."""


class DataFormatError(ConfigError):
  """A data file has a line that is not a valid record ('file:line: why')."""


class UnknownNameError(ConfigError, KeyError):
  """A name (a data set, a split) that is not among the known ones."""

  def __str__(self) -> str:  # KeyError's own quotes the message
    return str(self.args[0]) if self.args else ''


class CheckpointError(ConfigError):
  """A checkpoint that cannot be read or written, or a path that is none; the
  message says which step and file, and what to do."""


class EvalError(ConfigError):
  """Bad input to the evaluation command."""


class MemoryBudgetError(ConfigError):
  """The estimated peak of a config exceeds the device memory."""


def show_traceback() -> bool:
  """Whether R1JAX_TRACEBACK asks for tracebacks instead of one line."""
  return os.environ.get(TRACEBACK_ENV, '').strip() not in ('', '0')


class _NoBackgroundTracebacks(logging.Filter):
  """Drops the ERROR records with a traceback that orbax's background save
  threads log: the same exception reaches the main thread, which reports it
  in one line (CheckpointError)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and record.exc_info and
                'orbax' in (record.pathname or ''))


@contextlib.contextmanager
def one_line(verbose: bool = False):
  """Runs the block; a `ConfigError` leaving it exits the process with
  'error: <message>' (exit status 1) instead of a traceback, unless `verbose`
  or R1JAX_TRACEBACK=1."""
  if verbose or show_traceback():
    yield
    return
  quiet = _NoBackgroundTracebacks()
  logger = logging.getLogger('absl')
  logger.addFilter(quiet)
  try:
    yield
  except ConfigError as e:
    sys.exit(f'error: {e}')
  finally:
    logger.removeFilter(quiet)
