"""One registry for every swappable part: pipelines, datasets, metrics, predictors and correctors,
training families and sampling plugins.

A registry maps names to objects, refuses a duplicate name, and reads like a dict. Modules add
their parts where they define them, usually with the `Registry.register` decorator (score_sde's
``@register_predictor(name=...)``); a lookup of an unknown name raises an error that lists the
known ones. ``discover`` lets a registry import the modules that hold its parts on the first
lookup that misses (the pipeline registry imports `studio.pipelines`, the family registry
``training.<name>``), so the module that looks parts up never imports the modules that define them.

This module imports nothing from studio: every room may use it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[Hashable, T], Generic[T]):
    """Named parts of one ``kind`` ("pipeline", "dataset", ...), in registration order.

    :param kind: what the parts are, for error messages.
    :param discover: called with a missing name before a lookup gives up; it imports whatever
        module registers that name (and may import nothing).
    """

    def __init__(self, kind: str, discover: Callable[[Hashable], None] | None = None):
        self.kind = kind
        self._discover = discover
        self._items: dict[Hashable, T] = {}

    def add(self, name: Hashable, item: T) -> T:
        """Register ``item`` under ``name`` and return it; a duplicate name raises ValueError."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def register(self, name: Hashable) -> Callable[[T], T]:
        """Decorator form of `add`: ``@REGISTRY.register("name")``."""

        def decorator(item: T) -> T:
            return self.add(name, item)

        return decorator

    def lookup(self, name: Hashable, error: type[Exception] = ValueError) -> T:
        """The part called ``name``; an unknown name raises ``error`` listing the known names."""
        found = self.find(name)
        if found is None:
            known = ", ".join(sorted(str(key) for key in self._items)) or "none"
            raise error(f"unknown {self.kind} {name!r} (known: {known})")
        return found

    def find(self, name: Hashable) -> T | None:
        """The part called ``name``, or None; runs ``discover`` once if the name is missing."""
        if name not in self._items and self._discover is not None:
            self._discover(name)
        return self._items.get(name)

    def names(self) -> list[Hashable]:
        """Registered names, in registration order."""
        return list(self._items)

    # Mapping: read access like a dict (no discovery)
    def __getitem__(self, name: Hashable) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()!r})"
