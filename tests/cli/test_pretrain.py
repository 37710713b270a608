"""``neimsctl pretrain`` end to end: the installed CLI on real SMILES, resume, rejects, exit codes."""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from neimsctl.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
CFG = str(REPO / "configs" / "pretrain" / "teacher-cpu-small.yaml")
TINY = [f"--set={kv}" for kv in (
    "model.hidden=16", "model.num_layers=1", "model.ecfp_hidden=[32]", "model.ecfp_out=16",
    "model.head_hidden=[32,16]", "train.batch_size=16", "train.num_workers=1",
    "data.max_val_records=30", "schedule.t0=2", "train.log_every=1",
    "train.steps_per_epoch=null")]  # an epoch = one pass over the (small) input
# real MOSES molecules (first lines of ../shared/data/pretrain/moses_train.smi.zst)
MOSES = ["CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1", "CC(C)(C)C(=O)C(Oc1ccc(Cl)cc1)n1ccnc1",
         "Cc1c(Cl)cccc1Nc1ncccc1C(=O)OCC(O)CO", "Cn1cnc2c1c(=O)n(CC(O)CO)c(=O)n2C",
         "CC1Oc2ccc(Cl)cc2N(CC(O)CO)C1=O", "CCOC(=O)c1cncn1C1CCCc2ccccc21"]

pytestmark = pytest.mark.cli


def _tiny(tmp_path: Path) -> Path:
    lines = [f"{'C' * k}{s} m{k}" for k in range(1, 11) for s in MOSES]  # 60 molecules
    lines[3], lines[50] = "C1CC not_closed", "Xx bad_atom"
    path = tmp_path / "tiny.smi"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(exe: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "pretrain", *args], capture_output=True, text=True, timeout=300)


