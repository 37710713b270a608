"""featurize and shards through the installed CLI and real pipes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import orjson
import pytest

from neimsctl.io.featblock import concat_blocks
from neimsctl.io.h5shard import ShardReader
from neimsctl.io.zblock import ZBlockReader

pytestmark = pytest.mark.cli
SMI = b"CCCCO butanol\nc1ccccc1 benzene\nnot_a_smiles junk\n\nCC(=O)OCC ethyl acetate\nC\n"


def sh(cmd: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, input=stdin,
                          capture_output=True, timeout=120)


def rows(path: Path) -> dict[str, np.ndarray]:
    with ShardReader(path) as r:
        return r.rows(0, len(r))


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return set(a) == set(b) and all(
        np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory, sample_msp: Path, neimsctl_exe: str) -> Path:
    """The bundled sample as JSONL records, made by msp2jsonl."""
    out = tmp_path_factory.mktemp("rec") / "sample.jsonl"
    proc = subprocess.run([neimsctl_exe, "msp2jsonl", str(sample_msp), "-o", str(out)],
                          capture_output=True, timeout=120)
    if not out.exists() or out.stat().st_size == 0:
        pytest.skip(f"msp2jsonl did not produce records: {proc.stderr.decode()[-300:]}")
    return out


@pytest.fixture(scope="module")
def small(records: Path) -> Path:
    """The first 120 records (keeps the multi-run tests quick)."""
    out = records.with_name("small.jsonl")
    out.write_bytes(b"".join(records.read_bytes().splitlines(keepends=True)[:120]))
    return out


def test_msp2jsonl_pipe_to_h5_on_stdout(tmp_path: Path, sample_msp: Path, records: Path) -> None:
    p = sh(f"neimsctl msp2jsonl {sample_msp} | neimsctl featurize --mode student > out.h5", tmp_path)
    assert p.returncode == 0, p.stderr
    n = sum(1 for line in records.read_bytes().splitlines() if line.strip())
    assert f"read {n}, written {n}, rejected 0" in p.stderr.decode()
    b = rows(tmp_path / "out.h5")
    assert len(b["id"]) == n and b["has_spectrum"].all() and b["counts"].shape == (n, 2048)
    assert np.allclose(b["spectrum"].max(axis=1), 1.0)
    first = orjson.loads(records.read_bytes().split(b"\n", 1)[0])
    assert (b["id"][0], b["smiles"][0], b["inchikey"][0]) == \
        (first["id"], first["smiles"], first["inchikey"])


def test_smiles_pipe_gives_zst_stream_and_rejects(tmp_path: Path) -> None:
    p = sh("neimsctl featurize --rejects rej.jsonl --no-provenance | cat > out.zst", tmp_path, SMI)
    assert p.returncode == 1                                      # a record was rejected
    assert "read 5, written 3, rejected 2 (mw_out_of_range: 1, unparsable_smiles: 1)" in \
        p.stderr.decode()
    with open(tmp_path / "out.zst", "rb") as fh:
        r = ZBlockReader(fh)
        block = concat_blocks(list(r), "student")
        assert "argv" not in r.header
    assert block["name"].tolist() == ["butanol", "benzene", "ethyl acetate"]
    assert block["smiles"].tolist() == ["CCCCO", "c1ccccc1", "CCOC(C)=O"]
    assert block["inchikey"][0] == "LRHPLDYGYMQRHN-UHFFFAOYSA-N" and not block["has_spectrum"].any()
    assert block["mw"].tolist() == [74, 78, 88]
    rej = [orjson.loads(x) for x in (tmp_path / "rej.jsonl").read_bytes().splitlines()]
    assert [(x["line"], x["reason"], x["record"], x["id"]) for x in rej] == [
        (3, "unparsable_smiles", "junk", "junk"), (6, "mw_out_of_range", None, "stdin:6")]


def test_a_structure_repeated_on_line_2048_is_featurized(tmp_path: Path) -> None:
    """2,047 distinct SMILES and the first again on line 2,048: the structure cache's first
    window ended on a hit with fewer than 5 % repeats, and featurize (and predict) died with a
    KeyError traceback."""
    texts = [f"{'C' * i}O{'C' * j}" for i in range(1, 47) for j in range(1, 47)][:2047]
    src = tmp_path / "in.smi"
    src.write_text("".join(f"{t}\n" for t in texts) + f"{texts[0]}\n")
    p = sh("neimsctl featurize -j 1 --min-mw 0 --no-provenance in.smi -o out.h5", tmp_path)
    assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr[-2000:]  # the heaviest
    m = re.search(rb"read 2048, written (\d+), rejected (\d+) \(mw_out_of_range: \2\)", p.stderr)
    assert m, p.stderr[-500:]
    b = rows(tmp_path / "out.h5")
    assert len(b["id"]) == int(m[1]) > 1000 and b["smiles"][-1] == b["smiles"][0]
    assert b["ecfp"][-1].tobytes() == b["ecfp"][0].tobytes()


def test_jobs_2_equals_jobs_1(tmp_path: Path, records: Path) -> None:
    for j in (1, 2):
        p = sh(f"neimsctl featurize -m teacher -j {j} --no-provenance {records} -o j{j}.h5", tmp_path)
        assert p.returncode == 0, p.stderr
    assert same(rows(tmp_path / "j1.h5"), rows(tmp_path / "j2.h5"))


def test_shards_merge_equals_whole(tmp_path: Path, small: Path) -> None:
    p = sh(f"neimsctl featurize --no-provenance {small} -o whole.h5 && "
           f"neimsctl featurize --shard 2/2 -j 2 {small} -o s2.h5 && "
           f"cat {small} | neimsctl featurize --shard 1/2 | cat > s1.zst && "
           "neimsctl shards merge -o merged.h5 s2.h5 s1.zst && "
           "neimsctl shards list whole.h5 s1.zst s2.h5 merged.h5", tmp_path)
    assert p.returncode == 0, p.stderr
    assert same(rows(tmp_path / "whole.h5"), rows(tmp_path / "merged.h5"))
    table = [line.split("\t") for line in p.stdout.decode().splitlines()]
    assert table[0][:4] == ["path", "format", "mode", "rows"]
    assert [t[5] for t in table[1:]] == ["-", "1/2", "2/2", "-"]
    assert len({t[4] for t in table[1:]}) == 1                    # one settings hash
    assert int(table[2][3]) + int(table[3][3]) == int(table[1][3])


def test_merge_refuses_mismatched_settings(tmp_path: Path) -> None:
    (tmp_path / "in.smi").write_bytes(SMI)
    p = sh("neimsctl featurize -o a.h5 in.smi; neimsctl featurize --min-mw 10 -o b.h5 in.smi; "
           "neimsctl shards merge -o m.h5 a.h5 b.h5", tmp_path, SMI)
    assert p.returncode == 1 and "refusing to merge" in p.stderr.decode()
    assert not (tmp_path / "m.h5").exists()


def test_merge_warns_of_a_missing_or_repeated_part(tmp_path: Path) -> None:
    (tmp_path / "in.smi").write_bytes(SMI)
    p = sh("neimsctl featurize -q --shard 1/2 -o s1.h5 in.smi; "
           "neimsctl shards merge -o m.h5 s1.h5 ./s1.h5", tmp_path)
    err = p.stderr.decode()
    assert p.returncode == 0 and (tmp_path / "m.h5").exists(), err
    assert "input s1.h5: the same file given 2 times: its rows are written that many times" in err
    assert "no complete set of 1/2 .. 2/2 (2/2 missing; 1/2 given more than once)" in err


def test_usage_errors_and_strict(tmp_path: Path) -> None:
    p = sh("neimsctl featurize --shard 3/2 -o x.h5", tmp_path, SMI)
    assert p.returncode == 2 and "K <= N" in p.stderr.decode()
    p = sh("neimsctl featurize --strict -o x.h5", tmp_path, SMI)
    assert p.returncode == 1 and "line 3: unparsable_smiles" in p.stderr.decode()
    assert list(tmp_path.iterdir()) == []                         # nothing left behind
    p = sh("neimsctl featurize --mode nope", tmp_path, SMI)
    assert p.returncode == 2
    p = sh("neimsctl featurize --min-mw 500 --max-mw 100 -o x.h5", tmp_path, SMI)   # rejected all, exit 1
    assert p.returncode == 2 and "--min-mw 500 is above --max-mw 100" in p.stderr.decode()
    assert list(tmp_path.iterdir()) == []


def test_refuses_binary_to_a_terminal(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        p = subprocess.run(["neimsctl", "featurize"], input=SMI, stdout=slave,
                           stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert p.returncode == 2 and b"terminal" in p.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_leaves_no_complete_looking_file_and_resumes(tmp_path: Path, sig: int) -> None:
    src = tmp_path / "many.smi"
    # 25,000 distinct texts (featurize's per-text cache never hits, so the run takes real time),
    # each followed by one molecule below 50 Da and one unparsable line
    src.write_text("".join("O" + "".join(f"C({'C' * (int(d) + 1)})" for d in f"{i:05d}") + "C\nCCO\nC1CC((\n"
                           for i in range(25_000)))
    jobs = ["-j", "2"] if sig == signal.SIGINT else []             # also tears down the pool
    cmd = ["neimsctl", "featurize", *jobs, "many.smi", "-o", "out.h5", "--rejects", "rej.jsonl"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob("out.h5.partial/seg-*.h5")):
        time.sleep(0.05)                                          # a first resume point
    time.sleep(0.2)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "out.h5" not in names and "rej.jsonl" not in names and "out.h5.partial" in names
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and names == ["many.smi", "out.h5.partial", "rej.jsonl.partial"]
        assert b"interrupted" in proc.stderr.read()
    before = sorted(p.name for p in tmp_path.iterdir())
    for other in (cmd[:-2], [*cmd[:-1], "other.jsonl"]):           # rejects elsewhere: refused
        wrong = subprocess.run([*other, "--resume"], cwd=tmp_path, capture_output=True)
        assert wrong.returncode == 1 and b"--rejects rej.jsonl" in wrong.stderr, wrong.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing lost or left
    again = subprocess.run([*cmd, "--resume"], cwd=tmp_path, capture_output=True)
    assert again.returncode == 1, again.stderr                       # the bad SMILES lines
    assert b"read 75000, written 25000, rejected 50000" in again.stderr  # CCO: below 50 Da
    ref = subprocess.run(["neimsctl", "featurize", "many.smi", "-o", "ref.h5", "--rejects",
                          "ref.jsonl"], cwd=tmp_path, capture_output=True)
    assert ref.returncode == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.smi", "out.h5", "ref.h5",
                                                          "ref.jsonl", "rej.jsonl"]
    assert (tmp_path / "rej.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    with h5py.File(tmp_path / "out.h5") as a, h5py.File(tmp_path / "ref.h5") as b:
        assert sorted(a) == sorted(b) and "resume_state" not in a.attrs
        for name in b:
            x, y = a[name][()], b[name][()]
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def test_an_output_another_run_is_writing_is_left_alone(tmp_path: Path) -> None:
    import os

    from neimsctl.io.streams import lock_partial

    part = tmp_path / "out.h5.partial"
    part.mkdir()
    (part / "seg-000000.h5").write_bytes(b"the other run's rows")
    fd = lock_partial(part)                                         # the other run
    try:
        for extra in ("", " --resume"):
            p = sh(f"neimsctl featurize -o out.h5 --rejects rej.jsonl{extra}", tmp_path, SMI)
            err = p.stderr.decode()
            assert p.returncode == 1 and "another run is writing this output" in err, err
            assert "Traceback" not in err
            assert sorted(q.name for q in tmp_path.iterdir()) == ["out.h5.partial"]
            assert [q.name for q in part.iterdir()] == ["seg-000000.h5"]
    finally:
        os.close(fd)


def test_resume_needs_the_interrupted_runs_rejects_report() -> None:
    from neimsctl.cli.featurize import _same_rejects
    from neimsctl.errors import InputError

    _same_rejects(None, Path("r.jsonl"))                          # a fresh run
    _same_rejects({"next_ordinal": 3}, None)                      # a partial output without the key
    _same_rejects({"rejects": "r.jsonl"}, Path("r.jsonl"))
    _same_rejects({"rejects": None}, None)
    with pytest.raises(InputError, match="had no --rejects"):
        _same_rejects({"rejects": None}, Path("r.jsonl"))
    with pytest.raises(InputError, match=r"had --rejects r.jsonl \(its first part is r.jsonl.partial\)"):
        _same_rejects({"rejects": "r.jsonl"}, None)


KILLED_WHILE_FINISHING = """
import os, signal, sys
import neimsctl.chem.featurize_run as F
from neimsctl.io.h5shard import ResumableShardWriter
from neimsctl.cli.main import main
F.run_featurize.__kwdefaults__.update(chunk=2, commit_every=4)   # a resume point every 4 records
ResumableShardWriter.close = lambda self: os.kill(os.getpid(), signal.SIGKILL)  # while joining
main(sys.argv[1:])
"""


def test_a_run_killed_while_its_output_is_finished_resumes(tmp_path: Path) -> None:
    """Killed after the last record, while the segments are joined into OUT: the rejects
    report stays REJECTS.partial beside OUT.partial, and --resume equals one run (the report
    was renamed into place first: --resume then said 'the partial report is missing')."""
    import sys

    (tmp_path / "in.smi").write_bytes(SMI * 3)
    cmd = ["featurize", "--no-provenance", "in.smi", "-o", "out.h5", "--rejects", "rej.jsonl"]
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_FINISHING, *cmd], cwd=tmp_path,
                            capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    names = sorted(q.name for q in tmp_path.iterdir())
    assert names == ["in.smi", "out.h5.partial", "rej.jsonl.partial"], names
    again = subprocess.run(["neimsctl", *cmd, "--resume"], cwd=tmp_path, capture_output=True)
    assert again.returncode == 1 and b"resuming out.h5" in again.stderr, again.stderr
    assert b"read 15, written 9, rejected 6" in again.stderr, again.stderr
    ref = subprocess.run(["neimsctl", *cmd[:-3], "ref.h5", "--rejects", "ref.jsonl"],
                         cwd=tmp_path, capture_output=True)
    assert ref.returncode == 1
    assert sorted(q.name for q in tmp_path.iterdir()) == ["in.smi", "out.h5", "ref.h5",
                                                          "ref.jsonl", "rej.jsonl"]
    assert (tmp_path / "rej.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    assert same(rows(tmp_path / "out.h5"), rows(tmp_path / "ref.h5"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (needs root)")
def test_a_full_disk_is_one_line_and_the_run_resumes(tmp_path: Path) -> None:
    """A real full disk (a 2 MB tmpfs) under featurize -o: one line naming the output, exit
    1, no temporary file, the partial output kept; with room made, --resume equals one run.
    (HDF5 found the disk full itself: depending on where, a traceback per cached chunk, then
    SIGSEGV or 'malloc(): unsorted double linked list corrupted', exit 134/139, temporary files
    left; or a line without 'cannot write' naming a file inside OUT.partial.)"""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        src = tmp_path / "many.smi"
        src.write_text("".join("O" + "".join(f"C({'C' * (int(d) + 1)})" for d in f"{i:04d}")
                               + "C\nC1CC((\n" for i in range(6_000)))
        cmd = ["neimsctl", "featurize", "-q", "--mode", "teacher", "--no-provenance", "-j", "1",
               str(src), "-o", "disk/out.h5", "--rejects", "disk/rej.jsonl"]
        full = subprocess.run(cmd, cwd=tmp_path, capture_output=True, timeout=300)
        err = full.stderr.decode()
        assert full.returncode == 1 and err == ("neimsctl featurize: disk/out.h5: cannot write: "
                                                "No space left on device\n"), err
        assert sorted(q.name for q in disk.iterdir()) == ["out.h5.partial", "rej.jsonl.partial"]
        assert not [q.name for q in (disk / "out.h5.partial").iterdir() if q.name.startswith(".")]
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
        again = subprocess.run([*cmd, "--resume"], cwd=tmp_path, capture_output=True, timeout=300)
        assert again.returncode == 1, again.stderr            # the unparsable lines
        ref = subprocess.run([*cmd[:-4], "-o", "ref.h5", "--rejects", "ref.jsonl"], cwd=tmp_path,
                             capture_output=True, timeout=300)
        assert ref.returncode == 1
        assert sorted(q.name for q in disk.iterdir()) == ["out.h5", "rej.jsonl"]
        assert (disk / "out.h5").read_bytes() == (tmp_path / "ref.h5").read_bytes()
        assert (disk / "rej.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


SWALLOWED_SIGTERM = """
import sys
from neimsctl import interrupts
from neimsctl.io.h5shard import ShardWriter
from neimsctl.cli.main import main
real, calls = ShardWriter.append, []
def append(self, block):
    calls.append(1)
    if len(calls) == 2:             # SIGTERM arrives inside an h5py callback, which swallows it
        try:
            interrupts._on_signal(15, None)
        except KeyboardInterrupt:
            pass
    return real(self, block)
