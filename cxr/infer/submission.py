"""Submission CSVs shaped like a challenge's sample_submission.csv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr.errors import DataError


def make_submission(predictions: pd.DataFrame, sample_submission: str | Path | None = None) -> pd.DataFrame:
    """Predictions in the sample's row order and columns (id + label columns).

    Label columns are matched case-insensitively to prediction columns. Without a sample,
    the predictions are returned as they are.
    """
    if sample_submission is None:
        return predictions.copy()
    sample = pd.read_csv(sample_submission, dtype={0: str})
    id_col, label_cols = sample.columns[0], list(sample.columns[1:])
    by_lower = {c.lower(): c for c in predictions.columns if c != "id"}
    missing = [c for c in label_cols if c.lower() not in by_lower]
    if missing:
        raise DataError(f"{sample_submission} asks for columns {missing}; predictions have "
                        f"{list(by_lower.values())}")
    indexed = predictions.set_index("id")
    absent = sorted(set(sample[id_col].astype(str)) - set(indexed.index))
    if absent:
        raise DataError(f"{sample_submission} lists {len(absent)} ids with no prediction, "
                        f"e.g. {absent[:5]}")
    out = pd.DataFrame({id_col: sample[id_col].astype(str)})
    for column in label_cols:
        out[column] = indexed.loc[out[id_col], by_lower[column.lower()]].to_numpy()
    return out


def write_submission(submission: pd.DataFrame, path: str | Path) -> Path:
    """Write the CSV, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    submission.to_csv(path, index=False, float_format="%.6f")
    return path
