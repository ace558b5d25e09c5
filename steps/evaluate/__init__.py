"""Evaluation steps."""

from steps.evaluate.calibrate import calibrate
from steps.evaluate.evaluate import evaluate
from steps.evaluate.evaluate_external import evaluate_external
from steps.evaluate.generalisation_report import generalisation_report
from steps.evaluate.robustness import robustness

__all__ = ["calibrate", "evaluate", "evaluate_external", "generalisation_report", "robustness"]
