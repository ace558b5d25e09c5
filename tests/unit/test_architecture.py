"""The import rules of docs/ARCHITECTURE.md, checked on every module's AST (lazy imports inside
functions included): layers point down only, and the core stays free of ZenML and MLflow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("cxr", "steps", "pipelines", "materializers")
FORBIDDEN = {
    "cxr": {"zenml", "mlflow", "steps", "pipelines", "materializers", "run"},
    "materializers": {"steps", "pipelines", "mlflow", "run"},
    "steps": {"pipelines", "run"},
    "pipelines": {"run"},
}


def imported_roots(path: Path) -> set[str]:
    """Top-level packages a file imports, anywhere in it."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_a_layer_imports_only_what_lies_below_it(package: str):
    offences = {str(f.relative_to(REPO_ROOT)): sorted(imported_roots(f) & FORBIDDEN.get(package, set()))
                for f in files(package)}
    assert not {f: bad for f, bad in offences.items() if bad}


def test_the_runtime_module_is_a_leaf():
    assert not {m for m in imported_modules(REPO_ROOT / "cxr" / "runtime.py") if m.split(".")[0] == "cxr"}


def test_no_relative_imports():
    relative = [str(f.relative_to(REPO_ROOT)) for p in PACKAGES for f in files(p)
                if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(f.read_text())))]
    assert not relative


def test_the_rules_catch_a_violation(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import mlflow\n    from zenml.client import Client\n")
    assert imported_roots(bad) & FORBIDDEN["cxr"] == {"mlflow", "zenml"}


def test_zenml_package_lookup_is_cached_and_answers_as_zenml_does():
    from zenml.utils import source_utils

    import materializers  # noqa: F401  (installs the cache)

    lookup = source_utils._get_package_for_module
    assert hasattr(lookup, "cache_info"), "materializers did not cache ZenML's package lookup"
    for module in ("pandas.core.frame", "PIL.Image", "numpy", "no_such_module_anywhere"):
        assert lookup(module) == lookup.__wrapped__(module)
    assert lookup("pandas.core.frame") == "pandas" and lookup.cache_info().hits >= 1
