"""Inference: test-time augmentation and submissions."""
