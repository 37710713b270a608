"""The spectral search index ``neimsctl.index/2`` (formats/spectral-index.v2.md is normative;
``neimsctl.index/1`` files, which lack the stored cosine weights, are still read).

One HDF5 file. The spectra are sorted by nominal mass (unknown mass, ``-1``, first; input
order within a mass), so a mass window is one contiguous slice, and stored as CSR peak lists
(:class:`neimsctl.io.peak_block.PeakBlock`) that :meth:`SpectralIndex.chunks` streams. The
text of each entry (id, name, SMILES, formula) stays in input order as one JSON object per entry
in the byte array ``meta`` (``meta_ptr`` offsets) and is read only for the hits (``row`` maps a
sorted entry to its input row).

:class:`IndexWriter` streams: metadata is appended as it comes; peaks are buffered up to
``run_peaks`` peaks, sorted by mass and spilled to a temporary run file; :meth:`IndexWriter.close`
merges the runs mass by mass (a counting merge: one contiguous read per run and mass), then
stores the cosine weights of every block of :data:`DENSE_BLOCK` entries as a dense bfloat16
matrix (:meth:`SpectralIndex.dense_chunk`: the search's first pass reads them as they are).
Memory is bounded by the run size plus ~60 bytes per entry.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import orjson

from neimsctl.errors import FormatError, InputError, NeimsError
from neimsctl.io.native import pread_into, pread_ranges, row_norms
from neimsctl.io.peak_block import PeakBlock, bf16_bits, bf16_values, cosine_weights
from neimsctl.io.spectrum import N_BINS

__all__ = ["SCHEMA", "READS", "DENSE_BLOCK", "DenseChunk", "IndexWriter", "SpectralIndex", "open_index",
           "is_index"]

SCHEMA = "neimsctl.index/2"
#: Versions this reader opens (``/1``: no stored weights; searched from the peak lists).
READS = ("neimsctl.index/1", SCHEMA)
#: Entries per block of stored weights.
DENSE_BLOCK = 4096
#: The weights stored: the cosine's ``m/z**a * I**b`` (see :func:`cosine_weights`).
DENSE_POWERS = (1.0, 0.5)
_BF16_ONE = 0x3F80      # bfloat16 bits of 1.0: every stored weight's bits are <= this
#: |sum of a stored row's squares - 1|: each weight within 2**-8 of its unit vector's (relative),
#: so the squares within 2**-7 + 2**-16: 0.0079 (and float32 sums); a larger gap is damage
_NORM_TOL = 0.01
KEY_LEN = 27
_META = ("id", "name", "smiles", "formula")
_ENTRY = {"mw": np.int32, "row": np.int64, "predicted": np.uint8, "source": np.uint16,
          "inchikey": f"S{KEY_LEN}"}
_PEAK_CHUNK = 1 << 18


def _h5():  # type: ignore[no-untyped-def]
    import h5py

    return h5py


class _Run:
    """One sorted run spilled to disk: peaks in files, per-entry arrays in memory."""

    def __init__(self, folder: Path, k: int, block: PeakBlock, entry: dict[str, np.ndarray]) -> None:
        order = np.argsort(entry["mw"], kind="stable")
        srt = block.take(order)
        self.mz_path, self.int_path = folder / f"run{k}.mz", folder / f"run{k}.int"
        srt.mz.astype(np.uint16).tofile(self.mz_path)
        srt.intensity.astype(np.float32).tofile(self.int_path)
        self.entry = {key: v[order] for key, v in entry.items()}
        self.ptr = srt.ptr

    def span(self, mw: int) -> tuple[int, int]:
        m = self.entry["mw"]
        return int(np.searchsorted(m, mw, "left")), int(np.searchsorted(m, mw, "right"))

    def read(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.ptr[lo]), int(self.ptr[hi])
        mz = np.fromfile(self.mz_path, dtype=np.uint16, count=b - a, offset=2 * a)
        inten = np.fromfile(self.int_path, dtype=np.float32, count=b - a, offset=4 * a)
        return mz, inten


class IndexWriter:
    """Write an index entry batch by batch; :meth:`close` sorts and finishes the file.

    Parameters
    ----------
    path
        The HDF5 file to write (the caller makes it atomic, e.g. with ``atomic_path``).
    sources
        ``[{"file": str, "kind": "measured" | "predicted" | "mixed"}, ...]``; an entry's
        ``source`` is an index into it.
    attrs
        Extra root attributes (provenance: ``neimsctl_version``, ``argv``, ``created``).
    run_peaks
        Peaks buffered in memory before a sorted run is spilled to a temporary file.
    in_memory
        Build the file in memory (HDF5 core driver, never written): for small libraries.
    """

    def __init__(self, path: str | os.PathLike, *, attrs: dict[str, Any] | None = None,
                 run_peaks: int = 1 << 24, in_memory: bool = False) -> None:
        h5py = _h5()
        self.path = Path(path)
        self.file = h5py.File(path, "w", driver="core", backing_store=False) if in_memory \
            else h5py.File(path, "w", locking=False)
        self.attrs = dict(attrs or {})
        self.run_peaks = run_peaks
        self.sources: list[dict[str, str]] = []
        self._tmp: Path | None = None
        self._runs: list[_Run] = []
        self._blocks: list[PeakBlock] = []
        self._entries: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self.n = 0
        import tempfile         # (here, for the writer: 5-9 ms of a search's start)

        self._meta = tempfile.TemporaryFile(dir=self.path.parent if not in_memory and self.path.parent.exists()
                                            else None)
        self._meta_ptr: list[np.ndarray] = [np.zeros(1, np.int64)]
        self._meta_size = 0

    def add_source(self, file: str, kind: str) -> int:
        """Register an input file; returns its ``source`` number."""
        self.sources.append({"file": file, "kind": kind})
        if len(self.sources) > np.iinfo(np.uint16).max:
            raise InputError("an index holds at most 65535 input files")
        return len(self.sources) - 1

    def add(self, block: PeakBlock, *, mw: Sequence[int], predicted: Sequence[bool], source: Sequence[int],
            inchikey: Sequence[str], ids: Sequence[str], names: Sequence[str], smiles: Sequence[str],
            formula: Sequence[str]) -> None:
        """Append a batch of entries (``mw`` -1 when unknown)."""
        n = len(block)
        if n == 0:
            return
        dumps = orjson.dumps
        lines = [dumps({"id": str(a), "name": str(b), "smiles": str(c), "formula": str(d)})
                 for a, b, c, d in zip(ids, names, smiles, formula)]
        self._meta.write(b"".join(lines))
        self._meta_ptr.append(self._meta_size + np.cumsum([len(x) for x in lines], dtype=np.int64))
        self._meta_size += sum(len(x) for x in lines)
        keys = np.asarray([str(k or "")[:KEY_LEN].encode("ascii", "replace") for k in inchikey], dtype=f"S{KEY_LEN}")
        self._entries.append({"mw": np.asarray(mw, np.int32), "row": np.arange(self.n, self.n + n),
                              "predicted": np.asarray(predicted, np.uint8),
                              "source": np.asarray(source, np.uint16), "inchikey": keys})
        self._blocks.append(block)
        self.n += n
        self._buffered += len(block.mz)
        if self._buffered >= self.run_peaks:
            self._spill()

    def _pending(self) -> tuple[PeakBlock, dict[str, np.ndarray]]:
        block = PeakBlock.concat(self._blocks)
        entry = {k: np.concatenate([e[k] for e in self._entries]) if self._entries
                 else np.zeros(0, dtype=dt) for k, dt in _ENTRY.items()}
        self._blocks, self._entries, self._buffered = [], [], 0
        return block, entry

    def _spill(self) -> None:
        if self._tmp is None:
            import tempfile

            self._tmp = Path(tempfile.mkdtemp(prefix=".neimsctl-index-", dir=self.path.parent
                                              if self.path.parent.exists() else None))
        block, entry = self._pending()
        self._runs.append(_Run(self._tmp, len(self._runs), block, entry))

    def close(self) -> None:
        """Merge the runs by mass, write the sorted datasets and the attributes."""
        try:
            if self._runs and self._blocks:
                self._spill()
            f = self.file
            n_peaks = sum(int(r.ptr[-1]) for r in self._runs) if self._runs else \
                sum(len(b.mz) for b in self._blocks)
            # fixed sizes are known now: contiguous datasets, which readers map straight from disk
            for key, dt in _ENTRY.items():
                f.create_dataset(key, shape=(self.n,), dtype=dt)
            f.create_dataset("peak_ptr", shape=(self.n + 1,), dtype=np.int64)
            f["peak_ptr"][0] = 0
            f.create_dataset("mz", shape=(n_peaks,), dtype=np.uint16)
            f.create_dataset("intensity", shape=(n_peaks,), dtype=np.float32)
            f.create_dataset("meta_ptr", data=np.concatenate(self._meta_ptr))
            blob = f.create_dataset("meta", shape=(self._meta_size,), dtype=np.uint8)
            self._meta.seek(0)
            pos = 0
            while data := self._meta.read(1 << 26):
                blob[pos:pos + len(data)] = np.frombuffer(data, np.uint8)
                pos += len(data)
            self._pos_e = self._pos_p = 0
            if not self._runs:
                block, entry = self._pending()
                run = _MemRun(block, entry)
                self._append([(run, 0, len(run.entry["mw"]))])
            else:
                self._merge()
            _write_dense(f, self.n)
            f.attrs.update({"schema": SCHEMA, "n_entries": self.n, "n_peaks": int(f["mz"].shape[0]),
                            "n_bins": N_BINS, "sources": json.dumps(self.sources), **self.attrs})
            f.attrs["complete"] = True
        finally:
            self._meta.close()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def _merge(self) -> None:
        values = np.unique(np.concatenate([r.entry["mw"] for r in self._runs]))
        pieces: list[tuple[Any, int, int]] = []
        buffered = 0
        for v in values:
            for run in self._runs:
                lo, hi = run.span(int(v))
                if hi > lo:
                    pieces.append((run, lo, hi))
                    buffered += int(run.ptr[hi] - run.ptr[lo])
            if buffered >= self.run_peaks // 2:
                self._append(pieces)
                pieces, buffered = [], 0
        self._append(pieces)

    def _append(self, pieces: list[tuple[Any, int, int]]) -> None:
        if not pieces:
            return
        f = self.file
        mzs, ints, sizes = [], [], []
        entry = {k: [] for k in _ENTRY}
        for run, lo, hi in pieces:
            mz, inten = run.read(lo, hi)
            mzs.append(mz)
            ints.append(inten)
            sizes.append(np.diff(run.ptr[lo:hi + 1]))
            for k in _ENTRY:
                entry[k].append(run.entry[k][lo:hi])
        e0, p0 = self._pos_e, self._pos_p
        cols = {k: np.concatenate(entry[k]) for k in _ENTRY}
        e1 = e0 + len(cols["mw"])
        for k in _ENTRY:
            f[k][e0:e1] = cols[k]
        f["peak_ptr"][e0 + 1:e1 + 1] = p0 + np.cumsum(np.concatenate(sizes))
        mz = np.concatenate(mzs)
        p1 = p0 + len(mz)
        f["mz"][p0:p1] = mz
        f["intensity"][p0:p1] = np.concatenate(ints)
        self._pos_e, self._pos_p = e1, p1

    def abort(self) -> None:
        """Close without finishing (the caller removes the file)."""
        self._meta.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self.file.close()

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        if et is None:
            self.close()
        elif self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _write_dense(f: Any, n: int, block: int = DENSE_BLOCK) -> None:
    """The ``dense`` section: per block of ``block`` sorted entries, their unit-length cosine
    weights (:data:`DENSE_POWERS`) as a row-major bfloat16 matrix ``(entries, width)``, width =
    the block's highest m/z + 1. Read back from the finished peak datasets."""
    ptr = f["peak_ptr"][:]
    starts = np.arange(0, n, block, dtype=np.int64)
    stops = np.minimum(starts + block, n)
    widths = np.zeros(len(starts), dtype=np.int64)
    mz_ds = f["mz"]
    for b, (lo, hi) in enumerate(zip(starts, stops)):
        a, z = int(ptr[lo]), int(ptr[hi])
        if z > a:
            widths[b] = int(mz_ds[a:z].max()) + 1
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum((stops - starts) * widths, out=offsets[1:])
    dense = f.create_dataset("dense", shape=(int(offsets[-1]),), dtype=np.uint16)
    f.create_dataset("dense_ptr", data=offsets)
    f.create_dataset("dense_width", data=widths.astype(np.uint16))
    for b, (lo, hi) in enumerate(zip(starts, stops)):
        a, z = int(ptr[lo]), int(ptr[hi])
        if z == a:
            continue
        peaks = PeakBlock(ptr[lo:hi + 1] - a, mz_ds[a:z], f["intensity"][a:z])
        w = int(widths[b])
        out = np.zeros((hi - lo, w), dtype=np.uint16)
        out[peaks.row_of_peak(), peaks.mz.astype(np.int64)] = bf16_bits(cosine_weights(peaks, *DENSE_POWERS))
        dense[int(offsets[b]):int(offsets[b + 1])] = out.reshape(-1)
    f.attrs["dense_block"] = block
    f.attrs["dense_weights"] = json.dumps({"score": "cosine", "mz_power": DENSE_POWERS[0],
                                           "intensity_power": DENSE_POWERS[1], "dtype": "bfloat16"})


