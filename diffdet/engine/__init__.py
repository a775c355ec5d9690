"""diffdet.engine: the training loop and its parts (optimiser, schedule, EMA, checkpoints, logging, DDP)."""
