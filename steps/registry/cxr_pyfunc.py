"""MLflow pyfunc model (models-from-code): loads a safetensors checkpoint, or an ensemble of
them, through the core.

Logged by the register steps as ``python_model=<this file>`` with the ``cxr`` package in
``code_paths``, so nothing is pickled. The artifact is either ``checkpoint`` (one model) or
``ensemble`` (members' checkpoints plus weights). Input: a DataFrame with an ``image``
column (base64 file bytes: PNG, JPEG, 16-bit PNG, DICOM) or a ``path`` column (files the server
reads), and optionally ``id``; output: ``id``, one probability column per label, the input
guardrails' ``flag`` and ``flag_reason``, ``error`` (why a row could not be decoded; '' when it
was) and, when the ``operating_point`` param names one of the model's (f1, sensitivity,
specificity), ``<label>_positive``. Params (in the logged
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
        from cxr.infer.serving import predict_request

        return predict_request(self.model, model_input, params)


mlflow.models.set_model(CXRClassifier())
