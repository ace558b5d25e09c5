"""submission step: predictions in the shape of a sample_submission.csv, written to disk."""

from typing import Annotated, Optional

import pandas as pd
from zenml import log_metadata, step
from zenml.logger import get_logger

from cxr.data.ingest import resolve_path
from cxr.infer.submission import make_submission, write_submission

logger = get_logger(__name__)


@step(enable_cache=False)
def submission(predictions: pd.DataFrame, sample_submission: Optional[str] = None,
               output_path: str = "outputs/submission.csv") -> Annotated[pd.DataFrame, "submission"]:
    """Order and name the columns like ``sample_submission`` (if given) and write the CSV.

    Never cached, so the file at ``output_path`` is always rewritten; the table is also kept
    as the ``submission`` artifact. YAML: ``parameters.sample_submission``,
    ``parameters.submission_path``.
    """
    sample = str(resolve_path(sample_submission)) if sample_submission else None
    table = make_submission(predictions, sample)
    path = write_submission(table, resolve_path(output_path))
    logger.info("wrote %d rows to %s", len(table), path.resolve())
    log_metadata({"path": str(path.resolve()), "rows": len(table)})
    return table
