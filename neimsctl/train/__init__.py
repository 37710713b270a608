"""L4: training loops, losses, schedules, checkpoints of runs, training reports."""
