"""Each step's cache key covers the core modules it calls, transitively, and nothing else."""

from __future__ import annotations

from steps.caching import core_cache_policy, core_files


def test_preprocess_depends_on_decode_and_clahe_not_on_training():
    files = core_files("cxr.data.preprocess")
    assert {"cxr/data/preprocess.py", "cxr/data/decode.py", "cxr/features/clahe.py",
            "cxr/errors.py", "cxr/data/__init__.py"} <= set(files)
    assert not any(f.startswith("cxr/train/") for f in files)


def test_training_depends_on_losses_through_the_loop():
    files = core_files("cxr.train.loop")
    assert {"cxr/train/losses.py", "cxr/train/augment.py", "cxr/models/heads.py",
            "cxr/infer/predict.py"} <= set(files)
    assert "cxr/features/clahe.py" not in files


def test_policy_lists_existing_relative_paths():
    policy = core_cache_policy("cxr.infer.tta")
    assert policy.file_dependencies and all(not f.startswith("/") for f in policy.file_dependencies)
