"""moil inside the training loops people already use (optional extras)."""
