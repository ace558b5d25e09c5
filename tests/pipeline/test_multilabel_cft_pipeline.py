"""Multi-label training with unknown labels and the CFT branch through ZenML, on generated
images in the NIH Data_Entry format: CFT rewrites only the last-layer rows it tuned, GA knobs
alone re-run only CFT and what follows, and the CFT checkpoint is served and predicted."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score

from cxr.data.label_tables import NIH_FINDINGS
from tests.helpers import synthetic_xray
from tests.pipeline.conftest import FAST_INTERVALS, output, run_and_fetch, statuses, use_stack_tracking, write_yaml

pytestmark = pytest.mark.slow

FINDINGS = list(NIH_FINDINGS)
MIN_KNOWN = 8


def write_nih_folder(root: Path, n: int = 64, size: int = 32) -> Path:
    """``images/`` plus a Data_Entry-style ``labels.csv``: Effusion images carry an opacity,
    others get random findings; two images per patient."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        effusion = i % 2 == 0
        extra = [FINDINGS[j] for j in rng.choice([0, 1, 3], size=rng.integers(0, 2), replace=False)]
        names = (["Effusion"] if effusion else []) + extra
        cv2.imwrite(str(root / "images" / f"{i:08d}_000.png"), synthetic_xray(rng, size, effusion))
        rows.append({"Image Index": f"{i:08d}_000.png", "Finding Labels": "|".join(names) or "No Finding",
                     "Patient ID": i // 2})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


@pytest.fixture(scope="module")
def nih_data(tmp_path_factory) -> Path:
    return write_nih_folder(tmp_path_factory.mktemp("nih"))


def write_config(folder: Path, data: Path, population: int) -> Path:
    return write_yaml(folder / f"nih-{population}.yaml", {"parameters": {**FAST_INTERVALS,
        "data": {"source": "nih", "path": str(data / "labels.csv"), "image_dir": str(data / "images")},
        "split": {"val_fraction": 0.25},
        # the sharded store end to end: split views, features, SSL-free fine-tune, CFT, TTA, inference
        "preprocess": {"image_size": 32, "storage": "shards", "shard_size": 16},
        "model": {"backbone": "resnet10t"},
        "train": {"epochs": 2, "batch_size": 8, "loss": "pos_weight_bce", "negative_keep_fraction": 0.5},
        "tta_views": ["original"],
        "registered_model_name": "cxr-nih-test",
        "cft": {"population": population, "generations": 5, "patience": 5, "min_known": MIN_KNOWN},
        "promotion": {"n_bootstrap": 200},
    }, "model": {"name": "cxr-nih-test"}})


@pytest.fixture(scope="module")
def nih_runs(nih_data: Path, tmp_path_factory) -> dict:
    """``first`` (GA population 8), then ``second``: only the GA population changes (12)."""
    folder = tmp_path_factory.mktemp("nih-configs")
    return {name: run_and_fetch("train", write_config(folder, nih_data, population), f"nih-{name}")
            for name, population in (("first", 8), ("second", 12))}


def last_layer_rows(checkpoint) -> torch.Tensor:
    """(L, D + 1): each finding's last-layer weights and bias."""
    return torch.cat([checkpoint.state_dict["head.fc.weight"], checkpoint.state_dict["head.fc.bias"][:, None]], 1)


def test_the_decoded_images_are_an_artifact_of_shards_read_in_place(nih_runs):
    from cxr.data.shards import ShardedImages

    decoded = output(nih_runs["first"], "preprocess_images", "decoded_images")
    assert isinstance(decoded.images, ShardedImages) and not decoded.images.is_view
    assert len(decoded.images.file_paths()) == -(-len(decoded) // 16)
    assert decoded.images.folder.startswith(str(nih_runs["first"].steps["preprocess_images"].outputs["decoded_images"][0].uri))
    assert decoded.content_hash() == decoded.with_images(np.asarray(decoded.images)).content_hash()


def test_cft_rewrites_only_the_last_layer_rows_it_improved(nih_runs):
    first = nih_runs["first"]
    before, after = output(first, "finetune", "checkpoint"), output(first, "cft_finetune", "cft_checkpoint")
    assert after.meta.label_names == FINDINGS
    changed = {k for k in before.state_dict if not torch.equal(before.state_dict[k], after.state_dict[k])}
    assert "head.fc.weight" in changed and changed <= {"head.fc.weight", "head.fc.bias"}
    report = output(first, "cft_finetune", "cft_report")
    assert list(report["label"]) == FINDINGS
    improved = (report["skipped"] == "") & (report["val_fitness_after"] > report["val_fitness_before"])
    assert improved.any()
    rows_changed = (last_layer_rows(before) != last_layer_rows(after)).any(1).numpy()
    assert list(rows_changed) == list(improved), "rows rewritten must be exactly the findings CFT improved on val"


def test_cft_report_fitness_is_the_new_rows_val_average_precision(nih_runs):
    first = nih_runs["first"]
    after, report = output(first, "cft_finetune", "cft_checkpoint"), output(first, "cft_finetune", "cft_report")
    val = output(first, "split_dataset", "split_images").split("val")
    scores = output(first, "cft_features", "val_features") @ last_layer_rows(after)[:, :-1].numpy().T \
        + last_layer_rows(after)[:, -1].numpy()
    for j in np.flatnonzero(report["skipped"] == ""):
        known = val.mask[:, j]
        ap = average_precision_score(val.labels[known, j], scores[known, j])
        assert report.loc[j, "val_fitness_after"] == pytest.approx(ap, abs=0.02), FINDINGS[j]


def test_cft_skips_exactly_the_findings_with_too_few_known_positives_or_negatives(nih_runs):
    first = nih_runs["first"]
    report = output(first, "cft_finetune", "cft_report").set_index("label")
    images = output(first, "split_dataset", "split_images")
    too_few, positives = np.zeros(len(FINDINGS), bool), {}
    for part, least in (("train", MIN_KNOWN), ("val", 2)):
        subset = images.split(part)
        known, positives[part] = subset.mask.sum(0), (subset.labels * subset.mask).sum(0)
        assert list(report[f"{part}_known"]) == list(known)
        too_few |= np.minimum(positives[part], known - positives[part]) < least
    rare = positives["train"][FINDINGS.index("Infiltration")]
    assert 0 < rare < MIN_KNOWN, "a finding present in train but too rare to tune"
    assert list(report["skipped"] != "") == list(too_few) and too_few.sum() < len(FINDINGS)
    assert set(report.loc[report["skipped"] != "", "skipped"]) == {"too few known positives or negatives"}


def test_cft_features_are_the_penultimate_features_of_each_split(nih_runs):
    first = nih_runs["first"]
    images = output(first, "split_dataset", "split_images")
    for part in ("train", "val"):
        assert output(first, "cft_features", f"{part}_features").shape == (len(images.split(part)), 512)


def test_ga_knobs_alone_rerun_only_cft_and_what_follows(nih_runs):
    status = statuses(nih_runs["second"])
    assert status["split_dataset"] == status["finetune"] == status["cft_features"] == "cached"
    assert status["cft_finetune"] == status["evaluate"] == status["register_model"] == "completed"


def test_predict_with_the_latest_cft_checkpoint_artifact(nih_runs, nih_data: Path, tmp_path: Path, capsys):
    import run
    from cxr.infer.serving import predict_files

    second = nih_runs["second"]
    (tmp_path / "scans").mkdir()
    names = sorted(p.name for p in (nih_data / "images").iterdir())[:5]
    for name in names:
        (tmp_path / "scans" / name).write_bytes((nih_data / "images" / name).read_bytes())
    csv = tmp_path / "probs.csv"
    assert run.main(["predict", str(tmp_path / "scans"), "--artifact", "cft_checkpoint", "--csv", str(csv)]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in names)
    written = pd.read_csv(csv).set_index("id").loc[names, FINDINGS].to_numpy()
    paths = [str(tmp_path / "scans" / n) for n in names]
    cft, plain = (predict_files(output(second, step, name), paths, names)[FINDINGS].to_numpy()
                  for step, name in (("cft_finetune", "cft_checkpoint"), ("finetune", "checkpoint")))
    np.testing.assert_allclose(written, cft, atol=1e-6)
    tuned = (last_layer_rows(output(second, "finetune", "checkpoint"))
             != last_layer_rows(output(second, "cft_finetune", "cft_checkpoint"))).any(1).numpy()
    assert np.abs(written - plain)[:, tuned].max() > 1e-4, "the plain checkpoint's predictions, not CFT's"


def test_inference_pipeline_streams_new_images_through_the_champion(nih_runs, tmp_path: Path, nih_data: Path):
    import mlflow

    from cxr.infer.serving import predict_files
    from steps.registry.lifecycle import served_model

    config = write_yaml(tmp_path / "infer.yaml", {"parameters": {
        "data": {"source": "images", "path": str(nih_data / "images"), "label_names": FINDINGS},
        "registered_model_name": "cxr-nih-test", "output_path": str(tmp_path / "pred.csv"), "chunk_size": 16,
    }})
    mlflow.set_tracking_uri("")  # as in a fresh process: the step must find the stack's registry itself
    run = run_and_fetch("infer", config, "nih-infer")
    assert str(run.status.value) == "completed"
    written = pd.read_csv(tmp_path / "pred.csv")
    assert len(written) == 64 and list(written.columns) == ["id", *FINDINGS, "flag", "flag_reason"]
    assert written["flag"].all() and written["flag_reason"].str.contains("too_small").all()  # 32 px sources
    use_stack_tracking()
    champion = served_model("models:/cxr-nih-test@champion")
    paths = sorted(str(p) for p in (nih_data / "images").iterdir())[:5]
    expected = predict_files(champion, paths, [Path(p).stem for p in paths])
    got = written.set_index("id").loc[expected["id"], FINDINGS].to_numpy()
    np.testing.assert_allclose(got, expected[FINDINGS].to_numpy(), atol=1e-5)
