"""HDF5 teacher soft-label shards ``neimsctl.softlabel/1`` (formats/softlabel-shard.v1.md).

:class:`SoftLabelWriter` appends blocks of rows to ``<out>.partial`` and records after every
block how many *input* positions are done (``positions_done``), so an interrupted run can be
continued (``resume=True``: rows written after the last recorded block are cut off, the run goes
on from ``positions_done``). :meth:`SoftLabelWriter.close` marks the file complete and renames
it onto the final name, so a file under the final name is always complete.
:class:`SoftLabelReader` gives lazy row access and the id -> row map used to align soft labels
with student shards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from neimsctl.errors import FormatError
from neimsctl.interrupts import check as check_interrupt
from neimsctl.io.h5handle import H5Handle
from neimsctl.io.streams import (RoomCheck, Writer, array_bytes, lock_partial, output_error,
                                partial_path, refuse_protected)

__all__ = ["SCHEMA", "SoftLabelWriter", "SoftLabelReader", "partial_path"]

SCHEMA = "neimsctl.softlabel/1"
ROW_CHUNK = 64
_STR = h5py.string_dtype("utf-8")
_COMP: dict[str, Any] = {"compression": "gzip", "compression_opts": 4}
#: dataset -> (dtype, width attribute or None)
COLUMNS = {"mean": ("<f2", "n_bins"), "var": ("<f4", "n_bins"), "hidden": ("<f2", "hidden_dim")}
#: Per row, the InChIKey connectivity block of the labelled molecule (``b""``: unknown), so that a
#: reader can tell labels of the same id but another compound (another library numbered alike).
BLOCK, BLOCK_DTYPE = "block", "S14"


class SoftLabelWriter(Writer):
    """Write (or continue) one soft-label shard; use as a context manager.

    Parameters
    ----------
    path
        Final file name.
    settings
        Everything that determines the content (teacher, samples, seed, batch size, input
        shards' hash, ...); stored as JSON in the ``settings`` attribute. A resumed file must
        carry the same settings.
    n_bins, hidden_dim
        Widths of ``mean``/``var`` and ``hidden``.
    attrs
        Further root attributes (provenance, ``featurizer_hash``); ``None`` values skipped.
    resume
        Continue ``<path>.partial`` if it exists (else start afresh).

    Raises
    ------
    FormatError
        ``resume`` with a partial file written with other settings.
    """

    def __init__(self, path: str | os.PathLike, settings: dict[str, Any], *, n_bins: int,
                 hidden_dim: int, attrs: dict[str, Any] | None = None,
                 resume: bool = False) -> None:
        self.path, self.tmp = Path(path), partial_path(path)
        text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        existed = self.tmp.exists()
        try:
            if not existed:
                os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT, 0o666))
            self._lock = lock_partial(self.tmp)     # one run at a time writes it
        except OSError as exc:                      # named by the output asked for
            raise output_error(self.path, exc) from None
        try:
            self._open(text, n_bins, hidden_dim, attrs, resume and existed)
        except BaseException:
            os.close(self._lock)
            raise
        self._room = RoomCheck(self.tmp)     # the disk's room, checked before each block

    def _open(self, text: str, n_bins: int, hidden_dim: int,
              attrs: dict[str, Any] | None, resume: bool) -> None:
        if resume:
            try:
                self._f = h5py.File(self.tmp, "a", locking=False)
            except OSError as exc:                  # cut short or damaged by the interruption
                raise FormatError(f"cannot be read ({exc.strerror or exc}); rerun without --resume "
                                  "to start afresh", file=str(self.tmp)) from None
            old = self._f.attrs.get("settings")
            if self._f.attrs.get("schema") != SCHEMA or old != text:
                self._f.close()
                raise FormatError(f"written with other settings ({_differences(old, text)}); rerun "
                                  "without --resume to start afresh", file=str(self.tmp))
            self.positions_done = int(self._f.attrs["positions_done"])
            self.n_rows = int(self._f.attrs["n_rows"])
            if BLOCK not in self._f:     # begun by a version without it: those rows' are unknown
                self._f.create_dataset(BLOCK, shape=(self.n_rows,), maxshape=(None,),
                                       dtype=BLOCK_DTYPE, chunks=(ROW_CHUNK,), **_COMP)
            for name in ("id", BLOCK, *COLUMNS):
                self._f[name].resize(self.n_rows, axis=0)   # drop rows of an unfinished block
            return
        self._f = h5py.File(self.tmp, "w", libver=("earliest", "v110"), track_order=True, locking=False)
        a = self._f.attrs
        a["schema"], a["settings"], a["complete"] = SCHEMA, text, False
        a["n_rows"], a["positions_done"], a["n_bins"], a["hidden_dim"] = 0, 0, n_bins, hidden_dim
        for k, v in (attrs or {}).items():
            if v is not None:
                a[k] = v
        self._f.create_dataset("id", shape=(0,), maxshape=(None,), dtype=_STR,
                               chunks=(ROW_CHUNK,), **_COMP)
        self._f.create_dataset(BLOCK, shape=(0,), maxshape=(None,), dtype=BLOCK_DTYPE,
                               chunks=(ROW_CHUNK,), **_COMP)
        for name, (dt, width) in COLUMNS.items():
            w = n_bins if width == "n_bins" else hidden_dim
            self._f.create_dataset(name, shape=(0, w), maxshape=(None, w), dtype=dt,
                                   chunks=(ROW_CHUNK, w), **_COMP)
        self.positions_done = self.n_rows = 0

    def append(self, ids: Sequence[str], mean: np.ndarray, var: np.ndarray, hidden: np.ndarray,
               positions_done: int, blocks: Sequence[bytes] | np.ndarray | None = None) -> None:
        """Append rows, then record that input positions ``< positions_done`` are finished.

        ``blocks``: the rows' InChIKey connectivity blocks (``None``: unknown)."""
        n = len(ids)
        if n:
            id_arr = np.asarray(ids, dtype=object)
            block_arr = (np.zeros(n, dtype=BLOCK_DTYPE) if blocks is None
                         else np.asarray(blocks, dtype=BLOCK_DTYPE))
            try:
                self._room.need(array_bytes([id_arr, mean, var, hidden]))
            except OSError as exc:  # a full disk, found before HDF5 does: the file stays whole
                raise output_error(self.path, exc) from None
            start = self.n_rows
            for name, arr in (("id", id_arr), (BLOCK, block_arr), ("mean", mean),
                              ("var", var), ("hidden", hidden)):
                ds = self._f[name]
                ds.resize(start + n, axis=0)
                ds[start:] = arr
            self.n_rows += n
        self._f.flush()
        self._f.attrs["n_rows"], self._f.attrs["positions_done"] = self.n_rows, positions_done
        self._f.flush()
        self.positions_done = positions_done

    def written_ids(self) -> set[str]:
        """The ids of the rows written so far (a resumed run replays its earlier rejects)."""
        return {i.decode() if isinstance(i, bytes) else str(i) for i in self._f["id"][:self.n_rows]}

    def close(self) -> None:
        """Mark complete and rename onto the final name."""
        check_interrupt()       # a Ctrl-C/SIGTERM an h5py callback swallowed: stays partial
        self._f.attrs["complete"] = True
        self._f.close()
        try:
            refuse_protected(self.path)            # e.g. a file the teacher ensemble includes
            os.replace(self.tmp, self.path)
        finally:
            os.close(self._lock)

    def abort(self, exc: BaseException | None = None) -> None:
        """Close, keeping ``<path>.partial`` for a later ``resume``."""
        self._f.close()
        os.close(self._lock)


class SoftLabelReader:
    """Lazy reader: attributes and ids at once, rows on demand (reopened after a fork, see
    :class:`neimsctl.io.h5handle.H5Handle`).

    Raises
    ------
    InputError
        The file cannot be opened.
    FormatError
        Not a complete ``neimsctl.softlabel/1`` file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.handle = H5Handle(self.path)
        f = self.file
        if f.attrs.get("schema") != SCHEMA:
            raise FormatError(f"not a {SCHEMA} file (schema={f.attrs.get('schema')!r}); make it "
                              "with neimsctl softlabel", file=str(self.path))
        if not bool(f.attrs.get("complete", False)):
            raise FormatError("incomplete soft-label file", file=str(self.path))
        self.attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        self.settings: dict[str, Any] = json.loads(self.attrs["settings"])
        self.n_rows = int(self.attrs["n_rows"])
        self.ids = np.array(f["id"][:], dtype=bytes)
        #: connectivity block of each row (``b""`` unknown); ``None`` in files made before it
        self.blocks: np.ndarray | None = (np.array(f[BLOCK][:self.n_rows], dtype=BLOCK_DTYPE)
                                          if BLOCK in f else None)

    @property
    def file(self) -> h5py.File:
        """This process's open h5py file (:class:`neimsctl.io.h5handle.H5Handle`)."""
        return self.handle.file

    def __len__(self) -> int:
        return self.n_rows

    def row_of(self, ids: Sequence[bytes]) -> np.ndarray:
        """Row of each id in this file (``-1`` where absent), int64."""
        index = {k: i for i, k in enumerate(self.ids.tolist())}
        return np.array([index.get(bytes(k), -1) for k in ids], dtype=np.int64)

    def take(self, rows: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """``mean``, ``var``, ``hidden`` of ``rows`` (any order, repeats allowed) as float32."""
        rows = np.asarray(rows, dtype=np.int64)
        uniq, inv = np.unique(rows, return_inverse=True)
        f = self.file
        return {k: f[k][uniq].astype(np.float32)[inv.reshape(-1)] for k in COLUMNS}

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> "SoftLabelReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _differences(old: Any, new: str) -> str:
    """The settings a partial file and this run disagree on, by name (``input_ids_sha256``: the
    input rows differ)."""
    try:
        a, b = json.loads(old), json.loads(new)
    except (TypeError, ValueError):
        return "not a softlabel partial file of this version"
    if not isinstance(a, dict):
        return "not a softlabel partial file of this version"
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(keys) if keys else "schema"
