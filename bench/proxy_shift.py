"""How far each evaluation split sits from the training images: a domain classifier's AUC.

    python bench/proxy_shift.py [--config zenml_config.yaml] [--size 64]

Splits the configured training data as the pipeline does (patient-level val, plus the
split.proxy the config sets, or the default id_order proxy), decodes the images and the
unlabelled test folder, and for each of val, proxy and test trains a logistic regression
(5-fold cross-validated) to tell its images from the train split's, in two feature spaces:
the 22 handcrafted statistics and 24 px thumbnails (50 principal components). AUC 0.5:
indistinguishable from train (what a random patient-level val gives); higher: a shift.
A random patient-level set of the proxy's size is the baseline. Prints one JSON line per
(split, feature space).
"""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np
import yaml
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxr.data.imageset import ImageSet
from cxr.data.ingest import IngestConfig, read_source
from cxr.data.preprocess import PreprocessConfig, preprocess_imageset
from cxr.data.split import ProxyConfig, SplitConfig, split_train_val
from cxr.features.handcrafted import FEATURE_NAMES, handcrafted_features


def feature_spaces(images: np.ndarray) -> dict[str, np.ndarray]:
    """Handcrafted statistics and flattened 24 px thumbnails of uint8 (N, H, W) images."""
    thumbs = np.stack([cv2.resize(i, (24, 24), interpolation=cv2.INTER_AREA) for i in images])
    return {"handcrafted": handcrafted_features(images)[list(FEATURE_NAMES)].to_numpy(),
            "thumbnail_pca50": thumbs.reshape(len(images), -1).astype(np.float64)}


def domain_auc(a: np.ndarray, b: np.ndarray, groups: np.ndarray, pca: bool) -> float:
    """Cross-validated AUC of a logistic regression telling rows of ``b`` from rows of ``a``;
    folds keep each patient (``groups``) on one side, so it cannot win by recognising patients."""
    x, y = np.concatenate([a, b]), np.r_[np.zeros(len(a)), np.ones(len(b))]
    model = make_pipeline(StandardScaler(), *([PCA(50, random_state=0)] if pca else []),
                          LogisticRegression(C=0.1, max_iter=3000))
    folds = StratifiedGroupKFold(5, shuffle=True, random_state=0)
    probs = cross_val_predict(model, x, y, groups=groups, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, probs))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="zenml_config.yaml")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    params = yaml.safe_load(open(args.config))["parameters"]
    split_cfg = SplitConfig(**params.get("split", {}))
    if split_cfg.proxy is None:
        split_cfg = split_cfg.model_copy(update={"proxy": ProxyConfig()})
    prep = PreprocessConfig(image_size=args.size, clahe=False)
    data = preprocess_imageset(split_train_val(read_source(IngestConfig(**params["data"])), split_cfg), prep,
                               progress=False)
    parts: dict[str, ImageSet] = {name: data.split(name) for name in ("train", "val", "proxy")}
    rest = np.flatnonzero(data.manifest["split"] != "proxy")
    patients = data.manifest["patient_id"].iloc[rest].unique()
    drawn = set(np.random.default_rng(0).permutation(patients)[:parts["proxy"].manifest["patient_id"].nunique()])
    parts["random_patients"] = data.subset(rest[data.manifest["patient_id"].iloc[rest].isin(drawn).to_numpy()])
    if params.get("test_data"):
        parts["test"] = preprocess_imageset(read_source(IngestConfig(**params["test_data"])), prep, progress=False)
    spaces = {name: feature_spaces(part.images) for name, part in parts.items()}
    train_patients = parts["train"].manifest["patient_id"].to_numpy()
    for name in [n for n in parts if n != "train"]:
        keep = ~np.isin(train_patients, list(drawn)) if name == "random_patients" else np.ones(len(train_patients), bool)
        groups = np.r_[train_patients[keep], "split:" + parts[name].manifest["patient_id"].to_numpy().astype(object)]
        for space, x in spaces[name].items():
            auc = domain_auc(spaces["train"][space][keep], x, groups, "pca" in space)
            print(json.dumps({"bench": "proxy_shift", "config": args.config, "split": name, "images": len(parts[name]),
                              "features": space, "train_vs_split_auc": round(auc, 4)}), flush=True)

if __name__ == "__main__":
    main()
