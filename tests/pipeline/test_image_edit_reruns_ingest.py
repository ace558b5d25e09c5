"""Editing an image on disk between two runs re-runs everything that reads it, an untouched
re-run stays cached, and the CLI's ``info`` and ``predict --artifact`` see the newest run."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_class_tree
from tests.pipeline.conftest import folders_source, output, run_and_fetch, statuses, write_yaml

pytestmark = pytest.mark.slow

AFTER_INGEST = {"split_dataset", "preprocess_images", "finetune", "tta_predict_val", "evaluate", "register_model"}
EDITED = "PNEUMONIA/patientP0_img0.png"


@pytest.fixture(scope="module")
def edit_runs(tmp_path_factory) -> tuple[Path, dict]:
    """Runs ``fresh``, ``untouched`` (same files) and ``edited`` (one image's pixels inverted in place)."""
    folder = tmp_path_factory.mktemp("edit")
    data = write_class_tree(folder / "data", n_per_class=12, size=32)
    config = write_yaml(folder / "config.yaml", {"parameters": {
        "data": folders_source(data), "split": {"val_fraction": 0.25}, "preprocess": {"image_size": 32},
        "model": {"backbone": "resnet10t"}, "train": {"epochs": 1, "batch_size": 8},
        "tta_views": ["original"], "registered_model_name": "cxr-edit-image-test"}})
    runs = {name: run_and_fetch("train", config, f"edit-{name}") for name in ("fresh", "untouched")}
    image = data / EDITED
    cv2.imwrite(str(image), 255 - cv2.imread(str(image), cv2.IMREAD_GRAYSCALE))
    runs["edited"] = run_and_fetch("train", config, "edit-edited")
    return data, runs


def ingest_hash(run) -> str:
    return run.steps["ingest"].outputs["images"][0].content_hash


def test_untouched_rerun_keeps_the_hash_and_the_cache(edit_runs):
    _, runs = edit_runs
    assert ingest_hash(runs["untouched"]) == ingest_hash(runs["fresh"])
    status = statuses(runs["untouched"])
    assert status["ingest"] == "completed"
    assert {s: status[s] for s in AFTER_INGEST} == dict.fromkeys(AFTER_INGEST, "cached")


def test_editing_one_image_changes_the_hash_and_reruns_what_reads_it(edit_runs):
    _, runs = edit_runs
    assert ingest_hash(runs["edited"]) != ingest_hash(runs["untouched"])
    status = statuses(runs["edited"])
    assert {s: status[s] for s in AFTER_INGEST} == dict.fromkeys(AFTER_INGEST, "completed")
    before = output(runs["fresh"], "preprocess_images", "decoded_images")
    after = output(runs["edited"], "preprocess_images", "decoded_images")
    assert after.ids == before.ids
    edited = after.ids.index(Path(EDITED).stem)
    same = [i for i in range(len(after)) if i != edited]
    assert np.array_equal(after.images[same], before.images[same])
    assert np.abs(after.images[edited].astype(int) - before.images[edited]).mean() > 20


def test_info_prints_the_stack_tracking_uri_and_latest_run(edit_runs, capsys):
    import run
    from pipelines import runner

    assert run.main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3:] == ["stack: cxr_local", f"MLflow tracking URI: {runner.tracking_uri()}",
                          "latest run: edit-edited (completed)"]


def test_predict_with_the_latest_checkpoint_artifact(edit_runs, tmp_path: Path, capsys):
    import run
    from cxr.infer.serving import predict_files

    data, runs = edit_runs
    paths = sorted((data / "NORMAL").iterdir())[:3] + sorted((data / "PNEUMONIA").iterdir())[:3]
    (tmp_path / "scans").mkdir()
    for path in paths:
        (tmp_path / "scans" / path.name).write_bytes(path.read_bytes())
    csv = tmp_path / "probs.csv"
    assert run.main(["predict", str(tmp_path / "scans"), "--artifact", "checkpoint", "--csv", str(csv)]) == 0
    printed = capsys.readouterr().out
    written = pd.read_csv(csv).set_index("id")
    names = sorted(p.name for p in paths)
    expected = predict_files(output(runs["edited"], "finetune", "checkpoint"),
                             [str(tmp_path / "scans" / n) for n in names], names).set_index("id")
    assert sorted(written.index) == names and all(name in printed for name in names)
    np.testing.assert_allclose(written.loc[names, "pneumonia"], expected.loc[names, "pneumonia"], atol=1e-6)
