"""L0: streams and file formats (implements the specs in formats/)."""
