"""Prediction over arbitrarily many image files in bounded memory: decode, preprocess and
predict one chunk of files at a time, appending each chunk's rows to a CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd
from cxr.progress import progress_bar

from cxr.data.imageset import ImageSet
from cxr.infer.serving import ServedModel, predict_files
from cxr.infer.tta import SINGLE_VIEW


def predict_chunks(model: ServedModel, images: ImageSet, views: Sequence[str] = SINGLE_VIEW,
                   chunk_size: int = 1024, batch_size: int = 64, device: str = "auto",
                   progress: bool = True, guardrails: bool = True,
                   operating_point: str | None = None) -> Iterator[pd.DataFrame]:
    """Predictions (``id``, one column per label and, with ``guardrails``, ``flag`` and
    ``flag_reason``, and at ``operating_point`` ``<label>_positive``) of ``images``' files,
    ``chunk_size`` at a time.

    Only one chunk of decoded images is held at once, so memory does not grow with the
    number of files.
    """
    paths, ids = images.manifest["path"].tolist(), images.ids
    for start in progress_bar(range(0, len(paths), chunk_size), desc="predict", unit="chunk", disable=not progress):
        yield predict_files(model, paths[start:start + chunk_size], ids[start:start + chunk_size], views,
                            batch_size, device, guardrails, operating_point)


def write_predictions(chunks: Iterator[pd.DataFrame], path: str | Path) -> int:
    """Append the chunks to one CSV (header once); returns the number of rows written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    for i, chunk in enumerate(chunks):
        chunk.to_csv(path, mode="w" if i == 0 else "a", header=i == 0, index=False, float_format="%.6f")
        rows += len(chunk)
    return rows