ShardWriter.append = append
main(sys.argv[1:])
"""


def test_shards_merge_stops_after_a_swallowed_sigterm(tmp_path: Path) -> None:
    """merge ran to the end and exited 0 when the SIGTERM's KeyboardInterrupt was lost in an
    h5py callback (about one SIGTERM in four in the first second of a 2.4 s merge)."""
    import sys

    p = sh("neimsctl featurize -o a.h5", tmp_path, SMI * 200)
    assert p.returncode == 1, p.stderr
    proc = subprocess.run([sys.executable, "-c", SWALLOWED_SIGTERM, "shards", "merge", "a.h5",
                           "a.h5", "-o", "m.h5"], cwd=tmp_path, capture_output=True, timeout=120)
    assert proc.returncode == 143 and proc.stderr.decode().endswith(
        "neimsctl shards merge: interrupted\n"), proc.stderr
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.h5"]


KILLED_AFTER_A_RESUME_POINT = """
import os, signal, sys
import neimsctl.chem.featurize_run as F
from neimsctl.io.h5shard import ResumableShardWriter
from neimsctl.cli.main import main
F.run_featurize.__kwdefaults__.update(chunk=2, commit_every=4)   # a resume point every 4 records
commit = ResumableShardWriter.commit
def commit_then_die(self, state):
    commit(self, state)
    os.kill(os.getpid(), signal.SIGKILL)
