"""Issue 16 end to end, through the installed CLI and real shell redirections and pipes.

Outputs that are inputs are refused (exit 2, input untouched); CR and mixed line ends lose no
record; an unreadable header value is one record's business; outputs that cannot be written are
one line and exit 1 with no temporary file left; --mol-dir reads only its own files; garbage
between records keeps the record numbering.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
from pathlib import Path

import orjson
import pytest

from _tiny_ckpt import tiny_student_checkpoint

pytestmark = pytest.mark.cli

PHENOL = b"Name: phenol\nSMILES: Oc1ccccc1\nMW: 94\nNum Peaks: 2\n66 300\n94 999\n"
THREE = (PHENOL + b"\n" + PHENOL.replace(b"phenol", b"anisole").replace(b"Oc1", b"COc1")
         .replace(b"MW: 94", b"MW: 108") + b"\n" + PHENOL.replace(b"phenol", b"cresol")
         .replace(b"Oc1ccccc1", b"Cc1ccc(O)cc1").replace(b"MW: 94", b"MW: 108"))
SMI = b"CCCO propanol\nc1ccccc1 benzene\nCC(=O)Oc1ccccc1C(=O)O aspirin\n"
SDF = (b"ethanol\n  RDKit          2D\n\n  3  2  0  0  0  0  0  0  0  0999 V2000\n"
       b"    0.0000    0.0000    0.0000 C   0  0\n    1.2990    0.7500    0.0000 C   0  0\n"
       b"    2.5981   -0.0000    0.0000 O   0  0\n  1  2  1  0\n  2  3  1  0\nM  END\n$$$$\n")
SUMMARY = re.compile(rb"read (\d+), written (\d+), rejected (\d+)")


def sh(cmd: str, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, input=stdin,
                          capture_output=True, timeout=300)


def counts(stderr: bytes) -> tuple[int, int, int]:
    m = SUMMARY.findall(stderr)
    assert m, stderr.decode()
    return tuple(int(x) for x in m[-1])  # type: ignore[return-value]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_student_checkpoint(tmp_path_factory.mktemp("rel") / "tiny.pt")


# -- item 1: an output that is an input --------------------------------------------------------

CLOBBER = [
    ("msp2jsonl x.msp -o x.msp", "-o x.msp is the same file as input x.msp"),
    ("msp2jsonl x.msp --rejects x.msp", "--rejects x.msp is the same file as input x.msp"),
    ("msp2jsonl x.msp -o out.jsonl --rejects $PWD/out.jsonl", "out.jsonl is the same file as -o out.jsonl"),
    ("msp2jsonl x.msp >> x.msp", "stdout is the same file as input x.msp"),
    ("msp2jsonl - -o x.msp < x.msp", "-o x.msp is the same file as stdin"),
    ("msp2jsonl link.msp -o x.msp", "-o x.msp is the same file as input link.msp"),
    ("msp2jsonl hard.msp -o x.msp", "-o x.msp is the same file as input hard.msp"),
    ("msp2jsonl x.msp --rejects -", "--rejects - (stdout) is the same file as stdout"),
    ("featurize r.jsonl -o r.jsonl", "-o r.jsonl is the same file as input r.jsonl"),
    ("featurize r.jsonl -o f.h5 --rejects r.jsonl", "--rejects r.jsonl is the same file as input r.jsonl"),
    ("featurize - -O zst < r.jsonl >> r.jsonl", "stdout is the same file as stdin"),
    ("predict -m {ckpt} s.smi -o s.smi", "-o s.smi is the same file as input s.smi"),
    ("predict -m {ckpt} s.smi --rejects s.smi", "--rejects s.smi is the same file as input s.smi"),
    ("predict -m {ckpt} s.smi -o {ckpt}", "is the same file as --model"),
    ("shards merge a.h5 b.h5 -o a.h5", "-o a.h5 is the same file as input a.h5"),
    ("shards split a.h5 -o a.h5", "-o a.h5 is the same file as input a.h5"),
    ("shards list a.h5 >> a.h5", "stdout is the same file as input a.h5"),
    ("eval r.jsonl x.msp >> r.jsonl", "stdout is the same file as input r.jsonl"),
    ("softlabel a.h5 -t t.pt -o t.pt", "-o t.pt is the same file as --teacher t.pt"),
    ("distill a.h5 --soft-labels run/checkpoints/best.pt --out-dir run",
     "--out-dir run (writes checkpoints/best.pt) is the same file as input run/checkpoints/best.pt"),
    ("pretrain run/rejects.jsonl -c {repo}/configs/pretrain/teacher-cpu-small.yaml --out-dir run",
     "--out-dir run (writes rejects.jsonl) is the same file as input run/rejects.jsonl"),
    ("finetune -c {repo}/configs/finetune/teacher-cpu-small.yaml a.h5 "
     "--init run/checkpoints/last.pt --out-dir run",
     "(writes checkpoints/last.pt) is the same file as --init run/checkpoints/last.pt"),
]


@pytest.mark.parametrize("cmd,message", CLOBBER, ids=[c for c, _ in CLOBBER])
def test_output_that_is_an_input_is_refused(cmd, message, tmp_path, ckpt, repo_root):
    (tmp_path / "x.msp").write_bytes(THREE)
    (tmp_path / "link.msp").symlink_to("x.msp")
    (tmp_path / "hard.msp").hardlink_to(tmp_path / "x.msp")
    (tmp_path / "r.jsonl").write_bytes(b'{"smiles": "CCO"}\n')
    (tmp_path / "s.smi").write_bytes(SMI)
    for name in ("a.h5", "b.h5", "t.pt", "run/checkpoints/best.pt", "run/checkpoints/last.pt",
                 "run/rejects.jsonl"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    before = {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()} | {ckpt: digest(ckpt)}
    names = sorted(str(p) for p in tmp_path.rglob("*"))
    proc = sh("neimsctl " + cmd.format(ckpt=ckpt, repo=repo_root), tmp_path)
    assert proc.returncode == 2, proc.stderr.decode()
    err = proc.stderr.decode()
    assert f"neimsctl {cmd.split()[0]}" in err and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert {p: digest(p) for p in before} == before  # every input untouched
    assert sorted(str(p) for p in tmp_path.rglob("*")) == names  # nothing written


SHIPPED = [
    ("softlabel a.h5 -t t.pt -o {models}/student-default.pt", "resources/models/student-default.pt"),
    ("ensemble t.pt -o {models}/teacher-default.pt", "resources/models/teacher-default.pt"),
    ("predict -m {ckpt} s.smi -o {models}/teacher-default.json", "resources/models/teacher-default.json"),
    ("msp2jsonl x.msp --rejects {sample}/ATTRIBUTION.md", "resources/sample/ATTRIBUTION.md"),
]


@pytest.mark.parametrize("cmd,name", SHIPPED, ids=[c.split()[0] for c, _ in SHIPPED])
def test_an_output_naming_a_shipped_file_is_refused(cmd, name, tmp_path, ckpt):
    """The package's own files (models, cards, the sample) are never overwritten, whether or
    not the command reads them (softlabel -o student-default.pt with another teacher)."""
    import neimsctl

    res = Path(neimsctl.__file__).parent / "resources"
    (tmp_path / "x.msp").write_bytes(THREE)
    (tmp_path / "s.smi").write_bytes(SMI)
    for f in ("a.h5", "t.pt"):
        (tmp_path / f).write_bytes(f.encode())
    target = res / name.split("/", 1)[1]
    before = digest(target)
    proc = sh("neimsctl " + cmd.format(ckpt=ckpt, models=res / "models", sample=res / "sample"), tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert f"is neimsctl's own file {name}: refusing to overwrite it" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert digest(target) == before


def test_shell_truncation_is_named(tmp_path):
    (tmp_path / "x.msp").write_bytes(THREE)
    proc = sh("neimsctl msp2jsonl x.msp > x.msp", tmp_path)
    assert proc.returncode == 2
    assert b"the shell's '>' has emptied it already" in proc.stderr


def test_dev_null_twice_and_distinct_outputs_are_fine(tmp_path):
    (tmp_path / "x.msp").write_bytes(THREE)
    proc = sh("neimsctl msp2jsonl x.msp -o /dev/null --rejects /dev/null", tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = sh("neimsctl msp2jsonl x.msp -o out.jsonl --rejects rej.jsonl < x.msp", tmp_path)
    assert proc.returncode == 0 and len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 3


# -- item 2: CR and mixed line ends ------------------------------------------------------------

def _eol(data: bytes, style: str) -> bytes:
    lines = data.split(b"\n")
    if style == "mixed":  # CRLF, CR and LF in turn; a CR before an empty LF line would be a CRLF
        out, prev = [], b""
        for i, ln in enumerate(lines[:-1]):
            eol = [b"\r\n", b"\r", b"\n"][i % 3]
            eol = b"\r" if prev == b"\r" and not ln else eol
            out.append(ln + eol)
            prev = eol
        return b"".join(out) + lines[-1]
    return data.replace(b"\n", {"cr": b"\r", "crlf": b"\r\n"}[style])


@pytest.mark.parametrize("style", ["cr", "crlf", "mixed"])
def test_line_ends_msp_jsonl_smiles_sdf(style, tmp_path, ckpt):
    (tmp_path / "x.msp").write_bytes(_eol(THREE + b"\n", style))
    proc = sh("neimsctl msp2jsonl x.msp -o r.jsonl", tmp_path)
    assert proc.returncode == 0 and counts(proc.stderr) == (3, 3, 0), proc.stderr
    recs = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert [r["name"] for r in recs] == ["phenol", "anisole", "cresol"]
    assert [r["source"]["line"] for r in recs] == [1, 8, 15]
    (tmp_path / "r2.jsonl").write_bytes(_eol((tmp_path / "r.jsonl").read_bytes(), style))
    (tmp_path / "s.smi").write_bytes(_eol(SMI, style))
    (tmp_path / "m.sdf").write_bytes(_eol(SDF * 2, style))
    proc = sh("neimsctl featurize r2.jsonl -o f.h5 && neimsctl featurize s.smi -o g.h5", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [counts(x.encode()) for x in proc.stderr.decode().splitlines()] == [(3, 3, 0), (3, 3, 0)]
    for src, n in (("s.smi", 3), ("r2.jsonl", 3), ("m.sdf", 2)):
        proc = sh(f"neimsctl predict -m {ckpt} -O jsonl {src}", tmp_path)
        assert proc.returncode == 0 and counts(proc.stderr) == (n, n, 0), (src, proc.stderr)


# -- item 3: one bad header value among 300 good records -----------------------------------------

BAD_VALUES = (b"Name: mw inf\nSMILES: Oc1ccccc1\nMW: inf\nNum Peaks: 1\n94 999\n\n"
              b"Name: mw 1e400\nSMILES: Oc1ccccc1\nMW: 1e400\nNum Peaks: 1\n94 999\n\n"
              b"Name: huge formula\nSMILES: Oc1ccccc1\nFormula: C" + b"9" * 5000 + b"\nNum Peaks: 1\n94 999\n\n"
              b"Name: nan peak\nSMILES: Oc1ccccc1\nNum Peaks: 1\n94 nan\n\n"
              b"Name: huge peak\nSMILES: Oc1ccccc1\nNum Peaks: 1\n94 " + b"9" * 400 + b"\n\n")


def test_bad_header_values_do_not_abort_the_conversion(tmp_path, sample_msp):
    (tmp_path / "lib.msp").write_bytes(sample_msp.read_bytes().rstrip(b"\n") + b"\n\n" + BAD_VALUES
                                       + sample_msp.read_bytes())
    proc = sh("neimsctl msp2jsonl lib.msp --rejects rej.jsonl -o out.jsonl", tmp_path)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert counts(proc.stderr) == (605, 603, 2)
    recs = {r["name"]: r for r in map(orjson.loads, (tmp_path / "out.jsonl").read_bytes().splitlines())}
    assert recs["mw inf"]["flags"] == ["mw_mismatch"] and recs["mw inf"]["msp"]["mw"] == "inf"
    assert recs["mw 1e400"]["flags"] == ["mw_mismatch"] and recs["mw 1e400"]["mw"] == 94
    assert recs["huge formula"]["flags"] == ["formula_mismatch"]
    rej = [orjson.loads(x) for x in (tmp_path / "rej.jsonl").read_bytes().splitlines()]
    assert [(r["record"], r["reason"]) for r in rej] == [("nan peak", "invalid_peak"),
                                                         ("huge peak", "invalid_peak")]
    proc = sh("neimsctl msp2jsonl --no-structure -q lib.msp --rejects rej2.jsonl > /dev/null", tmp_path)
    rej = [orjson.loads(x) for x in (tmp_path / "rej2.jsonl").read_bytes().splitlines()]
    assert proc.returncode == 1 and [r["reason"] for r in rej] == ["bad_mw", "bad_mw", "invalid_peak",
                                                                  "invalid_peak"]


# -- item 6: outputs that cannot be written ------------------------------------------------------

WRITE_ERRORS = [
    ("nodir/out", "nodir/out: cannot write: No such file or directory (no directory nodir)"),
    ("file/out", "file/out: cannot write: Not a directory"),
    ("/dev/full", "/dev/full: cannot write: No space left on device"),
    (".", ".: cannot write: is a directory"),     # also -o '' (a traceback before)
    ("/", "/: cannot write: is a directory"),
    ("/proc/out", "/proc/out: cannot write: No such file or directory"),   # said "no directory /proc"
]


CASES = ([("msp2jsonl -q x.msp -o {t}", *w) for w in WRITE_ERRORS]
         + [("predict -q -m {ckpt} s.smi -o {t}", *w) for w in WRITE_ERRORS]
         + [("msp2jsonl -q x.msp --rejects {t} -o /dev/null", *WRITE_ERRORS[1]),
            ("predict -q -m {ckpt} s.smi --rejects {t}", *WRITE_ERRORS[2]),
            ("featurize -q s.smi -O zst -o {t}", *WRITE_ERRORS[0]),
            ("featurize -q s.smi -O zst -o {t}", *WRITE_ERRORS[2]),
            ("featurize -q s.smi -o x.h5 --rejects {t}", *WRITE_ERRORS[3]),   # left x.h5.partial/
            ("index -q x.msp -o {t}", *WRITE_ERRORS[3]),
            ("search -q x.msp -l x.msp -o {t}", *WRITE_ERRORS[3])])


@pytest.mark.parametrize("cmd,target,message", CASES, ids=[c.format(t=t, ckpt="M") for c, t, _ in CASES])
def test_output_that_cannot_be_written_is_one_line_exit_1(cmd, target, message, tmp_path, ckpt):
    (tmp_path / "x.msp").write_bytes(THREE + b"\nName: bad\nNum Peaks: 1\n1 x\n")
    (tmp_path / "s.smi").write_bytes(SMI + b"xyz bad\n")
    (tmp_path / "file").write_bytes(b"")
    name = cmd.split()[0]
    proc = sh(f"neimsctl {cmd.format(t=target, ckpt=ckpt)} > /dev/null", tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    if name == "featurize":  # featurize names the path its own way (it was clean before)
        assert err.strip().startswith(f"neimsctl featurize: {target}") and len(err.splitlines()) == 1
    else:
        assert err.strip().splitlines()[-1] == f"neimsctl {name}: {message}", err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "s.smi", "x.msp"]  # no temp


@pytest.mark.parametrize("cmd, left", [
    ("featurize -q s.smi -o out.h5 --rejects /dev/full", ["out.h5.partial"]),   # for --resume
    ("featurize -q s.smi -O zst -o out.zst --rejects /dev/full", []),
    ("index -q x.msp -o out.h5 --rejects /dev/full", []),
    ("search -q x.msp -l x.msp -o out.tsv --rejects /dev/full", []),
])
def test_a_rejects_report_on_a_full_disk_stops_the_run_before_its_output_is_in_place(
        cmd, left, tmp_path):
    """The rejects report is flushed before the output is put in place: its full disk left a
    complete-looking output without the report of its rejects (featurize's HDF5 output named as
    the file that failed, index, search, featurize -O zst)."""
    (tmp_path / "x.msp").write_bytes(THREE + b"\nName: bad\nNum Peaks: 1\n1 x\n")
    (tmp_path / "s.smi").write_bytes(SMI + b"xyz bad\n")
    proc = sh(f"neimsctl {cmd}", tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith("/dev/full: cannot write: No space left on device"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s.smi", "x.msp", *left])


@pytest.mark.parametrize("cmd", ["msp2jsonl -q x.msp", "predict -q -m {ckpt} s.smi",
                                 "featurize -q s.smi -O zst"])
def test_stdout_on_a_full_disk(cmd, tmp_path, ckpt):
    (tmp_path / "x.msp").write_bytes(THREE * 50)
    (tmp_path / "s.smi").write_bytes(SMI * 50)
    proc = sh(f"neimsctl {cmd.format(ckpt=ckpt)} > /dev/full", tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err and "Exception ignored" not in err, err
    assert len(err.strip().splitlines()) == 1 and "No space left on device" in err, err


STUDENT = ["--set", "model.gate_hidden=[16]", "--set", "model.expert_depth=1", "--set",
           "model.expert_bottleneck=4", "--set", "model.head_hidden=[32]", "--set", "model.hidden_dim=16",
           "--set", "train.batch_size=64", "--set", "train.num_workers=0", "--set", "train.threads=1",
           "--set", "loss.warmup_epochs=1", "--set", "train.epochs=1", "--device", "cpu", "--no-kd"]


@pytest.fixture(scope="module")
def student_h5(tmp_path_factory: pytest.TempPathFactory, sample_msp: Path) -> Path:
    d = tmp_path_factory.mktemp("distill")
    p = sh(f"neimsctl msp2jsonl -q {sample_msp} | head -n 120 | neimsctl featurize -q -o s.h5", d)
    assert p.returncode == 0, p.stderr
    return d / "s.h5"


def test_distill_run_dir_under_a_file_is_one_line(tmp_path, student_h5):
    (tmp_path / "file").write_bytes(b"")
    proc = sh(f"neimsctl distill {student_h5} {shlex.join(STUDENT)} --out-dir file/run", tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == ("neimsctl distill: file/run: cannot create the directory: "
                                            "Not a directory (a parent is a file)")


def test_distill_on_a_full_disk_leaves_no_run_behind(tmp_path, student_h5, monkeypatch):
    """The checkpoint write path is pointed at /dev/full (in-process: the CLI's own handling)."""
    import contextlib

    from typer.testing import CliRunner

    from neimsctl.cli.main import app, load_commands
    from neimsctl.io import streams
    from neimsctl.models import checkpoint as ck

    @contextlib.contextmanager
    def full_open_out(path):
        with open("/dev/full", "wb", buffering=0) as fh:
            yield streams.OutStream(fh, path)

    monkeypatch.setattr(ck, "open_out", full_open_out)
    load_commands()
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["distill", str(student_h5), *STUDENT, "--out-dir", str(out)])
    assert res.exit_code == 1, res.output
    assert res.stderr.strip().splitlines()[-1] == (
        f"neimsctl distill: {out}/checkpoints/last.pt: cannot write: No space left on device")
    assert not out.exists()  # no config.yaml and empty train_log.jsonl posing as a run


