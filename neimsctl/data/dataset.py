"""Torch datasets over HDF5 feature shards (DEVELOPERS.md contract 2), lazy by default.

Every shard is read through its :class:`neimsctl.io.h5shard.ShardReader` (the schema check,
the fork-safe HDF5 handle, the reads). Memory-efficient mode (the default) keeps only compact
columnar metadata in RAM: the record id (fixed-width bytes), the InChIKey connectivity block
(``S14``), the nominal MW (int32), the selected row numbers (int64) and, for teacher shards, the
CSR offsets (cached by the reader). Features and spectra are read on demand, a whole batch at a
time: indices are mapped to (shard, row) and each shard's rows read by
:meth:`~neimsctl.io.h5shard.ShardReader.take`, which reads every touched chunk once and inflates
the wide columns (and the per-atom/per-edge tables) itself with ISA-L.

HDF5 handles are opened lazily in the process that reads and are never pickled; a forked
DataLoader worker opens its own (:class:`neimsctl.io.h5handle.H5Handle`). ``in_memory=True``
loads every array (in its compact stored dtype) into the readers instead.

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

import numpy as np
import torch

from neimsctl.chem.features import log1p_counts, student_vectors
from neimsctl.data.augment import Augment
from neimsctl.errors import FormatError, InputError
from neimsctl.io.featblock import concat_blocks, take_rows
from neimsctl.io.h5shard import ShardReader
from neimsctl.io.h5shard.read import fixed_strings as _str_column
from neimsctl.io.inchikey import connectivity_blocks
from neimsctl.io.heap import trim_heap
from neimsctl.io.spectrum import N_BINS

_CARBON = re.compile(rb"C(?![a-z])")


class ShardDataset(torch.utils.data.Dataset):
    """Base of the student and teacher datasets: shard metadata, selection, batched reads.

    Parameters
    ----------
    paths
        One shard or a sequence of shards of the same mode; rows are numbered across them in order.
    in_memory
        Load all arrays into RAM (small data); default lazy reads from the shards.
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
                 augment: Augment | None = None, fragments: bool = False) -> None:
        #: read ``frags`` too (a student with fragment masses): a shard without them is refused
        self.fragments = fragments
        if fragments:
            self.row_keys = (*type(self).row_keys, "frags")
        single = isinstance(paths, (str, os.PathLike))
        self.paths = [Path(p) for p in ([paths] if single else paths)]  # type: ignore[list-item]
        if not self.paths:
            raise InputError("no shard files given")
        self.in_memory, self.augment, self.epoch = in_memory, augment, 0
        needed = ["id", "inchikey", "mw", "has_spectrum", *self._all_keys()]
        isotopes = augment is not None and augment.isotope_fraction > 0
        if isotopes:
            needed.append("formula")
        self._readers: list[ShardReader] = []
        try:
            for path in self.paths:
                self._readers.append(ShardReader(path, mode=self.mode, require=needed))
        except BaseException:
            for r in self._readers:
                r.close()
            raise
        ids, blocks, mw, has, carbon, sizes = [], [], [], [], [], []
        for r in self._readers:
            f = r.file
            sizes.append(r.n_rows)
            ids.append(r.column_bytes("id"))
            blocks.append(connectivity_blocks(_str_column(f["inchikey"]), as_bytes=True))
            mw.append(r.column("mw").astype(np.int32))
            has.append(r.column("has_spectrum").astype(bool))
            if isotopes:
                carbon.append(np.array([bool(_CARBON.search(s)) for s in r.column_bytes("formula")]))
            for length in self._lengths():
                r.ptr(length)
            if in_memory:
                r.load(self._all_keys())
            # Closed until the first batch (in this process or a worker): an open file keeps
            # HDF5's metadata cache, grown by the string columns just read (8 MiB at 300k rows).
            r.close()
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        width = max((a.dtype.itemsize for a in ids), default=1)
        self._ids = np.concatenate(ids).astype(f"S{max(width, 1)}")
        self._blocks = np.concatenate(blocks)
        self._mw = np.concatenate(mw)
        self._has_carbon = np.concatenate(carbon) if carbon else None
        has_all = np.concatenate(has)
        self.rows = np.flatnonzero(has_all) if require_spectrum else np.arange(len(has_all))
        self.rows = self.rows.astype(np.int64)
        trim_heap()

    # -- metadata -----------------------------------------------------------------------------
    def _all_keys(self) -> tuple[str, ...]:
        """Datasets a batch reads (all loaded with ``in_memory``)."""
        return self.row_keys

    def _lengths(self) -> tuple[str, ...]:
        """Length columns of the ragged tables read (their CSR offsets stay in memory)."""
        return ()

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
        return view

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draw is used (call before making the iterator)."""
        self.epoch = int(epoch)

    def metadata_nbytes(self) -> int:
        """Bytes held by the in-RAM metadata arrays (not counting in-memory data)."""
        arrays = [self._offsets, self._ids, self._blocks, self._mw, self.rows]
        arrays += [r.ptr(length) for r in self._readers for length in self._lengths()]
        if self._has_carbon is not None:
            arrays.append(self._has_carbon)
        return int(sum(a.nbytes for a in arrays))

    def _shard_of(self, row: int) -> tuple[int, int]:
        """``(shard, row within it)`` of the shards' concatenated row ``row``."""
        s = int(np.searchsorted(self._offsets, row, "right")) - 1
        return s, row - int(self._offsets[s])

    def where(self, i: int) -> tuple[str, None, str]:
        """``(file, line, record)`` of item ``i`` for a reject: its shard and its row there
        (``"row 12"``; shards have no lines)."""
        s, r = self._shard_of(int(self.rows[i]))
        return str(self.paths[s]), None, f"row {r}"

    # -- reading ------------------------------------------------------------------------------
    def _read(self, idx: np.ndarray, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """``columns`` of dataset positions ``idx`` as one block in ``idx`` order (a ragged table
        with its length column), each shard's rows read by :meth:`ShardReader.take`."""
        rows = self.rows[idx]
        if len(self._readers) == 1:
            return self._readers[0].take(rows, columns)
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        parts, where = [], []
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            parts.append(self._readers[s].take(rows[sel] - self._offsets[s], columns))
            where.append(sel)
        if len(parts) == 1:
            return parts[0]
        return take_rows(concat_blocks(parts, self.mode), np.argsort(np.concatenate(where)),
                         self.mode)

    def _norm_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Indices as a flat int64 array in ``0..len-1`` (negatives count from the end)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} rows")
        return idx % max(len(self), 1)

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
    """Student-mode shards as ``x`` (6144,) float32 and ``y`` (501,) float32 items; with
    ``fragments`` ``x`` is (7146,): the fragment-mass counts appended (shards made before them
    are refused with a message to featurize again)."""

    mode = "student"
    row_keys = ("ecfp", "counts", "spectrum")

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """Read a batch: ``x (B, 6144)`` (7146 with ``fragments``), ``y (B, 501)``, ``idx``, ``row``
        (B,) long, ``id``, ``aug13c``."""
        idx = self._norm_indices(indices)
        arr = self._read(idx, self.row_keys)
        rows = self.rows[idx]
        y, aug = self._targets(arr["spectrum"].reshape(len(idx), N_BINS), rows)
        x = student_vectors(arr["ecfp"].reshape(len(idx), -1), arr["counts"].reshape(len(idx), -1),
                            arr["frags"].reshape(len(idx), -1) if self.fragments else None)
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
        arr = self._read(idx, self.row_keys)
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
    """Teacher-mode shards as PyG ``Data`` graphs (each row's atoms and edges); batches are ``Batch``."""

    mode = "teacher"
    row_keys = ("ecfp", "counts", "spectrum")
    csr_keys = {"atom_x": "atom_ptr", "edge_index": "edge_ptr", "edge_attr": "edge_ptr"}

    def _all_keys(self) -> tuple[str, ...]:
        return (*self.row_keys, *self.csr_keys, "atom_ptr", "edge_ptr")

    def _lengths(self) -> tuple[str, ...]:
        return ("n_atoms", "n_edges")

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> Any:
        """Read a batch as a ``torch_geometric.data.Batch`` (contract 3)."""
        return collate_teacher(self._data_list(self._norm_indices(indices)))

    def get_item(self, index: int) -> Any:
        return self._data_list(self._norm_indices([index]))[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        return self._data_list(self._norm_indices(indices))

    def split_batch(self, batch: Any) -> list[Any]:
        return batch.to_data_list()

    def _check_edges(self, arr: dict[str, np.ndarray], rows: np.ndarray) -> None:
        """Every edge joins two atoms of its own molecule (a damaged shard's edge index beyond
        them failed with an IndexError deep in the graph layers)."""
        ei = arr["edge_index"].reshape(-1, 2)
        if len(ei) == 0:
            return
        limit = np.repeat(arr["n_atoms"].astype(np.int64), arr["n_edges"].astype(np.int64))
        if len(limit) != len(ei):
            bad = 0
        else:
            wrong = (ei < 0).any(axis=1) | (ei >= limit[:, None]).any(axis=1)
            if not wrong.any():
                return
            bad = int(np.searchsorted(np.cumsum(arr["n_edges"]), np.flatnonzero(wrong)[0], "right"))
        row = int(rows[bad])
        raise FormatError(f"damaged shard: the edges of record {self._ids[row].decode()!r} name atoms "
                          "the molecule does not have", file=str(self.paths[self._shard_of(row)[0]]))

    def _data_list(self, idx: np.ndarray) -> list[Any]:
        from torch_geometric.data import Data

        arr = self._read(idx, (*self.row_keys, *self.csr_keys))
        rows = self.rows[idx]
        ecfp = np.unpackbits(arr["ecfp"].reshape(len(idx), -1), axis=-1)
        counts = arr["counts"].reshape(len(idx), -1)
        frags = arr["frags"].reshape(len(idx), -1) if self.fragments else None
        y, aug = self._targets(arr["spectrum"].reshape(len(idx), N_BINS), rows)
        atom_cut, edge_cut = np.cumsum(arr["n_atoms"])[:-1], np.cumsum(arr["n_edges"])[:-1]
        self._check_edges(arr, rows)
        atom_x = np.split(arr["atom_x"].astype(np.float32), atom_cut)
        edge_index = np.split(arr["edge_index"].astype(np.int64), edge_cut)
        edge_attr = np.split(arr["edge_attr"].astype(np.float32), edge_cut)
        out = []
        for j in range(len(idx)):
            out.append(Data(
                x=torch.from_numpy(atom_x[j]),
                edge_index=torch.from_numpy(edge_index[j].T.copy()).reshape(2, -1),
                edge_attr=torch.from_numpy(edge_attr[j]),
                ecfp=torch.from_numpy(ecfp[j:j + 1].astype(np.float32)),
                counts=torch.from_numpy(log1p_counts(counts[j:j + 1])),
                **({} if frags is None else {"frags": torch.from_numpy(log1p_counts(frags[j:j + 1]))}),
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
