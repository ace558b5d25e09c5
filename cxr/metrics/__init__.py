"""Classification metrics, thresholds and plots."""
