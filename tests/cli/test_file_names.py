"""File names of any bytes: every output that names a file (records' ``source.file``, rejects,
search hits' ``library``, eval's metrics and report) stays valid UTF-8.

A name that is not UTF-8 (``lib\\xff.msp``, from a Latin-1 file system or an archive) reaches
Python as lone surrogates, which orjson and UTF-8 encoding refuse: the commands ended in a
traceback, after the work. Such bytes are written as ``\\xNN``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.cli

PHENOL = b"Name: phenol\nSMILES: Oc1ccccc1\nMW: 94\nNum Peaks: 2\n66 300\n94 999\n"
ANISOLE = b"Name: anisole\nSMILES: COc1ccccc1\nMW: 108\nNum Peaks: 2\n78 400\n108 999\n"
BROKEN = b"Name: broken\nSMILES: C1CC\nMW: 94\nNum Peaks: 1\n94 999\n"


def run(tmp: Path, *args: str | bytes) -> subprocess.CompletedProcess:
    return subprocess.run(["neimsctl", *args], cwd=tmp, capture_output=True, timeout=300)


def test_names_that_are_not_utf8_are_written_escaped(tmp_path: Path) -> None:
    lib, cand = tmp_path / os.fsdecode(b"lib\xff.msp"), tmp_path / os.fsdecode(b"cand\xfe.txt")
    lib.write_bytes(PHENOL + b"\n" + ANISOLE + b"\n" + BROKEN)
    cand.write_bytes(b"Oc1ccccc1\nCCCCCCCCCC\n")
    mols = tmp_path / os.fsdecode(b"mol\xff")
    mols.mkdir()
    (tmp_path / "nostruct.msp").write_bytes(b"Name: x\nID: 7\nNum Peaks: 1\n94 999\n")

    p = run(tmp_path, "msp2jsonl", "-q", b"lib\xff.msp", "-o", "r.jsonl", "--rejects", "rej.jsonl")
    assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr
    recs = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert [r["source"]["file"] for r in recs] == ["lib\\xff.msp"] * 2
    assert orjson.loads((tmp_path / "rej.jsonl").read_bytes())["file"] == "lib\\xff.msp"

    p = run(tmp_path, "msp2jsonl", "-q", "nostruct.msp", "--mol-dir", b"mol\xff", "-o", "n.jsonl",
            "--rejects", "rej2.jsonl")
    assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr
    assert "mol\\xff" in orjson.loads((tmp_path / "rej2.jsonl").read_bytes())["detail"]

    p = run(tmp_path, "search", "r.jsonl", "-l", b"lib\xff.msp", "-o", "hits.tsv")
    assert p.returncode == 0, p.stderr
    rows = (tmp_path / "hits.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[1].endswith("\tlib\\xff.msp")
    p = run(tmp_path, "search", "r.jsonl", "-l", b"lib\xff.msp", "-O", "jsonl", "-o", "hits.jsonl",
            "--candidates", b"cand\xfe.txt", "--rejects", "rej3.jsonl")
    assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr
    assert orjson.loads((tmp_path / "hits.jsonl").read_bytes().splitlines()[0])["library"] == "lib\\xff.msp"
    assert orjson.loads((tmp_path / "rej3.jsonl").read_bytes().splitlines()[-1])["file"] == "cand\\xfe.txt"

    p = run(tmp_path, "index", "-q", b"lib\xff.msp", "-o", b"ix\xff.h5")
    assert p.returncode == 0, p.stderr
    p = run(tmp_path, "search", "r.jsonl", "-l", b"ix\xff.h5", "-o", "hits2.tsv")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "hits2.tsv").read_text(encoding="utf-8").splitlines()[1].endswith("\tlib\\xff.msp")

    p = run(tmp_path, "eval", "--json", b"lib\xff.msp", "r.jsonl", "--report", b"rep\xff")
    assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr  # 1: the broken record
    metrics = orjson.loads(p.stdout)
    assert metrics["inputs"]["predicted"] == "lib\\xff.msp"
    assert metrics["report"][0] == "rep\\xff/report.md"
    assert "`lib\\xff.msp`" in (tmp_path / os.fsdecode(b"rep\xff") / "report.md").read_text(encoding="utf-8")


def test_shards_split_names_a_shard_that_is_not_utf8(tmp_path: Path, sample_msp: Path) -> None:
    p = subprocess.run(f"neimsctl msp2jsonl -q {sample_msp} | neimsctl featurize -q --mode student "
                       "--no-provenance -o $'f\\xff.h5'", shell=True, executable="/bin/bash",
                       cwd=tmp_path, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    p = run(tmp_path, "shards", "split", "-q", b"f\xff.h5", "--part", "test", "-o", "t.jsonl")
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
    recs = [orjson.loads(x) for x in (tmp_path / "t.jsonl").read_bytes().splitlines()]
    assert recs and {r["source"]["file"] for r in recs} == {"f\\xff.h5"}


def test_output_names_up_to_the_file_system_limit_are_written(tmp_path: Path) -> None:
    """An output name of 233-255 bytes (valid: the file system takes it) was refused as 'File
    name too long': its temporary ``.NAME.part-PID-TAG`` was. Two such names that start alike
    (``-o`` and ``--rejects``) keep their own temporaries."""
    (tmp_path / "lib.msp").write_bytes(PHENOL + b"\n" + ANISOLE + b"\n" + BROKEN)
    stem = "é" * 100 + "x" * 40                             # 240 bytes
    p = run(tmp_path, "msp2jsonl", "-q", "lib.msp", "-o", stem + ".jsonl", "--rejects",
            stem + ".rej.jsonl")
    assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr     # 1: the broken record
    assert len((tmp_path / (stem + ".jsonl")).read_bytes().splitlines()) == 2
    assert orjson.loads((tmp_path / (stem + ".rej.jsonl")).read_bytes())["record"] == "broken"
    p = run(tmp_path, "index", "-q", "lib.msp", "-o", "i" * 252 + ".h5")
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(
        ["lib.msp", stem + ".jsonl", stem + ".rej.jsonl", "i" * 252 + ".h5"])
