"""L2: neural-network layers, one concept per module."""