class DenseChunk:
    """A block of index entries as stored cosine weights (the search's first pass).

    Attributes
    ----------
    weights : ``(n, width)``, column ``j`` = m/z ``j``: the entries' unit-length weights
        ``m/z**a * I**b`` (``powers``) rounded to bfloat16, as their bit patterns (uint16) or
        as the float32 values of those bit patterns (exact).
    powers : ``(a, b)``.
    block : the entries' peaks, read when first asked for (the exact scores of the few entries
        the first pass keeps need them).
    ptr : int64 ``(n + 1,)`` or ``None``: where the entries' peaks lie among the index's
        (:meth:`SpectralIndex.peaks` reads any of them later: a search that defers its exact
        stage to the end reads only its candidates' peaks).
    source : ``(fd, offset, n)`` or ``None``: where the bit patterns lie in the open index file,
        for a chunk whose weights are not read in advance (:meth:`SpectralIndex.dense_chunk`
        with ``lazy``): the native kernel reads them itself, piece by piece, as it multiplies
        them; :attr:`weights` reads them when asked for.
    """

    def __init__(self, weights: np.ndarray | None, read: Any, powers: tuple[float, float],
                 release: Any = None, ptr: np.ndarray | None = None, verify: Any = None,
                 source: tuple[int, int, int] | None = None, load: Any = None, failed: Any = None,
                 width: int | None = None) -> None:
        self._weights = weights
        self._width = width
        self._failed = failed
        self.powers = powers
        self.ptr = ptr
        self.source = source
        self._load = load
        self._verify = verify
        #: the weights were verified (:meth:`verify`)
        self.checked = verify is None
        self._read = read
        self._block: PeakBlock | None = None
        self._release = release

    @property
    def weights(self) -> np.ndarray:
        if self._weights is None:
            self._weights = self._load()
        return self._weights

    @property
    def width(self) -> int:
        """Columns of :attr:`weights` (m/z 0 .. width - 1)."""
        return self._width if self._weights is None and self._width is not None else self.weights.shape[1]

    @property
    def lazy(self) -> bool:
        """The weights were not read: they are at :attr:`source`."""
        return self._weights is None and self.source is not None

    def unreadable(self, exc: OSError) -> Exception:
        """The error to raise when reading the weights from :attr:`source` failed with ``exc``."""
        return self._failed(exc) if self._failed is not None else exc

    def verify(self, norms: np.ndarray, top: int) -> None:
        """Raise the index's error when the weights whose squared row norms and largest bit
        pattern these are are not what an index stores (a chunk of
        :meth:`SpectralIndex.dense_chunk` with ``check=False`` is checked so by its user)."""
        if self._verify is not None:
            self._verify(self, norms, top)
        self.checked = True

    def check(self) -> None:
        """:meth:`verify` the weights from their own norms, unless that was done (call before
        using :attr:`weights`)."""
        if not self.checked:
            self.verify(*row_norms(self.weights))

    def release(self) -> None:
        """Done with :attr:`weights` (its memory may serve the next block read; the peaks stay)."""
        if self._release is not None:
            release, self._release = self._release, None
            self._weights = self.weights[:0]
            release()

    @property
    def block(self) -> PeakBlock:
        if self._block is None:
            self._block = self._read()
        return self._block

    def __len__(self) -> int:
        return self.source[2] if self._weights is None and self.source is not None else len(self.weights)


