"""Feature blocks: the in-memory unit that HDF5 shards and zstd block streams store.

A block is a ``dict`` of numpy arrays holding ``n`` consecutive rows (molecules):

- per-row columns (first axis ``n``): :data:`STR_COLUMNS` (numpy object arrays of ``str``)
  and the numeric columns of :func:`row_columns`;
- teacher mode adds ragged tables: ``atom_x`` (sum atoms, 48), ``edge_index`` (sum edges, 2),
  ``edge_attr`` (sum edges, 6) and the per-row lengths ``n_atoms``, ``n_edges`` (int64, ``(n,)``).
  On disk (HDF5) the lengths become CSR offsets ``atom_ptr``/``edge_ptr`` of length ``N + 1``.

Layouts are normative in formats/h5-shard.v1.md and formats/zblock.v1.md.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from neimsctl.errors import FormatError
from neimsctl.io.spectrum import N_BINS

MODES = ("student", "teacher", "v1")
STR_COLUMNS = ("id", "smiles", "name", "formula", "inchikey")

# Feature widths (formats/features.v1.md), defined here once: the shard layout below, the
# featurizers of neimsctl.chem, the datasets and the models' default input widths read them.
ECFP_BITS = 4096                      #: ECFP4 bits (Morgan radius 2), stored bit-packed
ECFP_BYTES = ECFP_BITS // 8           #: width of the packed ``ecfp`` column
COUNT_BITS = 2048                     #: atom-pair count slots (``counts``)
STUDENT_DIM = ECFP_BITS + COUNT_BITS  #: the student input: unpacked ECFP bits + log1p counts
FRAG_BINS = N_BINS                    #: m/z bins of each fragment-mass histogram (``frags``)
FRAG_SLOTS = 2 * FRAG_BINS            #: ``frags``: one- then two-bond cuts (neimsctl.chem.fragments)
STUDENT_FRAG_DIM = STUDENT_DIM + FRAG_SLOTS  #: the student input with log1p fragment counts appended
MORGAN_COUNT_BITS = 4096              #: NEIMS v1 input: Morgan radius-2 count slots, as the paper
ATOM_FDIM, BOND_FDIM = 48, 6          #: graph features per atom and per bond (teacher)

COMMON: dict[str, tuple[str, tuple[int, ...]]] = {
    "ordinal": ("<i8", ()),
    "mw": ("<i4", ()),
    "ionization_energy": ("<f4", ()),
    "ecfp": ("|u1", (ECFP_BYTES,)),
    "spectrum": ("<f2", (N_BINS,)),
    "has_spectrum": ("|b1", ()),
}
STUDENT_ONLY = {"counts": ("|u1", (COUNT_BITS,)), "frags": ("|u1", (FRAG_SLOTS,))}
#: Columns that shards written by neimsctl 0.1 (before fragment masses) lack: readers list
#: them only when present; a model that needs one refuses such a shard (:func:`missing_columns`).
LATER_COLUMNS = ("frags",)
V1_ONLY = {"counts": STUDENT_ONLY["counts"],                      # NEIMS v1 baseline input
           "morgan_counts": ("|u1", (MORGAN_COUNT_BITS,))}
TEACHER_ONLY = {**STUDENT_ONLY, "n_atoms": ("<i8", ()), "n_edges": ("<i8", ())}
RAGGED: dict[str, tuple[str, tuple[int, ...], str]] = {
    "atom_x": ("<f2", (ATOM_FDIM,), "n_atoms"),
    "edge_index": ("<i4", (2,), "n_edges"),
    "edge_attr": ("<f2", (BOND_FDIM,), "n_edges"),
}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise FormatError(f"unknown feature mode {mode!r} (expected one of {', '.join(MODES)})")
    return mode


def row_columns(mode: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Numeric per-row columns of ``mode``: name -> (dtype string, shape of one row)."""
    extra = {"student": STUDENT_ONLY, "teacher": TEACHER_ONLY, "v1": V1_ONLY}[check_mode(mode)]
    return {**COMMON, **extra}


def ragged_columns(mode: str) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """Ragged tables of ``mode``: name -> (dtype, shape of one entry, length column)."""
    return RAGGED if check_mode(mode) == "teacher" else {}


def block_rows(block: dict[str, np.ndarray]) -> int:
    """Number of rows (molecules) in ``block``."""
    return len(block["id"])


def empty_block(mode: str) -> dict[str, np.ndarray]:
    """A block with zero rows and every column of ``mode``."""
    out: dict[str, np.ndarray] = {c: np.empty(0, dtype=object) for c in STR_COLUMNS}
    for name, (dt, shape) in row_columns(mode).items():
        out[name] = np.empty((0, *shape), dtype=dt)
    for name, (dt, shape, _) in ragged_columns(mode).items():
        out[name] = np.empty((0, *shape), dtype=dt)
    return out


def validate_block(block: dict[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
    """Check names, dtypes and shapes; cast numeric columns to their stored dtypes.

    Raises
    ------
    FormatError
        A column is missing or has the wrong shape.
    """
    n = block_rows(block)
    out: dict[str, np.ndarray] = {}
    for c in STR_COLUMNS:
        col = np.asarray(block[c], dtype=object)
        if col.shape != (n,):
            raise FormatError(f"column {c!r}: shape {col.shape}, expected ({n},)")
        out[c] = col
    for name, (dt, shape) in row_columns(mode).items():
        if name not in block:
            hint = (" (features made by neimsctl 0.1, before fragment masses: run `neimsctl "
                    f"featurize --mode {mode}` on the records again)") if name in LATER_COLUMNS else ""
            raise FormatError(f"column {name!r} missing from a {mode} block{hint}")
        arr = np.asarray(block[name]).astype(dt, copy=False)
        if arr.shape != (n, *shape):
            raise FormatError(f"column {name!r}: shape {arr.shape}, expected {(n, *shape)}")
        out[name] = arr
    for name, (dt, shape, length) in ragged_columns(mode).items():
        arr = np.asarray(block[name]).astype(dt, copy=False)
        total = int(out[length].sum())
        if arr.shape != (total, *shape):
            raise FormatError(f"column {name!r}: shape {arr.shape}, expected {(total, *shape)}")
        out[name] = arr
    return out


def concat_blocks(blocks: Sequence[dict[str, np.ndarray]], mode: str) -> dict[str, np.ndarray]:
    """Concatenate blocks row-wise (ragged tables follow their rows)."""
    if not blocks:
        return empty_block(mode)
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def take_rows(block: dict[str, np.ndarray], idx: Iterable[int] | np.ndarray,
              mode: str) -> dict[str, np.ndarray]:
    """Rows ``idx`` of ``block`` in the order given (ragged tables re-gathered)."""
    idx = np.asarray(idx, dtype=np.int64)
    ragged = {k: v for k, v in ragged_columns(mode).items() if k in block}
    out = {k: v[idx] for k, v in block.items() if k not in ragged}
    for name, (_, _, length) in ragged.items():
        out[name] = block[name][ragged_index(block[length], idx)]
    return out


def ragged_index(lengths: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Positions in a ragged table of the entries of rows ``idx`` (rows have ``lengths``)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    sel_len = lengths[idx]
    total = int(sel_len.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    shift = np.repeat(starts[idx] - (np.cumsum(sel_len) - sel_len), sel_len)
    return shift + np.arange(total, dtype=np.int64)
