"""Molecule featurizers: RDKit ``Mol`` -> numpy NamedTuples (formats/features.v1.md is normative).

- :class:`StudentFeaturizer`: ECFP4 bits (Morgan radius 2, 4096 bits, bit-packed) + atom-pair
  counts folded to 2048 (uint8, saturating at 255). :func:`student_vector` turns them into the
  6144-float student input.
- :class:`TeacherFeaturizer`: a molecular graph (48 atom features, 6 bond features, both edge
  directions) + the same ECFP4 bits.

``--mode`` is a registry lookup (:data:`FEATURIZERS`), so the CLI's choices come from here.
Every featurizer exposes ``settings`` (a JSON-able dict) and ``settings_hash`` (16 hex chars of
the sha256 of the canonical settings JSON), which key caches and guard shard merges.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from itertools import chain
from typing import Any, Callable, NamedTuple

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdFingerprintGenerator

from neimsctl.chem.graph import ATOM_FDIM, BOND_FDIM, atom_features, bond_graph
from neimsctl.chem.fragments import FragGraph, fragment_counts, fragment_graph
from neimsctl.io.featblock import (COUNT_BITS, ECFP_BITS, ECFP_BYTES, FRAG_SLOTS, STUDENT_DIM,
                                 STUDENT_FRAG_DIM)

ECFP_RADIUS = 2
#: The fragment-mass histograms' settings (formats/features.v1.md, "Fragment masses").
FRAG_SETTINGS = {"kind": "bond_cuts", "cuts": [1, 2], "bins": FRAG_SLOTS // 2,
                 "mass": "most_common_isotope+H", "saturate": 255}
_LOG1P_U8 = np.log1p(np.arange(256, dtype=np.float32)).astype(np.float32)


class StudentFeatures(NamedTuple):
    """Student features of one molecule.

    Attributes
    ----------
    ecfp : numpy.ndarray
        uint8, shape ``(512,)``: ECFP4 4096 bits, ``np.packbits`` (bitorder big).
    counts : numpy.ndarray
        uint8, shape ``(2048,)``: atom-pair counts folded to 2048, saturating at 255.
    frags : numpy.ndarray
        uint8, shape ``(1002,)``: fragment-mass counts of one- and two-bond cuts
        (:func:`neimsctl.chem.fragments.fragment_counts`), saturating at 255.
    """

    ecfp: np.ndarray
    counts: np.ndarray
    frags: np.ndarray


class TeacherFeatures(NamedTuple):
    """Teacher features of one molecule with ``A`` atoms and ``B`` bonds.

    Attributes
    ----------
    atom_x : numpy.ndarray
        float32, shape ``(A, 48)``: atom features (formats/features.v1.md).
    edge_index : numpy.ndarray
        int32, shape ``(2B, 2)``: (source, target) local atom indices, bond ``k`` gives rows
        ``2k`` (begin -> end) and ``2k + 1`` (end -> begin).
    edge_attr : numpy.ndarray
        float32, shape ``(2B, 6)``: bond features, the same for both directions.
    ecfp : numpy.ndarray
        uint8, shape ``(512,)``: ECFP4 bits, packed as in :class:`StudentFeatures`.
    counts : numpy.ndarray
        uint8, shape ``(2048,)``: the student's atom-pair counts (the teacher's fingerprint
        branch reads ECFP4 + these, the same 6144-d vector as the student).
    frags : numpy.ndarray
        uint8, shape ``(1002,)``: the student's fragment-mass counts.
    """

    atom_x: np.ndarray
    edge_index: np.ndarray
    edge_attr: np.ndarray
    ecfp: np.ndarray
    counts: np.ndarray
    frags: np.ndarray


def settings_hash(settings: dict[str, Any]) -> str:
    """First 16 hex chars of sha256 over the canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def accepted_hashes(settings: dict[str, Any]) -> frozenset[str]:
    """The settings hashes of models that can read features made with ``settings``: their own,
    and with fragment masses also the hash of the same settings without them, which models
    trained before fragment masses existed (neimsctl 0.1, e.g. its shipped models) recorded:
    such a model reads the same ``ecfp``/``counts`` columns, which did not change."""
    own = settings_hash(settings)
    if "frags" not in settings:
        return frozenset((own,))
    return frozenset((own, settings_hash({k: v for k, v in settings.items() if k != "frags"})))


