"""Fragment masses (formats/features.v1.md "Fragment masses") against a brute force that cuts every
bond and every pair of bonds and weighs the pieces; known molecules by hand."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from neimsctl.chem.fragments import FRAG_BINS, FRAG_SLOTS, fragment_counts

SAMPLE = Path(__file__).resolve().parents[3] / "neimsctl" / "resources" / "sample" / "sample.msp"
PT = Chem.GetPeriodicTable()


def _atom_mass(a: Chem.Atom) -> int:
    return (a.GetIsotope() or PT.GetMostCommonIsotope(a.GetAtomicNum())) + a.GetTotalNumHs()


def _components(n: int, bonds: list[tuple[int, int]], cut: set[int]) -> list[int]:
    root = list(range(n))

    def find(x: int) -> int:
        while root[x] != x:
            x = root[x]
        return x

    for k, (a, b) in enumerate(bonds):
        if k not in cut:
            root[find(a)] = find(b)
    return [find(i) for i in range(n)]


def brute_force(mol: Chem.Mol) -> np.ndarray:
    """Every bond and pair of bonds of one connected part cut (each part of a salt on its own); a
    cut that adds connected parts counts every piece that holds an end of a cut bond (the parts of
    the molecule not touched stay out)."""
    n = mol.GetNumAtoms()
    mass = [_atom_mass(a) for a in mol.GetAtoms()]
    bonds = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    whole = _components(n, bonds, set())
    parts = len(set(whole))
    out = np.zeros(FRAG_SLOTS, dtype=np.int64)
    for size, offset in ((1, 0), (2, FRAG_BINS)):
        for cut in combinations(range(len(bonds)), size):
            if len({whole[bonds[k][0]] for k in cut}) > 1:
                continue                                   # bonds of two parts: not a cut
            root = _components(n, bonds, set(cut))
            if len(set(root)) == parts:
                continue
            weight: dict[int, int] = {}
            for i, r in enumerate(root):
                weight[r] = weight.get(r, 0) + mass[i]
            for r in {root[a] for k in cut for a in bonds[k]}:
                if weight[r] < FRAG_BINS:
                    out[offset + weight[r]] += 1
    return np.minimum(out, 255).astype(np.uint8)


@pytest.mark.parametrize("smiles", [
    "CCO", "C", "CC", "c1ccccc1", "c1ccc2ccccc2c1", "C1CC2(CC1)CCC2", "C12C3C4C1C5C2C3C45",
    "OC1C2CC3CC1CC(C2)C3", "CC(C)(C)c1ccc2c(c1)C1(CCC1)C2", "O=C1CC2(C1)CC2",
    "[Na+].[O-]C(=O)c1ccccc1", "[Cl-].[NH4+]", "c1ccccc1.c1ccccc1", "[13CH3]CO", "[2H]OC([2H])([2H])[2H]",
    "CCCCC(=O)c1ccccc1", "c1ccc(-c2ccccc2)cc1", "C1CCCCC1CCN", "BrC(Cl)(I)C(F)(F)[Si](C)(C)C",
    "CC.CC", "CCO.CC", "C.CC.CCC.c1ccccc1", "c1ccccc1.[2H]O[2H]", "C1CC1.C1CC1",
])
@pytest.mark.parametrize("small_block", [8, 0])
def test_equals_the_brute_force(smiles: str, small_block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths: one molecule in plain Python (small blocks) and the numpy block (forced)."""
    from neimsctl.chem import fragments

    monkeypatch.setattr(fragments, "SMALL_BLOCK", small_block)
    mol = Chem.MolFromSmiles(smiles)
    assert np.array_equal(fragment_counts(mol), brute_force(mol))


def test_equals_the_brute_force_on_the_sample_library() -> None:
    smiles = [line.split(b":", 1)[1].strip().decode() for line in SAMPLE.read_bytes().splitlines()
              if line.startswith(b"SMILES:")]
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    mols = [m for m in mols if m is not None and m.GetNumBonds() <= 40]
    assert len(mols) >= 30
    for m in mols:
        assert np.array_equal(fragment_counts(m), brute_force(m)), Chem.MolToSmiles(m)


