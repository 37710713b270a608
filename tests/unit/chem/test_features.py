"""Feature slots on known molecules, vector lengths from the vocabularies, permutation invariance."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem

from neimsctl.chem import graph
from neimsctl.chem.features import (COUNT_BITS, ECFP_BITS, FEATURIZERS, STUDENT_DIM, OnBits,
                                    assemble_ecfp,
                                    StudentFeaturizer, TeacherFeaturizer, get_featurizer,
                                    settings_hash, student_nonzero, student_vector,
                                    student_vectors)


def test_dimensions_follow_the_vocabularies() -> None:
    atom = (len(graph.ELEMENTS) + 1 + graph.DEGREES + graph.CHARGES + graph.NUM_HS
            + len(graph.HYBRIDIZATIONS) + 2 + len(graph.SCALARS) + len(graph.RING_SIZES)
            + len(graph.TAIL))
    assert atom == graph.ATOM_FDIM == 48
    assert len(graph.BOND_TYPES) + 2 == graph.BOND_FDIM == 6
    f = TeacherFeaturizer()(Chem.MolFromSmiles("CCO"))
    assert f.atom_x.shape == (3, graph.ATOM_FDIM) and f.edge_attr.shape == (4, graph.BOND_FDIM)
    s = StudentFeaturizer()(Chem.MolFromSmiles("CCO"))
    assert s.ecfp.shape == (ECFP_BITS // 8,) and s.counts.shape == (COUNT_BITS,)
    assert s.ecfp.dtype == np.uint8 and s.counts.dtype == np.uint8
    assert s.frags.shape == (1002,) and s.frags.dtype == np.uint8
    assert student_vector(s.ecfp, s.counts).shape == (STUDENT_DIM,) == (6144,)
    assert student_vector(*s).shape == (7146,)


def test_one_hot_groups_have_exactly_one_bit() -> None:
    x = TeacherFeaturizer()(Chem.MolFromSmiles("[O-]C(=O)c1ccc(Br)cc1[N+](=O)[O-]")).atom_x
    groups = [(graph.O_ELEM, graph.O_DEG), (graph.O_DEG, graph.O_CHG), (graph.O_CHG, graph.O_HS),
              (graph.O_HS, graph.O_HYB), (graph.O_HYB, graph.O_AROM)]
    for lo, hi in groups:
        assert np.all(x[:, lo:hi].sum(axis=1) == 1), (lo, hi)


def test_benzene_atoms_are_aromatic_ring_six() -> None:
    x = TeacherFeaturizer()(Chem.MolFromSmiles("c1ccccc1")).atom_x
    assert np.all(x[:, graph.O_AROM] == 1) and np.all(x[:, graph.O_RING] == 1)
    six = graph.O_RSIZE + graph.RING_SIZES.index(6)
    assert np.all(x[:, six] == 1)
    assert x[:, graph.O_RSIZE:graph.O_MASS].sum() == 6          # only the size-6 slot
    assert np.all(x[:, graph.O_ELEM + graph.ELEMENTS.index(6)] == 1)
    assert np.all(x[:, graph.O_HS + 1] == 1)                     # one H each
    assert np.all(x[:, graph.O_HYB + 2] == 1)                    # SP2


def test_acetic_acid_bond_types() -> None:
    mol = Chem.MolFromSmiles("CC(=O)O")
    f = TeacherFeaturizer()(mol)
    assert f.edge_index.shape == (2 * mol.GetNumBonds(), 2)
    for k, bond in enumerate(mol.GetBonds()):
        a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        assert f.edge_index[2 * k].tolist() == [a, b] and f.edge_index[2 * k + 1].tolist() == [b, a]
        assert np.array_equal(f.edge_attr[2 * k], f.edge_attr[2 * k + 1])
    types = [int(np.argmax(f.edge_attr[2 * k, :4])) for k in range(mol.GetNumBonds())]
    assert types == [0, 1, 0]                                     # C-C single, C=O double, C-O single
    assert f.edge_attr[:, graph.B_RING].sum() == 0
    assert f.edge_attr[2, graph.B_CONJ] == 1                      # C=O is conjugated with O-H


def test_cyclohexane_ring_membership_and_mass() -> None:
    x = TeacherFeaturizer()(Chem.MolFromSmiles("C1CCCCC1CC")).atom_x
    assert x[:6, graph.O_RING].tolist() == [1] * 6 and x[6:, graph.O_RING].tolist() == [0, 0]
    assert np.all(x[:, graph.O_AROM] == 0) and np.all(x[:, graph.O_HYB + 3] == 1)
    assert x[0, graph.O_MASS] == pytest.approx(0.12011, abs=1e-4)


def test_isotope_label_and_charge_slots() -> None:
    x = TeacherFeaturizer()(Chem.MolFromSmiles("[2H]C([2H])([2H])[N+](C)(C)C")).atom_x
    h = graph.O_ELEM + graph.ELEMENTS.index(1)
    assert x[0, h] == 1 and x[0, graph.O_ISO] == 1 and x[1, graph.O_ISO] == 0
    assert x[0, graph.O_MASS] == pytest.approx(0.0201, abs=1e-3)
    n = 4
    assert x[n, graph.O_CHG + 3] == 1                             # +1


def _renumbered(smiles: str, seed: int) -> tuple[Chem.Mol, Chem.Mol]:
    mol = Chem.MolFromSmiles(smiles)
    order = np.random.default_rng(seed).permutation(mol.GetNumAtoms()).tolist()
    return mol, Chem.RenumberAtoms(mol, order)


@pytest.mark.parametrize("smiles", ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
                                    "ClC(Cl)(Cl)C(c1ccc(Cl)cc1)c1ccc(Cl)cc1"])
def test_fingerprints_are_atom_order_invariant(smiles: str) -> None:
    mol, perm = _renumbered(smiles, 7)
    s = StudentFeaturizer()
    a, b = s(mol), s(perm)
    assert np.array_equal(a.ecfp, b.ecfp) and np.array_equal(a.counts, b.counts)
    t = TeacherFeaturizer()
    ta, tb = t(mol), t(perm)
    assert np.array_equal(ta.ecfp, tb.ecfp)
    # graph features permute with the atoms: same multiset of rows
    assert sorted(map(tuple, ta.atom_x.tolist())) == sorted(map(tuple, tb.atom_x.tolist()))


def test_atom_pair_counts_tell_homologues_apart() -> None:
    s = StudentFeaturizer()
    decane, dodecane = s(Chem.MolFromSmiles("C" * 10)), s(Chem.MolFromSmiles("C" * 12))
    assert np.array_equal(decane.ecfp, dodecane.ecfp)             # why counts are atom pairs
    assert not np.array_equal(decane.counts, dodecane.counts)


def test_counts_saturate_at_255() -> None:
    counts = StudentFeaturizer()(Chem.MolFromSmiles("C" * 60)).counts
    assert counts.max() <= 255 and counts.dtype == np.uint8


def test_student_vectors_layout() -> None:
    s = StudentFeaturizer()
    feats = [s(Chem.MolFromSmiles(x)) for x in ("CCO", "c1ccccc1")]
    v = student_vectors(np.stack([f.ecfp for f in feats]), np.stack([f.counts for f in feats]))
    assert v.shape == (2, 6144) and v.dtype == np.float32
    assert np.array_equal(v[0, :4096], np.unpackbits(feats[0].ecfp).astype(np.float32))
    assert np.allclose(v[1, 4096:], np.log1p(feats[1].counts.astype(np.float32)))
    assert np.array_equal(v[1], student_vector(feats[1].ecfp, feats[1].counts))
    with pytest.raises(ValueError):
        student_vectors(np.zeros((1, 10), np.uint8), np.zeros((1, 2048), np.uint8))


def test_student_nonzero_is_the_nonzero_of_student_vectors() -> None:
    s = StudentFeaturizer()
    feats = [s(Chem.MolFromSmiles(x)) for x in ("CCO", "C", "c1ccccc1C(=O)O", "C" * 60)]
    ecfp, counts = np.stack([f.ecfp for f in feats]), np.stack([f.counts for f in feats])
    counts[1] = 0                                   # a row with bits only
    v = student_vectors(ecfp, counts)
    offsets, cols, values = student_nonzero(ecfp, counts)
    rows, want = np.nonzero(v)
    assert np.array_equal(cols, want) and values.dtype == np.float32
    assert np.array_equal(values, v[rows, want])   # the same float32 values, bit for bit
    assert np.array_equal(offsets, np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=4))]))
    empty = student_nonzero(np.zeros((0, 512), np.uint8), np.zeros((0, 2048), np.uint8))
    assert [len(a) for a in empty] == [1, 0, 0]
    with pytest.raises(ValueError):
        student_nonzero(np.zeros((1, 10), np.uint8), np.zeros((1, 2048), np.uint8))


def test_block_features_pack_to_the_bytes_of_call() -> None:
    s = StudentFeaturizer()
    mols = [Chem.MolFromSmiles(x) for x in ("CCO", "C", "c1ccccc1C(=O)O", "C" * 60, "[Na+].[Cl-]")]
    rows = [s.block_features(m) for m in mols]
    assert all(type(r.ecfp) is OnBits for r in rows)
    whole = [s(m) for m in mols]
    assert np.array_equal(assemble_ecfp([r.ecfp for r in rows]), np.stack([w.ecfp for w in whole]))
    assert all(np.array_equal(r.counts, w.counts) for r, w in zip(rows, whole))
    assert np.array_equal(assemble_ecfp([w.ecfp for w in whole]), np.stack([w.ecfp for w in whole]))
    assert assemble_ecfp([]).shape == (0, 512)
    for other in (TeacherFeaturizer(), get_featurizer("v1")):   # more fields: their own __call__
        assert type(other.block_features(mols[2])) is type(other(mols[2]))


def test_registry_and_settings_hash() -> None:
    assert set(FEATURIZERS) == {"student", "teacher", "v1"}
    assert isinstance(get_featurizer("teacher"), TeacherFeaturizer)
    with pytest.raises(KeyError, match="student"):
        get_featurizer("nope")
    st, te = StudentFeaturizer(), TeacherFeaturizer()
    assert len(st.settings_hash) == 16 and st.settings_hash != te.settings_hash
    assert st.settings_hash == settings_hash(dict(reversed(list(st.settings.items()))))


def test_cli_mode_choices_match_registry() -> None:
    from neimsctl.cli.featurize import Mode
    from neimsctl.io.featblock import MODES

    assert {m.value for m in Mode} == set(FEATURIZERS) == set(MODES)
