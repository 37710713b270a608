"""finetune through the installed CLI: msp2jsonl | featurize --mode teacher, then tiny runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import orjson
import pytest
import torch

from neimsctl.models.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.cli
TINY = ("--set model.hidden=16 --set model.num_layers=2 --set model.attention_hidden=8 "
        "--set model.pool_gate_hidden=8 --set 'model.ecfp_hidden=[32]' --set model.ecfp_out=16 "
        "--set 'model.head_hidden=[32,16]' --set train.batch_size=64 --set train.num_workers=0 "
        "--set train.threads=1 --set schedule.name=none")


def sh(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, capture_output=True,
                          timeout=300)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, sample_msp: Path, repo_root: Path,
         neimsctl_exe: str) -> Path:
    d = tmp_path_factory.mktemp("ftcli")
    p = sh(f"neimsctl msp2jsonl {sample_msp} | neimsctl featurize --mode teacher -o f.h5", d)
    assert p.returncode == 0, p.stderr.decode()
    (d / "cfg.yaml").write_bytes((repo_root / "configs/finetune/teacher-cpu-small.yaml").read_bytes())
    return d


def finetune(work: Path, out: str, epochs: int, extra: str = "") -> subprocess.CompletedProcess:
    return sh(f"neimsctl finetune f.h5 --config cfg.yaml {TINY} --set train.epochs={epochs} "
              f"--device cpu --out-dir {out} {extra}", work)


def epochs_logged(run: Path) -> list[dict]:
    recs = [orjson.loads(x) for x in (run / "train_log.jsonl").read_bytes().splitlines() if x]
    return [r for r in recs if r["kind"] == "epoch"]


@pytest.fixture(scope="module")
def full(work: Path) -> Path:
    p = finetune(work, "full", 2)
    assert p.returncode == 0, p.stderr.decode()
    assert b"best val_score" in p.stderr and p.stdout == b""
    # one compact line per epoch: epoch, loss, the selection metric, best so far, time
    lines = [ln for ln in p.stderr.decode().splitlines() if ln.startswith("neimsctl: epoch")]
    assert len(lines) == 2, p.stderr.decode()
    assert all(re.fullmatch(r"neimsctl: epoch [12]/2  loss \S+  val_score \S+  best \S+ "
                            r"\((new|epoch 1)\)  \d+\.\d s", ln) for ln in lines), lines
    return work / "full"


def test_two_epochs_write_checkpoints_log_and_report(full: Path) -> None:
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "report.md", "config.yaml"):
        assert (full / name).is_file(), name
    eps = epochs_logged(full)
    assert [e["epoch"] for e in eps] == [1, 2]
    assert all({"val_recall_at_10", "val_mean_cosine"} <= set(e["val"]) for e in eps)
    ck = load_checkpoint(full / "checkpoints/last.pt")
    assert ck["epoch"] == 2 and len(ck["featurizer_hash"]) == 16


def test_resume_continues_to_the_same_weights(work: Path, full: Path) -> None:
    p = finetune(work, "half", 1)
    assert p.returncode == 0, p.stderr.decode()
    p = finetune(work, "half", 2, "--resume")
    assert p.returncode == 0, p.stderr.decode()
    assert b"resumed from" in p.stderr
    assert [e["epoch"] for e in epochs_logged(work / "half")] == [1, 2]
    a = load_checkpoint(full / "checkpoints/last.pt")["model"]
    b = load_checkpoint(work / "half/checkpoints/last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_checkpoint_and_hash_mismatch(work: Path, full: Path) -> None:
    p = finetune(work, "init", 1, f"--init {full}/checkpoints/best.pt")
    assert p.returncode == 0, p.stderr.decode()
    assert b"init: " in p.stderr
    ck = load_checkpoint(full / "checkpoints/best.pt")
    ck["featurizer_hash"] = "0123456789abcdef"
    save_checkpoint(work / "other.pt", ck)
    p = finetune(work, "bad", 1, "--init other.pt")
    assert p.returncode == 1
    assert b"neimsctl finetune:" in p.stderr and b"featurizer mismatch" in p.stderr
    assert not (work / "bad").exists()
    ck["featurizer_hash"] = "fedcba9876543210"            # a student's: named as one, not as a
    ck["config"] = {**ck["config"], "model": {**ck["config"]["model"], "name": "student"}}  # hash
    save_checkpoint(work / "student.pt", ck)
    p = finetune(work, "bad", 1, "--init student.pt")
    assert p.returncode == 1 and b"a student checkpoint where a GNN teacher's weights" in p.stderr
    assert b"featurizer mismatch" not in p.stderr and not (work / "bad").exists()
    p = finetune(work, "none", 1, "--init nope.pt")
    assert p.returncode == 2 and b"nope.pt: no such file" in p.stderr
    assert not (work / "none").exists()
    p = finetune(work, "nothere", 1, "--resume")       # refused before the data are loaded
    assert p.returncode == 1 and b"no checkpoints to resume from" in p.stderr
    assert not (work / "nothere").exists()


def test_a_teacher_that_reads_fragment_masses_trains_predicts_and_labels(work: Path) -> None:
    """model.fragments: true: the GNN teacher's fingerprint branch also reads the fragment masses
    (finetune attaches them to its batches; predict computes them for it; softlabel reads them)."""
    p = finetune(work, "frag", 1, "--set model.fragments=true")
    assert p.returncode == 0, p.stderr.decode()
    ck = load_checkpoint(work / "frag/checkpoints/best.pt")
    assert ck["config"]["model"]["fragments"] is True
    assert ck["model"]["ecfp_mlp.layers.0.weight"].shape[1] == 4096 + 2048 + 1002
    p = sh("printf 'CCCCC(=O)c1ccccc1 valerophenone\\nCCO ethanol\\n' | "
           "neimsctl predict -m frag/checkpoints/best.pt -O jsonl -q", work)
    assert p.returncode == 0, p.stderr.decode()
    recs = [orjson.loads(x) for x in p.stdout.splitlines()]
    assert [r["name"] for r in recs] == ["valerophenone", "ethanol"] and all(r["mz"] for r in recs)
    p = sh("neimsctl softlabel f.h5 -t frag/checkpoints/best.pt --samples 2 -o soft.h5 -q", work)
    assert p.returncode == 0, p.stderr.decode()
    assert (work / "soft.h5").is_file()


@pytest.mark.parametrize("extra, message", [
    ("--set train.log_every=0", b"neimsctl finetune: --set train.log_every=0: must be an integer in [1, 2147483647], got 0\n"),
    ("--set train.batch_size=0", b"neimsctl finetune: --set train.batch_size=0: must be an integer in [1, 2147483647], got 0\n"),
    # tracebacks in itertools.islice / the first step (a model wider than the shards' features)
    ("--set train.batch_size=1e20", b"neimsctl finetune: --set train.batch_size=1e20: must be an integer in [1, 2147483647], got 100000000000000000000\n"),
    ("--set model.n_bins=10", b"neimsctl finetune: model.n_bins is 10 but the teacher shards give 501 spectrum bins; set model.n_bins=501\n"),
    ("--set model.ecfp_dim=10", b"neimsctl finetune: model.ecfp_dim is 10 but the teacher shards give 4096 ECFP bits; set model.ecfp_dim=4096\n"),
    ("--set model.atom_dim=12", b"neimsctl finetune: model.atom_dim is 12 but the teacher shards give 48-d atom features; set model.atom_dim=48\n"),
    ("--set train.seed=-1", b"neimsctl finetune: --set train.seed=-1: must be an integer in [0, 4294967295], got -1\n"),
    ("--set train.threads=-1", b"neimsctl finetune: --set train.threads=-1: must be an integer >= 1, got -1\n"),
    ("--set optim.lr=nan", b"neimsctl finetune: --set optim.lr=nan: must be a number > 0, got nan\n"),
    ("--set train.epochs=abc", b"neimsctl finetune: --set train.epochs=abc: expected int, got 'abc'\n"),
])
def test_bad_config_values_are_one_line_and_write_nothing(work: Path, extra: str, message: bytes) -> None:
    """A value out of range is refused when the config is read: before the shards are loaded
    and before anything is written into the run directory (log_every=0 used to leave
    config.yaml and train_log.jsonl behind, after a ZeroDivisionError)."""
    p = finetune(work, "badvalue", 1, extra)
    assert (p.returncode, p.stderr) == (1, message)
    assert not (work / "badvalue").exists()


def test_an_unreadable_or_empty_config_is_one_line(work: Path) -> None:
    (work / "bin.yaml").write_bytes(bytes(range(256)) * 12)
    (work / "empty.yaml").write_bytes(b"")
    for name, why in (("bin.yaml", b"not a YAML config: not UTF-8 text"),
                      ("empty.yaml", b"the config is empty")):
        p = sh(f"neimsctl finetune f.h5 -c {name} -o cfgrun", work)
        assert p.returncode == 1 and p.stderr.startswith(b"neimsctl finetune: " + name.encode()
                                                         + b": " + why), p.stderr
        assert p.stderr.count(b"\n") == 1 and not (work / "cfgrun").exists()


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_new_run_into_a_run_directory_is_refused_before_any_work(work: Path) -> None:
    """A second run with the same -o used to replace checkpoints/best.pt and cut
    train_log.jsonl: refused (exit 2, one line) unless --resume continues it."""
    p = finetune(work, "twice", 1)
    assert p.returncode == 0, p.stderr.decode()
    before = _files(work / "twice")
    p = finetune(work, "twice", 1)
    assert p.returncode == 2 and p.stderr == (
        b"neimsctl finetune: --out-dir twice: holds a training run (twice/train_log.jsonl); give "
        b"--resume to continue it or choose another --out-dir\n")
    assert _files(work / "twice") == before
    # the run's own config as --config of a new run: it would be overwritten with the resolved one
    p = sh("neimsctl finetune f.h5 -c twice/config.yaml --set train.epochs=2 -o twice", work)
    assert p.returncode == 2 and p.stderr == (
        b"neimsctl finetune: --out-dir twice (writes config.yaml) is the same file as --config "
        b"twice/config.yaml: refusing to write into an input\n"), p.stderr
    assert _files(work / "twice") == before
    # ... and with --resume, the settings the run kept, to go on with
    p = sh("neimsctl finetune f.h5 -c twice/config.yaml --set train.epochs=2 -o twice --resume", work)
    assert p.returncode == 0 and b"resumed from" in p.stderr, p.stderr.decode()
    assert [e["epoch"] for e in epochs_logged(work / "twice")] == [1, 2]


def test_resume_goes_on_from_last_when_interrupted_cannot_be_read(work: Path, full: Path) -> None:
    import shutil

    run = work / "damaged"
    shutil.copytree(full, run)
    (run / "checkpoints" / "interrupted.pt").write_bytes(b"\0" * 64)
    p = finetune(work, "damaged", 3, "--resume")
    assert p.returncode == 0, p.stderr.decode()
    assert b"damaged/checkpoints/interrupted.pt: not a checkpoint file" in p.stderr
    assert b"resuming from damaged/checkpoints/last.pt instead" in p.stderr
    assert [e["epoch"] for e in epochs_logged(run)] == [1, 2, 3]
    # truncated, and no last.pt: one line naming the file and what is wrong with it
    last = run / "checkpoints" / "last.pt"
    (run / "checkpoints" / "interrupted.pt").write_bytes(last.read_bytes()[:5000])
    last.unlink()
    p = finetune(work, "damaged", 4, "--resume")
    assert p.returncode == 1 and p.stderr.endswith(
        b"neimsctl finetune: damaged/checkpoints/interrupted.pt: truncated or damaged checkpoint: "
        b"its zip archive has no end (the file was cut short, e.g. by a copy or a write that did "
        b"not finish)\n"), p.stderr
    assert b"Errno" not in p.stderr and b"Traceback" not in p.stderr


def test_a_shard_given_twice_is_read_once(work: Path) -> None:
    p = finetune(work, "shard_twice", 1, "../" + work.name + "/f.h5")
    assert p.returncode == 0, p.stderr.decode()
    assert b"warning: shard f.h5, ../" in p.stderr and b"read once" in p.stderr
    assert b"finetune: 300 spectra, train " in p.stderr


def test_resume_with_other_shards_is_refused_naming_both(work: Path, sample_msp: Path) -> None:
    """finetune --resume went on silently (exit 0) with whatever shards it was given, the
    run's later epochs on other spectra: other shards, or the run's in another order, are one
    line naming the checkpoint, the run's shards and the given ones, exit 1, before a shard is
    read, the run directory untouched; the same bytes under another name resume."""
    p = sh(f"neimsctl msp2jsonl -q {sample_msp} > r.jsonl && head -n 150 r.jsonl | neimsctl "
           "featurize -q --mode teacher -o a.h5 && tail -n 150 r.jsonl | neimsctl featurize -q "
           "--mode teacher -o b.h5 && cp a.h5 renamed.h5", work)
    assert p.returncode == 0, p.stderr.decode()

    def run(shards: str, epochs: int, extra: str = "") -> subprocess.CompletedProcess:
        return sh(f"neimsctl finetune {shards} --config cfg.yaml {TINY} --set train.epochs={epochs} "
                  f"--device cpu --out-dir inputs {extra}", work)

    p = run("a.h5 b.h5", 1, "-q")
    assert p.returncode == 0, p.stderr.decode()
    before = _files(work / "inputs")
    p = run("b.h5 a.h5", 2, "--resume")
    err = p.stderr.decode()
    assert p.returncode == 1 and err.count("\n") == 1, err
    assert err.startswith("neimsctl finetune: cannot resume: inputs/checkpoints/last.pt was "
                          "trained on a.h5 (sha256 "), err
    assert " + b.h5 (sha256 " in err and ", not on b.h5 (sha256 " in err
    assert "(the same files in another order: their data would be read in another order, so the " \
           "run would not go on where it stopped); give the run's input again" in err
    p = run("f.h5", 2, "--resume")
    err = p.stderr.decode()
    assert p.returncode == 1 and err.count("\n") == 1, err
    assert ", not on f.h5 (sha256 " in err and "another order" not in err, err
    assert _files(work / "inputs") == before
    p = run("renamed.h5 b.h5", 2, "--resume")
    assert p.returncode == 0 and b"resumed from" in p.stderr, p.stderr.decode()
    assert [e["epoch"] for e in epochs_logged(work / "inputs")] == [1, 2]


def test_a_run_directory_another_run_trains_in_is_refused_and_untouched(work: Path,
                                                                        full: Path) -> None:
    """Two runs in one run directory at once (two --resume, or two new runs started together)
    both trained and wrote its checkpoints and log: epochs 3 and 4 stood twice in
    train_log.jsonl. A training run holds an exclusive lock on its directory; another run finds
    it held: one line, exit 1, nothing of the directory touched. Once free, it resumes."""
    import fcntl
    import os
    import shutil

    run = work / "locked"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(full, run)
    before = _files(run)
    fd = os.open(run, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # the other run
        p = finetune(work, "locked", 3, "--set schedule.name=none --resume")
        err = p.stderr.decode()
        assert p.returncode == 1 and "Traceback" not in err, err
        assert err.endswith("neimsctl finetune: locked: another run is training in this run "
                            "directory; wait for it to end (or stop it) before starting or "
                            "resuming one\n"), err
        assert _files(run) == before
    finally:
        os.close(fd)
    p = finetune(work, "locked", 3, "--set schedule.name=none --resume")
    assert p.returncode == 0, p.stderr.decode()
    assert [e["epoch"] for e in epochs_logged(run)] == [1, 2, 3]


def test_shards_without_spectra_are_one_line(work: Path) -> None:
    """Teacher shards featurized from bare SMILES hold no spectrum: a 40-line traceback
    (IndexError in the width check) became one line naming the shard; no run directory."""
    p = sh("printf 'CCCCO\\nc1ccccc1O\\n' | neimsctl featurize --mode teacher -q -o smi.h5 && "
           f"neimsctl finetune smi.h5 --config cfg.yaml {TINY} --set train.epochs=1 --out-dir nospec",
           work)
    err = p.stderr.decode()
    assert p.returncode == 1 and "smi.h5: no row has a spectrum" in err and "Traceback" not in err
    assert not (work / "nospec").exists()


def test_a_resume_that_trains_nothing_keeps_the_run_s_config(work: Path, full: Path) -> None:
    """A finished 2-epoch run resumed with train.epochs=1 trains nothing, and its config.yaml
    still says 2 (it was rewritten to 1: `-c RUN/config.yaml --resume` then warned of a length
    the run never had)."""
    import shutil

    run = work / "done"
    shutil.copytree(full, run)
    before = (run / "config.yaml").read_bytes()
    p = finetune(work, "done", 1, "--resume")
    assert p.returncode == 0, p.stderr.decode()
    assert (run / "config.yaml").read_bytes() == before and b"epochs: 2" in before
    p = sh(f"neimsctl finetune f.h5 -c {run}/config.yaml --device cpu --out-dir done --resume", work)
    assert p.returncode == 0 and b"not the checkpoint's" not in p.stderr, p.stderr.decode()
