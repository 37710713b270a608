"""RDKit structure work: parsing, MOL repair, nominal mass, formula, flags against the MSP."""

from __future__ import annotations

import itertools
import os

import pytest

from neimsctl.chem.structure import (StructureError, compare_with_msp, describe, formula_counts,
                                     mol_from_inchi, mol_from_molblock, mol_from_smiles,
                                     read_mol_file, repair_molblock)
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


def test_a_mol_file_above_the_size_limit_is_too_large_and_not_read(tmp_path):
    """A huge file named like a MOL file (ID5.MOL of 2 GB) was read into memory whole: it is
    refused from its size, naming the file, with no more than a few KB allocated."""
    import tracemalloc

    from neimsctl.chem.structure import MAX_MOL_FILE_BYTES

    with open(tmp_path / "ID5.MOL", "wb") as fh:            # sparse: no disk used
        fh.truncate(4 * MAX_MOL_FILE_BYTES)
    (tmp_path / "ID6.MOL").write_text(BENZENE_MOL)
    tracemalloc.start()
    try:
        with pytest.raises(StructureError) as exc:
            read_mol_file(tmp_path, "5")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    assert exc.value.reason == "too_large"
    assert str(exc.value) == (f"{tmp_path / 'ID5.MOL'}: a file of {4 * MAX_MOL_FILE_BYTES:,} bytes, "
                              f"not read (limit 16 MiB: the MOL file of an EI-MS molecule is a few KB)")
    assert describe(read_mol_file(tmp_path, "6")).formula == "C6H6"


def test_a_mol_file_whose_size_says_nothing_is_read_only_up_to_the_limit(tmp_path, monkeypatch):
    """A file whose stat size is 0 though it holds bytes (/proc), or one that grows while read:
    no more than the limit and one byte is read."""
    import neimsctl.chem.structure as structure

    status = "/proc/self/status"
    if not os.path.isfile(status) or os.stat(status).st_size != 0:
        pytest.skip("needs Linux /proc (a regular file of stat size 0)")
    os.symlink(status, tmp_path / "ID7.MOL")
    monkeypatch.setattr(structure, "MAX_MOL_FILE_BYTES", 100)
    with pytest.raises(StructureError) as exc:
        read_mol_file(tmp_path, "7")
    assert exc.value.reason == "too_large" and "ID7.MOL: a file of more than 100 bytes, not read (limit 100 bytes" in str(exc.value)


def test_compare_with_msp_flags():
    st = describe(mol_from_smiles("c1ccccc1"))
    ok = {"formula": "C6H6", "mw": "78,0", "inchikey": "UHOVQNZJYSORNB-UHFFFAOYSA-N", "exactmass": "78.047"}
    assert compare_with_msp(st, ok) == []
    assert compare_with_msp(st, {"formula": "H6C6"}) == []  # order does not matter
    bad = {"formula": "C6H5", "mw": "79", "inchikey": "XXXXXXXXXXXXXX-UHFFFAOYSA-N", "exactmass": "79.1"}
    assert compare_with_msp(st, bad) == ["formula_mismatch", "mw_mismatch", "inchikey_mismatch",
                                         "exact_mass_mismatch"]
    assert formula_counts("C11H11D3O2") == {"C": 11, "H": 11, "D": 3, "O": 2}
    # the InChI tools' prefix is no disagreement (it flagged inchikey_mismatch); 'N/A' is one
    assert compare_with_msp(st, {"inchikey": "InChIKey=UHOVQNZJYSORNB-UHFFFAOYSA-N"}) == []
    assert compare_with_msp(st, {"inchikey": "N/A"}) == ["inchikey_mismatch"]


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


# -- size limits (too_large), decided from the text before RDKit parses it --------------------

from rdkit import Chem  # noqa: E402

from neimsctl.chem.structure import (MAX_HEAVY_ATOMS, MAX_STRUCTURE_CHARS,  # noqa: E402
                                     inchi_too_large, molblock_too_large, smiles_heavy_atoms,
                                     smiles_too_large)

COUNTED = ["CCO", "c1ccccc1Cl", "BrC(Br)Br", "[2H]C([2H])([2H])Cl", "[H][H]", "[H+].[Cl-]",
           "[Hg]", "[He]", "[Hf]", "[Ho]", "C[Se]C", "c1cc[nH]c1", "c1cc[se]c1", "[13CH4]",
           "*CC*", "[Na+].[O-]C(=O)C", "C%10CCCCC%10", "[C@@H](F)(Cl)Br", "OP(=O)(O)O", "IC#N",
           "[CH3:1][OH:2]", "CS(=O)(=O)c1ccc(cc1)B(O)O", "[SiH4]", "c1ccc2c(c1)oc1ccccc12"]


@pytest.mark.parametrize("smiles", COUNTED)
def test_heavy_atoms_counted_from_the_text_equal_rdkits(smiles):
    mol = Chem.MolFromSmiles(smiles)
    star = smiles.count("*")  # a dummy atom counts towards the limit, not for RDKit
    assert smiles_heavy_atoms(smiles) == mol.GetNumHeavyAtoms() + star