def test_valerophenone_by_hand() -> None:
    h = fragment_counts(Chem.MolFromSmiles("CCCCC(=O)c1ccccc1"))
    single = set(np.flatnonzero(h[:FRAG_BINS]).tolist())
    # PhCO+ 105 and Ph+ 77 (the spectrum's base peak and its loss of CO), C4H9 57, M - CH3 147
    assert {105, 77, 57, 147} <= single
    assert h[105] == 1 and h[FRAG_BINS + 105] > 0        # alpha cleavage, also with a ring bond cut
    assert not h[FRAG_BINS + 200:].any()                  # nothing heavier than the molecule (162)


def test_counts_saturate_and_the_dtype_is_uint8() -> None:
    h = fragment_counts(Chem.MolFromSmiles("C" * 300))    # CH3 is a piece of ~600 cuts
    assert h.dtype == np.uint8 and h.shape == (FRAG_SLOTS,) and h.max() == 255


def test_a_single_atom_or_an_empty_molecule_has_no_pieces() -> None:
    assert not fragment_counts(Chem.MolFromSmiles("C")).any()
    assert not fragment_counts(Chem.Mol()).any()


def test_the_atom_order_does_not_matter() -> None:
    mol = Chem.MolFromSmiles("CC(=O)Nc1ccc(O)cc1C1CC1")
    rng = np.random.default_rng(0)
    for _ in range(5):
        order = rng.permutation(mol.GetNumAtoms()).tolist()
        assert np.array_equal(fragment_counts(Chem.RenumberAtoms(mol, order)), fragment_counts(mol))


def test_large_molecules_read_their_bonds_one_by_one_and_stay_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from neimsctl.chem import fragments

    mols = [Chem.MolFromSmiles(s) for s in ("CCCCC(=O)c1ccccc1", "C12C3C4C1C5C2C3C45", "[Na+].[O-]C(=O)CC")]
    dense = [fragment_counts(m) for m in mols]
    monkeypatch.setattr(fragments, "_DENSE_ATOMS", 0)            # the bond-by-bond path
    assert all(np.array_equal(fragment_counts(m), d) for m, d in zip(mols, dense))
    monkeypatch.undo()
    t0 = time.perf_counter()
    for smiles in ("C" * 20000, "C1" + "C" * 5000 + "C1"):         # hostile sizes: no quadratic work
        fragment_counts(Chem.MolFromSmiles(smiles))
    assert time.perf_counter() - t0 < 10.0


def test_a_block_gives_each_molecule_its_own_counts() -> None:
    """Molecules computed together (as featurize does, a block at a time) get exactly what each
    gets alone: no piece crosses into a neighbour, whatever the order and the block's size."""
    from neimsctl.chem.fragments import assemble_frags, fragment_graph

    smiles = [line.split(b":", 1)[1].strip().decode() for line in SAMPLE.read_bytes().splitlines()
              if line.startswith(b"SMILES:")]
    smiles += ["C", "[Na+].[Cl-]", "C12C3C4C1C5C2C3C45", "c1ccccc1.c1ccccc1", "[2H]OC"]
    mols = [Chem.MolFromSmiles(s) for s in smiles] + [Chem.Mol()]
    alone = np.stack([fragment_counts(m) for m in mols])
    rng = np.random.default_rng(1)
    for _ in range(3):
        order = rng.permutation(len(mols))
        block = assemble_frags([fragment_graph(mols[i]) for i in order])
        assert block.shape == (len(mols), 1002) and np.array_equal(block, alone[order])
        small = assemble_frags([fragment_graph(mols[i]) for i in order[:5]])   # the Python path
        assert np.array_equal(small, alone[order[:5]])
    assert assemble_frags([]).shape == (0, 1002)
    assert np.array_equal(assemble_frags(list(alone)), alone)           # histogram rows: stacked


def test_blocks_of_more_than_65536_bonds_keep_each_molecule_apart() -> None:
    """A ring bond's label must not equal another molecule's: the labels were a table indexed by
    the edge's low 16 bits XORed with a multiple of its high bits, so a bond in two rings got the
    label of the bond 65,536 edges further in the block, and their cut class paired bonds of two
    molecules (wrong counts, or negative masses and a crash in predict's blocks of 1,024)."""
    from neimsctl.chem.fragments import fragment_block, fragment_graph

    g = fragment_graph(Chem.MolFromSmiles("c1ccc2ccccc2c1" + "C" * 117))     # 128 bonds
    alone = fragment_counts(Chem.MolFromSmiles("c1ccc2ccccc2c1" + "C" * 117))
    block = fragment_block([g] * 600)                                          # 76,800 bonds
    assert (block == alone).all()
