"""L3: training loops, losses and metrics."""
