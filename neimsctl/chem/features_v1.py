"""The NEIMS v1 baseline's input: hashed Morgan **count** fingerprint (formats/features.v1.md).

Wei et al. 2019 (see :mod:`neimsctl.models.neims_v1`) feed the MLP a Morgan count fingerprint of
radius 2 folded to 4096 slots, as raw counts. Featurizer mode ``v1`` stores it as
``morgan_counts`` (uint8 ``(4096,)``, saturating at 255) next to everything the ``student`` mode
stores (``ecfp`` bits and atom-pair ``counts``), so one shard serves the v1 baseline, the
nearest-neighbour baseline (on ``ecfp``) and the student.

The ECFP4 bits are the non-zero slots of the same Morgan count vector (RDKit's bit fingerprint
of the same generator is exactly ``counts > 0``), so the Morgan environments are enumerated once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from rdkit import Chem

from neimsctl.chem.features import ECFP_RADIUS, StudentFeaturizer, register
from neimsctl.io.featblock import MORGAN_COUNT_BITS

__all__ = ["V1Features", "V1Featurizer", "MORGAN_COUNT_BITS", "v1_vectors"]


class V1Features(NamedTuple):
    """Features of one molecule in mode ``v1``.

    Attributes
    ----------
    ecfp : numpy.ndarray
        uint8 ``(512,)``: ECFP4 4096 bits, ``np.packbits`` (bitorder big), as the student mode.
    counts : numpy.ndarray
        uint8 ``(2048,)``: atom-pair counts, as the student mode.
    morgan_counts : numpy.ndarray
        uint8 ``(4096,)``: Morgan radius-2 counts folded to 4096, saturating at 255.
    """

    ecfp: np.ndarray
    counts: np.ndarray
    morgan_counts: np.ndarray


@register("v1")
class V1Featurizer(StudentFeaturizer):
    """Student features + 4096 Morgan radius-2 counts (see :class:`V1Features`).

    Examples
    --------
    >>> f = V1Featurizer()(Chem.MolFromSmiles("CCO"))
    >>> f.ecfp.shape, f.counts.shape, f.morgan_counts.shape, int(f.morgan_counts.sum())
    ((512,), (2048,), (4096,), 6)
    """

    def block_features(self, mol: Chem.Mol) -> V1Features:
        return self(mol)  # more fields than the student's: no on-bits form

    def __call__(self, mol: Chem.Mol) -> V1Features:
        morgan = self._ecfp.GetCountFingerprintAsNumPy(mol)
        pairs = self._pairs.GetCountFingerprintAsNumPy(mol)
        return V1Features(np.packbits(morgan > 0), np.minimum(pairs, 255).astype(np.uint8),
                          np.minimum(morgan, 255).astype(np.uint8))

    @property
    def settings(self) -> dict[str, Any]:
        s = super().settings
        del s["frags"]                     # NEIMS v1 reads Morgan counts only
        s["morgan_counts"] = {"kind": "morgan", "radius": ECFP_RADIUS, "fp_size": MORGAN_COUNT_BITS,
                              "chirality": False, "saturate": 255}
        return s


def v1_vectors(morgan_counts: np.ndarray, scale: str = "raw") -> np.ndarray:
    """The v1 model input: ``(B, 4096)`` uint8 counts -> float32, raw (the paper) or ``log1p``.

    Raises
    ------
    ValueError
        Wrong width or an unknown ``scale``.
    """
    counts = np.asarray(morgan_counts, dtype=np.uint8)
    if counts.shape[-1] != MORGAN_COUNT_BITS:
        raise ValueError(f"expected (B, {MORGAN_COUNT_BITS}) uint8, got {counts.shape}")
    if scale == "raw":
        return counts.astype(np.float32)
    if scale == "log1p":
        return np.log1p(counts.astype(np.float32))
    raise ValueError(f"unknown scale {scale!r}: use 'raw' or 'log1p'")
