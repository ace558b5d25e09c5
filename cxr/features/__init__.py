"""Image transforms that are not learned: CLAHE."""
