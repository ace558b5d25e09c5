"""Adaptation of a trained model to a target site from its unlabelled images."""
