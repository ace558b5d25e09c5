"""Backbones, heads, classifiers and checkpoints."""
