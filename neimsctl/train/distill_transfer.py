"""The KD transfer set of ``distill``: molecules without library spectra that the teacher labelled.

``data.transfer`` names student shards of such molecules (soft-labelled in the same
``--soft-labels`` file); :func:`transfer_rows` keeps those whose compound (InChIKey connectivity
block) is not in the library, and :class:`neimsctl.train.distill_data.DistillData` adds them to
the train part as KD-only rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, TextIO

import numpy as np

from neimsctl.data.dataset import StudentDataset
from neimsctl.errors import InputError

__all__ = ["transfer_rows"]


def transfer_rows(paths: Sequence[Path], library: StudentDataset, *, in_memory: bool = False,
                  log: TextIO | None = None) -> StudentDataset:
    """The transfer set: rows of ``paths`` (spectra or not) whose compound is not in ``library``.

    Every compound of the library, whatever its part of the split, is left out by InChIKey
    connectivity block, so a val or test compound never comes back as a soft-labelled row.
    """
    ds = StudentDataset(list(paths), in_memory=in_memory, require_spectrum=False,
                        fragments=getattr(library, "fragments", False))
    blank = np.flatnonzero(ds.blocks == b"")
    if len(blank):
        raise InputError(f"{paths[0]}: {len(blank)} transfer rows have no InChIKey (e.g. id "
                         f"{ds.ids[blank[0]].decode()!r}), so library compounds cannot "
                         "be left out; featurize the transfer set without --no-inchikey")
    keep = np.flatnonzero(~np.isin(ds.blocks, library.blocks))
    if log is not None:
        print(f"neimsctl: distill: transfer set: {len(keep)} of {len(ds)} rows "
              f"({len(ds) - len(keep)} are library compounds, left out)", file=log, flush=True)
    if len(keep) == 0:
        raise InputError(f"{paths[0]}: no transfer rows left (all are library compounds)")
    return ds.subset(keep)
