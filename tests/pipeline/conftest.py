"""Helpers shared by the pipeline tests: run a pipeline and read back its steps and registry."""

from __future__ import annotations

from pathlib import Path

import yaml

FOLDER_PATIENTS = r"^(patient\w\d+)"


def statuses(run) -> dict[str, str]:
    """Step name -> status (``completed``, ``cached``, ...) of a pipeline run."""
    return {name: str(step.status.value) for name, step in run.steps.items()}


def output(run, step: str, name: str):
    """The loaded artifact ``name`` that ``step`` of ``run`` produced."""
    return run.steps[step].outputs[name][0].load()


# the calibrate step's patient-level bootstrap intervals at 50 replicates instead of 1000: most of a
# small test run's time otherwise, and no pipeline test asserts an interval's width
FAST_INTERVALS = {"operating_points": {"n_bootstrap": 50}}


def write_yaml(path: Path, config: dict) -> Path:
    """``config`` written as YAML to ``path``; returns ``path``."""
    path.write_text(yaml.safe_dump(config))
    return path


def folders_source(data: Path) -> dict:
    """The ``data`` block for a NORMAL/PNEUMONIA tree made by ``write_class_tree``."""
    return {"source": "folders", "path": str(data), "negative_class": "NORMAL", "patient_id_pattern": FOLDER_PATIENTS}


def run_and_fetch(command: str, config: Path, name: str):
    """Run the pipeline behind the CLI ``command`` and return the run as stored, with its steps."""
    from zenml.client import Client

    from pipelines import runner

    return Client().get_pipeline_run(runner.run_pipeline(command, str(config), name).id)


def use_stack_tracking() -> None:
    """Point MLflow at the active stack's tracking store and registry."""
    import mlflow

    from pipelines import runner

    mlflow.set_tracking_uri(runner.tracking_uri())
