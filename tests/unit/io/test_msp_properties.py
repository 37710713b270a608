"""Property tests: random and mutated MSP text never crashes the reader; nothing is lost."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neimsctl.chem.convert import ConvertOptions, convert_msp
from neimsctl.io.msp import read_msp
from neimsctl.io.rejects import Tally

KEYS = ["Name", "NAME", "Synon", "Formula", "MW", "ID", "CAS#", "NIST#", "Comments", "Num Peaks",
        "Num peaks", "NUM PEAKS", "ExactMass", "InChIKey"]


@st.composite
def msp_record(draw) -> str:
    lines = [f"Name: {draw(st.text(min_size=0, max_size=12))}"]
    for _ in range(draw(st.integers(0, 5))):
        lines.append(f"{draw(st.sampled_from(KEYS))}: {draw(st.text(max_size=15))}")
    peaks = draw(st.lists(st.tuples(st.integers(0, 600), st.integers(0, 9999)), max_size=8))
    declared = draw(st.sampled_from([len(peaks), len(peaks), max(0, len(peaks) - 1), len(peaks) + 1]))
    lines.append(f"{draw(st.sampled_from(['Num Peaks', 'Num peaks', 'NUM PEAKS']))}: {declared}")
    sep = draw(st.sampled_from(["\n", "; ", " ", "\t"]))
    lines.append(sep.join(f"{m} {i}" for m, i in peaks))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    return eol.join(lines) + eol


@st.composite
def mutated_library(draw) -> bytes:
    text = "\n".join(draw(st.lists(msp_record(), min_size=1, max_size=5))).encode("utf-8", "replace")
    data = bytearray(text)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 20))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(max_size=10))
        else:
            del data[pos:]
    return bytes(data)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data):
    recs = list(read_msp(io.BytesIO(data), "r.msp"))
    records = [r for r in recs if r.is_record]  # text without a Name line is no record
    assert [r.ordinal for r in records] == list(range(1, len(records) + 1))
    assert all(r.ordinal == 0 and r.reason for r in recs if not r.is_record)
    assert all(r.reason is not None or (r.mz and len(r.mz) == len(r.intensity)) for r in recs)


@SETTINGS
@given(mutated_library(), st.sampled_from([1 << 20, 5, 64]))
def test_mutated_msp_read_equals_written_plus_rejected(data, chunk_size):
    recs = list(read_msp(io.BytesIO(data), "m.msp", chunk_size=chunk_size))
    lines = [r.line for r in recs]
    assert lines == sorted(lines) and all(n >= 1 for n in lines)
    out, tally = io.BytesIO(), Tally()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.msp"
        path.write_bytes(data)
        convert_msp([path], out, tally, ConvertOptions(structure=False, min_mw=0))
    assert tally.read == len(recs)
    assert tally.read == tally.written + tally.rejected
    assert out.getvalue().count(b"\n") == tally.written


@SETTINGS
@given(st.lists(msp_record(), min_size=1, max_size=6))
def test_chunking_does_not_change_records(records):
    data = "\n".join(records).encode()
    whole = [(r.line, r.name, r.reason, r.mz) for r in read_msp(io.BytesIO(data), "c.msp")]
    small = [(r.line, r.name, r.reason, r.mz) for r in read_msp(io.BytesIO(data), "c.msp", chunk_size=3)]
    assert whole == small