class _Base:
    """Shared ECFP4 generator and settings plumbing."""

    mode: str = ""
    #: compute the fragment masses (off: their field is ``None``; see ``RowOptions.fragments``)
    fragments: bool = True

    def __init__(self) -> None:
        self._ecfp = rdFingerprintGenerator.GetMorganGenerator(radius=ECFP_RADIUS, fpSize=ECFP_BITS)

    def ecfp_packed(self, mol: Chem.Mol) -> np.ndarray:
        """ECFP4 bits of ``mol``, packed: uint8 ``(512,)``."""
        return np.packbits(self._ecfp.GetFingerprintAsNumPy(mol))

    def block_features(self, mol: Chem.Mol) -> Any:
        """The features of ``mol`` as a row of a block (``RowBuilder``): :meth:`__call__`, except
        where a featurizer has a cheaper form that :func:`assemble_ecfp` completes per block."""
        return self(mol)

    @property
    def settings(self) -> dict[str, Any]:
        return {"schema": "neimsctl.features/1", "mode": self.mode, "rdkit": rdBase.rdkitVersion,
                "ecfp": {"kind": "morgan", "radius": ECFP_RADIUS, "fp_size": ECFP_BITS,
                         "chirality": False, "packed": "packbits-big"}}

    @property
    def settings_hash(self) -> str:
        return settings_hash(self.settings)


FEATURIZERS: dict[str, type[_Base]] = {}


def register(name: str) -> Callable[[type[_Base]], type[_Base]]:
    """Class decorator adding a featurizer to :data:`FEATURIZERS` under ``name``."""

    def deco(cls: type[_Base]) -> type[_Base]:
        cls.mode = name
        FEATURIZERS[name] = cls
        return cls

    return deco


def get_featurizer(mode: str) -> _Base:
    """A featurizer instance for ``mode`` (``student`` or ``teacher``).

    Raises
    ------
    KeyError
        ``mode`` is not registered; the message lists the known modes.
    """
    try:
        return FEATURIZERS[mode]()
    except KeyError:
        raise KeyError(f"unknown featurizer mode {mode!r}; known: {', '.join(sorted(FEATURIZERS))}") \
            from None


@register("student")
class StudentFeaturizer(_Base):
    """ECFP4 4096 bits + atom-pair counts 2048 (see :class:`StudentFeatures`).

    Examples
    --------
    >>> f = StudentFeaturizer()(Chem.MolFromSmiles("CCO"))
    >>> f.ecfp.shape, f.counts.shape
    ((512,), (2048,))
    """

    def __init__(self) -> None:
        super().__init__()
        self._pairs = rdFingerprintGenerator.GetAtomPairGenerator(fpSize=COUNT_BITS)

    def pair_counts(self, mol: Chem.Mol) -> np.ndarray:
        """Atom-pair counts folded to 2048, uint8 saturating at 255."""
        return np.minimum(self._pairs.GetCountFingerprintAsNumPy(mol), 255).astype(np.uint8)

    def frags(self, mol: Chem.Mol) -> np.ndarray | None:
        """:func:`~neimsctl.chem.fragments.fragment_counts`, or ``None`` when
        :attr:`fragments` is off (``predict`` for a model that does not read them)."""
        return fragment_counts(mol) if self.fragments else None

    def frag_row(self, mol: Chem.Mol) -> FragGraph | None:
        """The row form of :meth:`frags`: what a block computes all at once (:func:`assemble_frags`)."""
        return fragment_graph(mol) if self.fragments else None

    def __call__(self, mol: Chem.Mol) -> StudentFeatures:
        return StudentFeatures(self.ecfp_packed(mol), self.pair_counts(mol), self.frags(mol))

    def block_features(self, mol: Chem.Mol) -> StudentFeatures:
        """:meth:`__call__` with ``ecfp`` as its set bits (:class:`OnBits`): the block packs
        them all at once (:func:`assemble_ecfp`). ``GetFingerprintAsNumPy`` (4,096 bytes made
        bit by bit) and ``np.packbits`` per molecule cost ~0.015 ms more than
        ``GetFingerprint(...).GetOnBits()``, ~3 % of a molecule's featurization."""
        return StudentFeatures(OnBits(self._ecfp.GetFingerprint(mol).GetOnBits()),
                               self.pair_counts(mol), self.frag_row(mol))

    @property
    def settings(self) -> dict[str, Any]:
        s = super().settings
        s["counts"] = {"kind": "atom_pair", "fp_size": COUNT_BITS, "min_distance": 1,
                       "max_distance": 30, "chirality": False, "saturate": 255}
        s["frags"] = FRAG_SETTINGS
        return s


