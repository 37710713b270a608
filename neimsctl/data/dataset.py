"""Torch datasets over HDF5 feature shards (DEVELOPERS.md contract 2), lazy by default.

Memory-efficient mode (the default) keeps only compact columnar metadata in RAM: the record id
(fixed-width bytes), the InChIKey connectivity block (``S14``), the nominal MW (int32), the
selected row numbers (int64) and, for teacher shards, the CSR offsets. Features and spectra are
read on demand, a whole batch at a time: indices are sorted, mapped to (shard, row) and read one
slice per contiguous run, so a random batch of 32 costs one chunk read per row and dataset.

HDF5 handles are opened lazily in the process that reads and are never pickled; a process that
finds handles opened by another pid (a forked DataLoader worker) drops them and opens its own.
``in_memory=True`` loads every array (in its compact stored dtype) instead.

Items
-----
Student: ``{"x": (6144,) float32, "y": (501,) float32, "idx": int, "row": int, "id": str,
"aug13c": bool}``; ``get_batch``/``ds[list]`` give the same keys stacked.
Teacher: a ``torch_geometric.data.Data`` with ``x (n, 48)``, ``edge_index (2, E)`` long,
``edge_attr (E, 6)``, ``ecfp (1, 4096)``, ``counts (1, 2048)`` (log1p of the atom-pair
counts, as in the student vector), ``y (1, 501)``, ``mw``, ``idx``, ``row``, ``id``
(``idx``, not ``index``: PyG offsets keys containing "index"); ``get_batch`` gives a ``Batch``
(contract 3). The student ``x`` is ``neimsctl.chem.features.student_vectors``.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import h5py
import numpy as np
import torch

from neimsctl.chem.features import log1p_counts, student_vectors
from neimsctl.data.augment import Augment
from neimsctl.errors import FormatError, InputError
from neimsctl.io.inchikey import connectivity_blocks
from neimsctl.io.spectrum import N_BINS

SCHEMA = "neimsctl.h5shard/1"
_META_BLOCK = 8192                       # rows per read when loading metadata (whole chunks)
CHUNK_CACHE = 1 << 20                    # bytes of HDF5 chunk cache per dataset for row reads
_CARBON = re.compile(rb"C(?![a-z])")


def _str_column(ds: h5py.Dataset) -> np.ndarray:
    """Read a vlen-string dataset into a compact fixed-width bytes array, blockwise."""
    parts = [np.array(ds[i:i + _META_BLOCK], dtype=bytes) for i in range(0, ds.shape[0], _META_BLOCK)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype="S1")


def _trim_heap() -> None:
    """Give freed heap back to the OS (glibc only): reading 300k vlen strings through HDF5
    leaves MBs of free but fragmented heap behind that would otherwise stay in the RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _column(ds: h5py.Dataset) -> np.ndarray:
    """Read a numeric column blockwise (no chunk cache needed)."""
    out = np.empty(ds.shape, dtype=ds.dtype)
    for i in range(0, ds.shape[0], _META_BLOCK):
        out[i:i + _META_BLOCK] = ds[i:i + _META_BLOCK]
    return out


def _runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """Contiguous runs of sorted unique ``rows`` as ``(position, start, stop)``."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    return [(int(a), int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, stops)]


def _read_runs(dset: h5py.Dataset, runs: list[tuple[int, int, int]], n: int) -> np.ndarray:
    """Read row runs of ``dset`` with one H5Dread over a union of hyperslabs."""
    tail = dset.shape[1:]
    out = np.empty((n, *tail), dtype=dset.dtype)
    if n == 0:
        return out
    if len(runs) == 1:
        dset.read_direct(out, np.s_[runs[0][1]:runs[0][2]])
        return out
    fspace = dset.id.get_space()
    fspace.select_none()
    for _, a, b in runs:
        fspace.select_hyperslab((a,) + (0,) * len(tail), (b - a,) + tail, op=h5py.h5s.SELECT_OR)
    mspace = h5py.h5s.create_simple(out.shape)
    dset.id.read(mspace, fspace, out)
    return out


class _H5Source:
    """One process's open shard: the h5py file and its dataset objects, looked up once."""

    def __init__(self, f: h5py.File) -> None:
        self.file, self._dsets = f, {}

    def __getitem__(self, key: str) -> h5py.Dataset:
        d = self._dsets.get(key)
        if d is None:
            d = self._dsets[key] = self.file[key]
        return d