class _Buffers:
    """Reusable memory for blocks of stored weights: a fresh array per block costs its page
    faults (widening a 4,096 x 319 block to float32: 2.4 ms into a new array, 0.23 ms into one
    reused), and a search reads hundreds of blocks. Every array is at least ``size`` bytes (the
    largest block widened), so any array kept serves any later block: arrays of each block's own
    size (the raw reads and the widened weights in one pool, widths varying by block) were
    mostly too small for the next request, and ~60 % of the widening time of a mass-filtered
    search was page faults. Thread-safe; keeps at most ``keep``."""

    def __init__(self, keep: int = 8, size: int = 1) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._keep = keep
        self._size = size

    def get(self, nbytes: int) -> np.ndarray:
        """A uint8 array of at least ``nbytes`` (contents undefined)."""
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= nbytes:
                    return self._free.pop(i)
        return np.empty(max(nbytes, self._size, 1), dtype=np.uint8)

    def put(self, buf: np.ndarray) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buf)


class _MemRun:
    """The single in-memory run of a small index (nothing spilled)."""

    def __init__(self, block: PeakBlock, entry: dict[str, np.ndarray]) -> None:
        order = np.argsort(entry["mw"], kind="stable")
        sorted_block = block.take(order)
        self.mz, self.intensity, self.ptr = sorted_block.mz, sorted_block.intensity, sorted_block.ptr
        self.entry = {k: v[order] for k, v in entry.items()}

    def read(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.ptr[lo]), int(self.ptr[hi])
        return self.mz[a:b], self.intensity[a:b]


class _Column(NamedTuple):
    """A per-entry dataset of an open index, read where needed (:meth:`SpectralIndex._slice`,
    :meth:`SpectralIndex._take`): straight from the file when it is contiguous with the
    expected type (``raw``: its offset), else through h5py."""

    ds: Any
    dtype: np.dtype
    raw: int | None


