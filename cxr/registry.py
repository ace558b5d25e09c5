"""A name -> constructor registry, the way timm registers models: decorate, list, create.

Every named choice of the project (loss, optimizer, schedule, source, TTA view, head, SSL
method, CFT fitness, ensemble weighting, ...) is one entry in one ``Registry``; config
fields declare ``REGISTRY.choice()`` as their type, so a misspelt name fails when the
config is validated and the message lists the valid names.

    LOSSES = Registry("loss")

    @LOSSES.register("focal")
    def focal(labels, mask, focal_alpha=0.25, focal_gamma=2.0): ...

    LossName = LOSSES.choice()

    class TrainConfig(BaseModel):
        loss: LossName = "bce"
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Callable, Mapping

from pydantic import AfterValidator, Field

from cxr.errors import did_you_mean


class Registry:
    """Constructors registered under lowercase names; ``create`` drops None kwargs."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable:
        """Decorator: record the constructor under ``name`` (which must be new)."""
        def wrap(constructor):
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = constructor
            return constructor
        return wrap

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def check(self, name: str) -> str:
        """``name`` if registered; else a ValueError that lists the valid names."""
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; "
                             f"choose from {self.names()}")
        return name

    def choice(self) -> Any:
        """A pydantic field type: a string that must be one of this registry's names (its JSON
        schema lists them as an enum, read when the schema is built, after registration)."""
        return Annotated[str, AfterValidator(self.check),
                         Field(json_schema_extra=lambda schema: schema.update(enum=self.names()))]

    def get(self, name: str) -> Callable[..., Any]:
        return self._items[self.check(name)]

    def create(self, name: str, *args, **kwargs) -> Any:
        """Build ``name``; None kwargs are dropped so the constructor's own defaults apply."""
        return self.get(name)(*args, **{k: v for k, v in kwargs.items() if v is not None})

    def accepts(self, name: str) -> set[str]:
        """The keyword arguments the constructor of ``name`` takes."""
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {p.name for p in inspect.signature(self.get(name)).parameters.values() if p.kind in kinds}

    def check_kwargs(self, name: str, kwargs: Mapping[str, Any]) -> None:
        """Raise a ValueError naming the set (non-None) ``kwargs`` that ``name`` does not take."""
        unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in self.accepts(name))
        if unknown:
            raise ValueError(f"{self.kind} {name!r} takes no {unknown}")

    def create_from(self, name: str, *args, knobs: Mapping[str, Any]) -> Any:
        """Build ``name`` from a flat config that holds every choice's knobs: pass the knobs its
        constructor names and ``args`` do not fill, as they are (None included: in a flat
        config None is a setting)."""
        constructor = self.get(name)
        filled = list(inspect.signature(constructor).parameters)[:len(args)]
        taken = self.accepts(name) - set(filled)
        return constructor(*args, **{k: v for k, v in knobs.items() if k in taken})
