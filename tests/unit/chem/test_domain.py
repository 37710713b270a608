"""chem.domain: which molecules lie outside a predictor's domain, read from SMILES/formula/mass."""

from __future__ import annotations

import pytest
from rdkit import Chem
from rdkit.Chem.rdMolDescriptors import CalcMolFormula

from neimsctl.chem.domain import domain_flags
from neimsctl.chem.structure import nominal_mass


@pytest.mark.parametrize("smiles, flags", [
    ("CCCO", []),
    ("CCO", ["mass_below_50"]),                  # 46: lighter than any training molecule
    ("CCCl", []),                                 # 64
    ("C[N+](=O)[O-]", []),                        # zwitterionic nitro: neutral, in domain
    ("C[Si](C)(C)OC(=O)c1ccccc1", []),            # TMS derivative
    ("CC[Sn](CC)(CC)CC", []),
    ("[Na+].[Cl-]", ["mixture", "charged", "element:Na"]),
    ("CC(=O)O.CCN", ["mixture"]),
    ("CCC[NH3+]", ["charged"]),
    ("[Fe+2]", ["charged", "element:Fe"]),          # 56
    ("*CCCC", ["dummy_atom"]),
    ("[1*]c1ccccc1", ["dummy_atom"]),             # an R-group label is no isotope (was flagged one)
    ("[13cH]1ccccc1", ["isotope"]),
    ("[2H]C([2H])([2H])CCO", ["isotope"]),
    ("[13CH3]CCO", ["isotope"]),
    ("[13CH3]O", ["isotope", "mass_below_50"]),
    ("CC[Fe]CC", ["element:Fe"]),
    ("C" * 36, ["mass_above_500"]),               # C36H74: 506
    ("C" * 35, []),                               # C35H72: 492
])
def test_flags_from_canonical_smiles_formula_and_mass(smiles, flags):
    mol = Chem.MolFromSmiles(smiles)
    assert domain_flags(Chem.MolToSmiles(mol), CalcMolFormula(mol), nominal_mass(mol)) == flags


@pytest.mark.parametrize("smiles", [
    "*CC", "[1*]c1ccccc1", "CC[*:1]", "[#0]CCCC", "[2#0]CC", "[#0H]CC", "[#0+]CC",
    "CCO", "C#0CCCC0", "[#6]CC", "c1ccccc1", "[Xe]", "CC#N",
])
def test_has_dummy_atom_from_the_text_agrees_with_rdkit_atomic_number_0(smiles):
    """One text test (no RDKit pass) for predict's flag and featurize's/msp2jsonl's reject:
    exactly the SMILES whose parsed molecule has an atom of atomic number 0, written as RDKit
    writes it or not ([#0], a ring bond #0 that is none)."""
    from neimsctl.chem.domain import has_dummy_atom

    mol = Chem.MolFromSmiles(smiles)
    dummy = any(a.GetAtomicNum() == 0 for a in mol.GetAtoms())
    assert has_dummy_atom(smiles) == dummy
    assert has_dummy_atom(Chem.MolToSmiles(mol)) == dummy


@pytest.mark.parametrize("symbol", ["R#", "R", "A", "Q", "*", "R1"])
def test_mol_file_r_group_atoms_are_dummy_atoms(symbol):
    from neimsctl.chem.domain import dummy_atom_detail

    block = Chem.MolToMolBlock(Chem.MolFromSmiles("CCc1ccccc1")).splitlines()
    block[4] = block[4][:31] + f"{symbol:<3}" + block[4][34:]
    smiles = Chem.MolToSmiles(Chem.MolFromMolBlock("\n".join(block)))
    assert "dummy atom" in dummy_atom_detail(smiles) and dummy_atom_detail("CCc1ccccc1") is None