def test_tiny_file_two_epochs_rejects_then_resume(neimsctl_exe, tmp_path):
    out = tmp_path / "run"
    args = [str(_tiny(tmp_path)), "-c", CFG, *TINY, "-o", str(out)]
    proc = _run(neimsctl_exe, *args, "--set", "train.epochs=2")
    assert proc.returncode == 1, proc.stderr  # rejected SMILES: exit 1 after a complete run
    assert proc.stdout == ""
    assert "SMILES rejected: 2 (unparsable_structure: 2" in proc.stderr
    rejects = [orjson.loads(ln) for ln in (out / "rejects.jsonl").read_bytes().splitlines()]
    assert sorted(r["line"] for r in rejects) == [4, 51]
    # formats/rejects.v1.md: a reason code and a human-readable detail (the detail was "")
    assert all(r["reason"] == "unparsable_structure" and
               r["detail"].startswith("RDKit cannot parse SMILES ") for r in rejects), rejects
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "report.md", "config.yaml",
                 "train_log.jsonl"):
        assert (out / name).is_file(), name
    epochs = [r for r in map(orjson.loads, (out / "train_log.jsonl").read_bytes().splitlines())
              if r["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and "val_bond_acc" in epochs[0]["val"]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("neimsctl: epoch")]
    assert len(lines) == 2 and all(re.fullmatch(r"neimsctl: epoch [12]/2  loss \S+  val_bond_acc "
                                                r"\S+  best \S+ \((new|epoch 1)\)  \d+\.\d s", ln)
                                   for ln in lines), proc.stderr
    proc = _run(neimsctl_exe, *args, "--set", "train.epochs=3", "--resume")
    assert "resumed from" in proc.stderr and "3 epochs, " in proc.stderr, proc.stderr
    assert len((out / "rejects.jsonl").read_bytes().splitlines()) == 2  # not reported twice


def test_resume_with_another_input_is_refused_naming_both(neimsctl_exe, tmp_path):
    """pretrain --resume went on with whatever SMILES it was given (the val part and every
    later epoch from another file, silently): another input is one line naming both, exit 1,
    the run directory untouched; the run's own input resumes as before."""
    out, a = tmp_path / "run", _tiny(tmp_path)
    b = tmp_path / "other.smi"
    b.write_text("".join(f"{'C' * k}{s} o{k}\n" for k in range(2, 12) for s in MOSES))
    args = ["-c", CFG, *TINY, "-o", str(out), "-q"]
    assert _run(neimsctl_exe, str(a), *args, "--set", "train.epochs=1").returncode == 1  # 2 rejects
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = _run(neimsctl_exe, str(b), *args, "--set", "train.epochs=2", "--resume")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"neimsctl pretrain: cannot resume: {out}/checkpoints/last.pt "
                                  f"was trained on {a} (sha256 "), proc.stderr
    assert f", not on {b} (sha256 " in proc.stderr and "give the run's input again" in proc.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    proc = _run(neimsctl_exe, str(a), *args[:-1], "--set", "train.epochs=2", "--resume")
    assert proc.returncode == 0 and "resumed from" in proc.stderr, proc.stderr
    assert "2 epochs, " in proc.stderr  # (its 2 rejects were counted by the first part)


def test_real_moses_zstd_stream(neimsctl_exe, shared_data, tmp_path):
    src = shared_data / "pretrain" / "moses_train.smi.zst"
    proc = _run(neimsctl_exe, str(src), "-c", CFG, *TINY, "--max-molecules", "300",
                "--set", "train.epochs=2", "-o", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    assert "SMILES rejected: 0" in proc.stderr and "2 epochs" in proc.stderr
    log = (tmp_path / "m" / "train_log.jsonl").read_bytes().splitlines()
    epoch = [r for r in map(orjson.loads, log) if r["kind"] == "epoch"]
    assert 200 < epoch[0]["samples"] < 300  # one pass over the train part of 300 molecules


def test_stdin_and_pcqm_style_csv(tmp_path):
    runner = CliRunner()
    cli_main.load_commands()
    csv = tmp_path / "data.csv.gz"
    body = "idx,smiles,homolumogap\n" + "".join(
        f"{i},{'C' * k}{s},1.0\n" for i, (k, s) in enumerate((k, s) for k in range(1, 12)
                                                            for s in MOSES))
    csv.write_bytes(gzip.compress(body.encode()))
    res = runner.invoke(cli_main.app, ["pretrain", str(csv), "--smiles-column", "smiles", "-c", CFG,
                                       *TINY, "--steps-per-epoch", "1", "--set", "train.epochs=1",
                                       "--set", "train.num_workers=0", "-o", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "checkpoints" / "best.pt").is_file()
    res = runner.invoke(cli_main.app, ["pretrain", "-", "-c", CFG, *TINY,
                                       "--set", "train.epochs=1", "--set", "train.num_workers=0",
                                       "-o", str(tmp_path / "s")],
                        input=_tiny(tmp_path).read_text())
    assert res.exit_code == 1 and "SMILES rejected: 2" in res.output  # stdin: same as the file


def test_refused_input_leaves_no_run_dir(tmp_path):
    """A run that fails before writing anything (no valid molecule) removes the directory it made."""
    cli_main.load_commands()
    (tmp_path / "empty.smi").write_text("")
    res = CliRunner().invoke(cli_main.app, ["pretrain", str(tmp_path / "empty.smi"), "-c", CFG,
                                            "-o", str(tmp_path / "run")])
    assert res.exit_code == 1 and "no valid molecule" in res.output, res.output
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()                   # a directory that was there before stays
    res = CliRunner().invoke(cli_main.app, ["pretrain", str(tmp_path / "empty.smi"), "-c", CFG,
                                            "-o", str(tmp_path / "kept")])
    assert res.exit_code == 1 and (tmp_path / "kept").is_dir()


def test_a_train_part_without_a_molecule_is_refused_not_trained_for_zero_steps(tmp_path):
    """Two molecules, both in the val part: the epoch made 0 steps ('loss 0') and the run
    ended as if trained, with 1000 empty steps per epoch; rejects named lines without the blank
    lines above them."""
    cli_main.load_commands()
    src = tmp_path / "few.smi"
    src.write_text("\n\n" + MOSES[0] + "\nxx\n")
    res = CliRunner().invoke(cli_main.app, [
        "pretrain", str(src), "-c", CFG, *TINY, "--steps-per-epoch", "1000",
        "--set", "train.epochs=1", "--set", "train.num_workers=0",
        "--set", "data.split=[0.01,0.99,0]", "-o", str(tmp_path / "run")])
    assert res.exit_code == 1, res.output
    assert "few.smi: line 4: unparsable_structure" in res.output
    assert "epoch 1: not one training batch: the train part holds no valid molecule" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "run/checkpoints/last.pt").exists()
    # nothing left that looks like a run: the same command again says the same, not "holds a
    # training run" (config.yaml and train_log.jsonl of the refused run were kept before)
    assert not (tmp_path / "run/config.yaml").exists()
    assert not (tmp_path / "run/train_log.jsonl").exists()
    again = CliRunner().invoke(cli_main.app, [
        "pretrain", str(src), "-c", CFG, *TINY, "--steps-per-epoch", "1000",
        "--set", "train.epochs=1", "--set", "train.num_workers=0",
        "--set", "data.split=[0.01,0.99,0]", "-o", str(tmp_path / "run")])
    assert again.exit_code == 1 and "not one training batch" in again.output, again.output


@pytest.mark.parametrize("args, code, text", [
    (["x.smi"], 2, "Missing option '--config'"),
    (["missing.smi", "-c", CFG], 2, "missing.smi: no such file"),
    (["{tiny}", "-c", CFG, "--resume", "-o", "{tmp}/none"], 1, "no checkpoints to resume"),
    (["{tiny}", "-c", CFG, "--set", "train.bogus=1"], 1, "--set train.bogus=1: unknown key"),
    # a shape traceback in the first step, config.yaml and train_log.jsonl left behind
    (["{tiny}", "-c", CFG, "--set", "model.atom_dim=12", "-o", "{tmp}/atoms"], 1,
     "neimsctl pretrain: model.atom_dim is 12 but the featurized SMILES give 48-d atom features; "
     "set model.atom_dim=48\n"),
])
def test_exit_codes(tmp_path, args, code, text):
    cli_main.load_commands()
    tiny = _tiny(tmp_path)
    args = [a.format(tiny=tiny, tmp=tmp_path) for a in args]
    res = CliRunner().invoke(cli_main.app, ["pretrain", *args])
    assert res.exit_code == code and text in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "atoms").exists()


def test_a_pretraining_checkpoint_is_refused_where_spectra_are_needed(neimsctl_exe, tmp_path,
                                                                       sample_msp):
    """Its spectrum head was never trained: predict, softlabel, ensemble and the API refuse it
    with one line (they used to exit 0 with nonsense spectra); finetune --init takes it."""
    out = tmp_path / "pre"
    proc = _run(neimsctl_exe, str(_tiny(tmp_path)), "-c", CFG, *TINY, "--set", "train.epochs=1",
                "-o", str(out), "-q")
    assert proc.returncode == 1, proc.stderr           # 2 rejected SMILES; the run is complete
    pre = out / "checkpoints" / "best.pt"
    feats = tmp_path / "t.h5"
    sh = subprocess.run(["bash", "-o", "pipefail", "-c",
                         f"neimsctl msp2jsonl -q {sample_msp} | neimsctl featurize -q --mode "
                         f"teacher -o {feats}"], capture_output=True, text=True, timeout=300)
    assert sh.returncode == 0, sh.stderr
    why = f"{pre}: a pretraining checkpoint (bond masking: its spectrum head was never trained); " \
          f"finetune it first"
    for args in (["predict", "-m", str(pre), "-o", str(tmp_path / "p.jsonl")],
                 ["softlabel", str(feats), "-t", str(pre), "-o", str(tmp_path / "soft.h5")],
                 ["ensemble", str(pre), "-o", str(tmp_path / "ens.pt")]):
        p = subprocess.run([neimsctl_exe, *args], input="CCO ethanol\n", capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 1 and p.stderr.startswith(f"neimsctl {args[0]}: {why}"), p.stderr
        assert p.stderr.count("\n") == 1 and p.stdout == ""
        assert not Path(args[-1]).exists() and not Path(args[-1] + ".partial").exists()
    from neimsctl.api import SpectrumPredictor
    from neimsctl.errors import CheckpointError

    with pytest.raises(CheckpointError, match="a pretraining checkpoint"):
        SpectrumPredictor(checkpoint=pre, device="cpu")
    ft = subprocess.run(
        [neimsctl_exe, "finetune", str(feats), "-c", str(REPO / "configs/finetune/teacher-cpu-small.yaml"),
         "--init", str(pre), "-o", str(tmp_path / "ft"), "-q", *[f"--set={kv}" for kv in (
             "model.hidden=16", "model.num_layers=1", "model.ecfp_hidden=[32]", "model.ecfp_out=16",
             "model.head_hidden=[32,16]", "train.epochs=1", "train.batch_size=64")]],
        capture_output=True, text=True, timeout=300)
    assert ft.returncode == 0, ft.stderr
    p = subprocess.run([neimsctl_exe, "predict", "-m", str(tmp_path / "ft/checkpoints/best.pt"),
                        "-q"], input="CCO ethanol\n", capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout, p.stderr    # the finetuned one predicts
