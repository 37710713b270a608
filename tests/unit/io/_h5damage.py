"""Damaged copies of HDF5 files for tests (shards, indexes)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable


def damaged_copy(src: Path, out: Path, harm: Callable[[Any], None]) -> Path:
    """A copy of the HDF5 file ``src`` at ``out``, changed in place by ``harm(h5py.File)``."""
    import h5py

    shutil.copy(src, out)
    with h5py.File(out, "r+") as f:
        harm(f)
    return out
