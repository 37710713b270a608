"""HDF5 feature shards ``neimsctl.h5shard/1`` (formats/h5-shard.v1.md is normative).

:class:`ShardWriter` appends feature blocks (see :mod:`neimsctl.io.featblock`) under a
temporary name and renames the file into place on a clean close, so an interrupted run never
leaves a file that looks complete. :class:`ShardReader` gives lazy random access by row, slice
and index list; it reopens its HDF5 handle in each process (safe with DataLoader workers).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np

try:  # ISA-L's deflate: the same zlib stream as zlib's, ~3.5x faster at level 1 (BENCHMARKS.md)
    from isal import isal_zlib as _deflate
except ImportError:  # a platform without its wheels: the standard library's
    import zlib as _deflate

from neimsctl.errors import FormatError, InputError
from neimsctl.io.featblock import (STR_COLUMNS, block_rows, check_mode, concat_blocks,
                                   ragged_columns, row_columns, take_rows, validate_block)
from neimsctl.io.streams import Writer, atomic_path, partial_path

SCHEMA = "neimsctl.h5shard/1"
ROW_CHUNK = 64          # rows per chunk of every per-molecule dataset
RAGGED_CHUNK = 1024     # rows per chunk of atom_x / edge_index / edge_attr (~20-40 molecules)
FLUSH_ROWS = 1024       # rows buffered before a write (a multiple of ROW_CHUNK)
COMPRESSION: dict[str, Any] = {"compression": "gzip", "compression_opts": 1}
_STR = h5py.string_dtype("utf-8")
_PTRS = {"n_atoms": "atom_ptr", "n_edges": "edge_ptr"}
_SMALL = ("ordinal", "mw", "ionization_energy", "has_spectrum")


class ShardWriter(Writer):
    """Write one shard; use as a context manager.

    Parameters
    ----------
    path
        Final file name; rows go to a temporary name beside it until :meth:`close`.
    mode
        ``student`` or ``teacher``.
    settings
        Featurizer settings (stored as JSON in the ``featurizer`` attribute).
    settings_hash
        Hash of ``settings`` (``neimsctl.chem.features.settings_hash``).
    attrs
        Further root attributes, e.g. provenance (``neimsctl_version``, ``argv``, ``created``)
        or ``shard`` (``"K/N"``); ``None`` values are skipped.

    Notes
    -----
    Appended rows are buffered and written :data:`FLUSH_ROWS` at a time, so every write
    fills whole 64-row chunks (no chunk is compressed twice) and each dataset is resized
    once per flush instead of once per small block.
    """

    def __init__(self, path: str | os.PathLike, mode: str, settings: dict[str, Any],
                 settings_hash: str, attrs: dict[str, Any] | None = None) -> None:
        self.path, self.mode = Path(path), check_mode(mode)
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._written = 0
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self._f = h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=True)
        a = self._f.attrs
        a["schema"], a["mode"], a["n_rows"] = SCHEMA, mode, 0
        a["featurizer"] = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        a["settings_hash"] = settings_hash
        for k, v in (attrs or {}).items():
            if v is not None:
                a[k] = v
        for c in STR_COLUMNS:
            self._make(c, _STR, (), ROW_CHUNK)
        for name, (dt, shape) in row_columns(mode).items():
            if name in _PTRS:
                ds = self._f.create_dataset(_PTRS[name], shape=(1,), maxshape=(None,), dtype="<i8",
                                            chunks=(RAGGED_CHUNK,), **COMPRESSION)
                ds[0] = 0
            else:
                self._make(name, np.dtype(dt), shape, ROW_CHUNK)
        for name, (dt, shape, _) in ragged_columns(mode).items():
            self._make(name, np.dtype(dt), shape, RAGGED_CHUNK)

    @property
    def n_rows(self) -> int:
        """Rows appended so far (written or still buffered)."""
        return self._written + self._pending_rows

    @property
    def attrs(self) -> h5py.AttributeManager:
        """The file's root attributes (set more before :meth:`close`)."""
        return self._f.attrs

    def last_rows(self, k: int) -> dict[str, np.ndarray]:
        """The last ``k`` rows appended, while they are still buffered (``k`` at most the
        rows after the last full chunk written)."""
        if not 0 < k <= self._pending_rows:
            raise ValueError(f"last_rows({k}): {self._pending_rows} rows buffered")
        rows = np.arange(self._pending_rows - k, self._pending_rows)
        return take_rows(self._pending_block(), rows, self.mode)

    def _pending_block(self) -> dict[str, np.ndarray]:
        """The buffered rows as one block."""
        return (self._pending[0] if len(self._pending) == 1
                else concat_blocks(self._pending, self.mode))

    def _make(self, name: str, dtype: Any, shape: tuple[int, ...], chunk: int) -> None:
        self._f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                               chunks=(chunk, *shape), **COMPRESSION)

    def append(self, block: dict[str, np.ndarray]) -> None:
        """Append the rows of ``block`` (validated and cast to the stored dtypes)."""
        block = validate_block(block, self.mode)
        n = block_rows(block)
        if n == 0:
            return
        self._pending.append(block)
        self._pending_rows += n
        if self._pending_rows >= FLUSH_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Write the buffered rows; unless ``final``, keep a tail that does not fill a chunk."""
        if not self._pending_rows:
            return
        block = self._pending_block()
        n = self._pending_rows if final else self._pending_rows // ROW_CHUNK * ROW_CHUNK
        if n < self._pending_rows:
            rest = take_rows(block, np.arange(n, self._pending_rows), self.mode)
            block = take_rows(block, np.arange(n), self.mode)
            self._pending, self._pending_rows = [rest], self._pending_rows - n
        else:
            self._pending, self._pending_rows = [], 0
        self._write(block, n)

    def _write(self, block: dict[str, np.ndarray], n: int) -> None:
        for name, arr in block.items():
            if name in _PTRS:
                ds = self._f[_PTRS[name]]
                start = ds.shape[0]
                ds.resize(start + n, axis=0)
                ds[start:] = ds[start - 1] + np.cumsum(arr)
                continue
            ds = self._f[name]
            start = ds.shape[0]
            ds.resize(start + arr.shape[0], axis=0)
            if arr.ndim > 1 and start % ds.chunks[0] == 0 and _whole_row_gzip(ds):
                _deflate_chunks(ds, start, arr)
            else:
                ds[start:] = arr
        self._written += n
        self._f.attrs["n_rows"] = self._written

    def append_shard_rows(self, src: "ShardReader", n: int) -> None:
        """Append rows ``0:n`` of the shard ``src`` (same mode), chunks copied as stored.

        Every wide per-row column whose chunks sit on the same grid in both files, with the
        same chunk shape and filters, is copied chunk by chunk without decompressing or
        compressing it again; strings, CSR offsets and ragged tables are copied as values.
        That needs nothing buffered here and this file's row count a multiple of
        :data:`ROW_CHUNK`; otherwise the rows are appended as values.
        """
        start = self.n_rows
        if n == 0:
            return
        if self._pending_rows or start % ROW_CHUNK:
            self.append(src.rows(0, n))
            return
        f, sf = self._f, src.file
        values: dict[str, np.ndarray] = {c: sf[c][:n] for c in STR_COLUMNS}  # UTF-8 bytes as stored
        for name in row_columns(self.mode):
            if name in _PTRS:  # CSR lengths: _write turns them into offsets again
                values[name] = np.diff(src.ptr(name)[:n + 1])
                continue
            sds, ds = sf[name], f[name]
            if (sds.chunks, sds.compression, sds.compression_opts, sds.shuffle) != (
                    ds.chunks, ds.compression, ds.compression_opts, ds.shuffle):
                values[name] = sds[:n]
                continue
            ds.resize(start + n, axis=0)
            tail = (0,) * (ds.ndim - 1)
            for lo in range(0, n, ROW_CHUNK):
                mask, data = sds.id.read_direct_chunk((lo, *tail))
                ds.id.write_direct_chunk((start + lo, *tail), data, mask)
        for name, (_, _, length) in ragged_columns(self.mode).items():
            values[name] = sf[name][:int(src.ptr(length)[n])]
        self._write(values, n)

    def close(self) -> None:
        """Write what is buffered, finish the file and rename it into place."""
        try:
            self._flush(final=True)
        except BaseException as exc:
            self.abort(exc)
            raise
        self._f.close()
        self._atomic.__exit__(None, None, None)

    def abort(self, exc: BaseException | None = None) -> None:
        """Close and delete the temporary file; the final name is never created."""
        self._pending, self._pending_rows = [], 0
        if self._f.id.valid:
            self._f.close()
        err = exc or RuntimeError("aborted")
        try:
            self._atomic.__exit__(type(err), err, err.__traceback__)
        except BaseException as again:  # atomic_path re-raises what it is given
            if again is not err:
                raise


class ResumableShardWriter(Writer):
    """Write one shard so that an interrupted run can be continued; a context manager.

    HDF5 is not crash-safe: a process killed half-way through a write can leave a file that
    the library cannot open again (or that crashes it). So the rows go, one *segment* per
    :meth:`commit`, into complete shards ``<path>.partial/seg-NNNNNN.h5``, each written by a
    :class:`ShardWriter` (temporary name, renamed when the segment is committed) and carrying
    the caller's resume state; :meth:`close` joins them into ``path`` and removes the
    directory. Whatever kills the process, the segments already renamed are intact.

    Rows stream into the open segment as they come (memory stays that of one
    :class:`ShardWriter`, at most :data:`FLUSH_ROWS` rows, however far apart the commits). A
    segment owns only its first ``aligned_rows`` rows (a multiple of :data:`ROW_CHUNK`): the
    rows after them (fewer than one chunk) are written again at the start of the next
    segment. So every segment starts on a chunk boundary of the final file, and its compressed
    chunks are copied as they are into the final file (``<path>.partial/joined.h5`` until the
    end) right after the segment is committed: the copying happens while the rows come in
    (under ``featurize --jobs N``, while the workers featurize), and :meth:`close` only copies
    the last segment. When nothing was committed (a run shorter than one commit interval), the
    open segment already is the whole output and is renamed into place without a copy.

    Parameters
    ----------
    path, mode, settings, settings_hash, attrs
        As :class:`ShardWriter` (``attrs`` go to the final file).
    resume
        Continue the segments of ``<path>.partial``: :attr:`resume_state` is the state of the
        last complete segment (``None`` when there is none: the run starts afresh).

    Raises
    ------
    FormatError
        ``resume`` with segments of another mode or featurizer settings hash.
    """

    def __init__(self, path: str | os.PathLike, mode: str, settings: dict[str, Any],
                 settings_hash: str, attrs: dict[str, Any] | None = None, *,
                 resume: bool = False) -> None:
        self.path, self.mode = Path(path), check_mode(mode)
        self._settings, self._hash, self._attrs = settings, settings_hash, attrs
        self.dir = partial_path(self.path)
        self.resume_state: dict[str, Any] | None = None
        self._seg: ShardWriter | None = None  # the open segment
        self._out: ShardWriter | None = None  # the final file, once a segment is committed
        self._unjoined: list[Path] = []  # committed segments not yet copied into it
        self._tail: dict[str, np.ndarray] | None = None  # the last segment's unowned rows
        # rows committed (the tail's included); the tail has ``_carry`` rows
        self._written = self._carry = 0
        segs = self._segments() if resume else []
        if not resume:  # a new run replaces an old partial output
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(exist_ok=True)
        if segs:
            with ShardReader(segs[-1]) as r:
                if (r.mode, r.settings_hash) != (self.mode, settings_hash):
                    raise FormatError(f"{self.dir}: segments of another run (mode {r.mode}, "
                                      f"settings hash {r.settings_hash}); run again without "
                                      "--resume to start afresh", file=str(self.dir))
                self.resume_state = json.loads(r.attrs["resume_state"])
                own = _owned_rows(r)
                if own < len(r):
                    self._tail, self._carry = r.rows(own, len(r)), len(r) - own
            self._written = int(self.resume_state["n_rows"])
        self._next, self._unjoined = len(segs), segs

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("seg-*.h5")) if self.dir.is_dir() else []

    def _open(self) -> ShardWriter:
        """The open segment (made with the final file's attributes, and the last tail)."""
        if self._seg is None:
            self._seg = ShardWriter(self.dir / f"seg-{self._next:06d}.h5", self.mode,
                                    self._settings, self._hash, self._attrs)
            if self._tail is not None:
                self._seg.append(self._tail)
        return self._seg

    @property
    def n_rows(self) -> int:
        """Rows appended so far (committed or not)."""
        return self._written + (self._seg.n_rows - self._carry if self._seg is not None else 0)

    def append(self, block: dict[str, np.ndarray]) -> None:
        """Write the rows of ``block`` into the open segment (committed by :meth:`commit`)."""
        if block_rows(block):
            self._open().append(block)

    def commit(self, state: dict[str, Any]) -> None:
        """Finish the open segment with ``state`` (+ the row count): a resume point."""
        w = self._open()
        n = w.n_rows
        self._written += n - self._carry
        own = n // ROW_CHUNK * ROW_CHUNK
        w.attrs["resume_state"] = json.dumps({**state, "n_rows": self._written}, sort_keys=True)
        w.attrs["aligned_rows"] = own
        self._tail = w.last_rows(n - own) if own < n else None
        self._carry = n - own
        self._seg = None
        w.close()
        self._next += 1
        self._unjoined.append(w.path)
        self._join()

    def _join(self) -> None:
        """Copy the owned rows of the committed segments not yet copied into the final file."""
        if self._out is None:  # in the directory: a killed run leaves nothing beside ``path``
            self._out = ShardWriter(self.dir / "joined.h5", self.mode, self._settings, self._hash,
                                    self._attrs)
        for seg in self._unjoined:
            with ShardReader(seg) as r:
                self._out.append_shard_rows(r, _owned_rows(r))
        self._unjoined = []

    def close(self) -> None:
        """Finish ``path`` with the open segment's rows; remove the segments."""
        last = self._open()
        if self._out is None and not self._unjoined:  # nothing committed: the open segment
            last.close()                                # is the output, attributes and all
            os.replace(last.path, self.path)
        else:
            last.attrs["aligned_rows"] = last.n_rows  # it owns all its rows
            last.close()
            self._unjoined.append(last.path)
            self._join()
            assert self._out is not None
            self._out.close()
            os.replace(self._out.path, self.path)
        self._seg = self._out = None
        shutil.rmtree(self.dir)  # segments, and temporary files of a run killed mid-segment

    def abort(self, exc: BaseException | None = None) -> None:
        """Drop the open segment and the unfinished final file; keep the committed segments
        for a resume."""
        for w in (self._seg, self._out):
            if w is not None:
                w.abort(exc)
        self._seg = self._out = None


def _whole_row_gzip(ds: h5py.Dataset) -> bool:
    """Whether ``ds`` is a wide column whose chunks hold whole rows behind the gzip filter
    alone: those chunks are deflated and inflated here (a file rechunked by h5repack, or
    with other filters, goes through h5py)."""
    return (ds.ndim > 1 and ds.chunks is not None and ds.chunks[1:] == ds.shape[1:]
            and (ds.compression, ds.shuffle, ds.fletcher32, ds.scaleoffset)
            == ("gzip", False, False, None))


def _deflate_chunks(ds: h5py.Dataset, start: int, arr: np.ndarray) -> None:
    """Write ``arr`` at row ``start`` (a chunk boundary) of ``ds`` (:func:`_whole_row_gzip`),
    deflating its chunks here.

    The chunks are compressed by :data:`_deflate` (ISA-L when installed) and stored with
    ``write_direct_chunk``, as HDF5's own gzip filter would store them: any HDF5 reader
    inflates them. The last chunk, when ``arr`` does not fill it, is padded with zeros (rows
    beyond the dataset's extent are never read).
    """
    c, level = ds.chunks[0], ds.compression_opts
    arr = np.ascontiguousarray(arr, dtype=ds.dtype)
    tail = (0,) * (arr.ndim - 1)
    for lo in range(0, len(arr), c):
        part = arr[lo:lo + c]
        if len(part) < c:
            part = np.concatenate([part, np.zeros((c - len(part), *arr.shape[1:]), arr.dtype)])
        ds.id.write_direct_chunk((start + lo, *tail), _deflate.compress(part, level))


def _strings(raw: np.ndarray) -> np.ndarray:
    """UTF-8 bytes read from a string dataset, as an object array of ``str`` (h5py's
    ``asstr()`` takes twice as long)."""
    out = np.empty(len(raw), dtype=object)
    out[:] = [b.decode("utf-8") for b in raw]
    return out


def _chunk_reader(ds: h5py.Dataset) -> Callable[[int], np.ndarray] | None:
    """``read(lo)``: the rows of ``ds`` (:func:`_whole_row_gzip`) in its chunk starting at row
    ``lo``, read as stored and inflated by :data:`_deflate` (ISA-L's inflate is ~2x zlib's,
    which HDF5 uses); ``None`` for any other dataset (read those through h5py)."""
    if not _whole_row_gzip(ds):
        return None
    n, dsid, dtype, shape, tail = ds.shape[0], ds.id, ds.dtype, ds.chunks, (0,) * (ds.ndim - 1)

    def read(lo: int) -> np.ndarray:
        try:
            mask, data = dsid.read_direct_chunk((lo, *tail))
        except RuntimeError:  # a chunk never written (fill values): HDF5 makes it up
            return np.asarray(ds[lo:lo + shape[0]])
        raw = data if mask & 1 else _deflate.decompress(data)  # bit 0: deflate was skipped
        return np.frombuffer(raw, dtype=dtype).reshape(shape)[:n - lo]

    return read


def _read_rows(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a per-row dataset (wide gzip columns by :func:`_chunk_reader`)."""
    read = _chunk_reader(ds)
    if read is None or stop <= start:
        return ds[start:stop]
    step = ds.chunks[0]
    return np.concatenate([read(lo)[max(start - lo, 0):stop - lo]
                           for lo in range(start - start % step, stop, step)])


def _owned_rows(seg: "ShardReader") -> int:
    """Rows of a segment that no later segment repeats (all its rows in segments written
    before ``aligned_rows`` existed)."""
    return int(seg.attrs.get("aligned_rows", len(seg)))


class ShardReader:
    """Lazy reader of one shard: attributes at once, rows on demand.

    The HDF5 handle is opened on first use and reopened after a ``fork`` (the process id is
    checked), so one reader can be handed to DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._f: h5py.File | None = None
        self._pid = -1
        self._ptr: dict[str, np.ndarray] = {}
        self._cache: dict[str, np.ndarray] = {}
        f = self.file
        if f.attrs.get("schema") != SCHEMA:
            raise FormatError(f"not a {SCHEMA} file (schema={f.attrs.get('schema')!r})",
                              file=str(path))
        self.mode: str = str(f.attrs["mode"])
        self.n_rows = int(f.attrs["n_rows"])
        self.settings_hash = str(f.attrs["settings_hash"])
        self.settings: dict[str, Any] = json.loads(f.attrs["featurizer"])
        self.attrs: dict[str, Any] = {k: (v.item() if isinstance(v, np.generic) else v)
                                      for k, v in f.attrs.items()}

    @property
    def file(self) -> h5py.File:
        if self._f is None or self._pid != os.getpid():
            try:
                self._f = h5py.File(self.path, "r")
            except OSError as exc:
                raise InputError(f"{self.path}: cannot open as HDF5: {exc}") from exc
            self._pid, self._ptr = os.getpid(), {}
        return self._f

    def open(self) -> "ShardReader":
        """(Re)open the HDF5 handle in this process, e.g. in a DataLoader ``worker_init_fn``."""
        self.close()
        _ = self.file
        return self

    def __len__(self) -> int:
        return self.n_rows

    def close(self) -> None:
        if self._f is not None and self._pid == os.getpid():
            self._f.close()
        self._f = None

    def column(self, name: str) -> np.ndarray:
        """A whole per-row column (cheap for metadata: ``id``, ``inchikey``, ``mw`` ...)."""
        ds = self.file[name]
        return _strings(ds[:]) if name in STR_COLUMNS else ds[:]

    def ptr(self, length: str) -> np.ndarray:
        """CSR offsets (``n_atoms`` -> ``atom_ptr``), cached in memory after the first call."""
        if length not in self._ptr:
            self._ptr[length] = self.file[_PTRS[length]][:]
        return self._ptr[length]

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` as a block."""
        start, stop = max(0, start), min(stop, self.n_rows)
        f = self.file
        out: dict[str, np.ndarray] = {c: _strings(f[c][start:stop]) for c in STR_COLUMNS}
        for name in row_columns(self.mode):
            if name in _PTRS:
                out[name] = np.diff(self.ptr(name)[start:stop + 1])
            else:
                out[name] = _read_rows(f[name], start, stop)
        for name, (_, _, length) in ragged_columns(self.mode).items():
            p = self.ptr(length)
            out[name] = f[name][p[start]:p[stop]]
        return out

    def take(self, idx: Sequence[int] | np.ndarray,
             columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Rows ``idx`` (any order, repeats allowed) as a block, reading each chunk once.

        Parameters
        ----------
        idx
            Row numbers.
        columns
            Columns to read (default: all). Training loops ask only for what they use, e.g.
            ``("ecfp", "counts", "spectrum")``; string columns are the slowest to read.

        Notes
        -----
        Small numeric per-row columns (``mw``, ``ordinal``, ``ionization_energy``,
        ``has_spectrum``) and the CSR offsets are cached in memory on first use
        (~17 bytes per row), so only the wide arrays and strings are read from disk.
        """
        from neimsctl.io.featblock import take_rows

        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_rows):
            raise IndexError(f"row index out of range 0..{self.n_rows - 1}")
        uniq, inv = np.unique(idx, return_inverse=True)
        ragged = ragged_columns(self.mode)
        names = list(columns) if columns is not None else [
            *STR_COLUMNS, *row_columns(self.mode), *ragged]
        for name in [n for n in names if n in ragged]:
            if ragged[name][2] not in names:
                names.append(ragged[name][2])
        f, out = self.file, {}
        groups_by: dict[int, list[tuple[int, np.ndarray]]] = {}
        for name in names:
            if name in _PTRS:
                out[name] = np.diff(self.ptr(name))[uniq]
            elif name in _SMALL:
                out[name] = self._small(name)[uniq]
            elif name in ragged:
                p, ds = self.ptr(ragged[name][2]), f[name]
                parts = [ds[p[i]:p[i + 1]] for i in uniq]
                out[name] = np.concatenate(parts) if parts else ds[0:0]
            else:
                raw = f[name]
                step = raw.chunks[0] if raw.chunks else ROW_CHUNK  # the file's own chunking
                if step not in groups_by:
                    chunk = uniq // step
                    groups_by[step] = [(int(c) * step, uniq[chunk == c]) for c in np.unique(chunk)]
                read = _chunk_reader(raw) or (lambda lo, ds=raw, k=step: ds[lo:lo + k])
                parts = [read(lo)[sel - lo] for lo, sel in groups_by[step]]
                out[name] = np.concatenate(parts) if parts else raw[0:0]
                if name in STR_COLUMNS:
                    out[name] = _strings(out[name])
        if any(n in ragged for n in names):
            return take_rows(out, inv, self.mode)
        return {k: v[inv] for k, v in out.items()}

    def _small(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self.file[name][:]
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


@dataclass
class ShardInfo:
    """What ``neimsctl shards list`` prints about one file."""

    path: str
    format: str
    mode: str
    rows: int
    settings_hash: str
    size: int
    shard: str | None = None


def iter_shards(paths: Iterable[str | os.PathLike], size: int = 4096) -> Iterator[dict[str, np.ndarray]]:
    """Blocks of up to ``size`` rows from each shard in turn."""
    for p in paths:
        with ShardReader(p) as r:
            yield from r.iter_blocks(size)


def list_shards(paths: Iterable[str | os.PathLike]) -> list[ShardInfo]:
    """Header facts of each shard (HDF5 only; see ``neimsctl.io.featsource`` for both formats)."""
    out = []
    for p in paths:
        with ShardReader(p) as r:
            out.append(ShardInfo(str(p), "h5", r.mode, r.n_rows, r.settings_hash,
                                 os.path.getsize(p), r.attrs.get("shard")))
    return out


def merge_shards(paths: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 attrs: dict[str, Any] | None = None) -> int:
    """Merge shards and/or zblock streams into one shard (see :func:`neimsctl.io.featsource.merge_shards`)."""
    from neimsctl.io.featsource import merge_shards as _merge

    return _merge(paths, out, attrs=attrs)
