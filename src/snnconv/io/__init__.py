"""Files: datasets, checkpoints, atomic writes."""
