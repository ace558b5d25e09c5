"""Honest evaluation in the core: the site-shift proxy split, metrics on a set at thresholds
fitted elsewhere, the val-minus-set gap table, and the set-name checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from cxr.data.imageset import ImageSet, hashed_id
from cxr.data.split import ProxyConfig, SplitConfig, split_train_val
from cxr.errors import DataError
from cxr.metrics.generalisation import (ThresholdConfig, check_set_names, fitted_thresholds, gap_table,
                                        part_report, scored_part)
from cxr.train.config import TrainConfig

RNG = np.random.default_rng(0)


def kermany_like(n_patients: int = 120) -> ImageSet:
    """Kermany-style ids: persons (2 images each, positive) and IM- / NORMAL2-IM- normals."""
    ids, patients, labels = [], [], []
    for k in range(n_patients):
        family, label = [("person", 1.0), ("IM-", 0.0), ("NORMAL2-IM-", 0.0)][k % 3]
        patient = f"{family}{k + 1:04d}"
        for image in range(2):
            ids.append(f"{patient}_{image}")
            patients.append(patient)
            labels.append(label)
    manifest = pd.DataFrame({"id": ids, "path": [f"/site{int(p[-4:]) % 4}/{i}.png" for i, p in zip(ids, patients)],
                             "patient_id": patients, "split": "all"})
    y = np.array(labels, np.float32)[:, None]
    return ImageSet(manifest, ("pneumonia",), y, np.ones_like(y, bool))


class TestProxySplit:
    def test_id_order_holds_out_the_highest_numbers_of_every_family(self):
        out = split_train_val(kermany_like(), SplitConfig(val_fraction=0.2, proxy=ProxyConfig(fraction=0.25)))
        m = out.manifest.assign(family=out.manifest["patient_id"].str.replace(r"\d+$", "", regex=True),
                                number=out.manifest["patient_id"].str.extract(r"(\d+)$")[0].astype(int))
        for family, rows in m.groupby("family"):
            proxy, rest = rows[rows["split"] == "proxy"], rows[rows["split"] != "proxy"]
            assert len(proxy) == 20, family  # 40 patients x 2 images x 0.25
            assert proxy["number"].min() > rest["number"].max(), family
        assert set(m["split"]) == {"train", "val", "proxy"}

    @pytest.mark.parametrize("proxy", [ProxyConfig(fraction=0.2), ProxyConfig(method="groups", pattern=r"/(site\d)/",
                                                                               fraction=0.2, seed=3)])
    def test_no_patient_or_group_on_two_sides(self, proxy: ProxyConfig):
        out = split_train_val(kermany_like(), SplitConfig(val_fraction=0.2, proxy=proxy))
        sides = out.manifest.groupby("patient_id")["split"].nunique()
        assert (sides == 1).all()
        if proxy.method == "groups":
            site = out.manifest["path"].str.extract(r"/(site\d)/")[0]
            assert (out.manifest.groupby(site)["split"].apply(lambda s: (s == "proxy").all() or
                                                                        (s != "proxy").all())).all()
            assert 0 < (out.manifest["split"] == "proxy").mean() < 0.5

    def test_without_proxy_val_is_the_plain_stratified_group_fold(self):
        images = kermany_like()
        plain = split_train_val(images, SplitConfig(val_fraction=0.2, seed=4)).manifest["split"]
        folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=4)
        _, val = next(folds.split(np.zeros(len(images)), images.labels[:, 0].astype(int) - 1,
                                  images.manifest["patient_id"]))
        assert np.flatnonzero(plain == "val").tolist() == sorted(val.tolist())
        assert set(plain) == {"train", "val"}

    def test_proxy_does_not_depend_on_the_val_seed(self):
        images = kermany_like()
        proxy = [split_train_val(images, SplitConfig(seed=s, proxy=ProxyConfig())).manifest["split"] == "proxy"
                 for s in (0, 1)]
        assert proxy[0].tolist() == proxy[1].tolist()

    def test_ids_without_digits_are_named_hashed(self):
        images = kermany_like()
        images.manifest.loc[0:1, "patient_id"] = "anonymous"
        with pytest.raises(DataError, match=f"1 patient id.*{hashed_id('anonymous')}") as raised:
            split_train_val(images, SplitConfig(proxy=ProxyConfig()))
        assert "anonymous" not in str(raised.value)

    def test_groups_skip_a_group_that_would_hold_out_too_much(self):
        images = kermany_like()
        images.manifest["path"] = [f"/{'big' if k < 200 else f'small{k % 4}'}/{k}.png" for k in range(len(images))]
        for seed in range(4):
            out = split_train_val(images, SplitConfig(proxy=ProxyConfig(method="groups", pattern="^/(\\w+)/",
                                                                        fraction=0.15, seed=seed)))
            proxy = out.manifest[out.manifest["split"] == "proxy"]
            assert not proxy["path"].str.startswith("/big/").any() and 0.1 < len(proxy) / len(images) <= 0.3

    def test_bad_pattern_and_unknown_method_fail_validation(self):
        with pytest.raises(ValueError, match="not a regular expression"):
            ProxyConfig(pattern="(")
        with pytest.raises(ValueError, match="id_order"):
            ProxyConfig(method="random")
        with pytest.raises(ValueError, match="'groups' needs split.proxy.pattern"):
            ProxyConfig(method="groups")


class TestSetMetrics:
    y = (RNG.random((300, 2)) < 0.4).astype(np.float32)
    p = np.clip(y * 0.3 + RNG.random(y.shape) * 0.7, 0, 1)

    def part(self, y: np.ndarray, names=("a", "b")) -> ImageSet:
        manifest = pd.DataFrame({"id": [f"i{k}" for k in range(len(y))], "path": "x", "patient_id": "p",
                                 "split": "all"})
        return ImageSet(manifest, names, y, np.ones_like(y, bool))

    def test_metrics_equal_scikit_learn_at_thresholds_fitted_elsewhere(self):
        fit_on, scored = self.part(self.y[:150]), self.part(self.y[150:])
        cut = fitted_thresholds(fit_on, self.p[:150], ["a", "b"], ThresholdConfig())
        report, metrics = part_report(scored, self.p[150:], ["a", "b"], cut)
        for j, label in enumerate("ab"):
            y, p = self.y[150:, j], self.p[150:, j]
            row = report.set_index("label").loc[label]
            assert row["auc"] == pytest.approx(roc_auc_score(y, p))
            assert row["average_precision"] == pytest.approx(average_precision_score(y, p))
            assert row["threshold"] == cut[j]
            assert row["f1"] == pytest.approx(f1_score(y, p >= cut[j]))
        assert metrics["mean_auc"] == pytest.approx(np.mean([roc_auc_score(self.y[150:, j], self.p[150:, j])
                                                             for j in range(2)]))

    def test_labels_follow_the_model_order_and_missing_labels_are_named(self):
        swapped = self.part(self.y[:, ::-1].copy(), names=("b", "a"))
        predictions = pd.DataFrame({"id": swapped.ids, "a": self.p[:, 0], "b": self.p[:, 1]})
        probs = scored_part(swapped, predictions, ["a", "b"], "site")
        report, _ = part_report(swapped, probs, ["a", "b"], np.array([0.5, 0.5]))
        assert report["auc"].tolist() == pytest.approx([roc_auc_score(self.y[:, j], self.p[:, j]) for j in range(2)])
        with pytest.raises(DataError, match=r"site set has no labels \['c'\]"):
            scored_part(swapped, predictions.assign(c=0.0), ["a", "b", "c"], "site")

    def test_gap_table_is_val_minus_each_set(self):
        val = pd.DataFrame({"label": ["a", "b"], "auc": [0.95, 0.90]})
        proxy = pd.DataFrame({"label": ["a", "b"], "auc": [0.85, 0.80]})
        table = gap_table({"val": val, "proxy": proxy}).set_index("label")
        assert table.loc["a", "gap_proxy"] == pytest.approx(0.10)
        assert table.loc["mean", "val"] == pytest.approx(0.925)
        assert table.loc["mean", "gap_proxy"] == pytest.approx(0.10)
        site = pd.DataFrame({"label": ["a", "b"], "auc": [0.90, np.nan]})  # b: one class at the site
        mean = gap_table({"val": val, "site": site}).set_index("label").loc["mean"]
        assert (mean["val"], mean["site"], mean["gap_site"]) == pytest.approx((0.925, 0.90, 0.05))


def test_settings_naming_a_missing_set_are_refused():
    check_set_names({"promotion.holdout": "site_b"}, True, ["site_b"])
    with pytest.raises(ValueError, match="parameters.promotion.holdout: 'proxy' is a set.*set split.proxy"):
        check_set_names({"promotion.holdout": "proxy"}, False, [])
    with pytest.raises(ValueError, match="unique"):
        check_set_names({}, False, ["a", "a"])
    with pytest.raises(ValueError, match="select_on"):
        TrainConfig(select_on="test")
