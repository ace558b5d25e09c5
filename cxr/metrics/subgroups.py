"""Where a model does worse: AUC and one operating point's sensitivity and specificity per
subgroup of sex, age band, view position and (for merged datasets) dataset, where the source
provides them, with counts and a flag on subgroups too small to judge."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from cxr.metrics.classification import per_label_auc
from cxr.metrics.operating_points import rates

SUBGROUP_ATTRIBUTES = ("sex", "age_band", "view", "dataset")


def subgroup_table(manifest: pd.DataFrame, y: np.ndarray, p: np.ndarray, label_names: Sequence[str],
                   thresholds: dict[str, float], mask: np.ndarray | None = None, min_count: int = 10,
                   attributes: Sequence[str] = SUBGROUP_ATTRIBUTES) -> pd.DataFrame:
    """One row per attribute value and label (plus ``mean`` over labels): n, positives, AUC,
    sensitivity and specificity at ``thresholds``, and ``too_small`` when the subgroup has fewer
    than ``min_count`` positives or negatives of a label. Blank values are not a subgroup."""
    mask = np.ones_like(y, bool) if mask is None else mask
    cut = np.array([thresholds[name] for name in label_names])
    rows = []
    for attribute in [a for a in attributes if a in manifest.columns]:
        values = manifest[attribute].astype(str).to_numpy()
        for group in sorted(set(values) - {""}):
            inside = values == group
            gy, gp, gm = y[inside], p[inside], mask[inside]
            aucs = per_label_auc(gy, gp, gm)
            group_rows = []
            for j, name in enumerate(label_names):
                yj = (gy[gm[:, j], j] > 0.5).astype(int)
                positives, negatives = int(yj.sum()), int(len(yj) - yj.sum())
                at = rates(yj, gp[gm[:, j], j] >= cut[j])
                group_rows.append({"attribute": attribute, "group": group, "label": name, "n": len(yj),
                                   "n_positive": positives, "auc": aucs[j], "sensitivity": at["sensitivity"],
                                   "specificity": at["specificity"],
                                   "too_small": min(positives, negatives) < min_count})
            rows += group_rows
            if len(label_names) > 1:
                frame = pd.DataFrame(group_rows)
                rows.append({"attribute": attribute, "group": group, "label": "mean", "n": int(inside.sum()),
                             "n_positive": int(frame["n_positive"].sum()),
                             "auc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else np.nan,
                             "sensitivity": frame["sensitivity"].mean(), "specificity": frame["specificity"].mean(),
                             "too_small": bool(frame["too_small"].all())})
    return pd.DataFrame(rows, columns=["attribute", "group", "label", "n", "n_positive", "auc", "sensitivity",
                                       "specificity", "too_small"])


def too_small_warnings(table: pd.DataFrame, min_count: int = 10) -> list[str]:
    """One line per subgroup and label too small to judge, for the log and the model card."""
    small = table[table["too_small"] & (table["label"] != "mean")]
    return [f"subgroup {row.attribute}={row.group}, {row.label}: {row.n_positive} positives of {row.n} "
            f"(under {min_count} of a class): its figures are not reliable" for row in small.itertuples()]