def test_heavy_atoms_of_real_smiles_equal_rdkits(shared_data):
    with open(shared_data / "pretrain" / "moses_train_100k.smi") as fh:
        lines = [next(fh).split()[0] for _ in range(3000)]
    for smi in lines:
        assert smiles_heavy_atoms(smi) == Chem.MolFromSmiles(smi).GetNumHeavyAtoms(), smi


def test_smiles_size_limits():
    assert smiles_too_large("C" * MAX_HEAVY_ATOMS) is None
    assert smiles_too_large("C" * (MAX_HEAVY_ATOMS + 1)).startswith(
        f"{MAX_HEAVY_ATOMS + 1} heavy atoms (limit {MAX_HEAVY_ATOMS}")
    assert smiles_too_large("[CH2]" * 120) is None               # 600 characters, 120 atoms
    assert smiles_too_large("[2H]" * 2000) is None                # hydrogens are not heavy
    long = "C" * (MAX_STRUCTURE_CHARS + 1)
    assert smiles_too_large(long).startswith(f"SMILES of {MAX_STRUCTURE_CHARS + 1:,} characters")


def test_too_large_smiles_never_reaches_rdkit(monkeypatch):
    def parse(*args, **kwargs):
        raise AssertionError("RDKit was asked to parse it")
    monkeypatch.setattr(Chem, "MolFromSmiles", parse)
    for smiles in ("C" * 20000, "C(" * 600 + "C" + ")" * 600):
        with pytest.raises(StructureError) as exc:
            mol_from_smiles(smiles)
        assert exc.value.reason == "too_large"


def test_inchi_size_limits():
    assert inchi_too_large("InChI=1S/C6H6/c1-2-4-6-5-3-1/h1-6H") is None
    assert inchi_too_large(f"InChI=1S/C{MAX_HEAVY_ATOMS}H{2 * MAX_HEAVY_ATOMS + 2}/c") is None
    assert "501 heavy atoms" in inchi_too_large("InChI=1S/C500H1002O/c")
    assert "501 heavy atoms" in inchi_too_large("InChI=1S/2C250H502.Na/c")   # 2 x 250 + 1
    assert inchi_too_large("1S/C9000/c") is not None                         # without 'InChI='
    assert inchi_too_large("InChI=1S/" + "C" * MAX_STRUCTURE_CHARS).startswith("InChI of")
    with pytest.raises(StructureError) as exc:
        mol_from_inchi("InChI=1S/C20000H40002/c1-3-5")
    assert exc.value.reason == "too_large"


@pytest.mark.parametrize("smiles", ["CCO", "c1ccccc1Cl", "BrC(Br)Br", "[2H]C([2H])([2H])Cl",
                                    "C[Se]C", "[13CH4]", "OP(=O)(O)O", "CS(=O)(=O)c1ccc(cc1)B(O)O",
                                    "c1ccc2c(c1)oc1ccccc12", "[C@@H](F)(Cl)Br"])
def test_inchi_heavy_atoms_agree_with_rdkit(smiles):
    mol = Chem.MolFromSmiles(smiles)
    inchi = Chem.MolToInchi(mol)
    assert inchi_too_large(inchi) is None
    n = mol.GetNumHeavyAtoms()
    head, formula, rest = inchi.split("/", 2)
    many = f"{head}/{MAX_HEAVY_ATOMS // n + 1}{formula}/{rest}"   # k copies: one too many
    assert f"{(MAX_HEAVY_ATOMS // n + 1) * n} heavy atoms" in inchi_too_large(many)
    assert inchi_too_large(f"{head}/{MAX_HEAVY_ATOMS // n}{formula}/{rest}") is None


@pytest.mark.parametrize("v3000", [False, True])
def test_molblock_size_limits(v3000):
    chain = Chem.MolFromSmiles("C" * (MAX_HEAVY_ATOMS + 1))
    block = Chem.MolToMolBlock(chain, forceV3000=v3000)
    assert f"{MAX_HEAVY_ATOMS + 1} heavy atoms" in molblock_too_large(block)
    with pytest.raises(StructureError) as exc:
        mol_from_molblock(block, where="ID7.MOL")
    assert exc.value.reason == "too_large" and "ID7.MOL" in str(exc.value)
    # explicit hydrogens do not count: 300 carbons with their 602 hydrogens pass
    with_h = Chem.AddHs(Chem.MolFromSmiles("C" * 300))
    block = Chem.MolToMolBlock(with_h, forceV3000=True) if v3000 else None
    if block is not None:  # V2000 cannot hold more than 999 atoms
        assert molblock_too_large(block) is None
        assert mol_from_molblock(block).GetNumHeavyAtoms() == 300
    assert molblock_too_large(BENZENE_MOL) is None
    assert molblock_too_large("not a mol block") is None          # left to RDKit to reject
