"""Cache policies that make a step's cache key cover the core code it runs.

ZenML hashes a step's own source but not the modules it calls, so an edit in ``cxr/`` would
otherwise return stale cached results. ``core_cache_policy`` lists the source files of the
named core modules and of every ``cxr`` module they import, transitively, as file
dependencies: editing any of them re-runs the step, editing unrelated core code does not.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

from zenml.config import CachePolicy

SOURCE_ROOT = Path(__file__).resolve().parents[1]
CORE_PACKAGE = "cxr"


def _module_file(module: str) -> Path | None:
    """``a/b.py`` or ``a/b/__init__.py`` under the source root, without importing anything."""
    base = SOURCE_ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_core_modules(path: Path) -> set[str]:
    """``cxr`` modules imported by the file (``from cxr.x import y`` may name a module y)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == CORE_PACKAGE}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == CORE_PACKAGE:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
    return found


@lru_cache(maxsize=None)
def core_files(*modules: str) -> tuple[str, ...]:
    """Source files (relative to the source root) of ``modules`` and their core imports."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = _module_file(module)
        if path is None:
            raise ValueError(f"core module {module!r} has no Python source")
        seen[module] = path
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # package __init__ files
        todo += sorted(_imported_core_modules(path) - seen.keys())
    return tuple(sorted(str(p.relative_to(SOURCE_ROOT)) for p in seen.values()))


def core_cache_policy(*modules: str) -> CachePolicy:
    """Default cache policy plus the source of ``modules`` and everything in ``cxr`` they import."""
    return CachePolicy(file_dependencies=list(core_files(*modules)))
