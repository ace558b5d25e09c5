"""Model lifecycle decisions (promotion), free of registry code."""
