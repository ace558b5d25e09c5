"""Data sources, splits and image decoding."""
