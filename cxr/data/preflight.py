"""Checks that refuse a run before it trains: a test set or sample submission that cannot fit
the model being trained would only fail (or silently drop rows) after the training time is spent."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr.data.imageset import ImageSet
from cxr.errors import DataError


def few(names: list[str], limit: int = 5) -> str:
    """``['a', 'b', ...] (12 in all)``: the first ``limit`` names of a list for a message."""
    more = f" ({len(names)} in all)" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


def check_test_labels(train: ImageSet, test: ImageSet) -> None:
    """Raise if the test set names labels (``test_data.label_names``) that differ from the training labels."""
    if test.label_names and list(test.label_names) != list(train.label_names):
        missing = [n for n in train.label_names if n not in test.label_names]
        extra = [n for n in test.label_names if n not in train.label_names]
        raise DataError(f"test_data.label_names {list(test.label_names)} differ from the training labels "
                        f"{list(train.label_names)}: missing {missing}, extra {extra}"
                        + (" (same names, other order)" if not missing and not extra else ""))


def check_sample_submission(path: str | Path, labels: list[str], test: ImageSet) -> None:
    """Raise if the sample submission's ids are not exactly the test images' ids, or it asks for a
    column the model will not predict; names the first few missing and extra ids."""
    try:
        sample = pd.read_csv(path, dtype={0: str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"sample_submission {path}: cannot be read as CSV ({error})") from None
    if sample.shape[1] < 2:
        raise DataError(f"sample_submission {path}: needs an id column and at least one label column")
    by_lower = {name.lower() for name in labels}
    unknown = [c for c in sample.columns[1:] if c.lower() not in by_lower]
    if unknown:
        raise DataError(f"sample_submission {path} asks for columns {unknown}; the model predicts {labels}")
    ids = sample.iloc[:, 0].astype(str)
    duplicated = sorted(ids[ids.duplicated()].unique())
    if duplicated:
        raise DataError(f"sample_submission {path} lists {len(duplicated)} ids twice, e.g. {few(duplicated)}")
    missing = sorted(set(ids) - set(test.ids))
    extra = sorted(set(test.ids) - set(ids))
    if missing or extra:
        raise DataError(f"sample_submission {path} does not match the {len(test)} test images: "
                        f"{len(missing)} ids have no test image {few(missing)}, "
                        f"{len(extra)} test images are not in it {few(extra)}")
