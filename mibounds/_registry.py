"""A small name -> object registry: case-insensitive lookup by name or alias, clear errors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects registered under a canonical name and aliases, looked up case-insensitively.

    Used by the divergence, estimator and transform registries. Unknown names raise a
    ``KeyError`` that lists the known names.
    """

    def __init__(self, kind: str, plural: str) -> None:
        self.kind, self.plural = kind, plural
        self._items: dict[str, T] = {}
        self._keys: dict[str, str] = {}  # name or alias (lower case) -> canonical name
        self._aliases: dict[str, tuple[str, ...]] = {}

    def add(self, name: str, item: T, aliases: Iterable[str] = (), overwrite: bool = False) -> T:
        canonical = name.lower()
        keys = [canonical, *(a.lower() for a in aliases)]
        if overwrite:
            self.remove(canonical)
        for key in keys:
            if key in self._keys:
                raise ValueError(
                    f"{self.kind} name or alias {key!r} is already registered "
                    f"(for {self._keys[key]!r}); pass overwrite=True to replace it"
                )
        self._items[canonical] = item
        self._aliases[canonical] = tuple(keys[1:])
        for key in keys:
            self._keys[key] = canonical
        return item

    def get(self, name: str) -> T:
        canonical = self._keys.get(name.lower())
        if canonical is None:
            raise KeyError(
                f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}"
            )
        return self._items[canonical]

    def resolve(self, value: object, item_type: type[T]) -> T:
        """``value`` itself if it is an ``item_type``, else the item registered under the name.

        Raises:
            TypeError: ``value`` is neither a string nor an ``item_type``.
            KeyError: an unknown name (the message lists the known ones).
        """
        if isinstance(value, item_type):
            return value
        if not isinstance(value, str):
            raise TypeError(
                f"{self.kind} must be a str or {item_type.__name__}, got {type(value).__name__}"
            )
        return self.get(value)

    def remove(self, name: str) -> None:
        canonical = self._keys.get(name.lower())
        if canonical is None:
            return
        for key in (canonical, *self._aliases.pop(canonical, ())):
            self._keys.pop(key, None)
        self._items.pop(canonical, None)

    def names(self) -> list[str]:
        return sorted(self._items)

    def values(self) -> list[T]:
        return [self._items[k] for k in self.names()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._keys
