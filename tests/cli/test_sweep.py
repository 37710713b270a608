"""tools/sweep.py: a tiny real sweep on the bundled sample (train, tabulate, resume, ensembles)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cli

SPEC = """\
command: distill
shards: [s.h5]
config: {repo}/configs/distill/student-compact.yaml
args: [--no-kd, --device, cpu]
set:
  train.threads: 1
  train.epochs: 1
  train.num_workers: 0
  train.batch_size: 64
  model.gate_hidden: [16]
  model.expert_depth: 1
  model.expert_bottleneck: 4
  model.head_hidden: [32]
  model.hidden_dim: 16
  loss.warmup_epochs: 1
grid:
  model.dropout: [0.0, 0.2]
seeds: [42, 1]
ensembles: [2]
parallel: 2
"""


def sh(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, capture_output=True,
                          timeout=600)


def test_sweep_trains_tabulates_and_resumes(tmp_path: Path, sample_msp: Path, repo_root: Path,
                                            neimsctl_exe: str) -> None:
    p = sh(f"neimsctl msp2jsonl -q {sample_msp} | neimsctl featurize -q --mode student -o s.h5",
           tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    (tmp_path / "spec.yaml").write_text(SPEC.format(repo=repo_root))
    tool = f"{sys.executable} {repo_root}/tools/sweep.py"
    p = sh(f"{tool} run spec.yaml out", tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    assert b"sweep: 4 trials to train" in p.stderr
    rows = list(csv.DictReader(open(tmp_path / "out/results.csv")))
    assert len(rows) == 4 and {r["state"] for r in rows} == {"done"}
    assert all(0 <= float(r["val_recall_at_10"]) <= 1 for r in rows)
    md = (tmp_path / "out/results.md").read_text()
    assert "model.dropout=0.0" in md and "model.dropout=0.2" in md and "2/2" in md
    assert "| 2 | sqrt |" in md and "| 2 | linear |" in md          # the ensemble rows
    assert (tmp_path / "out/results.png").stat().st_size > 1000
    # a second run trains nothing; a trial cut short (no report yet, last.pt kept) is resumed
    again = sh(f"{tool} run spec.yaml out", tmp_path)
    assert b"sweep: 0 trials to train" in again.stderr
    one = tmp_path / "out/trials" / rows[0]["id"]
    (one / "report.md").unlink()
    resumed = sh(f"{tool} run spec.yaml out", tmp_path)
    assert resumed.returncode == 0 and b"sweep: 1 trials to train" in resumed.stderr
    assert (one / "report.md").is_file()
    assert b"--resume" in (one.parent / f"{one.name}.log").read_bytes() or \
        b"resum" in (one.parent / f"{one.name}.log").read_bytes().lower()


def test_failing_trials_and_malformed_specs_are_reported(tmp_path: Path, repo_root: Path) -> None:
    (tmp_path / "s.h5").write_bytes(b"not a shard")      # every trial fails on it
    tool = f"{sys.executable} {repo_root}/tools/sweep.py"
    (tmp_path / "spec.yaml").write_text(SPEC.format(repo=repo_root).replace(
        "seeds: [42, 1]", "seeds: [42]").replace("ensembles: [2]", "ensembles: []"))
    p = sh(f"{tool} run spec.yaml out", tmp_path)
    assert p.returncode == 1 and b"FAILED (exit" in p.stderr and b"2 trial(s) failed" in p.stderr
    for text, msg in (("- a list\n", b"must be a mapping"),
                      (SPEC.format(repo=repo_root).replace("seeds: [42, 1]", "seeds: 42"),
                       b"seeds must be a list"),
                      (SPEC.format(repo=repo_root).replace("[0.0, 0.2]", "0.1"),
                       b"grid.model.dropout must be a non-empty list"),
                      (SPEC.format(repo=repo_root).replace("[s.h5]", "[nope.h5]"),
                       b"nope.h5: no such file"),
                      # a metric outside the table's columns was a KeyError traceback
                      (SPEC.format(repo=repo_root) + "metric: val_bogus\n",
                       b"metric 'val_bogus' is not a validation metric")):
        (tmp_path / "bad.yaml").write_text(text)
        p = sh(f"{tool} table bad.yaml outb", tmp_path)
        assert p.returncode == 1 and msg in p.stderr and b"Traceback" not in p.stderr, p.stderr


def test_sigterm_stops_the_trainings_and_the_next_run_resumes(tmp_path: Path, sample_msp: Path,
                                                               repo_root: Path) -> None:
    import signal
    import time

    p = sh(f"neimsctl msp2jsonl -q {sample_msp} | neimsctl featurize -q --mode student -o s.h5",
           tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    (tmp_path / "spec.yaml").write_text(SPEC.format(repo=repo_root).replace(
        "train.epochs: 1", "train.epochs: 400").replace("[0.0, 0.2]", "[0.0]").replace(
        "seeds: [42, 1]", "seeds: [42]").replace("ensembles: [2]", "ensembles: []"))
    proc = subprocess.Popen([sys.executable, f"{repo_root}/tools/sweep.py", "run", "spec.yaml",
                             "out"], cwd=tmp_path, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    logs: list[Path] = []
    while time.monotonic() < deadline:
        logs = list((tmp_path / "out/trials").glob("*.log")) if (tmp_path / "out/trials").exists() else []
        if logs and b"epoch 2/400" in logs[0].read_bytes():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert b"interrupted, resumes on the next run" in proc.stderr.read()
    trial = logs[0].with_suffix("")
    assert b"interrupted (SIGTERM)" in logs[0].read_bytes()
    assert {"interrupted.pt", "last.pt"} & {f.name for f in (trial / "checkpoints").iterdir()}
    table = sh(f"{sys.executable} {repo_root}/tools/sweep.py table spec.yaml out", tmp_path)
    assert table.returncode == 0 and b"| 0/1 |" in table.stdout   # not done: it resumes
    # ... and its best epoch so far is no result: it was the recipe's mean, min and max
    assert b"| 0/1 | nan | nan | nan |" in table.stdout, table.stdout
    rows = list(csv.DictReader(open(tmp_path / "out/results.csv")))
    assert [r["state"] for r in rows] == ["partial"]
