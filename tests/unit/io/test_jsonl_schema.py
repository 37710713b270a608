"""formats/: conformance files against the JSON Schema, real msp2jsonl output, read/write_jsonl."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jsonschema
import pytest

from neimsctl.chem.convert import ConvertOptions, convert_msp
from neimsctl.errors import FormatError
from neimsctl.io.jsonl import read_jsonl, write_jsonl
from neimsctl.io.rejects import Tally

FORMATS = Path(__file__).resolve().parents[3] / "formats"
PASSED = sorted((FORMATS / "conformance" / "passed").glob("record-*.jsonl"))
FAILED = sorted((FORMATS / "conformance" / "failed").glob("record-*.jsonl"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((FORMATS / "jsonl-record.v1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def records(path: Path) -> list[dict]:
    with open(path, "rb") as fh:
        return list(read_jsonl(fh, str(path)))


def test_there_are_conformance_files_and_each_failed_one_is_explained():
    assert len(PASSED) >= 3 and len(FAILED) >= 5
    readme = (FORMATS / "conformance" / "README.md").read_text()
    for path in PASSED + FAILED:
        assert path.name in readme


@pytest.mark.parametrize("path", PASSED, ids=lambda p: p.name)
def test_passed_files_validate(validator, path):
    for rec in records(path):
        validator.validate(rec)


@pytest.mark.parametrize("path", FAILED, ids=lambda p: p.name)
def test_failed_files_do_not_validate(validator, path):
    recs = records(path)
    assert recs and all(not validator.is_valid(rec) for rec in recs)


def _convert(paths, **opts) -> tuple[list[dict], Tally]:
    out, tally = io.BytesIO(), Tally()
    convert_msp(paths, out, tally, ConvertOptions(**opts))
    out.seek(0)
    return list(read_jsonl(out)), tally


def test_sample_output_validates(validator, sample_msp):
    for kw in ({}, {"structure": False}):
        recs, tally = _convert([sample_msp], **kw)
        assert len(recs) == tally.written > 250
        for rec in recs:
            validator.validate(rec)


def test_real_output_validates(validator, shared_data):
    recs, tally = _convert([shared_data / "massbank_ei_tiny.msp"])
    nist = shared_data / "nist_style"
    mol_recs, mol_tally = _convert([nist / "massbank_ei_nostruct.msp"], mol_dir=str(nist / "mol_files"))
    assert tally.read == 300 and mol_tally.reasons == {"missing_mol_file": 3}
    for rec in recs + mol_recs:
        validator.validate(rec)


def test_mona_output_validates(validator):
    """Records whose structure came from MoNA's Comments pairs (every comments_* source)."""
    recs, tally = _convert([Path(__file__).resolve().parents[2] / "data" / "mona_export.msp"])
    assert tally.written == 5 and len({r["structure_from"] for r in recs}) == 5
    for rec in recs:
        validator.validate(rec)


def test_read_jsonl_names_the_bad_line():
    with pytest.raises(FormatError, match=r"x.jsonl: line 3: not valid JSON"):
        list(read_jsonl(io.BytesIO(b'{"a": 1}\n\n{"a": \n'), "x.jsonl"))
    with pytest.raises(FormatError, match="line 1: expected a JSON object"):
        list(read_jsonl(io.BytesIO(b"[1, 2]\n"), "x.jsonl"))


def test_write_then_read_round_trip():
    recs = [{"a": 1, "b": [1.5, 2]}, {"c": "é", "d": None}]
    buf = io.BytesIO()
    assert write_jsonl(buf, recs) == 2
    assert buf.getvalue().count(b"\n") == 2
    buf.seek(0)
    assert list(read_jsonl(buf)) == recs
    with pytest.raises(FormatError):
        write_jsonl(io.BytesIO(), [{"s": {1, 2}}])