# -- item 9: --mol-dir reads only its own files ---------------------------------------------------

def test_mol_dir_does_not_follow_path_ids(tmp_path, sample_dir):
    mols = tmp_path / "mols"
    mols.mkdir()
    secret = tmp_path / "outside" / "secret.MOL"
    secret.parent.mkdir()
    secret.write_bytes((sample_dir / "nist_style/mol_files/ID7720.MOL").read_bytes())
    (tmp_path / "e.msp").write_bytes(
        f"Name: evil\nID: ../outside/secret\nNum Peaks: 1\n84 999\n\n"
        f"Name: evil2\nID: {secret.with_suffix('')}\nNum Peaks: 1\n84 999\n".encode())
    proc = sh("neimsctl msp2jsonl e.msp --mol-dir mols --rejects rej.jsonl", tmp_path)
    assert proc.returncode == 1 and proc.stdout == b""
    rej = [orjson.loads(x) for x in (tmp_path / "rej.jsonl").read_bytes().splitlines()]
    assert [r["reason"] for r in rej] == ["unsafe_mol_path"] * 2


def test_mol_dir_fifo_is_a_reject_not_a_hang(tmp_path, sample_dir):
    """A FIFO named like a MOL file blocked msp2jsonl forever (SIGINT ignored while the worker
    waited for a writer): now it is a reject ("not a regular file"), the other record converts."""
    mols = tmp_path / "mols"
    mols.mkdir()
    (mols / "ID1.MOL").write_bytes((sample_dir / "nist_style/mol_files/ID7720.MOL").read_bytes())
    os.mkfifo(mols / "ID2.MOL")
    (tmp_path / "f.msp").write_bytes(b"Name: one\nID: 1\nNum Peaks: 1\n84 999\n\n"
                                     b"Name: two\nID: 2\nNum Peaks: 1\n84 999\n")
    proc = subprocess.run(["bash", "-c", "neimsctl msp2jsonl f.msp --mol-dir mols --rejects rej.jsonl -j 1"],
                          cwd=tmp_path, capture_output=True, timeout=60)
    assert proc.returncode == 1 and len(proc.stdout.splitlines()) == 1, proc.stderr
    rej = [orjson.loads(x) for x in (tmp_path / "rej.jsonl").read_bytes().splitlines()]
    assert [r["reason"] for r in rej] == ["missing_mol_file"] and "not a regular file" in rej[0]["detail"]