class ShardDataset(torch.utils.data.Dataset):
    """Base of the student and teacher datasets: shard metadata, selection, batched reads.

    Parameters
    ----------
    paths
        One shard or a sequence of shards of the same mode; rows are numbered across them in order.
    in_memory
        Load all arrays into RAM (small data); default lazy reads through h5py.
    require_spectrum
        Keep only rows with ``has_spectrum`` (supervised training); ``False`` keeps every row.
    augment
        Target augmentations applied on the fly (:class:`neimsctl.data.augment.Augment`).

    Raises
    ------
    InputError
        A shard cannot be opened.
    FormatError
        A file that is not a ``neimsctl.h5shard/1`` shard of this dataset's mode.
    """

    mode: ClassVar[str] = ""
    row_keys: ClassVar[tuple[str, ...]] = ("ecfp", "spectrum")

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                 in_memory: bool = False, require_spectrum: bool = True,
                 augment: Augment | None = None) -> None:
        single = isinstance(paths, (str, os.PathLike))
        self.paths = [Path(p) for p in ([paths] if single else paths)]  # type: ignore[list-item]
        if not self.paths:
            raise InputError("no shard files given")
        self.in_memory, self.augment, self.epoch = in_memory, augment, 0
        ids, blocks, mw, has, carbon, ptrs, sizes, mem = [], [], [], [], [], [], [], []
        for path in self.paths:
            with self._open(path, cache=0) as f:
                self._check(f, path)
                n = int(f.attrs["n_rows"])
                sizes.append(n)
                ids.append(_str_column(f["id"]))
                blocks.append(connectivity_blocks(_str_column(f["inchikey"]), as_bytes=True))
                mw.append(_column(f["mw"]).astype(np.int32))
                has.append(_column(f["has_spectrum"]).astype(bool))
                if augment is not None and augment.isotope_fraction > 0:
                    carbon.append(np.array([bool(_CARBON.search(s)) for s in _str_column(f["formula"])]))
                ptrs.append({k: _column(f[k]) for k in ("atom_ptr", "edge_ptr") if k in f})
                if in_memory:
                    mem.append({k: f[k][:] for k in self._all_keys()})
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        width = max((a.dtype.itemsize for a in ids), default=1)
        self._ids = np.concatenate(ids).astype(f"S{max(width, 1)}")
        self._blocks = np.concatenate(blocks)
        self._mw = np.concatenate(mw)
        self._has_carbon = np.concatenate(carbon) if carbon else None
        self._ptrs, self._mem = ptrs, mem
        has_all = np.concatenate(has)
        self.rows = np.flatnonzero(has_all) if require_spectrum else np.arange(len(has_all))
        self.rows = self.rows.astype(np.int64)
        self._files: dict[int, _H5Source] = {}
        self._pid = os.getpid()
        _trim_heap()

    # -- metadata -----------------------------------------------------------------------------
    @staticmethod
    def _open(path: Path, cache: int = CHUNK_CACHE) -> h5py.File:
        # A small chunk cache: random batches rarely hit it, and h5py's default (8 MiB per
        # dataset) would grow the RSS of every worker with the number of chunks touched.
        try:
            return h5py.File(path, "r", rdcc_nbytes=cache)
        except (OSError, FileNotFoundError) as exc:
            raise InputError(f"{path}: cannot open shard: {exc}") from None

    def _check(self, f: h5py.File, path: Path) -> None:
        schema, mode = f.attrs.get("schema"), f.attrs.get("mode")
        if schema != SCHEMA:
            raise FormatError(f"not a {SCHEMA} shard (schema={schema!r})", file=str(path))
        if mode != self.mode:
            raise FormatError(f"shard mode is {mode!r}, this dataset reads {self.mode!r}", file=str(path))
        missing = [k for k in ("id", "inchikey", "mw", "has_spectrum", *self._all_keys()) if k not in f]
        if missing:
            raise FormatError(f"missing datasets {missing}: written by an older neimsctl? re-run "
                              f"`neimsctl featurize --mode {self.mode}` on the records",
                              file=str(path))

    def _all_keys(self) -> tuple[str, ...]:
        return self.row_keys

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> np.ndarray:
        """Record ids of the selected rows (fixed-width bytes)."""
        return self._ids[self.rows]

    @property
    def blocks(self) -> np.ndarray:
        """InChIKey connectivity blocks of the selected rows (``S14``), for splitting."""
        return self._blocks[self.rows]

    @property
    def mw(self) -> np.ndarray:
        return self._mw[self.rows]

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ShardDataset":
        """A view on ``indices`` (positions in this dataset), sharing metadata and data."""
        view = copy.copy(self)
        view.rows = self.rows[np.asarray(indices, dtype=np.int64)]
        view._files = {}
        return view

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draw is used (call before making the iterator)."""
        self.epoch = int(epoch)

    def metadata_nbytes(self) -> int:
        """Bytes held by the in-RAM metadata arrays (not counting in-memory data)."""
        arrays = [self._offsets, self._ids, self._blocks, self._mw, self.rows]
        arrays += [a for p in self._ptrs for a in p.values()]
        if self._has_carbon is not None:
            arrays.append(self._has_carbon)
        return int(sum(a.nbytes for a in arrays))

    # -- reading ------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = {}              # h5py handles never cross a process boundary
        return state

    def _source(self, shard: int) -> Any:
        """Arrays of one shard: the loaded dict (in memory) or this process's h5py file."""
        if self.in_memory:
            return self._mem[shard]
        if self._pid != os.getpid():      # forked: the parent's handles are not ours
            self._files, self._pid = {}, os.getpid()
        src = self._files.get(shard)
        if src is None:
            src = self._files[shard] = _H5Source(self._open(self.paths[shard]))
        return src

    def _locate(self, indices: Sequence[int] | np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(shard, local rows sorted, positions in the batch)`` for dataset indices."""
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")
        shards = np.searchsorted(self._offsets, rows[order], side="right") - 1
        for s in np.unique(shards):
            sel = order[shards == s]
            yield int(s), rows[sel] - self._offsets[s], sel

    def _norm_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Indices as a flat int64 array in ``0..len-1`` (negatives count from the end)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} rows")
        return idx % max(len(self), 1)

    def _read_rows(self, src: Any, key: str, local: np.ndarray) -> np.ndarray:
        """Rows ``local`` (sorted, may repeat) of one per-row dataset, one read per run."""
        uniq, inv = np.unique(local, return_inverse=True)
        arr = src[key]
        out = arr[uniq] if isinstance(arr, np.ndarray) else _read_runs(arr, _runs(uniq), len(uniq))
        return out[inv.reshape(-1)]

    def _targets(self, y: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = y.astype(np.float32)
        if self.augment is None:
            return y, np.zeros(len(y), dtype=bool)
        carbon = self._has_carbon[rows] if self._has_carbon is not None else np.ones(len(rows), bool)
        return self.augment(y, rows=rows, mw=self._mw[rows], has_carbon=carbon, epoch=self.epoch)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            return self.get_item(int(index))
        return self.get_batch(index)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """Batched read for ``DataLoader(batch_size=...)``: one read pass, then per-item split."""
        return self.split_batch(self.get_batch(indices))

    def get_item(self, index: int) -> Any:
        return self.split_batch(self.get_batch([index]))[0]

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> Any:
        raise NotImplementedError

    def split_batch(self, batch: Any) -> list[Any]:
        raise NotImplementedError


class StudentDataset(ShardDataset):
    """Student-mode shards as ``x`` (6144,) float32 and ``y`` (501,) float32 items."""

    mode = "student"
    row_keys = ("ecfp", "counts", "spectrum")

    def _read_columns(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The ``row_keys`` columns of dataset rows ``idx``, read shard by shard, in ``idx`` order."""
        cols: dict[str, list[np.ndarray]] = {k: [] for k in self.row_keys}
        pos = []
        for s, local, sel in self._locate(idx):
            src = self._source(s)
            for k in self.row_keys:
                cols[k].append(self._read_rows(src, k, local))
            pos.append(sel)
        order = np.argsort(np.concatenate(pos)) if pos else np.zeros(0, np.int64)
        return {k: (np.concatenate(v)[order] if v else np.zeros((0,), np.uint8))
                for k, v in cols.items()}

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Read a batch: ``x (B, 6144)``, ``y (B, 501)``, ``idx``, ``row`` (B,) long, ``id``, ``aug13c``."""
        idx = self._norm_indices(indices)
        arr = self._read_columns(idx)
        rows = self.rows[idx]
        y, aug = self._targets(arr["spectrum"].reshape(len(idx), N_BINS), rows)
        x = student_vectors(arr["ecfp"].reshape(len(idx), -1), arr["counts"].reshape(len(idx), -1))
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y),
                "idx": torch.from_numpy(idx), "row": torch.from_numpy(rows),
                "id": [i.decode() for i in self._ids[rows]], "aug13c": torch.from_numpy(aug)}

    def split_batch(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"x": batch["x"][j], "y": batch["y"][j], "idx": int(batch["idx"][j]),
                 "row": int(batch["row"][j]), "id": batch["id"][j], "aug13c": bool(batch["aug13c"][j])}
                for j in range(len(batch["id"]))]


class V1Dataset(StudentDataset):
    """Mode-``v1`` shards for the NEIMS v1 baseline: ``x`` = the 4096 Morgan counts.

    ``x_scale="raw"`` (default) gives the raw counts the paper feeds its MLP
    (:mod:`neimsctl.models.neims_v1`); ``"log1p"`` is the student's scaling. Batches also carry
    ``mw`` (B,) long, which the v1 reverse head needs; other keys as :class:`StudentDataset`.
    """

    mode = "v1"
    row_keys = ("morgan_counts", "spectrum")

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                 x_scale: str = "raw", **kwargs: Any) -> None:
        if x_scale not in ("raw", "log1p"):
            raise ValueError(f"x_scale must be 'raw' or 'log1p', got {x_scale!r}")
        self.x_scale = x_scale
        super().__init__(paths, **kwargs)

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Read a batch: ``x (B, 4096)``, ``y (B, 501)``, ``mw`` (B,) long, ``idx``, ``row``, ``id``, ``aug13c``."""
        from neimsctl.chem.features_v1 import v1_vectors

        idx = self._norm_indices(indices)
        arr = self._read_columns(idx)
        rows = self.rows[idx]
        y, aug = self._targets(arr["spectrum"].reshape(len(idx), N_BINS), rows)
        x = v1_vectors(arr["morgan_counts"].reshape(len(idx), -1), self.x_scale)
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y),
                "mw": torch.from_numpy(self._mw[rows].astype(np.int64)),
                "idx": torch.from_numpy(idx), "row": torch.from_numpy(rows),
                "id": [i.decode() for i in self._ids[rows]], "aug13c": torch.from_numpy(aug)}

    def split_batch(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        items = super().split_batch(batch)
        for j, item in enumerate(items):
            item["mw"] = int(batch["mw"][j])
        return items


class TeacherDataset(ShardDataset):
    """Teacher-mode shards as PyG ``Data`` graphs (CSR rows read by slice); batches are ``Batch``."""

    mode = "teacher"
    row_keys = ("ecfp", "counts", "spectrum")
    csr_keys = {"atom_x": "atom_ptr", "edge_index": "edge_ptr", "edge_attr": "edge_ptr"}

    def _all_keys(self) -> tuple[str, ...]:
        return (*self.row_keys, *self.csr_keys, "atom_ptr", "edge_ptr")

    def _graphs(self, s: int, local: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Per-row CSR slices (atom_x, edge_index, edge_attr) of sorted ``local`` rows."""
        src, ptr = self._source(s), self._ptrs[s]
        uniq, inv = np.unique(local, return_inverse=True)
        runs = _runs(uniq)
        per_row: dict[str, list[np.ndarray]] = {}
        for key, p in self.csr_keys.items():
            lo, hi = ptr[p][uniq], ptr[p][uniq + 1]
            ranges = [(0, int(ptr[p][a]), int(ptr[p][b])) for _, a, b in runs if ptr[p][b] > ptr[p][a]]
            arr = src[key]
            if isinstance(arr, np.ndarray):
                block = np.concatenate([arr[a:b] for _, a, b in ranges] or [arr[:0]])
            else:
                block = _read_runs(arr, ranges, int((hi - lo).sum()))
            per_row[key] = np.split(block, np.cumsum(hi - lo)[:-1])
        rows = [{k: per_row[k][i] for k in self.csr_keys} for i in range(len(uniq))]
        return [rows[j] for j in inv.reshape(-1)]

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> Any:
        """Read a batch as a ``torch_geometric.data.Batch`` (contract 3)."""
        return collate_teacher(self._data_list(self._norm_indices(indices)))

    def get_item(self, index: int) -> Any:
        return self._data_list(self._norm_indices([index]))[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        return self._data_list(self._norm_indices(indices))

    def split_batch(self, batch: Any) -> list[Any]:
        return batch.to_data_list()

    def _data_list(self, idx: np.ndarray) -> list[Any]:
        from torch_geometric.data import Data

        graphs: list[Any] = [None] * len(idx)
        cols: dict[str, list[np.ndarray]] = {k: [] for k in self.row_keys}
        pos = []
        for s, local, sel in self._locate(idx):
            src = self._source(s)
            for k in self.row_keys:
                cols[k].append(self._read_rows(src, k, local))
            for j, g in zip(sel, self._graphs(s, local)):
                graphs[j] = g
            pos.append(sel)
        order = np.argsort(np.concatenate(pos)) if pos else np.zeros(0, np.int64)
        rows = self.rows[idx]
        ecfp = np.unpackbits(np.concatenate(cols["ecfp"])[order].reshape(len(idx), -1), axis=-1)
        counts = np.concatenate(cols["counts"])[order].reshape(len(idx), -1)
        y, aug = self._targets(np.concatenate(cols["spectrum"])[order].reshape(len(idx), N_BINS), rows)
        out = []
        for j, g in enumerate(graphs):
            out.append(Data(
                x=torch.from_numpy(g["atom_x"].astype(np.float32)),
                edge_index=torch.from_numpy(g["edge_index"].astype(np.int64).T.copy()).reshape(2, -1),
                edge_attr=torch.from_numpy(g["edge_attr"].astype(np.float32)),
                ecfp=torch.from_numpy(ecfp[j:j + 1].astype(np.float32)),
                counts=torch.from_numpy(log1p_counts(counts[j:j + 1])),
                y=torch.from_numpy(y[j:j + 1]),
                mw=torch.tensor([int(self._mw[rows[j]])]),
                idx=torch.tensor([int(idx[j])]), row=torch.tensor([int(rows[j])]),
                aug13c=torch.tensor([bool(aug[j])]), id=self._ids[rows[j]].decode()))
        return out


def collate_teacher(items: list[Any]) -> Any:
    """Collate teacher ``Data`` items into a PyG ``Batch`` (usable as a DataLoader ``collate_fn``)."""
    from torch_geometric.data import Batch

    return Batch.from_data_list(items)


class ShardBatchSampler(torch.utils.data.Sampler):
    """Index batches for ``DataLoader(batch_size=None)``, reshuffled per epoch from ``(seed, epoch)``.

    Parameters
    ----------
    n
        Dataset length.
    batch_size, shuffle, drop_last
        As for ``DataLoader``.
    seed
        Shuffle seed; epoch ``e`` uses ``numpy.random.default_rng([seed, e])``.
    """

    def __init__(self, n: int, batch_size: int = 32, *, shuffle: bool = True, seed: int = 42,
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
                 if self.shuffle else np.arange(self.n))
        for i in range(0, self.n, self.batch_size):
            chunk = order[i:i + self.batch_size]
            if len(chunk) == self.batch_size or not self.drop_last:
                yield chunk.tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


def _identity(batch: Any) -> Any:
    return batch


def make_loader(ds: ShardDataset, batch_size: int = 32, *, shuffle: bool = True, seed: int = 42,
                num_workers: int = 0, drop_last: bool = False, epoch: int = 0,
                **kwargs: Any) -> torch.utils.data.DataLoader:
    """A DataLoader that reads whole batches (``ds.get_batch``) in each worker.

    Each worker opens its own HDF5 handles. ``epoch`` seeds both the shuffle and the
    augmentation draw; make a new loader (or call ``set_epoch`` on the sampler and dataset)
    per epoch. Extra ``kwargs`` go to ``DataLoader`` (e.g. ``pin_memory``).
    """
    sampler = ShardBatchSampler(len(ds), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    sampler.set_epoch(epoch)
    ds.set_epoch(epoch)
    return torch.utils.data.DataLoader(ds, batch_size=None, sampler=sampler, collate_fn=_identity,
                                       num_workers=num_workers, **kwargs)
