"""Config checks that fail at start-up with one line naming the key."""

from typing import Any, Iterable, Sequence

import ml_collections

from r1jax import errors


def config_get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  """config.<dotted>, e.g. config_get(c, 'rl.group_size') (KeyError if absent)."""
  node = config
  for part in dotted.split('.'):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      raise KeyError(dotted) from None
  return node


def check(config: ml_collections.ConfigDict,
          checks: Iterable[tuple[str, bool, str]]) -> None:
  """Raises ConfigError('config.<key>=<value> <why>') for the first failed check."""
  for key, ok, why in checks:
    if not ok:
      try:
        value = repr(config_get(config, key))
      except (KeyError, AttributeError):
        value = '<missing>'
      raise errors.ConfigError(f'config.{key}={value} {why}')


def check_known(config: ml_collections.ConfigDict, dotted: str,
                known: Sequence[str]) -> None:
  """Fails naming the key when config.<dotted> is not one of `known`."""
  value = config_get(config, dotted)
  if value not in known:
    raise errors.ConfigError(f'config.{dotted}={value!r} is not known; '
                             f'known: {sorted(known)}')
