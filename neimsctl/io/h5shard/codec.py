"""The shard chunk codec: wide columns' chunks deflated and inflated here, not by HDF5.

A *wide* column (:func:`whole_row_gzip`: 2-D or more, a chunk holds whole rows, gzip the only
filter) has its chunks compressed by :data:`DEFLATE` and stored with ``write_direct_chunk``
(:func:`deflate_chunks`), and read with ``read_direct_chunk`` and inflated by :data:`DEFLATE`
(:func:`chunk_reader`): ISA-L's deflate is ~3.5x zlib's at level 1 and its inflate ~2x
(BENCHMARKS.md). The chunks are exactly what HDF5's own gzip filter stores (a zlib stream each,
filter mask 0), so any HDF5 reader reads the files, and chunks HDF5 compressed itself (other
levels, older files) read back here alike. Every other dataset goes through h5py.

:func:`read_rows` reads a slice, :func:`read_column` a whole dataset block by block and
:func:`row_reader` rows at given positions, each touched chunk once; the shard reader
(:mod:`neimsctl.io.h5shard.read`) builds on them.
"""

from __future__ import annotations

from typing import Callable

import h5py
import numpy as np

try:  # ISA-L's deflate: the same zlib stream as zlib's, ~3.5x faster at level 1 (BENCHMARKS.md)
    from isal import isal_zlib as DEFLATE
except ImportError:  # a platform without its wheels: the standard library's
    import zlib as DEFLATE  # type: ignore[no-redef]

__all__ = ["DEFLATE", "whole_row_gzip", "deflate_chunks", "chunk_reader", "read_rows", "read_column",
           "row_reader"]


def whole_row_gzip(ds: h5py.Dataset) -> bool:
    """Whether ``ds`` is a wide column whose chunks hold whole rows behind the gzip filter
    alone: those chunks are deflated and inflated here (a file rechunked by h5repack, or
    with other filters, goes through h5py)."""
    return (ds.ndim > 1 and ds.chunks is not None and ds.chunks[1:] == ds.shape[1:]
            and (ds.compression, ds.shuffle, ds.fletcher32, ds.scaleoffset)
            == ("gzip", False, False, None))


def deflate_chunks(ds: h5py.Dataset, start: int, arr: np.ndarray) -> None:
    """Write ``arr`` at row ``start`` (a chunk boundary) of ``ds`` (:func:`whole_row_gzip`),
    deflating its chunks here.

    The chunks are compressed by :data:`DEFLATE` (ISA-L when installed) and stored with
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
        ds.id.write_direct_chunk((start + lo, *tail), DEFLATE.compress(part, level))


def chunk_reader(ds: h5py.Dataset) -> Callable[[int], np.ndarray] | None:
    """``read(lo)``: the rows of ``ds`` (:func:`whole_row_gzip`) in its chunk starting at row
    ``lo``, read as stored and inflated by :data:`DEFLATE` (ISA-L's inflate is ~2x zlib's,
    which HDF5 uses); ``None`` for any other dataset (read those through h5py)."""
    if not whole_row_gzip(ds):
        return None
    n, dsid, dtype, shape, tail = ds.shape[0], ds.id, ds.dtype, ds.chunks, (0,) * (ds.ndim - 1)

    def read(lo: int) -> np.ndarray:
        try:
            mask, data = dsid.read_direct_chunk((lo, *tail))
        except RuntimeError:  # a chunk never written (fill values): HDF5 makes it up
            return np.asarray(ds[lo:lo + shape[0]])
        raw = data if mask & 1 else DEFLATE.decompress(data)  # bit 0: deflate was skipped
        return np.frombuffer(raw, dtype=dtype).reshape(shape)[:n - lo]

    return read


def read_rows(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a per-row dataset (wide gzip columns by :func:`chunk_reader`)."""
    read = chunk_reader(ds)
    if read is None or stop <= start:
        return ds[start:stop]
    step = ds.chunks[0]
    return np.concatenate([read(lo)[max(start - lo, 0):stop - lo]
                           for lo in range(start - start % step, stop, step)])


COLUMN_BLOCK = 8192     # rows per read of a whole column (whole chunks)


def read_column(ds: h5py.Dataset, block: int = COLUMN_BLOCK) -> np.ndarray:
    """A whole dataset, read ``block`` rows (whole chunks) at a time by :func:`read_rows`.

    One read of a whole dataset of thousands of chunks leaves ~30 MiB of HDF5's per-chunk
    bookkeeping behind in the heap (a 300k-row ``mw``: 1.2 MB of data); block by block it
    stays at one block's.
    """
    n = ds.shape[0]
    out = np.empty(ds.shape, dtype=ds.dtype)
    for lo in range(0, n, block):
        out[lo:lo + block] = read_rows(ds, lo, min(lo + block, n))
    return out


def row_reader(ds: h5py.Dataset) -> Callable[[np.ndarray], np.ndarray]:
    """``at(pos)``: the rows ``pos`` (sorted, unique) of ``ds``, each touched chunk read once.

    Wide gzip columns are inflated here (:func:`chunk_reader`); any other dataset (strings,
    other filters) is read through h5py, one chunk-sized slice per touched chunk (64 rows at a
    time when it is not chunked). Make the reader once per dataset and call it per batch: it
    looks the dataset's layout up once.
    """
    step = ds.chunks[0] if ds.chunks else 64
    n, tail, dtype = ds.shape[0], ds.shape[1:], ds.dtype

    def through_h5py(lo: int) -> np.ndarray:
        return ds[lo:min(lo + step, n)]

    read = chunk_reader(ds) or through_h5py

    def at(pos: np.ndarray) -> np.ndarray:
        out = np.empty((len(pos), *tail), dtype=dtype)
        if not len(pos):
            return out
        chunk = pos // step
        cuts = np.flatnonzero(np.diff(chunk)) + 1
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(pos)]):
            lo = int(chunk[a]) * step
            out[a:b] = read(lo)[pos[a:b] - lo]
        return out

    return at
