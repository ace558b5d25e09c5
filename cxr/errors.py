"""Errors raised on bad input; each message names the file, row or key at fault."""

from __future__ import annotations

import difflib
from typing import Iterable


class DataError(ValueError):
    """Input data that cannot be used as given (missing file, bad label, empty split, ...)."""


def list_problems(problems: list[str], limit: int = 20) -> str:
    """Join problem lines for an error message, at most ``limit`` of them."""
    shown = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"\n  {shown}{more}"


class RequestError(ValueError):
    """A malformed prediction request: one line for the client, which never repeats its data."""


class NotRegisteredError(LookupError):
    """A registered model, version or alias that the registry does not hold."""


class RegistryBusyError(RuntimeError):
    """The model registry stayed locked (by another writer, or by another run's promotion) for
    longer than a promotion waits; nothing was moved."""


class ConfigError(ValueError):
    """A config value that cannot be used, as one line: ``<file>: <dotted key>: <problem>``."""

    def __init__(self, key: str, problem: str, file: str | None = None):
        self.key, self.problem, self.file = key, problem, file
        super().__init__(f"{file}: {key}: {problem}" if file else f"{key}: {problem}")

    def in_file(self, file: str) -> "ConfigError":
        """The same problem, named with the config file it came from."""
        return ConfigError(self.key, self.problem, file)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known`` to a misspelt ``name`` (difflib, else a
    known name that begins the misspelt one, as ``lr`` in ``lrate``), or ''."""
    known = [str(k) for k in known]
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    close = close or sorted((k for k in known if len(k) >= 2 and str(name).startswith(k)), key=len, reverse=True)
    return f" (did you mean {close[0]!r}?)" if close else ""
