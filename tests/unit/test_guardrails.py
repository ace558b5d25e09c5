"""Input guardrails: each source check against the stats preprocessing records, the fitted
polarity and distance checks on generated X-rays, and how flags reach the predictions."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxr.data.imageset import SOURCE_COLUMNS, ImageSet, make_manifest
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.data.sources import read_image_folder
from cxr.infer.guardrails import GuardrailConfig, fit_guardrails, fitted, flagged_predictions, guard
from cxr.models.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import random_checkpoint, synthetic_xray

SOURCE_ONLY = GuardrailConfig(checks=["too_small", "constant", "clipped", "colour"])


def with_stats(rows: list[tuple]) -> ImageSet:
    """An image set whose manifest holds the given ``SOURCE_COLUMNS`` rows."""
    n = len(rows)
    manifest = make_manifest([f"i{k}" for k in range(n)], [f"i{k}.png" for k in range(n)])
    frame = pd.DataFrame(rows, columns=list(SOURCE_COLUMNS))
    return ImageSet(pd.concat([manifest, frame], axis=1), (), np.zeros((n, 0), np.float32), np.zeros((n, 0), bool),
                    np.zeros((n, 8, 8), np.uint8))


def test_source_checks_flag_exactly_past_their_thresholds() -> None:
    data = with_stats([(512, 512, 40.0, 0.1, 0.0),  # a normal radiograph
                       (63, 512, 40.0, 0.1, 0.0),  # too small on one side
                       (512, 512, 2.9, 0.1, 0.0),  # near-constant
                       (512, 512, 40.0, 0.61, 0.0),  # mostly clipped
                       (512, 512, 40.0, 0.1, 10.5),  # colour
                       (1, 1, 0.0, 1.0, 0.0)])
    flags = guard(random_checkpoint(), data, SOURCE_ONLY)
    assert flags["flag"].tolist() == [False, True, True, True, True, True]
    assert flags["flag_reason"].tolist() == ["", "too_small", "constant", "clipped", "colour",
                                             "too_small;constant;clipped"]


def test_preprocessing_records_the_source_stats(tmp_path) -> None:
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "a.png"), synthetic_xray(rng, 80))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((30, 50), np.uint8))
    colour = np.zeros((40, 40, 3), np.uint8)
    colour[..., 2] = 200  # pure red (BGR on disk): spread 200 everywhere
    cv2.imwrite(str(tmp_path / "c.png"), colour)
    data = preprocess_imageset(read_image_folder(tmp_path), PreprocessConfig(image_size=32), progress=False)
    stats = data.manifest.set_index("id")[list(SOURCE_COLUMNS)]
    assert stats.loc["a", ["source_height", "source_width"]].tolist() == [80, 80] and stats.loc["a", "source_std"] > 10
    assert stats.loc["b"].tolist() == [30, 50, 0.0, 1.0, 0.0]
    assert stats.loc["c", "source_colour"] == pytest.approx(200.0)


@pytest.fixture(scope="module")
def xrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    images = np.stack([synthetic_xray(rng, 32, positive=bool(i % 2)) for i in range(160)])
    return images[:120], images[120:]


def test_fitted_checks_catch_inverted_and_foreign_images_and_little_else(xrays) -> None:
    train, val = xrays
    checkpoint = fit_guardrails(random_checkpoint(), train, val, GuardrailConfig(ood_percentile=95), device="cpu")
    cfg = GuardrailConfig(checks=["inverted", "out_of_distribution"], ood_percentile=95)
    rng = np.random.default_rng(2)
    sets = {"val": val, "inverted": 255 - val, "noise": rng.integers(0, 256, val.shape, dtype=np.uint8)}
    share = {}
    for name, images in sets.items():
        data = with_stats([(32, 32, 30.0, 0.0, 0.0)] * len(images))
        share[name] = guard(checkpoint, ImageSet(data.manifest, (), data.labels, data.mask, images), cfg,
                            device="cpu")["flag_reason"]
    assert share["val"].eq("").mean() >= 0.9  # the 95th percentile of val itself, plus polarity errors
    assert share["inverted"].str.contains("inverted").mean() >= 0.95
    assert share["noise"].str.contains("out_of_distribution").all()


def test_fitted_guardrails_leave_the_model_unchanged_and_survive_a_round_trip(tmp_path, xrays) -> None:
    train, val = xrays
    base = random_checkpoint()
    checkpoint = fit_guardrails(base, train, val, device="cpu")
    assert set(fitted(checkpoint)) == {"ood_location", "ood_precision", "ood_threshold", "polarity_weight",
                                       "polarity_bias"}
    assert checkpoint.model_state.keys() == base.state_dict.keys()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(checkpoint.build_model()(x), base.build_model()(x), rtol=0, atol=0)
    loaded = load_checkpoint(save_checkpoint(checkpoint, tmp_path / "ckpt"))
    assert loaded.meta.guardrails == GuardrailConfig().model_dump()
    for name, value in fitted(checkpoint).items():
        np.testing.assert_array_equal(fitted(loaded)[name], value)


def test_unfitted_checkpoint_runs_source_checks_with_a_warning() -> None:
    data = with_stats([(512, 512, 40.0, 0.1, 0.0), (512, 512, 0.0, 1.0, 0.0)])
    with pytest.warns(UserWarning, match="no fitted guardrails"):
        flags = guard(random_checkpoint(), data)
    assert flags["flag_reason"].tolist() == ["", "clipped;constant"]  # the registry order


def test_flags_join_predictions_and_reject_blanks_flagged_scores() -> None:
    predictions = pd.DataFrame({"id": ["a", "b"], "x": [0.2, 0.9]})
    flags = pd.DataFrame({"id": ["a", "b"], "flag": [False, True], "flag_reason": ["", "constant"]})
    kept = flagged_predictions(predictions, flags, ["x"])
    assert kept["x"].tolist() == [0.2, 0.9] and kept["flag_reason"].tolist() == ["", "constant"]
    rejected = flagged_predictions(predictions, flags, ["x"], reject=True)
    assert rejected["x"].iloc[0] == 0.2 and np.isnan(rejected["x"].iloc[1])
    with pytest.raises(ValueError, match="same order"):
        flagged_predictions(predictions, flags.iloc[::-1], ["x"])


def test_registered_pyfunc_serves_flags_and_rejects_when_its_guardrails_say_so(tmp_path, xrays, registry) -> None:
    import mlflow

    from steps.registry.lifecycle import log_served_model

    train, val = xrays
    rng = np.random.default_rng(3)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"ok{i}.png"), synthetic_xray(rng, 80))
    cv2.imwrite(str(tmp_path / "dot.png"), np.full((1, 1), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "black.png"), np.zeros((64, 64), np.uint8))
    paths = [str(tmp_path / n) for n in ("ok0.png", "ok1.png", "ok2.png", "dot.png", "black.png")]
    checks = ["too_small", "constant", "clipped", "colour"]
    versions = {}
    with mlflow.start_run():
        for reject in (False, True):
            guarded = fit_guardrails(random_checkpoint(), train, val, GuardrailConfig(checks=checks, reject=reject),
                                     device="cpu")
            versions[reject] = log_served_model(guarded, "cxr-guardrail-test")
    served = {r: mlflow.pyfunc.load_model(f"models:/cxr-guardrail-test/{v}") for r, v in versions.items()}
    got = served[False].predict(pd.DataFrame({"path": paths}))
    assert got["flag"].tolist() == [False, False, False, True, True]
    assert got["flag_reason"].tolist()[3:] == ["too_small;constant", "constant;clipped"]
    assert got[["a", "b"]].notna().all().all()
    rejected = served[True].predict(pd.DataFrame({"path": paths}))
    assert rejected[["a", "b"]].isna().all(axis=1).tolist() == [False, False, False, True, True]
    plain = served[False].predict(pd.DataFrame({"path": paths}), params={"guardrails": False})
    assert "flag" not in plain.columns
    np.testing.assert_allclose(plain[["a", "b"]].to_numpy(), got[["a", "b"]].to_numpy())
