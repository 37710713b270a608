"""softlabel and distill through the installed CLI and real pipes, with a tiny finetuned teacher."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from neimsctl.cli.main import app, load_commands
from neimsctl.io.softlabel_shard import SoftLabelReader

pytestmark = pytest.mark.cli
slow = pytest.mark.slow
load_commands()
TEACHER = ("--set model.hidden=16 --set model.num_layers=2 --set model.attention_hidden=8 "
           "--set model.pool_gate_hidden=8 --set 'model.ecfp_hidden=[32]' --set model.ecfp_out=16 "
           "--set 'model.head_hidden=[32,16]' --set train.batch_size=64 --set train.num_workers=0 "
           "--set train.threads=1 --set schedule.name=none --set train.epochs=1")
STUDENT = ("--set 'model.gate_hidden=[16]' --set model.expert_depth=1 --set model.expert_bottleneck=4 "
           "--set 'model.head_hidden=[32]' --set model.hidden_dim=16 --set train.batch_size=64 "
           "--set train.num_workers=0 --set train.threads=1 --set loss.warmup_epochs=1 "
           "--set train.epochs=2 --device cpu")


def sh(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, capture_output=True,
                          timeout=300)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, sample_msp: Path, neimsctl_exe: str) -> Path:
    d = tmp_path_factory.mktemp("kdcli")
    p = sh(f"neimsctl msp2jsonl {sample_msp} | tee r.jsonl | neimsctl featurize --mode teacher "
           "-o t.h5 && neimsctl featurize --mode student -o s.h5 < r.jsonl", d)
    assert p.returncode == 0, p.stderr.decode()
    return d


@pytest.fixture(scope="module")
def work(shards: Path, repo_root: Path) -> Path:
    d = shards
    p = sh(f"neimsctl finetune t.h5 --config {repo_root}/configs/finetune/teacher-cpu-small.yaml "
           f"{TEACHER} --device cpu --out-dir ft", d)
    assert p.returncode == 0, p.stderr.decode()
    return d


@slow
def test_softlabel_then_distill_two_epochs(work: Path, repo_root: Path) -> None:
    p = sh("neimsctl softlabel t.h5 --teacher ft/checkpoints/last.pt -o soft.h5 --samples 3 "
           "--batch-size 50 --device cpu --no-provenance", work)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == b"" and b"rejected 0" in p.stderr
    with SoftLabelReader(work / "soft.h5") as r:
        assert r.n_rows == 300 and r.settings["samples"] == 3 and "argv" not in r.attrs
    p = sh(f"neimsctl distill s.h5 --soft-labels soft.h5 "
           f"--config {repo_root}/configs/distill/student-cpu-small.yaml {STUDENT} --out-dir kd", work)
    assert p.returncode == 0, p.stderr.decode()
    assert b"student + KD" in p.stderr and p.stdout == b""
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "report.md", "config.yaml"):
        assert (work / "kd" / name).is_file(), name
    recs = [orjson.loads(x) for x in (work / "kd/train_log.jsonl").read_bytes().splitlines()]
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == [1, 2]


def test_console_is_one_compact_line_per_epoch_and_v_shows_every_metric(shards: Path) -> None:
    """Real student training on the sample: per epoch one line (epoch, loss, val Recall@10,
    best so far, time), no expert-usage lines; train_log.jsonl and the report keep every
    metric; -v prints them all, with expert usage."""
    p = sh(f"neimsctl distill s.h5 --no-kd {STUDENT} --out-dir compact", shards)
    assert p.returncode == 0, p.stderr.decode()
    err = p.stderr.decode()
    lines = [ln for ln in err.splitlines() if ln.startswith("neimsctl: epoch")]
    assert len(lines) == 2 and "expert usage" not in err, err
    assert all(re.fullmatch(r"neimsctl: epoch [12]/2  loss \S+  val_recall_at_10 \S+  best \S+ "
                            r"\((new|epoch 1)\)  \d+\.\d s", ln) for ln in lines), lines
    recs = [orjson.loads(x) for x in (shards / "compact/train_log.jsonl").read_bytes().splitlines()]
    epoch = [r for r in recs if r["kind"] == "epoch"][-1]
    assert {"val_mean_cosine", "val_recall_at_1", "val_recall_at_20_mass5"} <= set(epoch["val"])
    assert {"hard", "load", "entropy", "w_hard", "temperature", "grad_norm"} <= set(epoch)
    assert [r["epoch"] for r in recs if r["kind"] == "experts"] == [1, 2]
    report = (shards / "compact/report.md").read_text()
    assert all(f" {k} " in report for k in ("w_hard", "temperature", "route_e0", "val_mean_cosine"))
    p = sh(f"neimsctl distill s.h5 --no-kd {STUDENT} --set train.epochs=1 -v --out-dir full", shards)
    assert p.returncode == 0, p.stderr.decode()
    err = p.stderr.decode()
    line = next(ln for ln in err.splitlines() if ln.startswith("neimsctl: epoch 1/1"))
    for name in ("step", "grad_norm", "w_hard", "temperature", "val_mean_cosine",
                 "val_recall_at_20_mass5", "lr"):
        assert f" {name} " in line, (name, line)
    assert "neimsctl: epoch 1 expert usage" in err


@slow
def test_distill_with_teacher_computes_soft_labels_first(work: Path) -> None:
    p = sh(f"neimsctl distill s.h5 --teacher ft/checkpoints/last.pt --teacher-feats t.h5 "
           f"--samples 2 {STUDENT} --set train.epochs=1 --out-dir kd2", work)
    assert p.returncode == 0, p.stderr.decode()
    with SoftLabelReader(work / "kd2/soft_labels.h5") as r:
        assert r.settings["part"] == "train" and 0 < r.n_rows < 300


def test_refused_teacher_leaves_no_run_dir(work: Path, repo_root: Path) -> None:
    """A student checkpoint given as --teacher is refused before anything is written: the run
    directory that distill made for the soft labels is removed again (it was left empty)."""
    student = repo_root / "neimsctl/resources/models/student-default.pt"
    p = sh(f"neimsctl distill s.h5 --teacher {student} --teacher-feats t.h5 {STUDENT} "
           "--out-dir refused", work)
    assert p.returncode == 1 and b"a student checkpoint where a GNN teacher is needed" in p.stderr
    assert not (work / "refused").exists()


@slow
def test_baselines_run(work: Path) -> None:
    p = sh(f"neimsctl distill s.h5 --no-kd {STUDENT} --set train.epochs=1 --out-dir nokd", work)
    assert p.returncode == 0, p.stderr.decode()
    assert b"student, no KD" in p.stderr
    p = sh("neimsctl distill s.h5 --arch neims-v1 --set model.hidden_dim=32 --set model.n_blocks=1 "
           "--set train.epochs=1 --set train.num_workers=0 --device cpu --out-dir v1", work)
    assert p.returncode == 0, p.stderr.decode()
    assert (work / "v1/checkpoints/best.pt").is_file()


@pytest.mark.parametrize("args, code, text", [
    ("s.h5", 2, "--teacher, --soft-labels or --no-kd"),
    ("s.h5 --no-kd --soft-labels soft.h5", 2, "give one of"),
    ("s.h5 --teacher ft/checkpoints/last.pt", 2, "--teacher-feats"),
    ("s.h5 --arch neims-v1 --soft-labels soft.h5", 2, "without KD"),
    ("s.h5 --arch nope --no-kd", 2, "--arch"),
    ("s.h5 --no-kd --transfer s.h5", 2, "--transfer rows have no spectra"),
    ("s.h5 --soft-labels soft.h5 --transfer gone.h5", 2, "gone.h5"),
    ("missing.h5 --no-kd", 2, "no such file"),
    ("t.h5 --no-kd", 1, "distill needs `neimsctl featurize --mode student`"),
    ("s.h5 --no-kd --set train.bogus=1", 1, "train.bogus"),
    # the model and loss sections: named as the config names them, before any data is read
    ("s.h5 --no-kd --set model.expert_width=-3", 1,
     "model.expert_width: expected a positive integer or null, got -3"),
    ("s.h5 --no-kd --set model.bogus=1", 1, "model: unknown key(s) bogus"),
    ("s.h5 --no-kd --set loss.alpha=-3", 1, "loss.alpha: must be a number >= 0, got -3.0"),
    ("s.h5 --no-kd --set loss.temperature_start=0", 1, "loss.temperature_start: must be a number > 0"),
    ("s.h5 --no-kd --set loss.alpha=0 --set loss.beta=0 --set loss.gamma=0", 1, "not all 0"),
    ("s.h5 --arch neims-v1 --set model.n_blocks=-1", 1, "n_blocks"),
    ("s.h5 --arch neims-v1 -c {repo}/configs/distill/student-cpu-small.yaml", 1, "not --arch"),
    ("s.h5 --no-kd --resume", 1, "no checkpoints to resume"),      # refused before the data are loaded
    # a val part left empty by too few compounds (or an empty train part) is named as the config
    # key, as finetune names it (before the header line); a val share of 0 is a final fit
    ("s.h5 --no-kd --set 'data.split=[0.999,0.001,0]'", 1, "data.split: train or val part is empty"),
    ("s.h5 --no-kd --set 'data.split=[0,0.5,0.5]'", 1, "data.split: train or val part is empty"),
])
def test_distill_exit_codes(shards: Path, repo_root: Path, args: str, code: int, text: str,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(shards)
    r = CliRunner().invoke(app, ["distill", *shlex.split(args.format(repo=repo_root)),
                                 "--out-dir", "bad"])
    assert r.exit_code == code, r.output
    assert text in r.stderr and "Traceback" not in r.stderr and " spectra, train " not in r.stderr
    assert not (shards / "bad").exists()          # no run directory left behind, not even empty


def test_final_fit_without_a_val_part(shards: Path, repo_root: Path) -> None:
    """data.split with no val share: train on train + val, no epoch selection; best.pt is the
    last epoch (the recipe's final fit, tools/train_default_model.sh), for distill and finetune."""
    runs = {"d": f"neimsctl distill s.h5 --no-kd {STUDENT}",
            "f": f"neimsctl finetune t.h5 --config {repo_root}/configs/finetune/teacher-cpu-small.yaml "
                 f"{TEACHER} --set train.epochs=2 --device cpu"}
    for name, cmd in runs.items():
        p = sh(f"{cmd} --set 'data.split=[0.9,0.0,0.1]' --out-dir final_{name}", shards)
        assert p.returncode == 0, p.stderr.decode()
        assert b"no val part, no epoch selection: the last epoch is kept" in p.stderr
        assert b" / val 0 / test " in p.stderr
        ck = shards / f"final_{name}/checkpoints"
        assert (ck / "best.pt").read_bytes() == (ck / "last.pt").read_bytes()
        epochs = [orjson.loads(x) for x in (shards / f"final_{name}/train_log.jsonl").read_bytes().splitlines()
                  if b'"kind":"epoch"' in x]
        assert [e["epoch"] for e in epochs] == [1, 2] and all("val" not in e and e["best"] for e in epochs)


def test_softlabel_exit_codes(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(shards)
    r = CliRunner().invoke(app, ["softlabel", "t.h5", "--teacher", "none.pt", "-o", "-"])
    assert r.exit_code == 2 and "seekable" in r.stderr
    r = CliRunner().invoke(app, ["softlabel", "t.h5", "--teacher", "none.pt", "-o", "x.h5"])
    assert r.exit_code == 2 and "none.pt" in r.stderr and "no such file" in r.stderr
    r = CliRunner().invoke(app, ["softlabel", "t.h5", "--teacher", str(shards), "-o", "x.h5"])
    assert r.exit_code == 2 and "is a directory" in r.stderr


def test_softlabel_with_the_shipped_teacher_by_name(shards: Path) -> None:
    """-t teacher: the shipped teacher ensemble (int8; its GNN member first), as predict."""
    p = sh("neimsctl softlabel t.h5 -t teacher -o soft_shipped.h5 --samples 2 --batch-size 64 "
           "--device cpu --no-provenance", shards)
    assert p.returncode == 0, p.stderr.decode()
    with SoftLabelReader(shards / "soft_shipped.h5") as r:
        assert r.n_rows == 300 and r.settings["samples"] == 2


@slow
def test_softlabel_refuses_student_shards(work: Path) -> None:
    p = sh("neimsctl softlabel s.h5 --teacher ft/checkpoints/last.pt -o x.h5", work)
    assert p.returncode == 1 and b"softlabel needs `neimsctl featurize --mode teacher`" in p.stderr
    assert not (work / "x.h5").exists()


def test_cross_fitted_teachers_label_out_of_fold(shards: Path, repo_root: Path) -> None:
    """finetune --set data.fold=k/2 twice, then softlabel with both: each training compound
    labelled by the teacher that never saw it (issue 18)."""
    for k in (1, 2):
        p = sh(f"neimsctl finetune t.h5 --config {repo_root}/configs/finetune/teacher-cpu-small.yaml "
               f"{TEACHER} --set data.fold={k}/2 --device cpu --out-dir fold{k}", shards)
        assert p.returncode == 0, p.stderr.decode()
        assert f"data.fold {k}/2:".encode() in p.stderr and b"left out" in p.stderr
    p = sh("neimsctl softlabel t.h5 -t fold1/checkpoints/last.pt -t fold2/checkpoints/last.pt "
           "-o oof.h5 --samples 2 --batch-size 64 --device cpu", shards)
    assert p.returncode == 0, p.stderr.decode()
    assert b"out of fold" in p.stderr and b"(1/2, 2/2); 0 rows held out by no member" in p.stderr
    with SoftLabelReader(shards / "oof.h5") as r:
        assert r.n_rows == 300 and r.settings["folds"] == ["1/2", "2/2"]
    bad = sh(f"neimsctl finetune t.h5 --config {repo_root}/configs/finetune/teacher-cpu-small.yaml "
             f"{TEACHER} --set data.fold=3/2 --device cpu --out-dir foldbad", shards)
    assert bad.returncode == 1 and b"--set data.fold=3/2: must be k/K" in bad.stderr


def test_a_teacher_given_twice_is_warned(work: Path) -> None:
    """The same checkpoint twice (also under another name) pools its MC samples twice: warned."""
    shards = work
    ck = shards / "ft/checkpoints/last.pt"
    (shards / "again.pt").unlink(missing_ok=True)
    (shards / "again.pt").symlink_to(ck)
    r = CliRunner().invoke(app, ["softlabel", str(shards / "t.h5"), "-t", str(ck), "-t", str(shards / "again.pt"),
                                 "-o", str(shards / "twice.h5"), "--samples", "2", "-q"])
    assert r.exit_code == 0, r.output
    assert "warning: --teacher" in r.stderr and "the same file given 2 times" in r.stderr
    assert "MC samples count that many times" in r.stderr


def test_a_shard_given_twice_is_read_once(shards: Path) -> None:
    """s.h5 and a link to it: every spectrum was trained on twice and stood twice in the
    validation library (600 spectra from 300), without a word."""
    (shards / "again.h5").unlink(missing_ok=True)
    (shards / "again.h5").symlink_to(shards / "s.h5")
    p = sh(f"neimsctl distill s.h5 again.h5 --no-kd {STUDENT} --set train.epochs=1 "
           "--out-dir shard_twice", shards)
    assert p.returncode == 0, p.stderr.decode()
    assert (b"warning: shard s.h5, again.h5: the same file given 2 times: read once"
            in p.stderr), p.stderr.decode()
    assert b": 300 spectra, train " in p.stderr


def test_an_optim_lr_the_one_cycle_schedule_does_not_use_is_warned(shards: Path) -> None:
    p = sh(f"neimsctl distill s.h5 --no-kd {STUDENT} --set train.epochs=1 --set optim.lr=3e-4 "
           "--set schedule.max_lr=1e-3 -q --out-dir maxlr", shards)
    assert p.returncode == 0, p.stderr.decode()
    assert (b"warning: optim.lr=0.0003 is not used: the onecycle schedule sets the learning rate, "
            b"up to schedule.max_lr=0.001" in p.stderr), p.stderr.decode()


def test_quiet_keeps_warnings_and_the_final_line_as_its_help_says(shards: Path) -> None:
    """-q of the training commands: its --help said 'Only errors on stderr.', but the run's
    warnings and final line are shown (neimsctl-distill(1)); the help says so now."""
    p = sh(f"neimsctl distill s.h5 --no-kd {STUDENT} --set train.epochs=1 -q --out-dir quiet",
           shards)
    assert p.returncode == 0, p.stderr.decode()
    lines = p.stderr.decode().splitlines()
    assert re.fullmatch(r"neimsctl distill: 1 epochs, \d+ steps, best val_recall_at_10 \S+; "
                        r"checkpoints in quiet/checkpoints", lines[-1]), lines
    assert all("warning" in ln for ln in lines[:-1]) and not any("epoch 1/1" in ln for ln in lines)
    for cmd in ("pretrain", "finetune", "distill"):
        text = " ".join(sh(f"neimsctl {cmd} --help", shards).stdout.decode().split())
        assert "-q, --quiet Only warnings, errors and the final line" in text, cmd


def test_resume_with_another_teacher_or_other_soft_labels_is_refused(work: Path) -> None:
    """distill --resume went on silently (exit 0) with whatever it was given (another teacher's
    soft labels, other shards): the run keeps its shards and, with --teacher, the teacher
    checkpoint and its shards (else the --soft-labels file) by SHA-256; another is one line
    naming the checkpoint and both, exit 1, before the soft labels are computed or reused and
    before a shard is read, the run directory untouched; the same bytes under another name
    resume."""
    import shutil

    from neimsctl.models.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(work / "ft/checkpoints/last.pt")
    ck["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ck["model"].items()}
    save_checkpoint(work / "other_teacher.pt", ck)
    shutil.copy(work / "ft/checkpoints/last.pt", work / "same_teacher.pt")

    def run(kd: str, extra: str = "") -> subprocess.CompletedProcess:
        return sh(f"neimsctl distill s.h5 {kd} {STUDENT} --set schedule.name=none --out-dir "
                  f"kd_inputs {extra}", work)

    teacher = "--teacher-feats t.h5 --samples 2 --teacher"
    p = run(f"{teacher} ft/checkpoints/last.pt", "--set train.epochs=1 -q")
    assert p.returncode == 0, p.stderr.decode()
    before = {p: p.read_bytes() for p in (work / "kd_inputs").rglob("*") if p.is_file()}
    assert work / "kd_inputs/soft_labels.h5" in before
    p = run(f"{teacher} other_teacher.pt", "--resume")
    err = p.stderr.decode()
    assert p.returncode == 1 and err.count("\n") == 1, err
    assert err.startswith("neimsctl distill: cannot resume: kd_inputs/checkpoints/last.pt was "
                          "trained on s.h5 (sha256 "), err
    assert " + --teacher ft/checkpoints/last.pt (sha256 " in err
    assert " + --teacher-feats t.h5 (sha256 " in err and ", not on s.h5 (sha256 " in err
    assert " + --teacher other_teacher.pt (sha256 " in err and "give the run's input again" in err
    p = run("--soft-labels kd_inputs/soft_labels.h5", "--resume")      # the run's own labels
    err = p.stderr.decode()
    assert p.returncode == 1 and err.count("\n") == 1, err
    assert ", not on s.h5 (sha256 " in err and " + --soft-labels kd_inputs/soft_labels.h5 " in err
    assert {p: p.read_bytes() for p in (work / "kd_inputs").rglob("*") if p.is_file()} == before
    p = run(f"{teacher} same_teacher.pt", "--resume")
    err = p.stderr.decode()
    assert p.returncode == 0 and "resumed from" in err and "using the soft labels in" in err, err
    assert load_checkpoint(work / "kd_inputs/checkpoints/last.pt")["epoch"] == 2


def test_a_model_with_other_spectrum_bins_than_the_shards_is_one_line(shards: Path) -> None:
    """model.n_bins=10 on 501-bin shards was a shape traceback in the first step's loss."""
    for shard, mode in (("s.h5", "student"), ("v1.h5", "v1")):
        if not (shards / shard).exists():
            assert sh(f"neimsctl featurize --mode v1 r.jsonl -o {shard} -q", shards).returncode == 0
        arch = "--arch neims-v1 --set train.epochs=1" if mode == "v1" else f"--no-kd {STUDENT}"
        p = sh(f"neimsctl distill {shard} {arch} --set model.n_bins=10 --out-dir bins", shards)
        assert (p.returncode, p.stderr.decode().splitlines()[-1]) == (
            1, f"neimsctl distill: model.n_bins is 10 but the {mode} shards give 501 spectrum "
               "bins; set model.n_bins=501"), p.stderr.decode()
        assert b"Traceback" not in p.stderr
        assert not (shards / "bins").exists()


def test_soft_labels_of_another_library_numbered_alike_are_refused(work: Path) -> None:
    """Soft labels align with the student rows by id; those of another library whose records
    are numbered alike (ids 1..300 of other compounds, as two MSP exports) were taken without a
    word and the student learnt the wrong molecules' spectra (val Recall@10 0.47 -> 0.10 on
    MassBank). Each soft-label row keeps its compound's InChIKey block: another is one line
    naming an id and both compounds, exit 1, before any run directory is made."""
    p = sh("neimsctl softlabel t.h5 --teacher ft/checkpoints/last.pt -o soft_all.h5 --samples 2 "
           "--device cpu -q", work)
    assert p.returncode == 0, p.stderr.decode()
    with SoftLabelReader(work / "soft_all.h5") as r:
        assert r.blocks is not None and (r.blocks != b"").all() and len(r.blocks) == r.n_rows
    # the same records, each under its neighbour's id: another library numbered 1..300
    lines = (work / "r.jsonl").read_bytes().splitlines()
    recs = [orjson.loads(x) for x in lines]
    ids = [r["id"] for r in recs]
    for r, rid in zip(recs, ids[1:] + ids[:1]):
        r["id"] = rid
    (work / "other.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in recs) + b"\n")
    p = sh("neimsctl featurize --mode student other.jsonl -o other.h5 -q", work)
    assert p.returncode == 0, p.stderr.decode()
    p = sh(f"neimsctl distill other.h5 --soft-labels soft_all.h5 {STUDENT} --set train.epochs=1 "
           "--out-dir other_run", work)
    err = p.stderr.decode()
    assert p.returncode == 1 and err.count("\n") == 1, err
    assert re.fullmatch(r"neimsctl distill: soft_all\.h5: soft labels of other compounds: \d+ of "
                        r"\d+ rows differ by InChIKey \(e\.g\. id '[^']+' is [A-Z]{14} in the "
                        r"shards, [A-Z]{14} in the soft labels\); run neimsctl softlabel on the "
                        r"teacher features of the same records\n", err), err
    assert not (work / "other_run").exists()
    # both libraries together (a main and a replicate library, each numbered from 1): the line
    # names the ids given twice and the way out, not a softlabel run that cannot help
    p = sh(f"neimsctl distill s.h5 other.h5 --soft-labels soft_all.h5 {STUDENT} --set train.epochs=1 "
           "--out-dir both_run", work)
    err = p.stderr.decode()
    assert p.returncode == 1 and "the shards' ids are not unique" in err, err
    assert "renumber one library's records" in err and "run neimsctl softlabel" not in err
    p = sh(f"neimsctl distill s.h5 --soft-labels soft_all.h5 {STUDENT} --set train.epochs=1 -q "
           "--out-dir same_run", work)
    assert p.returncode == 0, p.stderr.decode()


def test_soft_labels_left_in_the_run_dir_by_another_teacher_are_refused(work: Path, repo_root: Path) -> None:
    """distill --teacher reused OUT/soft_labels.h5 as soon as it existed: a student distilled
    from another teacher's labels (or other --samples), exit 0. Now one line, nothing trained."""
    p = sh(f"neimsctl finetune t.h5 --config {repo_root}/configs/finetune/teacher-cpu-small.yaml "
           f"{TEACHER} --set train.seed=7 --device cpu --out-dir ft7 -q && mkdir -p kd7 && "
           "neimsctl softlabel t.h5 -t ft7/checkpoints/last.pt --part train -n 2 -o kd7/soft_labels.h5 -q",
           work)
    assert p.returncode == 0, p.stderr.decode()
    p = sh(f"neimsctl distill s.h5 --teacher ft/checkpoints/last.pt --teacher-feats t.h5 --samples 2 "
           f"{STUDENT} --set train.epochs=1 --out-dir kd7", work)
    err = p.stderr.decode()
    assert p.returncode == 1 and "kd7/soft_labels.h5 was made with other settings" in err, err
    assert "teacher_sha256" in err and "samples" not in err        # the same --samples: not named
    assert not (work / "kd7/checkpoints").exists() and "Traceback" not in err
