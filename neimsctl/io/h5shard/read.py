"""Reading shards: :class:`ShardReader`, lazy random access by row, and the one schema check.

:func:`check_shard` is what every reader of a shard checks (the ``schema`` attribute, the
``mode`` when the reader needs one, the datasets it needs). :class:`ShardReader` reads through
a fork-safe handle (:class:`neimsctl.io.h5handle.H5Handle`), so one reader can be handed to
DataLoader workers; :meth:`ShardReader.take` (rows in any order, each touched chunk read once,
wide columns inflated by :mod:`neimsctl.io.h5shard.codec`) serves the training batches of the
torch datasets in :mod:`neimsctl.data.dataset`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import h5py
import numpy as np

from neimsctl.errors import FormatError
from neimsctl.io.featblock import LATER_COLUMNS, MODES, STR_COLUMNS, ragged_columns, row_columns, take_rows
from neimsctl.io.h5handle import H5Handle
from neimsctl.io.h5shard import codec
from neimsctl.io.h5shard.layout import PTRS, SCHEMA, SMALL, stored_datasets

CHUNK_CACHE = 0         # bytes of HDF5 chunk cache per dataset: none, since every read here
#                         takes whole chunks (the wide columns and atom/edge tables inflated by
#                         the codec, the rest in chunk-sized slices); with h5py's 8 MiB (or 1 MiB)
#                         a dataset over 300k rows kept ~2 MiB more RSS after reading its metadata


#: neimsctl's other HDF5 files, by schema prefix: what a command expecting a shard says it got
_OTHER_FILES = (("neimsctl.index/", "a search index (neimsctl index; neimsctl search reads it)"),
                ("neimsctl.softlabel/", "a soft-label file (neimsctl softlabel; distill -s reads it)"))


def check_shard(f: h5py.File, path: str | os.PathLike, *, mode: str | None = None,
                require: Sequence[str] = ()) -> None:
    """Refuse a file that is not a ``neimsctl.h5shard/1`` shard (of ``mode``, with ``require``).

    Raises
    ------
    FormatError
        Naming the file: another schema, another mode, or datasets missing.
    """
    schema = f.attrs.get("schema")
    if schema != SCHEMA:
        what = next((w for s, w in _OTHER_FILES if str(schema).startswith(s)), None)
        raise FormatError(f"{what}, not a feature shard ({SCHEMA}, neimsctl featurize)" if what else
                          f"not a {SCHEMA} file (schema={schema!r})", file=str(path))
    found = f.attrs.get("mode")
    if found not in MODES:
        raise FormatError(f"unknown shard mode {found!r} (expected one of {', '.join(MODES)})",
                          file=str(path))
    if mode is not None and found != mode:
        raise FormatError(f"shard mode is {found!r}, expected {mode!r} (`neimsctl featurize "
                          f"--mode {mode}`)", file=str(path))
    missing = [k for k in require if k not in f]
    if missing:
        raise FormatError(f"missing datasets {missing}: written by an older neimsctl? re-run "
                          f"`neimsctl featurize --mode {found}` on the records", file=str(path))
    _check_shapes(f, path, found)


def _check_shapes(f: h5py.File, path: str | os.PathLike, mode: str) -> None:
    """Every stored dataset has the shape its mode's layout gives: at least ``n_rows`` rows of
    the column's width, ``n_rows + 1`` offsets (a shard whose tables contradict its featurizer
    settings, or cut short, failed later with an IndexError or ValueError deep in a model)."""
    try:
        n = int(f.attrs.get("n_rows"))
    except (TypeError, ValueError):
        raise FormatError(f"n_rows attribute {f.attrs.get('n_rows')!r} is not a number", file=str(path)) from None
    for name, col in stored_datasets(mode).items():
        if name not in f:
            continue
        shape = f[name].shape
        want = (n, *col.shape) if col.kind in ("str", "row") else (n + 1,) if col.kind == "ptr" else None
        # more rows than n_rows are read as absent (a dataset grown ahead of its rows)
        if want is not None and (len(shape) != len(want) or shape[0] < want[0] or shape[1:] != want[1:]):
            raise FormatError(f"damaged shard: dataset {name!r} has shape {shape}, expected "
                              f"{want} ({n} rows)", file=str(path))
        if col.kind == "ragged" and shape[1:] != tuple(col.shape):
            raise FormatError(f"damaged shard: dataset {name!r} has rows of shape {shape[1:]}, "
                              f"expected {tuple(col.shape)}", file=str(path))


def strings(raw: np.ndarray) -> np.ndarray:
    """UTF-8 bytes read from a string dataset, as an object array of ``str`` (h5py's
    ``asstr()`` takes twice as long)."""
    out = np.empty(len(raw), dtype=object)
    out[:] = [b.decode("utf-8") for b in raw]
    return out


def fixed_strings(ds: h5py.Dataset) -> np.ndarray:
    """A whole string dataset as compact fixed-width UTF-8 bytes (``S<width>``), read in
    blocks: for 300k rows a few MB, where Python ``str`` objects would take tens."""
    step = codec.COLUMN_BLOCK
    parts = [np.array(ds[i:i + step], dtype=bytes) for i in range(0, ds.shape[0], step)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype="S1")


class ShardReader:
    """Lazy reader of one shard: attributes at once, rows on demand.

    Parameters
    ----------
    path
        The shard.
    mode
        Refuse a shard of another mode (default: any mode).
    require
        Datasets the caller needs; refused with a :class:`FormatError` when missing.

    The HDF5 handle is opened on first use in the reading process and reopened after a
    ``fork`` (:class:`neimsctl.io.h5handle.H5Handle`); a pickled reader carries no handle. The
    small numeric columns and the CSR offsets are cached on first use (~17 bytes per row, plus
    16 for a teacher shard's offsets); :meth:`load` keeps whole columns in memory, after which
    :meth:`take` serves them from there.

    Raises
    ------
    InputError
        The file cannot be opened as HDF5.
    FormatError
        See :func:`check_shard`.
    """

    def __init__(self, path: str | os.PathLike, *, mode: str | None = None,
                 require: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.handle = H5Handle(self.path, rdcc_nbytes=CHUNK_CACHE)
        self._ptr: dict[str, np.ndarray] = {}
        self._cache: dict[str, np.ndarray] = {}
        self._loaded: dict[str, np.ndarray] = {}
        f = self.file
        try:
            check_shard(f, self.path, mode=mode, require=require)
        except FormatError:
            self.close()  # a refused file is not left open (the traceback holds this reader)
            raise
        self.mode: str = str(f.attrs["mode"])
        self.n_rows = int(f.attrs["n_rows"])
        self.settings_hash = str(f.attrs["settings_hash"])
        self.settings: dict[str, Any] = json.loads(f.attrs["featurizer"])
        #: the per-row columns of its mode that it holds (shards of neimsctl 0.1 lack ``frags``)
        self.row_names = [n for n in row_columns(self.mode) if n not in LATER_COLUMNS or n in f]
        self.attrs: dict[str, Any] = {k: (v.item() if isinstance(v, np.generic) else v)
                                      for k, v in f.attrs.items()}

    @property
    def file(self) -> h5py.File:
        """This process's open h5py file."""
        return self.handle.file

    def __len__(self) -> int:
        return self.n_rows

    def close(self) -> None:
        self.handle.close()

    def column(self, name: str) -> np.ndarray:
        """A whole per-row column (cheap for metadata: ``id``, ``inchikey``, ``mw`` ...)."""
        raw = codec.read_column(self.handle[name])
        return strings(raw) if name in STR_COLUMNS else raw

    def column_bytes(self, name: str) -> np.ndarray:
        """A whole string column as compact fixed-width UTF-8 bytes (:func:`fixed_strings`)."""
        return fixed_strings(self.handle[name])

    def ptr(self, length: str) -> np.ndarray:
        """CSR offsets (``n_atoms`` -> ``atom_ptr``), cached in memory after the first call."""
        if length not in self._ptr:
            ptr = codec.read_column(self.handle[PTRS[length]])
            if len(ptr) and (ptr[0] != 0 or (np.diff(ptr) < 0).any()):
                raise FormatError(f"damaged shard: offsets {PTRS[length]!r} do not start at 0 and "
                                  "grow", file=str(self.path))
            self._ptr[length] = ptr
        return self._ptr[length]

    def load(self, names: Sequence[str]) -> None:
        """Keep the datasets ``names`` in memory as stored (CSR offsets as :meth:`ptr`)."""
        lengths = {v: k for k, v in PTRS.items()}
        for name in names:
            if name in lengths:
                self.ptr(lengths[name])
            elif name not in self._loaded:
                self._loaded[name] = codec.read_column(self.handle[name])

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` as a block."""
        start, stop = max(0, start), min(stop, self.n_rows)
        h = self.handle
        out: dict[str, np.ndarray] = {c: strings(h[c][start:stop]) for c in STR_COLUMNS}
        for name in self.row_names:
            if name in PTRS:
                out[name] = np.diff(self.ptr(name)[start:stop + 1])
            else:
                out[name] = codec.read_rows(h[name], start, stop)
        for name, (_, _, length) in ragged_columns(self.mode).items():
            p = self.ptr(length)
            out[name] = h[name][p[start]:p[stop]]
        return out

    def _at(self, name: str) -> Callable[[np.ndarray], np.ndarray]:
        """Reader of rows (entries) at sorted unique positions of dataset ``name``."""
        arr = self._loaded.get(name)
        if arr is not None:
            return arr.__getitem__
        return self.handle.get(("at", name), lambda f: codec.row_reader(f[name]))

    def take(self, idx: Sequence[int] | np.ndarray,
             columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Rows ``idx`` (any order, repeats allowed) as a block, reading each chunk once.

        Parameters
        ----------
        idx
            Row numbers.
        columns
            Columns to read (default: all). Training loops ask only for what they use, e.g.
            ``("ecfp", "counts", "spectrum")``; string columns are the slowest to read. A ragged
            table brings its length column (``atom_x`` -> ``n_atoms``).

        Notes
        -----
        Small numeric per-row columns (``mw``, ``ordinal``, ``ionization_energy``,
        ``has_spectrum``) and the CSR offsets are cached in memory on first use
        (~17 bytes per row), so only the wide arrays and strings are read from disk. The
        per-atom and per-edge tables are read chunk by chunk like the wide columns.
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_rows):
            raise IndexError(f"row index out of range 0..{self.n_rows - 1}")
        uniq, inv = np.unique(idx, return_inverse=True)
        inv = inv.reshape(-1)
        ragged = ragged_columns(self.mode)
        names = list(columns) if columns is not None else [
            *STR_COLUMNS, *self.row_names, *ragged]
        for name in [n for n in names if n in ragged]:
            if ragged[name][2] not in names:
                names.append(ragged[name][2])
        out: dict[str, np.ndarray] = {}
        entries: dict[str, np.ndarray] = {}
        for name in names:
            if name in PTRS:
                p = self.ptr(name)
                out[name] = p[uniq + 1] - p[uniq]
            elif name in SMALL:
                out[name] = self._small(name)[uniq]
            elif name in ragged:
                length = ragged[name][2]
                if length not in entries:
                    entries[length] = _entries(self.ptr(length), uniq)
                out[name] = self._at(name)(entries[length])
            else:
                out[name] = self._at(name)(uniq)
                if name in STR_COLUMNS:
                    out[name] = strings(out[name])
        if len(uniq) == len(idx) and np.array_equal(uniq, idx):
            return out
        if any(n in ragged for n in names):
            return take_rows(out, inv, self.mode)
        return {k: v[inv] for k, v in out.items()}

    def _small(self, name: str) -> np.ndarray:
        if name not in self._cache:
            loaded = self._loaded.get(name)
            self._cache[name] = loaded if loaded is not None else codec.read_column(self.handle[name])
        return self._cache[name]

    def row(self, i: int) -> dict[str, np.ndarray]:
        """Row ``i`` as a one-row block."""
        return self.take([i])

    def iter_blocks(self, size: int = 4096) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.n_rows, size):
            yield self.rows(start, start + size)

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _entries(ptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions in a ragged table of the entries of ``rows`` (sorted, unique), in row order."""
    lo, hi = ptr[rows], ptr[rows + 1]
    lengths = hi - lo
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    shift = np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(total, dtype=np.int64)
