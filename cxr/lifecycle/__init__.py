"""Model lifecycle decisions (promotion), free of registry code."""

# the MLflow registered model that pipelines, steps, the CLI and benches use unless told otherwise
DEFAULT_MODEL_NAME = "cxr-pneumonia"