def test_an_output_onto_a_mol_file_of_mol_dir_is_refused(tmp_path, sample_dir):
    """-o or --rejects naming a MOL file the run reads from --mol-dir (directly, by another
    spelling of the directory or by a symbolic link) replaced it with JSONL, exit 1: the clobber
    check saw only the MSP input."""
    mols = tmp_path / "mols"
    mols.mkdir()
    mol = (sample_dir / "nist_style/mol_files/ID7720.MOL").read_bytes()
    for i in (1, 2):
        (mols / f"ID{i}.MOL").write_bytes(mol)
    (tmp_path / "link.MOL").symlink_to("mols/ID2.MOL")
    (tmp_path / "f.msp").write_bytes(b"Name: one\nID: 1\nNum Peaks: 1\n84 999\n\n"
                                     b"Name: two\nID: 2\nNum Peaks: 1\n84 999\n")
    for out in ("-o mols/ID1.MOL", "-o link.MOL", "--rejects mols/./ID2.MOL -o x.jsonl"):
        proc = sh(f"neimsctl msp2jsonl f.msp --mol-dir mols {out}", tmp_path)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and "is a MOL file of --mol-dir mols: refusing to write " \
            "into an input" in err, err
        assert all((mols / f"ID{i}.MOL").read_bytes() == mol for i in (1, 2))
    assert not (tmp_path / "x.jsonl").exists()
    ok = sh("neimsctl msp2jsonl f.msp --mol-dir mols -o mols/out.jsonl", tmp_path)
    assert ok.returncode == 0 and len((mols / "out.jsonl").read_bytes().splitlines()) == 2


