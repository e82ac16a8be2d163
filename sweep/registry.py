"""A small name -> entry registry shared by models, datasets and methods.

Duplicate names raise; an unknown name raises a :class:`RegistryError` that lists the valid names.
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from .errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise RegistryError(f"{self.kind} names must be unique, but {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str):
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            return self.add(name, obj)

        return deco

    def get(self, name: str, where: str = "") -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none registered)"
            loc = f" ({where})" if where else ""
            raise RegistryError(f"unknown {self.kind} {name!r}{loc}; valid names: {valid}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(sorted(self._entries.items()))
