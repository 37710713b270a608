"""RDKit structure work: parsing, MOL repair, nominal mass, formula, flags against the MSP."""

from __future__ import annotations

import itertools

import pytest

from neimsctl.chem.structure import (StructureError, compare_with_msp, describe, formula_counts,
                                     mol_from_inchi, mol_from_molblock, mol_from_smiles,
                                     nominal_mass, read_mol_file, repair_molblock)
from neimsctl.io.msp import read_msp
from neimsctl.io.streams import open_in

BENZENE_MOL = """benzene
     RDKit          2D

  6  6  0  0  0  0  0  0  0  0999 V2000
    1.5000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    0.7500   -1.2990    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
   -0.7500   -1.2990    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
   -1.5000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
   -0.7500    1.2990    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    0.7500    1.2990    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
  1  2  2  0
  2  3  1  0
  3  4  2  0
  4  5  1  0
  5  6  2  0
  6  1  1  0
M  END
"""


def test_describe_smiles():
    st = describe(mol_from_smiles("C1=CC=CC=C1"))
    assert st.smiles == "c1ccccc1" and st.inchikey == "UHOVQNZJYSORNB-UHFFFAOYSA-N"
    assert st.formula == "C6H6" and st.mw == 78 and st.exact_mass == pytest.approx(78.04695)


@pytest.mark.parametrize("smiles, mw, formula", [
    ("ClC(Cl)Cl", 118, "CHCl3"),                      # 35Cl is the most abundant isotope
    ("BrCCBr", 186, "C2H4Br2"),                       # 79Br
    ("[2H]c1c([2H])c([2H])c([2H])c([2H])c1[2H]", 84, "C6D6"),
    ("[13CH4]", 17, "[13C]H4"),
    ("CC[Sn](CC)(CC)CC", 236, "C8H20Sn"),             # 120Sn
])
def test_nominal_mass_and_formula_isotopes_and_halogens(smiles, mw, formula):
    st = describe(mol_from_smiles(smiles))
    assert (st.mw, st.formula) == (mw, formula)


def test_unparsable_structures_raise_with_reason():
    for bad in (lambda: mol_from_smiles("C1CC(("), lambda: mol_from_inchi("InChI=1S/garbage"),
                lambda: mol_from_molblock("not a mol block")):
        with pytest.raises(StructureError) as exc:
            bad()
        assert exc.value.reason == "unparsable_structure"


def test_inchi_input():
    mol = mol_from_inchi("InChI=1S/C6H6/c1-2-4-6-5-3-1/h1-6H")
    assert describe(mol).smiles == "c1ccccc1"


@pytest.mark.parametrize("variant", [
    BENZENE_MOL,                                                   # correct
    BENZENE_MOL.replace("M  END\n", ""),                            # lib2nist: M  END missing
    BENZENE_MOL + "M  END\n",                                       # lib2nist: M  END twice
    BENZENE_MOL + "> <NAME>\nbenzene\n\n$$$$\n",                    # SD data after it
    BENZENE_MOL.replace("\n", "\r\n"),                              # CRLF
])
def test_mol_block_defects_are_repaired(variant):
    assert describe(mol_from_molblock(variant)).inchikey == "UHOVQNZJYSORNB-UHFFFAOYSA-N"
    assert repair_molblock(variant).count("M  END") == 1


def test_read_mol_file(tmp_path):
    (tmp_path / "ID5.MOL").write_text(BENZENE_MOL.replace("M  END\n", ""))
    assert describe(read_mol_file(tmp_path, "5")).formula == "C6H6"
    with pytest.raises(StructureError) as exc:
        read_mol_file(tmp_path, "6")
    assert exc.value.reason == "missing_mol_file" and "ID6.MOL" in str(exc.value)


def test_compare_with_msp_flags():
    st = describe(mol_from_smiles("c1ccccc1"))
    ok = {"formula": "C6H6", "mw": "78,0", "inchikey": "UHOVQNZJYSORNB-UHFFFAOYSA-N", "exactmass": "78.047"}
    assert compare_with_msp(st, ok) == []
    assert compare_with_msp(st, {"formula": "H6C6"}) == []  # order does not matter
    bad = {"formula": "C6H5", "mw": "79", "inchikey": "XXXXXXXXXXXXXX-UHFFFAOYSA-N", "exactmass": "79.1"}
    assert compare_with_msp(st, bad) == ["formula_mismatch", "mw_mismatch", "inchikey_mismatch",
                                         "exact_mass_mismatch"]
    assert formula_counts("C11H11D3O2") == {"C": 11, "H": 11, "D": 3, "O": 2}