# -- item 10: binary garbage between records ------------------------------------------------------

def test_garbage_between_records_keeps_ordinals_and_is_reported_at_its_line(tmp_path):
    clean = THREE  # no IDs: the fallback ids are <stem>:<ordinal>
    (tmp_path / "lib.msp").write_bytes(clean)
    garbage = clean.replace(b"\n\nName: anisole", b"\n\n\x00\x01\x02\x89PNG\r\n\x1a\n\xff\xfe\n\n"
                            b"Name: anisole")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "lib.msp").write_bytes(garbage)
    a = sh("neimsctl msp2jsonl -q lib.msp", tmp_path)
    b = sh("neimsctl msp2jsonl g/lib.msp --rejects rej.jsonl", tmp_path)
    assert a.returncode == 0 and b.returncode == 1 and counts(b.stderr) == (4, 3, 1)
    strip = lambda out: [{**r, "source": {**r["source"], "line": 0, "file": ""}}  # noqa: E731
                         for r in map(orjson.loads, out.splitlines())]
    assert strip(b.stdout) == strip(a.stdout)  # same ids and ordinals as without the garbage
    rej = [orjson.loads(x) for x in (tmp_path / "rej.jsonl").read_bytes().splitlines()]
    assert [(r["line"], r["record"], r["id"], r["reason"]) for r in rej] == [
        (8, None, None, "binary_garbage")]
    assert b"g/lib.msp: line 8: binary_garbage" in b.stderr and b"record None" not in b.stderr


