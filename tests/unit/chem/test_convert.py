"""convert_msp: one unreadable header value or a path-like ID is one record's business, not the run's."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from neimsctl.chem.convert import ConvertOptions, convert_msp
from neimsctl.io.rejects import Tally

GOOD = b"Name: phenol\nSMILES: Oc1ccccc1\nMW: 94\nNum Peaks: 2\n66 300\n94 999\n\n"


def run(tmp_path: Path, data: bytes, **opts) -> tuple[list[dict], list[dict], Tally]:
    src = tmp_path / "in.msp"
    src.write_bytes(data)
    out, rej = io.BytesIO(), io.BytesIO()
    tally = Tally(sink=rej)
    convert_msp([src], out, tally, ConvertOptions(**opts))
    assert tally.balanced
    return ([orjson.loads(x) for x in out.getvalue().splitlines()],
            [orjson.loads(x) for x in rej.getvalue().splitlines()], tally)


@pytest.mark.parametrize("line,flag", [
    (b"MW: inf", "mw_mismatch"), (b"MW: 1e400", "mw_mismatch"), (b"MW: nan", "mw_mismatch"),
    (b"ExactMass: 1e400", "exact_mass_mismatch"), (b"Formula: C" + b"9" * 5000, "formula_mismatch"),
])
def test_unreadable_msp_value_flags_the_record_and_the_run_goes_on(tmp_path, line, flag):
    bad = GOOD.replace(b"MW: 94", line).replace(b"phenol", b"bad")
    recs, rejects, tally = run(tmp_path, GOOD * 3 + bad + GOOD * 3)
    assert (tally.read, tally.written, tally.rejected) == (7, 7, 0) and rejects == []
    assert [r["flags"] for r in recs] == [[]] * 3 + [[flag]] + [[]] * 3


def test_no_structure_mw_that_is_not_a_finite_number_is_bad_mw(tmp_path):
    bad = GOOD.replace(b"MW: 94", b"MW: 1e400").replace(b"phenol", b"bad")
    recs, rejects, tally = run(tmp_path, GOOD + bad + GOOD, structure=False)
    assert (tally.read, tally.written) == (3, 2)
    assert [(r["record"], r["reason"], r["line"]) for r in rejects] == [("bad", "bad_mw", 8)]
    assert "'1e400' is not a finite number" in rejects[0]["detail"]


def test_mol_dir_ids_that_leave_the_directory_are_rejected(tmp_path):
    (tmp_path / "mols").mkdir()
    (tmp_path / "secret.MOL").write_text("not for you")
    data = b"Name: evil\nID: ../secret\nNum Peaks: 1\n94 999\n\n"
    recs, rejects, tally = run(tmp_path, data, mol_dir=str(tmp_path / "mols"))
    assert recs == [] and [(r["reason"], r["id"]) for r in rejects] == [("unsafe_mol_path", "../secret")]


def test_garbage_block_is_reported_with_its_line_and_no_id(tmp_path):
    data = GOOD + b"\x00\x01binary\xff\n\x02\n\n" + GOOD.replace(b"MW: 94\n", b"")
    recs, rejects, tally = run(tmp_path, data)
    assert [r["source"]["ordinal"] for r in recs] == [1, 2]
    assert [r["id"] for r in recs] == ["in:1", "in:2"]  # the fallback ids do not shift
    assert rejects == [{"file": str(tmp_path / "in.msp"), "line": 8, "record": None, "id": None,
                        "reason": "binary_garbage",
                        "detail": "binary data (control bytes) outside any record"}]


MONA = Path(__file__).resolve().parents[2] / "data" / "mona_export.msp"


def test_mona_export_structures_from_comments(tmp_path):
    """Records laid out as MoNA's MSP export writes them: the structure only in Comments pairs
    (SMILES=, computed SMILES=, InChI=, computed InChI=); the record's own SMILES line wins; the
    InChIKey= pair is checked like an InChIKey line; a record with no structure anywhere is
    still a no_structure reject."""
    recs, rejects, tally = run(tmp_path, MONA.read_bytes())
    assert (tally.read, tally.written) == (6, 5)
    got = [(r["id"], r["smiles"], r["structure_from"], r["flags"]) for r in recs]
    assert got == [
        ("TST000001", "CC(=O)O", "comments_smiles", []),
        ("TST000002", "Oc1ccccc1", "comments_computed_smiles", ["inchikey_mismatch"]),
        ("TST000003", "Cc1ccccc1", "comments_inchi", []),
        ("TST000004", "CCCCO", "smiles", []),                  # SMILES line, not "SMILES=CCC"
        ("TST000006", "CCOC(C)=O", "comments_computed_inchi", []),
    ]
    assert recs[2]["inchikey"] == "YXFVVABEGXRONW-UHFFFAOYSA-N" and recs[0]["mw"] == 60
    assert [(r["id"], r["reason"]) for r in rejects] == [("TST000005", "no_structure")]


def test_structures_with_a_dummy_atom_are_rejected_like_unparsable_ones(tmp_path):
    """A '*' in the SMILES line or an R-group atom in the MOL file: the record is a dummy_atom
    reject (it was written, and featurize learned from it), as a structure RDKit cannot parse;
    --no-structure keeps the spectrum."""
    from rdkit import Chem

    mols = tmp_path / "mols"
    mols.mkdir()
    block = Chem.MolToMolBlock(Chem.MolFromSmiles("CCCCc1ccccc1")).splitlines()
    (mols / "ID1.MOL").write_text("\n".join(block) + "\n")
    block[4] = block[4][:31] + "R# " + block[4][34:]
    (mols / "ID2.MOL").write_text("\n".join(block) + "\n")
    star = GOOD.replace(b"Oc1ccccc1", b"*c1ccc(CCCC)cc1").replace(b"phenol", b"star")
    recs, rejects, tally = run(tmp_path, GOOD + star + GOOD)
    assert [r["name"] for r in recs] == ["phenol", "phenol"]
    assert [(r["record"], r["reason"], r["line"]) for r in rejects] == [("star", "dummy_atom", 8)]
    assert rejects[0]["detail"].startswith("SMILES '*c1ccc(CCCC)cc1' has a dummy atom")
    nist = b"".join(b"Name: m%d\nID: %d\nNum Peaks: 1\n91 999\n\n" % (i, i) for i in (1, 2))
    recs, rejects, tally = run(tmp_path, nist, mol_dir=str(mols))
    assert [r["smiles"] for r in recs] == ["CCCCc1ccccc1"]
    assert [(r["id"], r["reason"]) for r in rejects] == [("2", "dummy_atom")]
    assert rejects[0]["detail"].startswith(f"the MOL file of ID 2 in {mols}: SMILES '*")
    recs, rejects, tally = run(tmp_path, GOOD + star, structure=False)
    assert [r["name"] for r in recs] == ["phenol", "star"] and rejects == []