@register("teacher")
class TeacherFeaturizer(StudentFeaturizer):
    """Molecular graph (48 atom / 6 bond features) + the student's ECFP4 bits and atom-pair
    counts (see :class:`TeacherFeatures`).

    Examples
    --------
    >>> f = TeacherFeaturizer()(Chem.MolFromSmiles("CC=O"))
    >>> f.atom_x.shape, f.edge_index.shape, f.edge_attr.shape
    ((3, 48), (4, 2), (4, 6))
    """

    def block_features(self, mol: Chem.Mol) -> TeacherFeatures:
        """:meth:`__call__` with the fragment masses in their row form (no on-bits form)."""
        edge_index, edge_attr = bond_graph(mol)
        return TeacherFeatures(atom_features(mol), edge_index, edge_attr, self.ecfp_packed(mol),
                               self.pair_counts(mol), self.frag_row(mol))

    def __call__(self, mol: Chem.Mol) -> TeacherFeatures:
        edge_index, edge_attr = bond_graph(mol)
        return TeacherFeatures(atom_features(mol), edge_index, edge_attr, self.ecfp_packed(mol),
                               self.pair_counts(mol), self.frags(mol))

    @property
    def settings(self) -> dict[str, Any]:
        s = super().settings
        s["graph"] = {"atom_fdim": ATOM_FDIM, "bond_fdim": BOND_FDIM, "layout": "features.v1",
                      "hydrogens": "implicit"}
        return s


class OnBits(tuple):
    """The set bits of one molecule's ECFP4, ascending (a row of a block before packing)."""

    __slots__ = ()


def assemble_ecfp(rows: Sequence[np.ndarray | OnBits]) -> np.ndarray:
    """The block's ``ecfp`` column, uint8 ``(n, 512)``: packed rows stacked, or :class:`OnBits`
    rows packed all at once (``np.packbits``, bitorder big: the bytes of :meth:`ecfp_packed`)."""
    if not rows or type(rows[0]) is not OnBits:
        return np.stack(rows) if rows else np.zeros((0, ECFP_BYTES), dtype=np.uint8)
    lens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    on = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lens.sum()))
    bits = np.zeros((len(rows), ECFP_BITS), dtype=np.uint8)
    bits[np.repeat(np.arange(len(rows)), lens), on] = 1
    return np.packbits(bits, axis=1)


def log1p_counts(counts: np.ndarray) -> np.ndarray:
    """uint8 counts -> float32 ``log1p(count)`` (the scaling the student and teacher read)."""
    return _LOG1P_U8[np.asarray(counts, dtype=np.uint8)]


def student_vector(ecfp_packed: np.ndarray, counts: np.ndarray, frags: np.ndarray | None = None) -> np.ndarray:
    """The student input of one molecule: ``concat(unpackbits(ecfp), log1p(counts)[, log1p(frags)])``.

    Parameters
    ----------
    ecfp_packed
        uint8 ``(512,)``.
    counts
        uint8 ``(2048,)``.
    frags
        uint8 ``(1002,)`` fragment-mass counts (:mod:`neimsctl.chem.fragments`), for a model
        that reads them (``fragments: true``); ``None`` for one that does not.

    Returns
    -------
    numpy.ndarray
        float32 ``(6144,)`` or ``(7146,)``: slots 0..4095 are the ECFP4 bits (0/1), 4096..6143
        ``log1p(count)``, 6144..7145 ``log1p`` of the fragment counts.
    """
    return student_vectors(ecfp_packed[None, :], counts[None, :],
                           None if frags is None else frags[None, :])[0]