def test_quoted(tmp_path):
    """Paths with blanks are compared as files too (no name games)."""
    (tmp_path / "a b.msp").write_bytes(THREE)
    q = shlex.quote("a b.msp")
    proc = sh(f"neimsctl msp2jsonl {q} -o ./{q}", tmp_path)
    assert proc.returncode == 2 and digest(tmp_path / "a b.msp") == hashlib.sha256(THREE).hexdigest()


# -- found by tools/fuzz.py ------------------------------------------------------------------------

def test_truncated_compressed_input_is_one_line_exit_1(tmp_path, sample_msp):
    import gzip

    import zstandard

    data = sample_msp.read_bytes()
    (tmp_path / "cut.msp.gz").write_bytes(gzip.compress(data)[:20000])  # was 'Aborted!'
    (tmp_path / "cut.msp.zst").write_bytes(zstandard.ZstdCompressor().compress(data)[:-1])  # was exit 0
    for name, why in (("cut.msp.gz", "corrupt or truncated gzip data"),
                      ("cut.msp.zst", "truncated zstd data")):
        proc = sh(f"neimsctl msp2jsonl --no-structure {name} -o out.jsonl", tmp_path)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and "Traceback" not in err and "Aborted" not in err, err
        assert err.strip().splitlines()[-1].startswith(f"neimsctl msp2jsonl: {name}: {why}"), err
        assert not (tmp_path / "out.jsonl").exists()
    proc = sh("cat cut.msp.zst | neimsctl featurize -q -I smi - -O zst > /dev/null", tmp_path)
    assert proc.returncode == 1 and b"<stdin>: truncated zstd data" in proc.stderr, proc.stderr
    proc = sh("neimsctl featurize -q -I smi cut.msp.gz -o f.h5 --rejects rej.jsonl", tmp_path)
    assert proc.returncode == 1 and b"cut.msp.gz: corrupt or truncated gzip" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.msp.gz", "cut.msp.zst"]  # no .partial


