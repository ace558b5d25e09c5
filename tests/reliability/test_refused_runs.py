"""Runs that must not start: a test set or sample submission the model could not be scored on, and
an empty split, are refused before any training, with the ids or keys at fault named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr.data.imageset import ImageSet, make_manifest
from cxr.data.preflight import check_sample_submission, check_test_labels
from cxr.errors import DataError

pytestmark = pytest.mark.reliability


def listed(ids: list[str], labels: tuple[str, ...] = ()) -> ImageSet:
    """An ingested list of images (no pixels) with these ids and label names, labels unknown."""
    shape = (len(ids), len(labels))
    return ImageSet(make_manifest(ids, [f"/x/{i}.png" for i in ids]), labels, np.zeros(shape, np.float32),
                    np.zeros(shape, bool))


def sample(tmp_path: Path, ids: list[str], columns: tuple[str, ...] = ("pneumonia",)) -> Path:
    path = tmp_path / "sample_submission.csv"
    pd.DataFrame({"id": ids, **{c: 0.5 for c in columns}}).to_csv(path, index=False)
    return path


TRAIN = listed(["a", "b"], ("pneumonia",))


def test_matching_test_inputs_pass(tmp_path):
    test = listed([f"test_{i}" for i in range(3)], ("pneumonia",))
    check_test_labels(TRAIN, test)
    check_test_labels(TRAIN, listed(["t"]))  # a test set that names no labels
    check_sample_submission(sample(tmp_path, ["test_2", "test_0", "test_1"]), ["pneumonia"], test)


def test_test_labels_that_differ_from_training_are_refused():
    with pytest.raises(DataError) as error:
        check_test_labels(listed(["a"], ("effusion", "nodule")), listed(["t"], ("effusion", "mass")))
    assert str(error.value) == ("test_data.label_names ['effusion', 'mass'] differ from the training labels "
                                "['effusion', 'nodule']: missing ['nodule'], extra ['mass']")
    with pytest.raises(DataError, match=r"missing \[\], extra \[\] \(same names, other order\)$"):
        check_test_labels(listed(["a"], ("a", "b")), listed(["t"], ("b", "a")))


def test_sample_ids_missing_from_and_extra_to_the_test_images_are_named(tmp_path):
    test = listed([f"test_{i:02d}" for i in range(10)])
    path = sample(tmp_path, [f"test_{i:02d}" for i in range(3, 10)] + ["other_1", "other_2"])
    with pytest.raises(DataError) as error:
        check_sample_submission(path, ["pneumonia"], test)
    assert str(error.value) == (f"sample_submission {path} does not match the 10 test images: 2 ids have no test "
                                "image ['other_1', 'other_2'], 3 test images are not in it "
                                "['test_00', 'test_01', 'test_02']")
    many = sample(tmp_path, [f"x{i}" for i in range(7)])
    with pytest.raises(DataError, match=r"7 ids have no test image \['x0', 'x1', 'x2', 'x3', 'x4'\] \(7 in all\)"):
        check_sample_submission(many, ["pneumonia"], test)


@pytest.mark.parametrize("content,problem", [
    ("id,pneumonia\nt1,0.5\nt1,0.5\n", "lists 1 ids twice, e.g. ['t1']"),
    ("id,effusion\nt1,0.5\n", "asks for columns ['effusion']; the model predicts ['pneumonia']"),
    ("id\nt1\n", ": needs an id column and at least one label column"),
    ("", ": cannot be read as CSV (No columns to parse from file)"),
], ids=["duplicate id", "unknown column", "no label column", "empty file"])
def test_a_malformed_sample_submission_is_refused(tmp_path, content, problem):
    path = tmp_path / "sample.csv"
    path.write_text(content)
    with pytest.raises(DataError) as error:
        check_sample_submission(path, ["pneumonia"], listed(["t1"]))
    assert str(error.value) == f"sample_submission {path}{'' if problem.startswith(':') else ' '}{problem}"


def test_a_missing_sample_submission_is_refused(tmp_path):
    with pytest.raises(DataError, match=rf"sample_submission {tmp_path / 'no.csv'}: cannot be read as CSV"):
        check_sample_submission(tmp_path / "no.csv", ["pneumonia"], listed(["t1"]))


def test_an_empty_set_or_one_too_small_for_a_val_split_is_refused():
    from cxr.data.split import SplitConfig, split_train_val

    with pytest.raises(DataError, match="^cannot split an empty image set$"):
        split_train_val(listed([], ("pneumonia",)), SplitConfig())
    one_patient = listed(["p1_a", "p1_b"], ("pneumonia",))
    one_patient.manifest["patient_id"] = "p1"
    with pytest.raises(DataError, match=r"^1 patients are too few for a 15% val split"):
        split_train_val(one_patient, SplitConfig())


@pytest.mark.slow
def test_a_pipeline_with_a_mismatched_sample_submission_stops_before_training(tmp_path, capsys):
    import yaml
    from zenml.client import Client

    import run
    from tests.helpers import write_class_tree
    from tests.pipeline.conftest import folders_source, statuses

    tree = write_class_tree(tmp_path / "tree", n_per_class=16, size=48)
    test_dir = write_class_tree(tmp_path / "test", n_per_class=2, size=48) / "NORMAL"
    ids = sorted(p.stem for p in test_dir.iterdir())
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"parameters": {
        "data": folders_source(tree), "test_data": {"source": "images", "path": str(test_dir)},
        "sample_submission": str(sample(tmp_path, ids[1:] + ["unknown_image"])),
        "split": {"val_fraction": 0.3}, "preprocess": {"image_size": 32}, "train": {"epochs": 1},
        "guardrails": None, "drift": None}}))
    assert run.main(["train", "-c", str(config), "--run-name", "refused"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"error: step check_test_inputs: sample_submission {tmp_path / 'sample_submission.csv'} does "
                    f"not match the {len(ids)} test images: 1 ids have no test image ['unknown_image'], "
                    f"1 test images are not in it ['{ids[0]}']")
    steps = statuses(Client().get_pipeline_run("refused"))
    assert steps["check_test_inputs"] == "failed" and steps.get("finetune") in (None, "skipped")
