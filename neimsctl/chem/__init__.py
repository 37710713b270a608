"""L1: RDKit molecules -> numpy features; imports no torch."""