def test_smiles_line_of_separator_characters(tmp_path, ckpt):
    (tmp_path / "s.smi").write_bytes(b"CCCO a\n\x1c\nCCCCO b\n")  # was an IndexError traceback
    for cmd in ("featurize s.smi -o f.h5", f"predict -m {ckpt} s.smi -o p.msp"):
        proc = sh(f"neimsctl {cmd}", tmp_path)
        assert proc.returncode == 1 and b"Traceback" not in proc.stderr, proc.stderr
        assert counts(proc.stderr) == (3, 2, 1)


def test_predicted_msp_with_unusual_names_reads_back(tmp_path, ckpt):
    """Names with U+0085 / U+2028 (fuzz suite) or line breaks (JSONL) keep the MSP readable."""
    (tmp_path / "r.jsonl").write_bytes(
        b'{"smiles": "CCCO", "name": "a\\u0085b"}\n{"smiles": "CCCO", "name": "c\\u2028d"}\n'
        b'{"smiles": "CCCO", "name": "x\\nNum Peaks: 0\\n\\nName: evil", "id": "i\\rd"}\n')
    proc = sh(f"neimsctl predict -m {ckpt} r.jsonl -o p.msp && neimsctl msp2jsonl --no-structure p.msp",
              tmp_path)
    assert proc.returncode == 0, proc.stderr
    recs = [orjson.loads(x) for x in proc.stdout.splitlines()]
    assert [r["name"] for r in recs] == ["a\u0085b", "c\u2028d", "x Num Peaks: 0  Name: evil"]


