"""What a shard file holds: schema, chunking, compression and the stored datasets of each mode.

formats/h5-shard.v1.md is normative; this module is its one copy in code. The writer creates
exactly :func:`stored_datasets`, in that order (the order is part of a byte-identical file);
the reader and ``neimsctl membench`` (:func:`row_bytes`, :func:`entry_bytes`) read the same
table. Block columns (:mod:`neimsctl.io.featblock`) map onto stored datasets one to one, except
the teacher's per-row lengths ``n_atoms`` / ``n_edges``, stored as CSR offsets ``atom_ptr`` /
``edge_ptr`` (N + 1 rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from neimsctl.io.featblock import STR_COLUMNS, ragged_columns, row_columns

SCHEMA = "neimsctl.h5shard/1"
ROW_CHUNK = 64          # rows per chunk of every per-molecule dataset
RAGGED_CHUNK = 1024     # rows per chunk of atom_x / edge_index / edge_attr (~20-40 molecules)
COMPRESSION: dict[str, Any] = {"compression": "gzip", "compression_opts": 1}
STR_DTYPE = h5py.string_dtype("utf-8")
#: block length column -> the CSR offsets dataset that stores it
PTRS = {"n_atoms": "atom_ptr", "n_edges": "edge_ptr"}
#: small numeric per-row columns a reader keeps in memory once used (~17 bytes per row)
SMALL = ("ordinal", "mw", "ionization_energy", "has_spectrum")


@dataclass(frozen=True)
class Stored:
    """One dataset of a shard file.

    ``kind`` is ``str`` (vlen UTF-8 per row), ``row`` (numeric per row), ``ptr`` (CSR offsets of
    the block column ``length``, N + 1 rows) or ``ragged`` (one entry per atom or edge; ``length``
    is the block column counting a row's entries). ``shape`` is one row's (one entry's) shape,
    ``chunk`` the rows per chunk.
    """

    name: str
    kind: str
    dtype: Any
    shape: tuple[int, ...]
    chunk: int
    length: str | None = None

    @property
    def itemsize(self) -> int:
        """Bytes of one row (entry) as stored uncompressed; 0 for strings (variable)."""
        if self.kind == "str":
            return 0
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64)))


def stored_datasets(mode: str) -> dict[str, Stored]:
    """The datasets of a ``mode`` shard, in the order the writer creates them."""
    out = {c: Stored(c, "str", STR_DTYPE, (), ROW_CHUNK) for c in STR_COLUMNS}
    for name, (dt, shape) in row_columns(mode).items():
        if name in PTRS:
            out[PTRS[name]] = Stored(PTRS[name], "ptr", np.dtype("<i8"), (), RAGGED_CHUNK, name)
        else:
            out[name] = Stored(name, "row", np.dtype(dt), shape, ROW_CHUNK)
    for name, (dt, shape, length) in ragged_columns(mode).items():
        out[name] = Stored(name, "ragged", np.dtype(dt), shape, RAGGED_CHUNK, length)
    return out


def row_bytes(mode: str) -> dict[str, int]:
    """Uncompressed bytes per row of each numeric per-row dataset of ``mode`` (the CSR offsets
    count 8 bytes per row; strings and the per-atom/per-edge tables are left out)."""
    return {s.name: s.itemsize for s in stored_datasets(mode).values() if s.kind in ("row", "ptr")}


def entry_bytes(mode: str) -> dict[str, int]:
    """Uncompressed bytes per atom (``n_atoms``) and per directed edge (``n_edges``) of the
    ragged tables of ``mode`` (empty for modes without graphs)."""
    out: dict[str, int] = {}
    for s in stored_datasets(mode).values():
        if s.kind == "ragged" and s.length is not None:
            out[s.length] = out.get(s.length, 0) + s.itemsize
    return out
