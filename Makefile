# Shortcuts over the commands in README.md. Everything runs from .venv.
PY := .venv/bin/python
INSTALL := python3.11 -m venv .venv && .venv/bin/pip install -q -c requirements/lock.txt -e ".[dev]"

.PHONY: install train train-full test test-fast bench mlflow-ui setup

install:
	$(INSTALL)

setup:
	$(PY) run.py setup

train:
	$(PY) run.py train --config zenml_config.yaml

train-full:
	$(PY) run.py train --config configs/full.yaml

test:
	$(PY) -m pytest

test-fast:
	$(PY) -m pytest -m "not slow"

bench:
	$(PY) bench/pneumonia.py --out outputs/bench

mlflow-ui:
	$(PY) run.py mlflow-ui
