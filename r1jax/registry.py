"""Name -> object registries for the parts a researcher swaps from a config."""

from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar('T')


class Registry(Generic[T]):
  """A named table of functions or objects, filled with a decorator.

    ADVANTAGES = Registry('advantage estimator')

    @ADVANTAGES.register('grpo')
    def grpo(...): ...

    ADVANTAGES.get('grpo')  # raises KeyError naming the known entries
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def wrap(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f'{self.kind} {name!r} is already registered.')
      self._entries[name] = obj
      return obj
    return wrap

  def add(self, name: str, obj: T) -> T:
    return self.register(name)(obj)

  def get(self, name: str) -> T:
    try:
      return self._entries[name]
    except KeyError:
      raise KeyError(
          f'Unknown {self.kind} {name!r}; known: {sorted(self._entries)}'
      ) from None

  def __contains__(self, name: Any) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._entries))

  def names(self) -> list[str]:
    return sorted(self._entries)