def test_pipes_are_inputs_and_directories_are_named(tmp_path, ckpt):
    """bash's <(...) (a /dev/fd/N pipe) is read like stdin by the streaming commands (it was
    'no such file'); a directory is 'is a directory', not 'no such file'."""
    (tmp_path / "x.msp").write_bytes(THREE)
    (tmp_path / "adir").mkdir()
    proc = sh("neimsctl msp2jsonl -q -j 1 <(cat x.msp) > a.jsonl && neimsctl msp2jsonl -q -j 1 x.msp > b.jsonl"
              " && neimsctl index -q <(cat x.msp) -o ix.h5"
              " && neimsctl search -q <(cat x.msp) -l ix.h5 -k 1 > hits.tsv"
              f" && neimsctl predict -q -j 1 -m {ckpt} <(printf 'CCO\\n') > p.msp"
              " && neimsctl eval -q --json <(cat x.msp) <(cat x.msp) > m.json", tmp_path)
    assert proc.returncode == 0, proc.stderr
    strip = lambda out: [{**r, "id": "", "source": {**r["source"], "file": ""}}  # noqa: E731
                         for r in map(orjson.loads, out.splitlines())]   # fallback ids name the file
    assert strip((tmp_path / "a.jsonl").read_bytes()) == strip((tmp_path / "b.jsonl").read_bytes())
    assert len((tmp_path / "hits.tsv").read_bytes().splitlines()) == 4
    assert (tmp_path / "p.msp").read_bytes().count(b"Name: ") == 1
    assert orjson.loads((tmp_path / "m.json").read_bytes())["recall@1"] == 1.0
    for cmd, code in (("msp2jsonl adir", 2), ("predict adir", 2), ("index adir -o i.h5", 2),
                      ("search x.msp -l adir", 2), ("search adir -l x.msp", 2), ("eval adir x.msp", 2),
                      ("shards list adir", 2), ("softlabel adir -t x.msp -o s.h5", 2)):
        proc = sh(f"neimsctl {cmd}", tmp_path)
        assert proc.returncode == code and b"adir: is a directory" in proc.stderr, (cmd, proc.stderr)


def test_hdf5_outputs_refuse_a_named_pipe_and_models_name_a_directory(tmp_path: Path,
                                                                      sample_msp: Path) -> None:
    """An index or soft labels written over a FIFO replaced it with a file (softlabel) or failed
    in h5py's words (index): exit 2 before any work, the FIFO left as it is. ``--model DIR`` was
    'no such checkpoint file'."""
    import stat

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    p = sh(f"neimsctl index {sample_msp} -o pipe -q", tmp_path)
    assert p.returncode == 2 and b"-o pipe: not a regular file" in p.stderr
    p = sh("neimsctl softlabel nothing.h5 -t teacher -o pipe", tmp_path)
    assert p.returncode == 2 and b"-o pipe: not a regular file" in p.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    p = sh(f"echo CCO | neimsctl predict -m {tmp_path} -q", tmp_path)
    assert p.returncode == 2 and b": is a directory" in p.stderr and b"Traceback" not in p.stderr


