"""Writing shards: :class:`ShardWriter` appends feature blocks to one ``neimsctl.h5shard/1`` file.

Blocks (:mod:`neimsctl.io.featblock`) are buffered and written :data:`FLUSH_ROWS` rows at a
time, under a temporary name beside the target that is renamed into place on a clean close, so
an interrupted run never leaves a file that looks complete. The datasets are those of
:func:`neimsctl.io.h5shard.layout.stored_datasets`; the wide columns' chunks are deflated by
:mod:`neimsctl.io.h5shard.codec`. The resumable writer of ``featurize -o FILE.h5`` builds on
this one (:mod:`neimsctl.io.h5shard.resume`).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from neimsctl.io.featblock import (STR_COLUMNS, block_rows, check_mode, concat_blocks,
                                   ragged_columns, row_columns, take_rows, validate_block)
from neimsctl.io.h5shard import codec
from neimsctl.io.h5shard.layout import COMPRESSION, PTRS, ROW_CHUNK, SCHEMA, stored_datasets
from neimsctl.io.streams import RoomCheck, Writer, array_bytes, atomic_path

if TYPE_CHECKING:
    from neimsctl.io.h5shard.read import ShardReader

FLUSH_ROWS = 1024       # rows buffered before a write (a multiple of ROW_CHUNK)


class ShardWriter(Writer):
    """Write one shard; use as a context manager.

    Parameters
    ----------
    path
        Final file name; rows go to a temporary name beside it until :meth:`close`.
    mode
        ``student``, ``teacher`` or ``v1``.
    settings
        Featurizer settings (stored as JSON in the ``featurizer`` attribute).
    settings_hash
        Hash of ``settings`` (``neimsctl.chem.features.settings_hash``).
    attrs
        Further root attributes, e.g. provenance (``neimsctl_version``, ``argv``, ``created``)
        or ``shard`` (``"K/N"``); ``None`` values are skipped.
    shown
        The name an output error gives (default ``path``): the output asked for, when ``path``
        is a part of it (a segment of a resumable output).

    Notes
    -----
    Appended rows are buffered and written :data:`FLUSH_ROWS` at a time, so every write
    fills whole 64-row chunks (no chunk is compressed twice) and each dataset is resized
    once per flush instead of once per small block.
    """

    def __init__(self, path: str | os.PathLike, mode: str, settings: dict[str, Any],
                 settings_hash: str, attrs: dict[str, Any] | None = None,
                 shown: str | os.PathLike | None = None) -> None:
        self.path, self.mode = Path(path), check_mode(mode)
        self._atomic = atomic_path(self.path, shown)
        tmp = self._atomic.__enter__()
        self._written = 0
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        # no HDF5 file lock (flock): worker processes forked while this file is open (a pool
        # re-created after a worker died) would inherit it, and the segment could not be
        # opened again to join it ("unable to lock file"). The temporary name is this run's own.
        self._room = RoomCheck(tmp)     # the disk's room, checked before each write
        try:
            self._f = h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=True,
                                locking=False)
        except BaseException as exc:  # e.g. a read-only place: named as the output asked for
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        a = self._f.attrs
        a["schema"], a["mode"], a["n_rows"] = SCHEMA, mode, 0
        a["featurizer"] = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        a["settings_hash"] = settings_hash
        for k, v in (attrs or {}).items():
            if v is not None:
                a[k] = v
        for col in stored_datasets(mode).values():
            if col.kind == "ptr":  # N + 1 offsets, starting at 0
                ds = self._f.create_dataset(col.name, shape=(1,), maxshape=(None,), dtype=col.dtype,
                                            chunks=(col.chunk,), **COMPRESSION)
                ds[0] = 0
            else:
                self._f.create_dataset(col.name, shape=(0, *col.shape), maxshape=(None, *col.shape),
                                       dtype=col.dtype, chunks=(col.chunk, *col.shape), **COMPRESSION)

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
        self._room.need(array_bytes(block.values()))
        for name, arr in block.items():
            if name in PTRS:
                ds = self._f[PTRS[name]]
                start = ds.shape[0]
                ds.resize(start + n, axis=0)
                ds[start:] = ds[start - 1] + np.cumsum(arr)
                continue
            ds = self._f[name]
            start = ds.shape[0]
            ds.resize(start + arr.shape[0], axis=0)
            if arr.ndim > 1 and start % ds.chunks[0] == 0 and codec.whole_row_gzip(ds):
                codec.deflate_chunks(ds, start, arr)
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
        self._room.need(sum(sf[name].dtype.itemsize * int(np.prod(sf[name].shape[1:])) * n
                             for name in row_columns(self.mode) if name not in PTRS))
        values: dict[str, np.ndarray] = {c: sf[c][:n] for c in STR_COLUMNS}  # UTF-8 bytes as stored
        for name in row_columns(self.mode):
            if name in PTRS:  # CSR lengths: _write turns them into offsets again
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
            self._f.close()
        except BaseException as exc:
            self.abort(exc)
            raise
        self._atomic.__exit__(None, None, None)

    def abort(self, exc: BaseException | None = None) -> None:
        """Close and delete the temporary file; the final name is never created."""
        self._pending, self._pending_rows = [], 0
        if self._f.id.valid:
            with contextlib.suppress(Exception):   # it is deleted: what it still holds is lost
                self._f.close()
        err = exc or RuntimeError("aborted")
        try:
            self._atomic.__exit__(type(err), err, err.__traceback__)
        except BaseException as again:  # atomic_path re-raises what it is given
            if again is not err:
                raise
