"""A step's cache key covers the code of the modules it imports, transitively, and nothing else;
comments, docstrings and formatting do not count."""

from __future__ import annotations

import importlib

import pytest

import steps.caching as caching
from steps.caching import code_cache_policy, code_files, code_fingerprint, code_hash

SOURCE = '''"""Module docstring."""

def f(x: int) -> int:
    """Docstring."""
    # a comment
    return x + 1


class A:
    """Only a docstring."""
'''


def test_preprocessing_depends_on_decode_and_clahe_not_on_training():
    files = set(code_files("steps.data.preprocess_images"))
    assert {"steps/data/preprocess_images.py", "cxr/data/preprocess.py", "cxr/data/decode.py",
            "cxr/features/clahe.py", "cxr/errors.py", "cxr/data/__init__.py", "steps/caching.py"} <= files
    assert not any(f.startswith("cxr/train/") for f in files)


def test_finetune_depends_on_losses_but_ssl_and_features_do_not():
    finetune = set(code_files("steps.train.finetune"))
    assert {"cxr/train/losses.py", "cxr/runtime.py", "cxr/models/heads.py"} <= finetune
    assert "cxr/features/clahe.py" not in finetune and "cxr/data/preprocess.py" not in finetune
    for step in ("steps.ssl.ssl_pretrain", "steps.ssl.handcrafted_features", "steps.ssl.nn_pairs"):
        files = code_files(step)
        assert "cxr/train/losses.py" not in files and "cxr/train/loop.py" not in files, step


def test_package_reexports_are_not_followed():
    files = code_files("steps.train.finetune")
    assert "steps/train/__init__.py" in files and "steps/train/cft_finetune.py" not in files


def test_a_step_that_calls_step_helpers_depends_on_them():
    assert "steps/registry/lifecycle.py" in code_files("steps.registry.register_model")


def test_comments_docstrings_and_formatting_do_not_change_the_fingerprint():
    reformatted = (SOURCE.replace('"""Docstring."""', '"""Another docstring,\n    on two lines."""')
                   .replace("# a comment", "# another comment\n\n").replace("x + 1", "x  +  1")
                   .replace('"""Module docstring."""', "# header comment"))
    assert code_fingerprint(reformatted) == code_fingerprint(SOURCE)


@pytest.mark.parametrize("old,new", [("x + 1", "x + 2"), ("x: int", "x: float"), ("def f", "def g"),
                                     ('    """Only a docstring."""', "    y = 1")])
def test_any_code_edit_changes_the_fingerprint(old: str, new: str):
    assert code_fingerprint(SOURCE.replace(old, new)) != code_fingerprint(SOURCE)


def test_a_string_that_is_not_a_docstring_counts():
    assert code_fingerprint(SOURCE.replace("return x + 1", 'print("a")\n    return x + 1')) != \
        code_fingerprint(SOURCE.replace("return x + 1", 'print("b")\n    return x + 1'))


def test_the_policy_loads_a_cache_function_that_hashes_the_step_code():
    policy = code_cache_policy("steps.infer.tta_predict")
    assert policy.include_step_code is False
    source = policy.cache_func
    function = getattr(importlib.import_module(source.module), source.attribute)
    assert function() == code_hash("steps.infer.tta_predict") != code_hash("steps.data.split_dataset")


def test_unknown_modules_and_attributes_are_refused():
    with pytest.raises(ValueError, match="no Python source"):
        code_cache_policy("steps.train.no_such_step")
    with pytest.raises(AttributeError, match="no_such_thing"):
        caching.no_such_thing