class SpectralIndex:
    """A ``neimsctl.index/2`` (or ``/1``) file opened for searching.

    Attributes
    ----------
    path, n, n_bins, sources : where it is, its number of entries, m/z bins and input files.
    mw : int32 ``(n,)`` ascending nominal masses (-1 unknown), held in memory (the windows).
    predicted : bool ``(n,)``, read when first asked for (``--source``). The other per-entry
        datasets (peak offsets, input rows, text offsets, sources) are read only where needed:
        a block's offsets, the hits' rows.
    dense_block : entries per block of stored cosine weights (:meth:`dense_chunk`); ``None``
        for a ``neimsctl.index/1`` file, which has none.

    Raises
    ------
    InputError
        The file does not exist.
    FormatError
        Not an HDF5 file, truncated, not an index, another version, or inconsistent.
    """

    def __init__(self, path: str | os.PathLike, *, h5file: Any = None) -> None:
        self.path = str(path)
        if h5file is None:
            if not Path(path).exists():
                raise InputError(f"{path}: no such file")
            h5py = _h5()
            try:
                h5file = h5py.File(path, "r")
            except OSError as exc:
                raise FormatError(f"not a neimsctl index (not a readable HDF5 file; truncated or "
                                  f"another format?): {exc}", file=self.path) from None
        self.file = h5file
        self._check()
        f = self.file
        self.n = int(f.attrs["n_entries"])
        self.n_bins = int(f.attrs["n_bins"])
        self.sources = json.loads(f.attrs["sources"])
        self.mw = f["mw"][:]
        if len(self.mw) > 1 and not (np.diff(self.mw) >= 0).all():
            raise FormatError("damaged index: entries not in mass order (mw)", file=self.path)
        self._n_peaks = int(f["mz"].shape[0])
        self._keys: np.ndarray | None = None
        self._predicted: np.ndarray | None = None
        self._matches: tuple[bytes, np.ndarray, set[str]] | None = None     # :meth:`key_matches`
        self._raw = self._raw_offsets()
        self._meta_len = int(f["meta"].shape[0])
        self._key_raw: int | None = None            # the InChIKeys' file offset, found when first read
        self._meta_raw = self._raw_offset("meta", np.uint8)
        # the other per-entry datasets are read where needed (a block's peak offsets, the hits'
        # rows and texts), not held: memory does not grow with the library (24+ bytes an entry)
        self._ptr = self._column("peak_ptr", np.int64)
        self._row = self._column("row", np.int64)
        self._meta_ptr = self._column("meta_ptr", np.int64)
        self._source = self._column("source", np.uint16)
        self._pred = self._column("predicted", np.uint8)
        # every raw read goes through this descriptor: the file opened, even if the path is
        # replaced meanwhile (an index rebuilt in place)
        raw = (self._meta_raw, self._raw, self._ptr.raw, self._row.raw, self._meta_ptr.raw, self._source.raw)
        self._fd = os.open(self.path, os.O_RDONLY) if any(r is not None for r in raw) else None
        #: version 2 only (a version-1 file is read from its peaks, whatever else it holds)
        self.dense_block: int | None = None
        largest = 0
        if self._dense is not None:
            self.dense_block, self.dense_ptr, self.dense_width = self._dense
            largest = int(np.diff(self.dense_ptr).max()) if len(self.dense_width) else 0
            self._dense_raw = self._raw_offset("dense", np.uint16)
            self.dense_powers = DENSE_POWERS
        self._buffers = _Buffers(size=4 * largest)        # the largest block widened to float32

    @property
    def predicted(self) -> np.ndarray:
        """bool ``(n,)``: predicted (not measured) entries, read once when first asked for."""
        if self._predicted is None:
            self._predicted = self._slice(self._pred, 0, self.n).astype(bool)
        return self._predicted

    def _meta_rows(self, rows: np.ndarray) -> list[dict[str, str]]:
        """The texts of input rows ``rows`` (in that order)."""
        if len(rows) and not (0 <= int(rows.min()) and int(rows.max()) < self.n):
            bad = rows[(rows < 0) | (rows >= self.n)][0]
            raise FormatError(f"damaged index: entry row {bad} out of range", file=self.path)
        # return_index: a bare np.unique imports numpy.ma (25 ms) to check for a masked array
        uniq = np.unique(np.concatenate([rows, rows + 1]), return_index=True)[0]
        bounds = dict(zip(uniq.tolist(), self._take(self._meta_ptr, uniq).tolist()))
        spans = [(r, bounds[r], bounds[r + 1]) for r in np.asarray(rows).tolist()]
        if self._fd is None or self._meta_raw is None or not spans:
            return [self._meta_row(*span) for span in spans]
        for span in spans:
            self._check_meta_span(*span)
        # every text in one read call (native: one pread each, without the interpreter)
        starts = np.array([a for _, a, _ in spans], dtype=np.int64)
        sizes = np.array([b - a for _, a, b in spans], dtype=np.int64)
        try:
            data = pread_ranges(self._fd, starts + self._meta_raw, sizes).tobytes()
        except OSError as exc:
            raise FormatError(f"damaged index: cannot read entry texts: {exc}", file=self.path) from None
        out, pos = [], 0
        for (r, a, b) in spans:
            out.append(self._parse_meta(r, data[pos:pos + b - a]))
            pos += b - a
        return out

    def _check_meta_span(self, row: int, a: int, b: int) -> None:
        if not 0 <= a <= b <= self._meta_len:
            raise FormatError(f"damaged index: entry text of row {row} at bytes {a}..{b}", file=self.path)

    def _meta_row(self, row: int, a: int, b: int) -> dict[str, str]:
        self._check_meta_span(row, a, b)
        if self._fd is not None and self._meta_raw is not None:
            data = os.pread(self._fd, b - a, self._meta_raw + a)
        else:
            data = self.file["meta"][a:b].tobytes()
        return self._parse_meta(row, data)

    def _parse_meta(self, row: int, data: bytes) -> dict[str, str]:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise FormatError(f"damaged index: entry text of row {row} is not JSON", file=self.path) from None

    def _column(self, key: str, dtype: Any) -> _Column:
        return _Column(self.file[key], np.dtype(dtype), self._raw_offset(key, dtype))

    #: entries between two wanted ones up to which :meth:`_take` reads the gap rather than seek
    _GAP = 4096

    def _slice(self, col: _Column, lo: int, hi: int) -> np.ndarray:
        """Entries ``lo:hi`` of ``col`` (0 <= lo <= hi <= its length)."""
        if col.raw is not None and self._fd is not None:
            try:
                return self._read(col.raw + col.dtype.itemsize * lo, hi - lo, col.dtype)
            except OSError as exc:
                raise FormatError(f"damaged index: cannot read {col.ds.name.lstrip('/')}: {exc}",
                                  file=self.path) from None
        return np.asarray(col.ds[lo:hi], dtype=col.dtype)

    def _take(self, col: _Column, idx: np.ndarray) -> np.ndarray:
        """Entries ``idx`` of ``col`` (sorted, unique, in range): one read per run of nearby ones."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty(len(idx), dtype=col.dtype)
        if len(idx) == 0:
            return out
        breaks = np.flatnonzero(np.diff(idx) > self._GAP) + 1
        for a, b in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(idx)]])):
            lo = int(idx[a])
            out[a:b] = self._slice(col, lo, int(idx[b - 1]) + 1)[idx[a:b] - lo]
        return out

    def _raw_offset(self, key: str, dt: Any) -> int | None:
        """File offset of a contiguous, uncompressed native-order dataset (else None)."""
        if self.file.driver != "sec2" or not os.path.isfile(self.path):
            return None
        ds = self.file[key]
        off = ds.id.get_offset()
        if ds.chunks is not None or ds.compression is not None or ds.dtype != np.dtype(dt) or off is None:
            return None
        if ds.dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
            return None
        return int(off)

    def _raw_offsets(self) -> tuple[int, int] | None:
        mz, inten = self._raw_offset("mz", np.uint16), self._raw_offset("intensity", np.float32)
        return None if mz is None or inten is None else (mz, inten)

    def _check(self) -> None:
        try:
            self._check_layout()
        except FormatError:
            raise
        except (KeyError, OSError, ValueError, TypeError, AttributeError, IndexError, OverflowError,
                RecursionError) as exc:
            raise FormatError(f"damaged index: {type(exc).__name__}: {exc}", file=self.path) from None

    def _check_layout(self) -> None:
        f = self.file
        self._dense: tuple[int, np.ndarray, np.ndarray] | None = None
        schema = f.attrs.get("schema")
        if isinstance(schema, bytes):
            schema = schema.decode()
        if schema is None:
            raise FormatError("not a neimsctl index (no 'schema' attribute; a feature shard?)", file=self.path)
        if schema not in READS:
            raise FormatError(f"index format {schema!r} is not supported: this neimsctl reads "
                              f"{' and '.join(READS)} (rebuild the index with this version's `neimsctl index`)",
                              file=self.path)
        if not f.attrs.get("complete", False):
            raise FormatError("damaged index: it was not finished (interrupted write?)", file=self.path)
        need = ("mw", "row", "predicted", "source", "inchikey", "peak_ptr", "mz", "intensity",
                "meta", "meta_ptr")
        missing = [k for k in need if k not in f]
        if missing:
            raise FormatError(f"damaged index: missing datasets {', '.join(missing)}", file=self.path)
        n = int(f.attrs.get("n_entries", -1))
        lengths = {k: f[k].shape[0] for k in ("mw", "row", "predicted", "source", "inchikey")}
        if any(v != n for v in lengths.values()) or f["peak_ptr"].shape[0] != n + 1 \
                or f["meta_ptr"].shape[0] != n + 1 or int(f["meta_ptr"][-1]) != f["meta"].shape[0]:
            raise FormatError(f"damaged index: dataset lengths disagree with n_entries={n}", file=self.path)
        nnz = f["mz"].shape[0]
        if f["intensity"].shape[0] != nnz or int(f["peak_ptr"][-1]) != nnz \
                or int(f.attrs.get("n_peaks", -1)) != nnz:
            raise FormatError("damaged index: peak arrays disagree with peak_ptr", file=self.path)
        if f["mz"].dtype.kind not in "iu":
            raise FormatError(f"damaged index: peak m/z of type {f['mz'].dtype} (integers)", file=self.path)
        if int(f.attrs["n_bins"]) != N_BINS:
            raise FormatError(f"damaged index: n_bins={f.attrs['n_bins']}; this neimsctl reads {N_BINS} "
                              "(m/z 0..500)", file=self.path)
        if schema != "neimsctl.index/1":
            self._dense = self._check_dense(n)

    def _check_dense(self, n: int) -> tuple[int, np.ndarray, np.ndarray]:
        """The validated ``(dense_block, dense_ptr, dense_width)`` of a version-2 file."""
        import h5py

        f = self.file
        missing = [k for k in ("dense", "dense_ptr", "dense_width") if not isinstance(f.get(k), h5py.Dataset)]
        if missing or "dense_block" not in f.attrs or "dense_weights" not in f.attrs:
            raise FormatError(f"damaged index: missing the stored weights ({', '.join(missing) or 'attributes'})",
                              file=self.path)
        try:
            block = int(f.attrs["dense_block"])
            weights = json.loads(f.attrs["dense_weights"])
            stored = (weights["score"], float(weights["mz_power"]), float(weights["intensity_power"]),
                      weights["dtype"])
        except (TypeError, ValueError, KeyError, OverflowError, RecursionError) as exc:
            raise FormatError(f"damaged index: bad dense_block/dense_weights attribute ({exc})", file=self.path) \
                from None
        if stored != ("cosine", *DENSE_POWERS, "bfloat16"):
            raise FormatError(f"stored weights {f.attrs['dense_weights']} are not supported: this neimsctl reads "
                              f"the cosine's m/z^{DENSE_POWERS[0]:g} I^{DENSE_POWERS[1]:g} in bfloat16 (rebuild the "
                              "index with this version's `neimsctl index`)", file=self.path)
        if not 1 <= block <= 1 << 30:
            raise FormatError(f"damaged index: dense_block={block}", file=self.path)
        dense, ptr, width = f["dense"], f["dense_ptr"], f["dense_width"]
        if dense.dtype != np.uint16 or dense.ndim != 1 or ptr.dtype.kind not in "iu" or width.dtype.kind not in "iu":
            raise FormatError(f"damaged index: stored weights of type {dense.dtype} x{dense.ndim}-D (uint16, 1-D) "
                              f"or integer offsets ({ptr.dtype}, {width.dtype})", file=self.path)
        nb = -(-n // block)
        if ptr.shape != (nb + 1,) or width.shape != (nb,):
            raise FormatError("damaged index: dense_ptr/dense_width lengths disagree with n_entries",
                              file=self.path)
        rows = np.minimum(np.arange(nb, dtype=np.int64) * block + block, n) - np.arange(nb, dtype=np.int64) * block
        ptr, width = ptr[:].astype(np.int64), width[:].astype(np.int64)
        if ptr[0] != 0 or not np.array_equal(np.diff(ptr), rows * width) \
                or int(ptr[-1]) != dense.shape[0] or (width > N_BINS).any() or (width < 0).any():
            raise FormatError("damaged index: the stored weights disagree with dense_ptr/dense_width",
                              file=self.path)
        return block, ptr, width

    def __len__(self) -> int:
        return self.n

    @property
    def n_without_mass(self) -> int:
        """Entries of unknown nominal mass (``mw`` -1, sorted first): no mass window holds them."""
        return int(np.searchsorted(self.mw, 0, "left"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.file.close()

    def __enter__(self) -> SpectralIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _peak_ptr(self, lo: int, hi: int) -> np.ndarray:
        """The peak offsets of entries ``lo:hi`` (``hi - lo + 1``), checked: ascending, in range."""
        ptr = self._slice(self._ptr, lo, hi + 1)
        a, b = int(ptr[0]), int(ptr[-1])
        if not 0 <= a <= b <= self._n_peaks or (len(ptr) > 2 and not (np.diff(ptr) >= 0).all()):
            raise FormatError(f"damaged index: peak offsets of entries {lo}..{hi - 1} out of range",
                              file=self.path)
        return ptr

    def check_peak_ptr(self, lo: int, hi: int) -> None:
        """Check the peak offsets of entries ``lo:hi`` (ascending, in range; else a 'damaged index'
        error), as reading their peaks does: a search that reads only its candidates' peaks
        checks the offsets of every entry it searches all the same (a run of blocks in one read)."""
        self._peak_ptr(lo, hi)

    def entry_peaks(self, entries: np.ndarray) -> PeakBlock:
        """The spectra of ``entries`` (sorted, unique), in that order: their peak offsets read
        in runs (:meth:`_take`) and checked, then :meth:`peaks` (a search that scores exactly at
        the end reads only its candidates' offsets, not every block's)."""
        e = np.asarray(entries, dtype=np.int64)
        if len(e) and not (0 <= int(e[0]) and int(e[-1]) < self.n):
            raise FormatError("damaged index: entry out of range", file=self.path)
        both, inv = np.unique(np.concatenate([e, e + 1]), return_inverse=True)
        ptr = self._take(self._ptr, both).astype(np.int64)[inv]
        starts, counts = ptr[:len(e)], ptr[len(e):] - ptr[:len(e)]
        if len(e) and counts.min() < 0:
            bad = int(e[np.argmax(counts < 0)])
            raise FormatError(f"damaged index: peak offsets of entry {bad} out of range", file=self.path)
        return self.peaks(starts, counts)

    def peaks(self, starts: np.ndarray, counts: np.ndarray) -> PeakBlock:
        """The spectra whose peaks are ``starts[i] .. starts[i] + counts[i]`` (offsets among the
        index's peaks, e.g. from :attr:`DenseChunk.ptr`), in that order: one read per spectrum,
        all in one call where the native kernel is built (:func:`neimsctl.io.native.pread_ranges`)."""
        starts = np.asarray(starts, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.int64)
        ptr = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        total = int(ptr[-1])
        if len(starts) and not (starts.min() >= 0 and counts.min() >= 0 and int((starts + counts).max()) <= self._n_peaks):
            raise FormatError("damaged index: peak offsets out of range", file=self.path)
        try:
            if self._raw is not None:
                data = pread_ranges(self._fd, np.concatenate([self._raw[1] + 4 * starts, self._raw[0] + 2 * starts]),
                                    np.concatenate([4 * counts, 2 * counts]))
                inten, mz = data[:4 * total].view(np.float32), data[4 * total:].view(np.uint16)
            else:                   # chunked or compressed peaks (not what `index` writes): per spectrum
                spans = list(zip(starts.tolist(), (starts + counts).tolist()))
                mz = np.concatenate([np.zeros(0, np.uint16)] + [self.file["mz"][a:b] for a, b in spans])
                inten = np.concatenate([np.zeros(0, np.float32)] + [self.file["intensity"][a:b] for a, b in spans])
        except OSError as exc:
            raise FormatError(f"damaged index: cannot read peaks: {exc}", file=self.path) from None
        if total and (int(mz.max()) >= self.n_bins or int(mz.min()) < 0):
            raise FormatError("damaged index: peak m/z out of range", file=self.path)
        return PeakBlock(ptr, mz, inten)

    def block(self, lo: int, hi: int, ptr: np.ndarray | None = None) -> PeakBlock:
        """Entries ``lo:hi`` as a :class:`PeakBlock` (read from disk); ``ptr``: their peak offsets
        when already read (:meth:`_peak_ptr`)."""
        ptr = self._peak_ptr(lo, hi) if ptr is None else ptr
        a, b = int(ptr[0]), int(ptr[-1])
        try:
            if self._raw is not None:
                mz = self._read(self._raw[0] + 2 * a, b - a, np.uint16)
                inten = self._read(self._raw[1] + 4 * a, b - a, np.float32)
            else:
                mz = self.file["mz"][a:b]
                inten = self.file["intensity"][a:b]
        except OSError as exc:
            raise FormatError(f"damaged index: cannot read peaks {a}..{b}: {exc}", file=self.path) from None
        if len(mz) and not 0 <= int(mz.min()) <= int(mz.max()) < self.n_bins:
            raise FormatError(f"damaged index: peak m/z of entries {lo}..{hi - 1} out of range", file=self.path)
        return PeakBlock(ptr - a, mz, inten)

    def take(self, entries: np.ndarray, gap: int = 256) -> PeakBlock:
        """Entries ``entries`` (ascending, no repeats) as a :class:`PeakBlock`, read in runs:
        entries less than ``gap`` apart share one read (a read per entry costs more)."""
        entries = np.asarray(entries, dtype=np.int64)
        if len(entries) == 0:
            return PeakBlock.concat([])
        cut = np.flatnonzero(np.diff(entries) >= gap) + 1
        parts = []
        for run in np.split(entries, cut):
            lo = int(run[0])
            parts.append(self.block(lo, int(run[-1]) + 1).take(run - lo))
        return PeakBlock.concat(parts)

    def _read(self, offset: int, count: int, dtype: Any, out: np.ndarray | None = None) -> np.ndarray:
        """``count`` values at a byte offset, through the descriptor this index holds open
        (into ``out``, a uint8 array of at least that many bytes, when given)."""
        if self._fd is None:
            raise self._closed()
        nbytes = count * np.dtype(dtype).itemsize
        out = np.empty(count, dtype=dtype) if out is None else out[:nbytes].view(dtype)
        pread_into(self._fd, out, offset)
        return out

    def chunks(self, size: int = 65536, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, PeakBlock]]:
        """``(start, block)`` for entries ``lo:hi`` in pieces of ``size`` entries."""
        hi = self.n if hi is None else hi
        for start in range(lo, hi, size):
            yield start, self.block(start, min(start + size, hi))

    def dense_chunk(self, b: int, float32: bool = False, pooled: bool = False,
                    check: bool = True, lazy: bool = False) -> tuple[int, DenseChunk]:
        """Block ``b`` of stored weights and its peaks: ``(first entry, chunk)``; the weights
        as bfloat16 bits, or (``float32``) as their float32 values (``neimsctl.index/2`` only).
        ``pooled``: the weights' memory is reused for a later block once the chunk's
        :meth:`DenseChunk.release` is called (a chunk searched once: the search releases it).
        ``check=False`` (bits only): the weights are not checked here; their user checks them,
        with the rows' squared norms it computes (:meth:`DenseChunk.verify`) or with
        :meth:`DenseChunk.check`, before it uses anything computed from them.
        ``lazy`` (with ``check=False``, bits only, an index file whose weights are stored
        whole): the weights are not read here but where they lie (:attr:`DenseChunk.source`),
        by their user (:func:`neimsctl.io.native.product_select`) or when first asked for."""
        assert self.dense_block is not None
        lo = b * self.dense_block
        hi = min(lo + self.dense_block, self.n)
        a, z = int(self.dense_ptr[b]), int(self.dense_ptr[b + 1])
        width = int(self.dense_width[b])
        count = z - a
        if lazy and not (float32 or check) and self._dense_raw is not None and self._fd is not None:
            return lo, DenseChunk(None, lambda: self.block(lo, hi), self.dense_powers,
                                  verify=lambda ch, norms, top: self._verify_weights(b, lo, hi, norms, top, ch),
                                  source=(self._fd, self._dense_raw + 2 * a, hi - lo),
                                  load=lambda: self.dense_chunk(b, check=False)[1].weights,
                                  failed=lambda exc: self._unreadable(b, exc), width=width)
        pool = self._buffers if pooled else _Buffers(keep=0)
        raw = pool.get(2 * count)
        try:
            if self._dense_raw is not None:
                bits = self._read(self._dense_raw + 2 * a, count, np.uint16, out=raw)
            else:
                bits = raw[:2 * count].view(np.uint16)
                self.file["dense"].read_direct(bits, np.s_[a:z])
        except (OSError, TypeError, ValueError) as exc:
            raise self._unreadable(b, exc) from None
        bits = bits.reshape(hi - lo, width)
        # every entry has peaks: each row is a unit vector rounded to bfloat16. Anything else (NaN,
        # inf, negative, zeroed or cut rows: a damaged file) would drop hits silently
        if float32:
            wide = pool.get(4 * count)
            values = bf16_values(bits, wide[:4 * count].view(np.uint32).reshape(bits.shape))
            norms, top = np.einsum("ij,ij->i", values, values), int(bits.max()) if len(bits) else 0
            pool.put(raw)
        elif check:
            norms, top = row_norms(bits)
        keep = wide if float32 else raw
        ptr = self._peak_ptr(lo, hi)
        chunk = DenseChunk(values if float32 else bits, lambda: self.block(lo, hi, ptr), self.dense_powers,
                           release=(lambda: pool.put(keep)) if pooled else None, ptr=ptr,
                           verify=lambda ch, norms, top: self._verify_weights(b, lo, hi, norms, top, ch))
        if float32 or check:
            chunk.verify(norms, top)
        return lo, chunk

    def _unreadable(self, b: int, exc: Exception) -> NeimsError:
        if self._fd is None:        # closed while a search read it (another thread's close())
            return self._closed()
        return FormatError(f"damaged index: cannot read stored weights of block {b}: {exc}", file=self.path)

    def _closed(self) -> InputError:
        return InputError(f"{self.path}: the index was closed (it cannot be read after close())")

    def _verify_weights(self, b: int, lo: int, hi: int, norms: np.ndarray, top: int, chunk: DenseChunk) -> None:
        """Every entry has peaks: each row of stored weights is a unit vector rounded to bfloat16.
        Anything else (NaN, inf, negative, zeroed or cut rows: a damaged file) would drop hits
        silently: a 'damaged index' error. ``norms``: the rows' squared norms; ``top``: their
        largest bit pattern."""
        zero = norms == 0.0         # legitimate only for an entry whose one peak is at m/z 0 (weight 0)
        damaged = len(norms) and (top > _BF16_ONE or not ((np.abs(norms - 1.0) <= _NORM_TOL) | zero).all())
        if not damaged and zero.any():
            peaks = chunk.block
            damaged = bool(np.isin(np.flatnonzero(zero), peaks.row_of_peak()[peaks.mz > 0]).any())
        if damaged:
            raise FormatError(f"damaged index: stored weights of block {b} are not unit vectors "
                              f"(entries {lo}..{hi - 1})", file=self.path)

    def window(self, mw: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
        """Entry ranges ``[lo, hi)`` with ``|mw_entry - mw| <= tolerance`` for each mass; entries
        of unknown mass (``-1``, sorted first) are never inside a window."""
        m = np.asarray(mw, dtype=np.float64)
        # the masses are integers: the first >= a bound is the first >= its ceiling (and the last
        # <= it, <= its floor), searched as integers of the masses' type (float bounds made numpy
        # widen all 1.59M masses to float64 for each search: 3.5 ms)
        kind = np.iinfo(self.mw.dtype) if self.mw.dtype.kind in "iu" else None
        first, last = np.maximum(m - tolerance, 0.0) - 1e-9, m + tolerance + 1e-9
        if kind is not None and not np.isnan(m).any():     # (a NaN has no integer; it sorts last)
            first = np.clip(np.ceil(first), kind.min, kind.max).astype(self.mw.dtype)
            last = np.clip(np.floor(last), kind.min, kind.max).astype(self.mw.dtype)
        lo = np.searchsorted(self.mw, first, "left")
        hi = np.searchsorted(self.mw, last, "right")
        return lo.astype(np.int64), hi.astype(np.int64)

    def key_blocks(self, step: int = 1 << 20) -> Iterator[np.ndarray]:
        """The InChIKey connectivity blocks (``S14``; empty when unknown) of the sorted entries,
        in pieces of ``step`` entries (read each time: the keys are 27 bytes an entry)."""
        ds = self.file["inchikey"]
        for lo in range(0, self.n, step):
            yield np.asarray(ds[lo:lo + step]).astype("S14")

    def key_matches(self, blocks: Iterable[str]) -> tuple[np.ndarray, set[str]]:
        """The entries whose InChIKey connectivity block is one of ``blocks`` (bool ``(n,)``) and
        the blocks found among them; the keys are read in pieces (:meth:`key_blocks`), once for
        the last set of blocks asked for (a candidate list's check and its search share it)."""
        want = np.array(sorted(set(blocks)), dtype="S14")
        key = want.tobytes()
        if self._matches is None or self._matches[0] != key:
            masks, found = [np.zeros(0, dtype=bool)], set()
            for part in self.key_blocks():
                masks.append(_members(part, want))
                found.update(part[masks[-1]].tolist())
            self._matches = (key, np.concatenate(masks), {b.decode() for b in found})
        return self._matches[1], self._matches[2]

    @property
    def inchikeys(self) -> np.ndarray:
        """``S27`` InChIKeys of the sorted entries (empty when unknown), read once."""
        if self._keys is None:
            self._keys = self.file["inchikey"][:]
        return self._keys

    def entries(self, index: np.ndarray) -> dict[str, list]:
        """Text and numbers of the sorted entries ``index``: id, name, inchikey, smiles, formula,
        mw, kind (measured/predicted), file.

        Raises
        ------
        FormatError
            Damaged entry data (offsets out of range, text that is not UTF-8 JSON).
        """
        try:
            return self._entries(index)
        except FormatError:
            raise
        except (IndexError, KeyError, ValueError, TypeError, OverflowError, MemoryError, OSError) as exc:
            raise FormatError(f"damaged index: entry data: {type(exc).__name__}: {exc}", file=self.path) from None

    def _keys_of(self, uniq: np.ndarray) -> np.ndarray:
        """``S27`` InChIKeys of the sorted entries ``uniq``: one read each in one call (an h5py
        selection of 6,262 rows took 7 ms), or through h5py for a file not stored plainly."""
        if self._key_raw is None:
            self._key_raw = self._raw_offset("inchikey", f"S{KEY_LEN}") or -1
        if self._key_raw < 0 or self._fd is None:
            return self.file["inchikey"][uniq]
        size = KEY_LEN
        try:
            data = pread_ranges(self._fd, self._key_raw + size * np.asarray(uniq, dtype=np.int64),
                                np.full(len(uniq), size, dtype=np.int64))
        except OSError as exc:
            raise FormatError(f"damaged index: cannot read inchikey: {exc}", file=self.path) from None
        return data.view(f"S{KEY_LEN}")

    def _entries(self, index: np.ndarray) -> dict[str, list]:
        idx = np.asarray(index, dtype=np.int64)
        uniq, inv = np.unique(idx, return_inverse=True)
        out: dict[str, list] = {}
        if len(uniq) == 0:
            return {k: [] for k in (*_META, "inchikey", "mw", "kind", "file")}
        texts = self._meta_rows(self._take(self._row, uniq))
        for key in _META:
            got = [t.get(key, "") for t in texts]
            out[key] = [got[i] for i in inv]
        keys = self._keys_of(uniq)
        out["inchikey"] = [keys[i].decode() for i in inv]
        out["mw"] = [int(self.mw[i]) for i in idx]
        pred, src = self._take(self._pred, uniq), self._take(self._source, uniq)
        if len(src) and int(src.max()) >= len(self.sources):
            raise FormatError(f"damaged index: source {int(src.max())} of {len(self.sources)} input files",
                              file=self.path)
        out["kind"] = ["predicted" if pred[i] else "measured" for i in inv]
        files = [self._file_name(s["file"]) for s in self.sources]
        out["file"] = [files[int(src[i])] for i in inv]
        return out

    def _file_name(self, file: str) -> str:
        """An entry's input file as hits name it: entries an index read from standard input
        (``predict ... | neimsctl index - -o part1.h5``) are ``<stdin> (part1.h5)``, the index as
        it was named to ``search``, so that the hits of several such parts say which part they
        come from."""
        if file != "<stdin>" or self.path in ("-", "<stdin>"):
            return file
        return f"<stdin> ({self.path})"


def _members(keys: np.ndarray, want: np.ndarray) -> np.ndarray:
    """``keys`` (S14) that are in ``want`` (sorted, unique S14): bool. np.isin for a few wanted
    (0.016 s over 1.59M keys for 3), a binary search for many (5,310: 0.26 s; np.isin 0.69 s)."""
    if len(want) <= 64:
        return np.isin(keys, want)
    return want[np.minimum(np.searchsorted(want, keys), len(want) - 1)] == keys


def open_index(path: str | os.PathLike) -> SpectralIndex:
    """Open an index file for searching (see :class:`SpectralIndex`)."""
    return SpectralIndex(path)


def is_index(path: str | os.PathLike) -> bool:
    """True when ``path`` is an HDF5 file with the root attribute ``schema`` of an index."""
    try:
        h5py = _h5()
        with h5py.File(path, "r") as f:
            schema = f.attrs.get("schema")
    except OSError:
        return False
    if isinstance(schema, bytes):
        schema = schema.decode()
    return isinstance(schema, str) and schema.startswith("neimsctl.index/")
