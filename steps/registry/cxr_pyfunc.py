"""MLflow pyfunc model (models-from-code): loads a safetensors checkpoint, or an ensemble of
them, through the core.

Logged by the register steps as ``python_model=<this file>`` with the ``cxr`` package in
``code_paths``, so nothing is pickled. The artifact is either ``checkpoint`` (one model) or
``ensemble`` (members' checkpoints plus weights). Input: a DataFrame with a ``path`` column
(image or DICOM files) and optionally ``id``; output: ``id``, one probability column per label,
the input guardrails' ``flag`` and ``flag_reason`` and, when the ``operating_point`` param names
one of the model's (f1, sensitivity, specificity), ``<label>_positive``. Params (in the logged
signature): ``views`` (TTA view names, default original only), ``batch_size``, ``guardrails``
(default true) and ``operating_point`` (default none).
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class CXRClassifier(PythonModel):
    """A chest X-ray classifier (or ensemble) served from its checkpoint folder(s)."""

    def load_context(self, context) -> None:
        from cxr.infer.ensemble import load_ensemble_model
        from cxr.models.checkpoint import load_checkpoint

        artifacts = context.artifacts
        self.model = (load_ensemble_model(artifacts["ensemble"]) if "ensemble" in artifacts
                      else load_checkpoint(artifacts["checkpoint"]))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from cxr.infer.serving import predict_files
        from cxr.infer.tta import SINGLE_VIEW

        params = params or {}
        if "path" not in model_input.columns:
            raise ValueError(f"input needs a 'path' column of image files; got {list(model_input.columns)}")
        ids = model_input["id"].astype(str).tolist() if "id" in model_input.columns else None
        return predict_files(self.model, model_input["path"].tolist(), ids,
                             views=tuple(params.get("views", SINGLE_VIEW)),
                             batch_size=int(params.get("batch_size", 64)),
                             guardrails=bool(params.get("guardrails", True)),
                             operating_point=params.get("operating_point") or None)


mlflow.models.set_model(CXRClassifier())
