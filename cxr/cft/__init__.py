"""Category-wise Fine-Tuning of the last layer by a genetic algorithm."""
