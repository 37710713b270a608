"""What ``distill`` trains on: student rows, their teacher soft labels, the transfer rows.

- :class:`DistillData`: student rows (``x``, ``y``, ``mw``, ``row``, ``has_y``) plus, with KD, the
  soft labels of each row (``t_mean``, ``t_var``, ``t_hidden``), read a whole batch at a time;
  optional transfer rows (no library spectrum, KD only; :mod:`neimsctl.train.distill_transfer`);
- :func:`soft_label_rows`: soft labels are aligned with the student rows by record id;
- :func:`make_dataset`: the dataset that feeds the student or NEIMS v1 from student- or v1-mode
  shards (v1 shards hold the student's ``ecfp`` and ``counts`` too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from neimsctl.data.dataset import StudentDataset
from neimsctl.errors import ConfigError, InputError
from neimsctl.io.softlabel_shard import SoftLabelReader

__all__ = ["DistillData", "collate_distill", "soft_label_rows", "StudentOnV1Dataset", "make_dataset"]


class DistillData(torch.utils.data.Dataset):
    """Student rows (``x``, ``y``, ``mw``, ``row``, ``has_y``) plus, when given, their soft labels.

    ``soft_rows[i]`` is the soft-label row of dataset position ``i`` (all must exist). Batches
    are read whole (``__getitems__`` returns one batch dict; use :func:`collate_distill`).

    ``transfer`` adds rows without a library spectrum (a KD transfer set: molecules the teacher
    labelled, ``transfer_soft_rows`` their soft-label rows); their ``has_y`` is False, so the loss
    learns only the soft labels there. Each epoch draws ``round(transfer_fraction * n)`` of them
    (seeded by ``seed`` and the epoch); they follow the library rows in position.
    """

    def __init__(self, base: StudentDataset, soft: SoftLabelReader | None = None,
                 soft_rows: np.ndarray | None = None, *, transfer: StudentDataset | None = None,
                 transfer_soft_rows: np.ndarray | None = None, transfer_fraction: float = 1.0,
                 seed: int = 42) -> None:
        if transfer is not None and (soft is None or transfer_soft_rows is None):
            raise ConfigError("transfer rows need soft labels (they have no library spectrum)")
        if not 0.0 < transfer_fraction <= 1.0:
            raise ConfigError(f"data.transfer_fraction must be in (0, 1], got {transfer_fraction}")
        self.base, self.soft, self.soft_rows = base, soft, soft_rows
        self.transfer, self.transfer_soft_rows = transfer, transfer_soft_rows
        self.seed = seed
        n_t = len(transfer) if transfer is not None else 0
        self.n_transfer = int(round(transfer_fraction * n_t)) if n_t else 0
        self._tsel = np.arange(self.n_transfer, dtype=np.int64)
        self.set_epoch(0)

    def __len__(self) -> int:
        return len(self.base) + self.n_transfer

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)
        if self.transfer is not None:
            self.transfer.set_epoch(epoch)
            n_t = len(self.transfer)
            if self.n_transfer < n_t:
                rng = np.random.default_rng([self.seed, 7919, epoch])
                self._tsel = np.sort(rng.choice(n_t, self.n_transfer, replace=False))

    def _read(self, ds: StudentDataset, idx: np.ndarray, soft_rows: np.ndarray | None,
              has_y: bool) -> dict[str, torch.Tensor]:
        b = ds.get_batch(idx)
        out = {"x": b["x"], "y": b["y"], "row": b["row"],
               "mw": torch.from_numpy(ds._mw[b["row"].numpy()].astype(np.int64)),
               "has_y": torch.full((len(idx),), has_y, dtype=torch.bool)}
        if self.soft is not None and soft_rows is not None:
            t = self.soft.take(soft_rows[idx])
            out.update({f"t_{k}": torch.from_numpy(v) for k, v in t.items()})
        return out

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        n = len(self.base)
        lib = idx[idx < n]
        parts = [self._read(self.base, lib, self.soft_rows, True)] if len(lib) else []
        if self.transfer is not None and (idx >= n).any():
            tr = self._tsel[idx[idx >= n] - n]
            parts.append(self._read(self.transfer, tr, self.transfer_soft_rows, False))
        return collate_distill(parts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])


def collate_distill(batch: Any) -> dict[str, torch.Tensor]:
    """The batch dict read by :meth:`DistillData.__getitems__` (a list of them is concatenated)."""
    if isinstance(batch, dict):
        return batch
    return {k: torch.cat([b[k] for b in batch]) for k in batch[0]}


def soft_label_rows(soft: SoftLabelReader, ds: StudentDataset) -> np.ndarray:
    """The soft-label row of every row of ``ds`` (aligned by record id; all must exist)."""
    rows = soft.row_of(ds.ids)
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        raise InputError(f"{soft.path}: no soft labels for {len(missing)} of {len(ds)} training "
                         f"rows (e.g. id {ds.ids[missing[0]].decode()!r}); run neimsctl softlabel "
                         "on the teacher features of the same records")
    check_same_compounds(soft, ds, rows)
    return rows


def check_same_compounds(soft: SoftLabelReader, ds: StudentDataset, rows: np.ndarray) -> None:
    """Refuse soft labels whose rows, matched by id, are of other compounds than the student rows
    (compared by InChIKey connectivity block where both know it): labels made from another
    library whose records are numbered alike were taken without a word and trained the student
    on the wrong molecules' spectra. Files made before the blocks were kept are not checked."""
    if soft.blocks is None or not len(rows):
        return
    theirs, ours = soft.blocks[rows], np.asarray(ds.blocks)
    bad = np.flatnonzero((theirs != ours) & (theirs != b"") & (ours != b""))
    if len(bad):
        i = int(bad[0])
        ids, counts = np.unique(ds.ids, return_counts=True)
        twice = ids[counts > 1]
        why = (f"; the shards' ids are not unique ({len(twice)} ids given to two or more "
               f"records, e.g. {twice[0].decode()!r}: two libraries numbered alike, whose soft "
               "labels, matched by id, cannot tell their records apart): renumber one library's "
               "records (their 'id') before featurizing both" if len(twice) else
               "; run neimsctl softlabel on the teacher features of the same records")
        raise InputError(f"{soft.path}: soft labels of other compounds: {len(bad)} of {len(ds)} "
                         f"rows differ by InChIKey (e.g. id {ds.ids[i].decode()!r} is "
                         f"{ours[i].decode()} in the shards, {theirs[i].decode()} in the soft "
                         f"labels){why}")


class StudentOnV1Dataset(StudentDataset):
    """The student's 6144-d input read from mode-``v1`` shards (they hold ``ecfp`` + ``counts``)."""

    mode = "v1"


def make_dataset(shards: Sequence[Path], mode: str, arch: str, **kwargs: Any) -> StudentDataset:
    """The dataset that feeds ``arch`` from ``mode`` shards.

    NEIMS v1 on ``v1`` shards reads the raw 4096 Morgan counts (the published input); on
    ``student`` shards it reads the 6144 student vector (documented deviation). The student
    always reads its 6144 vector.
    """
    if arch == "neims-v1" and mode == "v1":
        from neimsctl.data.dataset import V1Dataset

        return V1Dataset(list(shards), x_scale="raw", **kwargs)
    cls = StudentOnV1Dataset if mode == "v1" else StudentDataset
    return cls(list(shards), **kwargs)
