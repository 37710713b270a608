"""chem.domain: which molecules lie outside a predictor's domain, read from SMILES/formula/mass."""

from __future__ import annotations

import pytest
from rdkit import Chem
from rdkit.Chem.rdMolDescriptors import CalcMolFormula

from neimsctl.chem.domain import domain_flags
from neimsctl.chem.structure import nominal_mass


@pytest.mark.parametrize("smiles, flags", [
    ("CCO", []),
    ("C[N+](=O)[O-]", []),                        # zwitterionic nitro: neutral, in domain
    ("C[Si](C)(C)OC(=O)c1ccccc1", []),            # TMS derivative
    ("CC[Sn](CC)(CC)CC", []),
    ("[Na+].[Cl-]", ["mixture", "charged", "element:Na"]),
    ("CC(=O)O.CCN", ["mixture"]),
    ("CC[NH3+]", ["charged"]),
    ("[Fe+2]", ["charged", "element:Fe"]),
    ("*CC", ["dummy_atom"]),
    ("[2H]C([2H])([2H])O", ["isotope"]),
    ("[13CH3]O", ["isotope"]),
    ("CC[Fe]CC", ["element:Fe"]),
    ("C" * 36, ["mass_above_500"]),               # C36H74: 506
    ("C" * 35, []),                               # C35H72: 492
])
def test_flags_from_canonical_smiles_formula_and_mass(smiles, flags):
    mol = Chem.MolFromSmiles(smiles)
    assert domain_flags(Chem.MolToSmiles(mol), CalcMolFormula(mol), nominal_mass(mol)) == flags
