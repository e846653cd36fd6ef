"""Training: the loop, EMA weights, checkpoints and the run directory."""