def _student_inputs(ecfp_packed: np.ndarray, counts: np.ndarray, frags: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    ecfp_packed = np.asarray(ecfp_packed, dtype=np.uint8)
    counts = np.asarray(counts, dtype=np.uint8)
    if ecfp_packed.shape[-1] != ECFP_BYTES or counts.shape[-1] != COUNT_BITS:
        raise ValueError(f"expected (B, {ECFP_BYTES}) and (B, {COUNT_BITS}) uint8, got "
                         f"{ecfp_packed.shape} and {counts.shape}")
    if frags is not None:
        frags = np.asarray(frags, dtype=np.uint8)
        if frags.shape != (ecfp_packed.shape[0], FRAG_SLOTS):
            raise ValueError(f"expected frags of shape ({ecfp_packed.shape[0]}, {FRAG_SLOTS}), "
                             f"got {frags.shape}")
    return ecfp_packed, counts, frags


def student_vectors(ecfp_packed: np.ndarray, counts: np.ndarray, frags: np.ndarray | None = None
                    ) -> np.ndarray:
    """Batched :func:`student_vector`: ``(B, 512)`` + ``(B, 2048)`` [+ ``(B, 1002)``] uint8 ->
    float32 ``(B, 6144)`` [``(B, 7146)``]."""
    ecfp_packed, counts, frags = _student_inputs(ecfp_packed, counts, frags)
    width = STUDENT_DIM if frags is None else STUDENT_FRAG_DIM
    out = np.empty((ecfp_packed.shape[0], width), dtype=np.float32)
    out[:, :ECFP_BITS] = np.unpackbits(ecfp_packed, axis=1)
    out[:, ECFP_BITS:STUDENT_DIM] = _LOG1P_U8[counts]
    if frags is not None:
        out[:, STUDENT_DIM:] = _LOG1P_U8[frags]
    return out


def student_nonzero(ecfp_packed: np.ndarray, counts: np.ndarray, frags: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero entries of :func:`student_vectors`, row by row, without the dense matrix.

    Returns
    -------
    (offsets, cols, values)
        int64 ``(B + 1,)``, int64 ``(nnz,)`` and float32 ``(nnz,)``: row ``i`` holds
        ``values[offsets[i]:offsets[i + 1]]`` at the ascending columns
        ``cols[offsets[i]:offsets[i + 1]]``; the same entries in the same order as
        ``np.nonzero(student_vectors(ecfp_packed, counts, frags))``, with the same float32 values.
    """
    ecfp_packed, counts, frags = _student_inputs(ecfp_packed, counts, frags)
    b = ecfp_packed.shape[0]
    width = STUDENT_DIM if frags is None else STUDENT_FRAG_DIM
    stride = -(-width // 8) * 8                      # rows padded to whole 8-byte words
    u = np.zeros((b, stride), dtype=np.uint8) if stride != width else np.empty((b, stride), np.uint8)
    u[:, :ECFP_BITS] = np.unpackbits(ecfp_packed, axis=1)
    u[:, ECFP_BITS:STUDENT_DIM] = counts
    if frags is not None:
        u[:, STUDENT_DIM:width] = frags
    # the non-zero 8-byte words first (~110 of 768 per molecule), then their non-zero bytes:
    # np.flatnonzero over every byte took ~60 % longer (it tests them one by one)
    w = u.view(np.uint64).ravel()
    words = np.flatnonzero(w)
    sub = np.flatnonzero(np.take(w, words).view(np.uint8))
    flat = words[sub >> 3] * 8 + (sub & 7)
    rows, cols = np.divmod(flat, stride)
    values = np.where(cols < ECFP_BITS, np.float32(1), _LOG1P_U8[u.ravel()[flat]])
    offsets = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=b), out=offsets[1:])
    return offsets, cols, values


# Further modes live in their own modules and register themselves on import.
from neimsctl.chem import features_v1 as _features_v1  # noqa: E402,F401  (mode "v1")
