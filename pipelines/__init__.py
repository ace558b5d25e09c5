"""Pipelines: DAGs that only wire steps."""
