"""Name -> object registries for the parts a researcher swaps from a config."""

from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar('T')


class Registry(Generic[T]):
  """A named table of functions or objects, filled with a decorator.

    ADVANTAGES = Registry('advantage estimator')

    @ADVANTAGES.register('opo', inputs=('lengths_PxG',))
    def opo(...): ...

    ADVANTAGES.get('opo')     # raises KeyError naming the known entries
    ADVANTAGES.inputs('opo')  # ('lengths_PxG',)

  An entry may declare, beyond the signature its registry's entries share:
    inputs   keyword arguments its caller fills (an advantage estimator's
             completion lengths, a reward's metrics dict);
    options  keyword arguments a config may set (checked against this list
             by the callers that read a config: advantage estimators and
             policy losses).
  Both are declared, never read from the function's signature.
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}
    self._inputs: dict[str, tuple[str, ...]] = {}
    self._options: dict[str, tuple[str, ...]] = {}

  def register(self, name: str, *, inputs: tuple[str, ...] = (),
               options: tuple[str, ...] = ()) -> Callable[[T], T]:
    def wrap(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f'{self.kind} {name!r} is already registered.')
      self._entries[name] = obj
      self._inputs[name] = tuple(inputs)
      self._options[name] = tuple(options)
      return obj
    return wrap

  def add(self, name: str, obj: T, *, inputs: tuple[str, ...] = (),
          options: tuple[str, ...] = ()) -> T:
    return self.register(name, inputs=inputs, options=options)(obj)

  def get(self, name: str) -> T:
    try:
      return self._entries[name]
    except KeyError:
      raise KeyError(
          f'Unknown {self.kind} {name!r}; known: {sorted(self._entries)}'
      ) from None

  def inputs(self, name: str) -> tuple[str, ...]:
    """The keyword arguments entry `name` takes from its caller."""
    self.get(name)
    return self._inputs[name]

  def options(self, name: str) -> tuple[str, ...]:
    """The keyword options a config may set for entry `name`."""
    self.get(name)
    return self._options[name]

  def __contains__(self, name: Any) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._entries))

  def names(self) -> list[str]:
    return sorted(self._entries)
