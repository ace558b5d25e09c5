"""Thin ZenML steps: validate inputs, call the cxr core, log, return typed artifacts."""
