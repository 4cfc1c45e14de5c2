"""One registry idiom for everything vitslim looks up by name (runtimes, quantizers, ...).

>>> colours = Registry[int]("colour")
>>> colours.register("red", 1)
1
>>> colours["red"], colours.names
(1, ('red',))
>>> colours["rde"]
Traceback (most recent call last):
...
vitslim.errors.UserError: unknown colour 'rde'; did you mean 'red'? (available: red)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from vitslim.config import check_choice

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, in registration order; an unknown name is a UserError naming the close ones."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` (a different entry already there is a ValueError)."""
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.what} {name!r} is registered already")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator(name)``: register the decorated object under ``name``."""
        return lambda entry: self.register(name, entry)

    @contextmanager
    def registered(self, name: str, entry: T) -> Iterator[T]:
        """``entry`` registered under ``name`` for the duration of a ``with`` block (tests, plugins)."""
        self.register(name, entry)
        try:
            yield entry
        finally:
            del self._entries[name]

    def __getitem__(self, name: str) -> T:
        return self._entries[check_choice(self.what, name, sorted(self._entries))]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._entries.values()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def matching(self, pattern: str = "*") -> list[str]:
        """The sorted names matching the fnmatch ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))
