"""Atom and bond features of the teacher's molecular graph (formats/features.v1.md).

The layout is built from the vocabularies below, so tests compute the expected lengths from
them; they must fill exactly the widths a shard stores (``ATOM_FDIM == 48``, ``BOND_FDIM == 6``,
defined in :mod:`neimsctl.io.featblock`). Hydrogens stay implicit (they appear in the
``num_hs`` slots); explicit hydrogen atoms (e.g. ``[2H]``) are nodes of element ``H``.

Atom slots, in order (one-hots have exactly one 1; "other" catches the rest):

====================  =====  =========================================================
group                 width  values
====================  =====  =========================================================
element               16     C N O F P S Cl Br I Si B Se Sn As H, other
degree                6      0 1 2 3 4 5+ (explicit neighbours, ``GetDegree``)
formal charge         5      <=-2, -1, 0, +1, >=+2
hydrogens             5      0 1 2 3 4+ (``GetTotalNumHs``)
hybridization         6      S, SP, SP2, SP3, SP3D/SP3D2/SP2D, unspecified/other
aromatic              1      ``GetIsAromatic``
in ring               1      ``IsInRing``
ring size             5      member of a ring of size 3, 4, 5, 6, >=7 (multi-hot)
mass                  1      atomic mass / 100 (isotope-aware: [2H] = 0.0201)
radical               1      has unpaired electrons
isotope label         1      an isotope is given (``GetIsotope() != 0``)
====================  =====  =========================================================

Bond slots: single, double, triple, aromatic (one-hot; other bond types are all zero),
conjugated, in ring.
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem

from neimsctl.io.featblock import ATOM_FDIM, BOND_FDIM

ELEMENTS: tuple[int, ...] = (6, 7, 8, 9, 15, 16, 17, 35, 53, 14, 5, 34, 50, 33, 1)
DEGREES = 6          # 0..4, 5+
CHARGES = 5          # <=-2, -1, 0, +1, >=+2
NUM_HS = 5           # 0..3, 4+
HYBRIDIZATIONS: tuple[Chem.HybridizationType, ...] = (
    Chem.HybridizationType.S, Chem.HybridizationType.SP, Chem.HybridizationType.SP2,
    Chem.HybridizationType.SP3)
RING_SIZES: tuple[int, ...] = (3, 4, 5, 6, 7)   # the last means >= 7
SCALARS: tuple[str, ...] = ("aromatic", "in_ring")
TAIL: tuple[str, ...] = ("mass", "radical", "isotope")

O_ELEM = 0
O_DEG = O_ELEM + len(ELEMENTS) + 1
O_CHG = O_DEG + DEGREES
O_HS = O_CHG + CHARGES
O_HYB = O_HS + NUM_HS
O_AROM = O_HYB + len(HYBRIDIZATIONS) + 2        # + SP3D-family, + unspecified/other
O_RING = O_AROM + 1
O_RSIZE = O_RING + 1
O_MASS = O_RSIZE + len(RING_SIZES)
O_RAD, O_ISO = O_MASS + 1, O_MASS + 2

BOND_TYPES: tuple[Chem.BondType, ...] = (Chem.BondType.SINGLE, Chem.BondType.DOUBLE,
                                         Chem.BondType.TRIPLE, Chem.BondType.AROMATIC)
B_CONJ, B_RING = len(BOND_TYPES), len(BOND_TYPES) + 1

_ELEM_SLOT = np.full(128, len(ELEMENTS), dtype=np.int64)
_ELEM_SLOT[list(ELEMENTS)] = np.arange(len(ELEMENTS))
_HYB_SLOT = {h: i for i, h in enumerate(HYBRIDIZATIONS)}
for _h in (Chem.HybridizationType.SP3D, Chem.HybridizationType.SP3D2, Chem.HybridizationType.SP2D):
    _HYB_SLOT[_h] = len(HYBRIDIZATIONS)
_HYB_OTHER = len(HYBRIDIZATIONS) + 1
_BOND_SLOT = {b: i for i, b in enumerate(BOND_TYPES)}

assert O_ISO + 1 == ATOM_FDIM and B_RING + 1 == BOND_FDIM, (O_ISO + 1, B_RING + 1)


def atom_features(mol: Chem.Mol) -> np.ndarray:
    """Atom feature matrix of ``mol``.

    Parameters
    ----------
    mol
        A sanitized RDKit molecule.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(A, 48)``, rows in RDKit atom order.
    """
    n = mol.GetNumAtoms()
    atom = mol.GetAtomWithIdx  # much faster than iterating mol.GetAtoms()
    hyb, other = _HYB_SLOT.get, _HYB_OTHER
    rows_i, mass_l = [], []
    for i in range(n):
        a = atom(i)
        rows_i.append((a.GetAtomicNum(), a.GetDegree(), a.GetFormalCharge(), a.GetTotalNumHs(),
                       hyb(a.GetHybridization(), other),
                       a.GetIsAromatic() | (a.IsInRing() << 1)
                       | ((a.GetNumRadicalElectrons() > 0) << 2) | ((a.GetIsotope() != 0) << 3)))
        mass_l.append(a.GetMass())
    # element, degree, charge, hs, hyb slot, flags
    ints = np.array(rows_i, dtype=np.int64).reshape(n, 6)
    ints[:, 0] = _ELEM_SLOT[np.minimum(ints[:, 0], 127)]
    mass = np.array(mass_l, dtype=np.float32)
    x = np.zeros((n, ATOM_FDIM), dtype=np.float32)
    rows = np.arange(n)
    x[rows, O_ELEM + ints[:, 0]] = 1.0
    x[rows, O_DEG + np.minimum(ints[:, 1], DEGREES - 1)] = 1.0
    x[rows, O_CHG + np.clip(ints[:, 2], -2, 2) + 2] = 1.0
    x[rows, O_HS + np.minimum(ints[:, 3], NUM_HS - 1)] = 1.0
    x[rows, O_HYB + ints[:, 4]] = 1.0
    flags = ints[:, 5]
    x[:, O_AROM] = flags & 1
    x[:, O_RING] = (flags >> 1) & 1
    x[:, O_RAD] = (flags >> 2) & 1
    x[:, O_ISO] = (flags >> 3) & 1
    x[:, O_MASS] = mass / 100.0
    for ring in mol.GetRingInfo().AtomRings():
        x[list(ring), O_RSIZE + min(len(ring), RING_SIZES[-1]) - RING_SIZES[0]] = 1.0
    return x


def bond_graph(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """Directed edge list and bond features of ``mol``.

    Returns
    -------
    edge_index : numpy.ndarray
        int32 ``(2B, 2)``; bond ``k`` gives rows ``2k`` (begin -> end) and ``2k + 1``.
    edge_attr : numpy.ndarray
        float32 ``(2B, 6)``; both rows of a bond are equal.
    """
    nb = mol.GetNumBonds()
    bond, slot = mol.GetBondWithIdx, _BOND_SLOT.get
    rows_b = []
    for k in range(nb):
        b = bond(k)
        rows_b.append((b.GetBeginAtomIdx(), b.GetEndAtomIdx(), slot(b.GetBondType(), -1),
                       b.GetIsConjugated(), b.IsInRing()))
    both = np.array(rows_b, dtype=np.int64).reshape(nb, 5)
    ends, ints = both[:, :2].astype(np.int32), both[:, 2:]
    attr = np.zeros((nb, BOND_FDIM), dtype=np.float32)
    typed = ints[:, 0] >= 0
    attr[np.flatnonzero(typed), ints[typed, 0]] = 1.0
    attr[:, B_CONJ] = ints[:, 1]
    attr[:, B_RING] = ints[:, 2]
    edge_index = np.empty((2 * nb, 2), dtype=np.int32)
    edge_index[0::2] = ends
    edge_index[1::2] = ends[:, ::-1]
    return edge_index, np.repeat(attr, 2, axis=0)