ResumableShardWriter.commit = commit_then_die
main(sys.argv[1:])
"""


def test_resume_with_the_other_inchikey_setting_is_refused(tmp_path: Path) -> None:
    """--inchikey/--no-inchikey is left out of the shard's settings hash (no feature changes),
    so --resume with the other one was taken: the rows before the interruption had no
    InChIKeys and the later ones had theirs. It is refused now, the partial output kept."""
    import sys

    (tmp_path / "in.smi").write_bytes(SMI * 3)
    cmd = ["featurize", "--no-provenance", "in.smi", "-o", "out.h5", "--rejects", "rej.jsonl"]
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_A_RESUME_POINT, *cmd, "--no-inchikey"],
                            cwd=tmp_path, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = {q.name: q.stat().st_mtime_ns for q in tmp_path.rglob("*")}
    assert "out.h5.partial" in before and "out.h5" not in before
    other = subprocess.run(["neimsctl", *cmd, "--resume"], cwd=tmp_path, capture_output=True)
    err = other.stderr.decode()
    assert other.returncode == 1 and "cannot resume" in err and "'inchikey': False" in err, err
    assert {q.name: q.stat().st_mtime_ns for q in tmp_path.rglob("*")} == before
    again = subprocess.run(["neimsctl", *cmd, "--no-inchikey", "--resume"], cwd=tmp_path,
                           capture_output=True)
    assert again.returncode == 1 and b"resuming out.h5" in again.stderr, again.stderr
    ref = subprocess.run(["neimsctl", *cmd[:-3], "ref.h5", "--rejects", "ref.jsonl", "--no-inchikey"],
                         cwd=tmp_path, capture_output=True)
    assert ref.returncode == 1
    assert same(rows(tmp_path / "out.h5"), rows(tmp_path / "ref.h5"))
    assert not any(rows(tmp_path / "out.h5")["inchikey"])


def test_resume_refuses_other_input(tmp_path: Path) -> None:
    from neimsctl.chem.featurize_run import resume_point
    from neimsctl.errors import InputError

    src = tmp_path / "a.smi"
    src.write_bytes(b"CCO\n")
    point = resume_point([src], None, None, None)
    assert resume_point([src], None, None, {**point, "next_ordinal": 5}) == point
    with pytest.raises(InputError, match="other input"):
        resume_point([src], None, (1, 2), point)
    p = sh("neimsctl featurize --resume -O zst", tmp_path, b"CCO\n")
    assert p.returncode == 2 and b"--resume needs" in p.stderr


def test_reader_leaving_stdout_ends_quietly(records: Path, tmp_path: Path) -> None:
    """`featurize | head`: exit 0 and nothing on stderr, as every command (it printed "read 256,
    written 0" for a run that had written its first block)."""
    p = sh(f"neimsctl featurize --mode teacher {records} | head -c 10 | wc -c; "
           "echo ${PIPESTATUS[0]} >&2", tmp_path)
    assert p.stdout.split() == [b"10"] and p.stderr == b"0\n"


def test_one_zblock_stream_converted_to_hdf5(tmp_path: Path) -> None:
    """neimsctl-shards(1): a single zblock stream as input converts it; the summary said
    '1 inputs'."""
    p = sh("neimsctl featurize -q -O zst -o s.zst; neimsctl shards merge -o m.h5 s.zst && "
           "neimsctl shards merge -o m2.h5 s.zst m.h5", tmp_path, SMI)
    assert p.returncode == 0, p.stderr
    assert p.stderr.decode().splitlines() == [
        "neimsctl shards merge: 1 input, 3 rows -> m.h5",
        "neimsctl shards merge: 2 inputs, 6 rows -> m2.h5"]
    with ShardReader(tmp_path / "m.h5") as r:
        assert len(r) == 3


def test_truncated_zst_stream_is_reported(tmp_path: Path) -> None:
    p = sh("neimsctl featurize -O zst -o s.zst; head -c 300 s.zst > t.zst && "
           "neimsctl shards merge -o m.h5 t.zst", tmp_path, SMI)
    assert p.returncode == 1 and "truncated" in p.stderr.decode()
    assert not (tmp_path / "m.h5").exists()


@pytest.fixture(scope="module")
def moses_5k(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """5,000 real MOSES SMILES: past the --jobs auto threshold (4,096 records)."""
    src = shared_data / "pretrain" / "moses_train_100k.smi"
    out = tmp_path_factory.mktemp("moses") / "moses5k.smi"
    with open(src, "rb") as fh:
        out.write_bytes(b"".join(fh.readline() for _ in range(5000)))
    return out


def test_jobs_auto_uses_the_cores_on_large_inputs_and_output_is_identical(
        tmp_path: Path, moses_5k: Path, records: Path) -> None:
    """Default --jobs auto on 5,000 real SMILES: one worker per core, said in the summary, the
    same shard as -j 1; on the 300-record sample: one process."""
    from neimsctl.io.parallel import available_cores

    auto = sh(f"neimsctl featurize --no-provenance {moses_5k} -o auto.h5 --rejects auto.jsonl",
              tmp_path)
    one = sh(f"neimsctl featurize -j 1 --no-provenance {moses_5k} -o one.h5 --rejects one.jsonl",
             tmp_path)
    used = f"{available_cores()} workers" if available_cores() > 1 else "1 process"
    assert auto.stderr.decode().rstrip().endswith(f"; {used}"), auto.stderr
    assert one.stderr.decode().rstrip().endswith("; 1 process"), one.stderr
    assert auto.returncode == one.returncode
    assert same(rows(tmp_path / "auto.h5"), rows(tmp_path / "one.h5"))
    assert (tmp_path / "auto.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    small_run = sh(f"neimsctl featurize {records} -o s.h5", tmp_path)
    assert small_run.stderr.decode().rstrip().endswith("rejected 0; 1 process")
    bad = sh(f"neimsctl featurize -j none {records} -o s.h5", tmp_path)
    assert bad.returncode == 2 and b"--jobs 'none'" in bad.stderr


def test_progress_bar_only_on_a_terminal(tmp_path: Path, moses_5k: Path) -> None:
    """On a terminal: a bar over the input's bytes with rate and read/written/rejected counts,
    reject messages above it, erased at the end; -q or stderr not a terminal: no bar."""
    from _pty import run_on_tty

    src = tmp_path / "in.smi"
    src.write_bytes(b"not_a_smiles junk\n" + b"".join(moses_5k.read_bytes().splitlines(True)[:1500]))
    n = src.read_bytes().count(b"\n")
    cmd = ["neimsctl", "featurize", "-j", "1", str(src), "-o", str(tmp_path / "out.h5")]
    every_chunk = {**os.environ, "TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}
    code, tty = run_on_tty(cmd, env=every_chunk)
    text = tty.decode("utf-8", "replace")
    assert code == 1 and "neimsctl featurize: " in text and "%|" in text and "rec/s" in text
    assert "B/s" in text and "read 256 written 255 rejected 1" in text
    # the reject message is a whole line of its own, not written into the bar
    assert any(line.startswith("neimsctl featurize: ") and "line 1: unparsable_smiles" in line
               and "%|" not in line for line in text.replace("\r", "\n").split("\n"))
    assert text.rstrip().endswith(f"read {n}, written {n - 1}, rejected 1 "
                                  "(unparsable_smiles: 1); 1 process")
    code, tty = run_on_tty(cmd + ["-q"])
    assert code == 1 and tty == b""
    res = subprocess.run(cmd, capture_output=True, check=False)
    assert res.returncode == 1 and b"%|" not in res.stderr and b"\r" not in res.stderr


def test_shards_list_lists_the_readable_files_and_names_the_others(tmp_path: Path, small: Path) -> None:
    """One file that cannot be read no longer hides the others: each readable one is listed,
    each other named on stderr, exit 1."""
    (tmp_path / "t.txt").write_text("hello\n")
    p = sh(f"neimsctl featurize --no-provenance {small} -o a.h5 && "
           "neimsctl shards list a.h5 t.txt gone.h5 a.h5", tmp_path)
    assert p.returncode == 2 and b"gone.h5" in p.stderr          # a missing file: usage error
    p = sh("neimsctl shards list a.h5 t.txt a.h5", tmp_path)
    assert p.returncode == 1, p.stderr
    assert [line.split("\t")[0] for line in p.stdout.decode().splitlines()] == ["path", "a.h5", "a.h5"]
    assert p.stderr.decode().splitlines() == [
        "neimsctl shards list: t.txt: bad magic b'hell' (expected b'NZBK'): not a zblock stream"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_dummy_atoms_are_rejects_not_rows(tmp_path: Path, jobs: int) -> None:
    """'*' (an R-group, attachment point, polymer end) in a SMILES line or a JSONL record (as
    msp2jsonl wrote them before it rejected them): every such record is a dummy_atom reject with
    its line, the others rows (they were featurized silently and trained on)."""
    smi = b"*c1ccc(CCCC)cc1 star\nCCCCc1ccccc1 butylbenzene\n[1*]c1ccc(CCCC)cc1 r1\n"
    (tmp_path / "in.smi").write_bytes(smi)
    (tmp_path / "in.jsonl").write_bytes(
        b'{"schema":"neimsctl.record/1","id":"7","name":"R-group","smiles":"*c1ccc(CCCC)cc1",'
        b'"mz":[91,133],"intensity":[999,300]}\n'
        b'{"schema":"neimsctl.record/1","id":"8","name":"ok","smiles":"CCCCc1ccccc1",'
        b'"mz":[91,134],"intensity":[999,300]}\n')
    for src in ("in.smi", "in.jsonl"):
        p = sh(f"neimsctl featurize -m teacher -j {jobs} {src} -o {src}.h5 --rejects {src}.rej",
               tmp_path)
        assert p.returncode == 1, p.stderr
        rej = [orjson.loads(x) for x in (tmp_path / f"{src}.rej").read_bytes().splitlines()]
        assert {x["reason"] for x in rej} == {"dummy_atom"}
        assert "has a dummy atom" in rej[0]["detail"] and "dummy_atom" in p.stderr.decode()
        assert len(rows(tmp_path / f"{src}.h5")["ordinal"]) + len(rej) == \
            len((tmp_path / src).read_bytes().splitlines())
    assert [(x["line"], x["id"]) for x in rej] == [(1, "7")]
    smi_rej = [orjson.loads(x) for x in (tmp_path / "in.smi.rej").read_bytes().splitlines()]
    assert [(x["line"], x["record"]) for x in smi_rej] == [(1, "star"), (3, "r1")]
    assert "read 3, written 1, rejected 2 (dummy_atom: 2)" in \
        sh("neimsctl featurize in.smi -O zst > /dev/null", tmp_path).stderr.decode()