def test_an_hdf5_file_with_bad_checksums_is_one_line_naming_it(tmp_path: Path) -> None:
    """Flipped bytes in a shard's HDF5 metadata: h5py raises RuntimeError ("incorrect metadata
    checksum"), which index, search, shards list and softlabel printed as a traceback."""
    import random

    import h5py

    from neimsctl.data.membench import build_sample_shard

    good = build_sample_shard(tmp_path / "good.h5", mode="teacher", limit=20)
    data = bytearray(good.read_bytes())
    random.seed(1)
    for _ in range(200):
        data[random.randrange(len(data) // 2, len(data))] ^= 0xFF
    bad = tmp_path / "flip.h5"
    bad.write_bytes(bytes(data))
    with pytest.raises(RuntimeError):                  # the premise: HDF5 itself refuses it
        with h5py.File(bad, "r") as f:
            for name in f:
                f[name][...]
    for cmd in ("index flip.h5 -o x.h5", "shards list flip.h5", "search q.msp -l flip.h5",
                "softlabel flip.h5 -t teacher -o s.h5"):
        (tmp_path / "q.msp").write_bytes(PHENOL)
        proc = sh(f"neimsctl {cmd}", tmp_path)
        err = proc.stderr.decode().strip().splitlines()
        assert proc.returncode == 1 and "Traceback" not in proc.stderr.decode(), (cmd, err)
        assert err[-1].startswith(f"neimsctl {cmd.split()[0]}") and "flip.h5" in err[-1], (cmd, err)
        assert not (tmp_path / "x.h5").exists() and not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("extra", ["", " --resume"])
def test_featurize_hdf5_output_in_a_missing_directory_names_the_output(tmp_path: Path, extra: str) -> None:
    """`-o nodir/y.h5` said 'nodir/y.h5.partial: No such file or directory' (its internal segment
    directory); every other output error names the output asked for, and the missing directory."""
    (tmp_path / "s.smi").write_bytes(SMI)
    proc = sh(f"neimsctl featurize -q s.smi -o nodir/y.h5{extra}", tmp_path)
    assert proc.returncode == 1 and proc.stderr.decode().strip() == (
        "neimsctl featurize: nodir/y.h5: cannot write: No such file or directory (no directory nodir)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.smi"]


def test_featurize_whose_rejects_report_cannot_be_opened_leaves_no_partial(tmp_path: Path) -> None:
    """`--rejects nodir/r.jsonl` failed with one line but left an empty OUT.h5.partial/ behind."""
    (tmp_path / "in.msp").write_bytes(THREE)
    proc = sh("neimsctl featurize in.msp --rejects nodir/r.jsonl -o y.h5", tmp_path)
    assert proc.returncode == 1 and b"nodir/r.jsonl: cannot write" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.msp"]


def test_featurize_of_input_it_cannot_read_at_all_is_one_line(tmp_path: Path) -> None:
    """The error line alone: no 'read 0, written 0, rejected 0' summary printed before it (a
    run stopped part-way still ends with its counts)."""
    (tmp_path / "z.bz2").write_bytes(b"BZh91AY&SY" + bytes(40))
    proc = sh("neimsctl featurize z.bz2 -o y.h5", tmp_path)
    assert proc.returncode == 1 and proc.stderr.decode().splitlines() == [
        "neimsctl featurize: z.bz2: bzip2-compressed data, which neimsctl does not read (plain "
        "text, gzip and zstd): decompress or export it first"], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.bz2"]


def test_an_endless_input_without_line_ends_is_one_line_not_a_traceback(tmp_path, ckpt):
    """`predict /dev/zero` (or a huge binary file read as SMILES) grows one line until memory
    runs out: it ended in a MemoryError traceback. It is one line naming the cause, exit 1, and
    the output's temporary is removed."""
    # 2.5 GB of address space: enough to import torch, far less than the endless line wants
    proc = sh(f"ulimit -v 2500000; neimsctl predict -m {shlex.quote(str(ckpt))} /dev/zero -o out.msp",
              tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("neimsctl predict: out of memory: ")
    assert not [n for n in os.listdir(tmp_path) if "out.msp" in n]
