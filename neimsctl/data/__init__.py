"""L2: torch datasets over feature shards, splits and augmentations."""
