"""tools/pipeline.sh: the README's first command, end to end on the bundled sample."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.cli


def drive(repo_root: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo_root / "tools/pipeline.sh"), *map(str, args)],
                          capture_output=True, timeout=timeout)


def test_usage_errors_and_help(repo_root: Path, tmp_path: Path) -> None:
    assert drive(repo_root, "--help").returncode == 0
    proc = drive(repo_root)
    assert proc.returncode == 2 and b"no library given" in proc.stderr
    proc = drive(repo_root, tmp_path / "missing.msp")
    assert proc.returncode == 2 and b"cannot read" in proc.stderr
    proc = drive(repo_root, "--profile", "huge", "x.msp")
    assert proc.returncode == 2


def test_demo_runs_every_step_and_a_second_run_resumes(repo_root: Path, sample_msp: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = drive(repo_root, sample_msp, "--demo", "-o", out)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    for f in ("records.jsonl", "student.h5", "teacher.h5", "pretrain/checkpoints/best.pt",
              "teacher/checkpoints/best.pt", "soft_labels.h5", "student/checkpoints/best.pt",
              "test.predicted.msp", "eval/report.md"):
        assert (out / f).stat().st_size > 0, f
    m = orjson.loads((out / "eval.json").read_bytes())
    assert m["counts"]["n_queries"] > 0 and 0 < m["mean_cosine"] <= 1
    assert b"Recall@10" in proc.stdout and b"m/z " in proc.stdout
    # everything done is skipped the second time; predict + eval run again
    again = drive(repo_root, sample_msp, "--demo", "-o", out, timeout=300)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    for step in (b"msp2jsonl: done before", b"pretrain: done before", b"finetune: done before",
                 b"softlabel: done before", b"distill: done before"):
        assert step in again.stderr
    # a kill after a training step finished but before its marker was written: the next run
    # takes the finished run as done (it was exit 2: "holds a training run; give --resume")
    for step in ("pretrain", "distill"):
        (out / f".done-{step}").unlink()
    third = drive(repo_root, sample_msp, "--demo", "-o", out, timeout=300)
    assert third.returncode == 0, third.stderr.decode()[-2000:]
    assert b"pretrain: done before" in third.stderr and b"distill: done before" in third.stderr
    assert (out / ".done-distill").exists()
