"""A name -> constructor registry, the way timm registers models: decorate, list, create."""

from __future__ import annotations

from typing import Any, Callable


class Registry:
    """Constructors registered under lowercase names; ``create`` drops None kwargs."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable:
        def wrap(constructor):
            self._items[name] = constructor
            return constructor
        return wrap

    def names(self) -> list[str]:
        return sorted(self._items)

    def create(self, name: str, *args, **kwargs) -> Any:
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {self.names()}")
        return self._items[name](*args, **{k: v for k, v in kwargs.items() if v is not None})
