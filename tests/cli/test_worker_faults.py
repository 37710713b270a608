"""End to end: structures too large for RDKit, workers that die, Ctrl-C on a worker pool.

The commands that run RDKit in worker processes (``msp2jsonl``, ``featurize``, ``predict``)
must never hang or lose a record when a worker dies: the record it died on becomes a
``worker_crashed`` reject naming its file and line, the run goes on, output order and
``read = written + rejected`` hold. A real RDKit crash takes minutes and gigabytes to provoke,
so the crash is injected: the real CLI runs under a wrapper whose RDKit step segfaults on any
record containing ``CRASHME`` (the forked workers inherit the patch).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import orjson
import pytest

from neimsctl.chem.structure import MAX_HEAVY_ATOMS

pytestmark = pytest.mark.cli

CRASHING = '''
import faulthandler, os, signal, sys
import neimsctl.chem.convert as cv
import neimsctl.chem.rowbuild as rb

def die_on_mark(raw):
    if b"CRASHME" in raw:
        faulthandler.disable()
        os.kill(os.getpid(), signal.SIGSEGV)

build, convert_raw = rb.RowBuilder.build, cv.convert_raw
def crashing_build(self, items):
    for it in items:
        die_on_mark(it.raw)
    return build(self, items)
def crashing_convert_raw(file, raws, opts):
    for raw in raws:
        die_on_mark(raw[0])
    return convert_raw(file, raws, opts)
rb.RowBuilder.build, cv.convert_raw = crashing_build, crashing_convert_raw
from neimsctl.cli.main import main
sys.argv[0] = "neimsctl"
sys.exit(main())
'''


def run(args: list[str], cwd: Path, crashing: bool = False) -> subprocess.CompletedProcess:
    head = [sys.executable, "-c", CRASHING] if crashing else ["neimsctl"]
    return subprocess.run(head + args, cwd=cwd, capture_output=True, timeout=300)


def smiles_file(path: Path, n: int, insert: dict[int, str]) -> list[str]:
    """``n`` distinct small molecules (``mol<i>``) with ``insert`` lines put before index i."""
    lines = []
    for i in range(n):
        if i in insert:
            lines.append(insert[i])
        smiles = "O" + "C" * (i % 7 + 2) + "N" * (i // 7 % 3) + "CC" + "O" * (i // 21 % 4)
        lines.append(f"{smiles} mol{i}")
    path.write_text("\n".join(lines) + "\n")
    return lines


@pytest.fixture(scope="module")
def sample_records(tmp_path_factory: pytest.TempPathFactory, sample_msp: Path) -> Path:
    """The sample MSP, record 150 marked CRASHME and record 200 given a 20,000-atom SMILES."""
    d = tmp_path_factory.mktemp("faults")
    recs = sample_msp.read_bytes().rstrip(b"\n").split(b"\n\n")
    recs[150] = recs[150].replace(b"Name: ", b"Name: CRASHME ", 1)
    lines = recs[200].split(b"\n")
    at = next(i for i, ln in enumerate(lines) if ln.lower().startswith(b"smiles:"))
    lines[at] = b"SMILES: " + b"C" * 20000
    recs[200] = b"\n".join(lines)
    (d / "s.msp").write_bytes(b"\n\n".join(recs) + b"\n")
    return d


def test_msp2jsonl_rejects_the_record_a_worker_died_on_and_goes_on(sample_records: Path) -> None:
    d = sample_records
    p = run(["msp2jsonl", "-j", "2", "s.msp", "-o", "out.jsonl", "--rejects", "rej.jsonl"], d,
            crashing=True)
    assert p.returncode == 1, p.stderr
    assert b"Traceback" not in p.stderr
    assert p.stderr.decode().strip().endswith(
        "read 300, written 298, rejected 2 (too_large: 1, worker_crashed: 1); 2 workers")
    rej = [orjson.loads(x) for x in (d / "rej.jsonl").read_bytes().splitlines()]
    assert [r["reason"] for r in rej] == ["worker_crashed", "too_large"]
    crash, big = rej
    assert crash["file"] == "s.msp" and crash["line"] > 1 and crash["record"].startswith("CRASHME")
    assert crash["detail"] == ("the worker process was killed by SIGSEGV while working on this "
                               "record")
    assert big["detail"].startswith("SMILES of 20,000 characters (limit 10,000")
    out = [orjson.loads(x) for x in (d / "out.jsonl").read_bytes().splitlines()]
    ordinals = [r["source"]["ordinal"] for r in out]
    assert ordinals == sorted(ordinals) and len(set(ordinals)) == 298   # input order, no repeat
    ref = run(["msp2jsonl", "-j", "1", "s.msp", "-o", "ref.jsonl"], d)   # no crash injected
    assert ref.returncode == 1 and b"rejected 1 (too_large: 1)" in ref.stderr
    ref_out = [orjson.loads(x) for x in (d / "ref.jsonl").read_bytes().splitlines()]
    assert [r for r in ref_out if not r["name"].startswith("CRASHME")] == out


def test_featurize_and_predict_reject_the_record_a_worker_died_on(tmp_path: Path) -> None:
    lines = smiles_file(tmp_path / "m.smi", 3000,
                        {1500: "CCCCCO CRASHME", 2500: "C" * 600 + " chain"})
    p = run(["featurize", "-j", "2", "m.smi", "-o", "f.h5", "--rejects", "rej.jsonl"], tmp_path,
            crashing=True)
    assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr
    assert b"read 3002, written 3000, rejected 2 (too_large: 1, worker_crashed: 1)" in p.stderr
    assert b"m.smi: line 1501: worker_crashed: the worker process was killed by SIGSEGV" in p.stderr
    rej = [orjson.loads(x) for x in (tmp_path / "rej.jsonl").read_bytes().splitlines()]
    assert [(r["line"], r["id"], r["reason"]) for r in rej] == [
        (1501, "CRASHME", "worker_crashed"), (2502, "chain", "too_large")]
    with h5py.File(tmp_path / "f.h5") as f:
        ordinal = f["ordinal"][()]
        assert f.attrs["n_rows"] == 3000 and list(ordinal) == sorted(ordinal)
        assert 1500 not in ordinal and 2501 not in ordinal
        assert [s.decode() for s in f["name"][1499:1501]] == ["mol1499", "mol1500"]

    p = run(["predict", "-j", "2", "m.smi", "-O", "jsonl", "-o", "p.jsonl"], tmp_path,
            crashing=True)
    assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr
    assert b"m.smi:1501: worker_crashed: the worker process was killed by SIGSEGV" in p.stderr
    assert b"m.smi:2502: too_large: 600 heavy atoms (limit 500" in p.stderr
    assert b"read 3002, written 3000, rejected 2 (too_large: 1, worker_crashed: 1)" in p.stderr
    names = [orjson.loads(x)["name"] for x in (tmp_path / "p.jsonl").read_bytes().splitlines()
             if b'"neimsctl.prediction/1"' in x]
    assert names == [ln.split()[1] for ln in lines if ln.split()[1].startswith("mol")]


@pytest.mark.parametrize("cmd", ["predict", "featurize"])
def test_too_large_in_one_process_is_refused_before_rdkit(tmp_path: Path, cmd: str) -> None:
    """With --jobs 1 RDKit runs in the command's own process: absurd sizes must never reach it
    (a 20,000-atom chain makes RDKit use > 14 GB, a crash of RDKit would end the command)."""
    (tmp_path / "x.smi").write_text(f"CCCCO butanol\n{'C' * 20000} huge\n"
                                    f"{'C' * MAX_HEAVY_ATOMS} limit\n{'C' * 3000} big\n")
    out = ["-o", "out.h5"] if cmd == "featurize" else ["-o", "out.msp"]
    t0 = time.monotonic()
    p = run([cmd, "-j", "1", "x.smi", *out], tmp_path)
    assert time.monotonic() - t0 < 120
    assert p.returncode == 1, p.stderr
    err = p.stderr.decode()
    assert ("read 4, written 2, rejected 2 (too_large: 2)" if cmd == "predict" else  # 7,000 Da:
            "read 4, written 1, rejected 3 (mw_out_of_range: 1, too_large: 2)") in err  # > 1000
    assert "SMILES of 20,000 characters (limit 10,000" in err and "3,000 heavy atoms" in err


def test_ctrl_c_on_a_worker_pool_is_one_line_and_no_traceback(tmp_path: Path,
                                                              sample_msp: Path) -> None:
    """A terminal's Ctrl-C goes to the whole process group, workers included."""
    big = tmp_path / "big.msp"
    big.write_bytes((sample_msp.read_bytes().rstrip(b"\n") + b"\n\n") * 400)  # 120,000 records
    proc = subprocess.Popen(["neimsctl", "msp2jsonl", "-q", "-j", "2", "big.msp", "-o",
                             "out.jsonl"], cwd=tmp_path, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.jsonl.part-*")):
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert proc.stderr.read() == b"neimsctl msp2jsonl: interrupted\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.msp"]
