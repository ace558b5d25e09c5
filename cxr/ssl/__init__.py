"""Self-supervised pretraining: views, methods (lightly), the loop, probes."""
