"""Supervised training: losses, samplers, mixing, schedules and the loop."""