def test_real_data_mw_formula_inchikey_agree(shared_data):
    """Every labelled or Cl/Br compound of the DEV file reproduces its MSP lines; plus a slice."""
    checked = labelled = halogen = 0
    with open_in(shared_data / "massbank_ei.msp") as fh:
        for i, rec in enumerate(read_msp(fh, "massbank_ei.msp")):
            smi = rec.fields["smiles"]
            is_lab = "[2H]" in smi or "[13C" in smi or "[15N" in smi or "[18O" in smi
            is_hal = "Cl" in smi or "Br" in smi
            if not (is_lab or (is_hal and halogen < 150) or i % 40 == 0):
                continue
            st = describe(mol_from_smiles(smi))
            assert compare_with_msp(st, rec.fields) == [], (rec.record_id, st, rec.fields)
            assert st.mw == int(rec.fields["mw"])
            checked, labelled, halogen = checked + 1, labelled + is_lab, halogen + is_hal
    assert labelled >= 100 and halogen >= 100 and checked >= 400


def test_real_mol_files_give_the_msp_inchikey(shared_data):
    nist = shared_data / "nist_style"
    with open_in(nist / "massbank_ei_nostruct.msp") as fh:
        for rec in itertools.islice(read_msp(fh, "n.msp"), 60):
            if rec.record_id in ("350", "370", "432"):
                continue
            st = describe(read_mol_file(nist / "mol_files", rec.record_id))
            assert compare_with_msp(st, rec.fields) == [], rec.record_id


def test_describe_by_text_is_remembered_and_equal_to_describe():
    from neimsctl.chem.structure import describe_inchi, describe_smiles

    describe_smiles.cache_clear()
    a = describe_smiles("OC(=O)c1ccccc1OC(C)=O")
    assert a is describe_smiles("OC(=O)c1ccccc1OC(C)=O")  # second record: no RDKit work
    assert describe_smiles.cache_info().hits == 1
    assert a == describe(mol_from_smiles("OC(=O)c1ccccc1OC(C)=O"))
    assert describe_inchi("InChI=1S/C6H6/c1-2-4-6-5-3-1/h1-6H").smiles == "c1ccccc1"
    with pytest.raises(StructureError):  # failures are not remembered, they raise every time
        describe_smiles("C1CC((")
    with pytest.raises(StructureError):
        describe_smiles("C1CC((")


@pytest.mark.parametrize("field,value,flag", [
    ("mw", "inf", "mw_mismatch"), ("mw", "1e400", "mw_mismatch"), ("mw", "nan", "mw_mismatch"),
    ("mw", "-inf", "mw_mismatch"), ("exactmass", "inf", "exact_mass_mismatch"),
    ("exactmass", "1e400", "exact_mass_mismatch"), ("formula", "C" + "9" * 5000, "formula_mismatch"),
    ("formula", "C6H" + "6" * 4400, "formula_mismatch"),
])
def test_unreadable_msp_values_are_flags_not_errors(field, value, flag):
    st = describe(mol_from_smiles("c1ccccc1"))
    assert compare_with_msp(st, {field: value}) == [flag]


@pytest.mark.parametrize("record_id", ["../outside/secret", "/etc/passwd", "a/b", "..\\x", "7\x00"])
def test_mol_file_ids_that_are_paths_are_refused(tmp_path, record_id):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.MOL").write_text(BENZENE_MOL)
    (tmp_path / "mols").mkdir()
    with pytest.raises(StructureError) as exc:
        read_mol_file(tmp_path / "mols", record_id)
    assert exc.value.reason == "unsafe_mol_path" and "not a plain file name" in str(exc.value)


def test_mol_file_plain_names_with_dots_are_fine(tmp_path):
    (tmp_path / "ID..5.MOL").write_text(BENZENE_MOL)
    assert describe(read_mol_file(tmp_path, "..5")).formula == "C6H6"
