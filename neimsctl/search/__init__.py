"""Spectral search: build an index (``build.py``) and search it (``run.py``)."""
