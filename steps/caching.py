"""Cache policies whose key covers the code a step runs, as code rather than as bytes.

ZenML hashes a step's own source but not the modules it calls, so an edit in ``cxr/`` would
otherwise return stale cached results. ``code_cache_policy(__name__)`` puts in the key a hash
of the step's module and of every ``cxr`` and ``steps`` module it imports, transitively
(parent package ``__init__`` files are hashed too, since they run on import, but their
re-exports are not followed: ``steps/train/__init__.py`` does not tie ``finetune`` to
``cft_finetune``). Each file counts by its AST with docstrings removed: an edit to a
comment, a docstring or the formatting leaves the cache valid; any code edit invalidates it.
Editing code the step does not import leaves it cached.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Callable

from zenml.config import CachePolicy
from zenml.config.source import Source, SourceType

SOURCE_ROOT = Path(__file__).resolve().parents[1]
FOLLOWED_PACKAGES = ("cxr", "steps")
_HASH_ATTRIBUTE = "code_hash:"
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _module_file(module: str) -> Path | None:
    """``a/b.py`` or ``a/b/__init__.py`` under the source root, without importing anything."""
    base = SOURCE_ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _followed(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in FOLLOWED_PACKAGES


def _imported_modules(path: Path) -> set[str]:
    """Followed modules the file imports (``from a.b import c`` may name a module ``a.b.c``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if _followed(a.name)}
        elif isinstance(node, ast.ImportFrom) and _followed(node.module):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
    return found


def _file_of(module: str) -> Path:
    path = _module_file(module)
    if path is None:
        raise ValueError(f"module {module!r} has no Python source under {SOURCE_ROOT}")
    return path


def code_files(*modules: str) -> tuple[str, ...]:
    """Source files (relative to the source root) of ``modules``, the followed modules they
    import, transitively, and the ``__init__`` files of their packages."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += sorted(_imported_modules(_file_of(module)) - seen)
    packages = {".".join(m.split(".")[:i]) for m in seen for i in range(1, len(m.split(".")))}
    return tuple(sorted({str(_file_of(m).relative_to(SOURCE_ROOT)) for m in seen | packages}))


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """``tree`` with the docstring of the module and of every class and function removed."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, _DOCUMENTED) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def code_fingerprint(source: str) -> str:
    """The code of a Python source as text: its AST without docstrings, positions or comments."""
    return ast.dump(_without_docstrings(ast.parse(source)))


def code_hash(*modules: str) -> str:
    """sha256 over the path and code fingerprint of every file in ``code_files(*modules)``."""
    digest = hashlib.sha256()
    for relative in code_files(*modules):
        digest.update(relative.encode())
        digest.update(code_fingerprint((SOURCE_ROOT / relative).read_text()).encode())
    return digest.hexdigest()


def __getattr__(name: str) -> Callable[[], str]:
    """``code_hash:<modules>``, the no-argument cache function ZenML loads by its source (PEP 562)."""
    if name.startswith(_HASH_ATTRIBUTE):
        modules = tuple(name[len(_HASH_ATTRIBUTE):].split(","))
        return lambda: code_hash(*modules)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def code_cache_policy(step_module: str) -> CachePolicy:
    """Default cache policy, with the step's code counted by ``code_hash(step_module)`` (a step
    passes its ``__name__``) instead of ZenML's hash of the step function's bytes."""
    _file_of(step_module)
    source = Source(module=__name__, attribute=_HASH_ATTRIBUTE + step_module, type=SourceType.USER)
    return CachePolicy(include_step_code=False, cache_func=source)
