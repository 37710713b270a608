"""End to end: ``neimsctl distill`` under signals and ``-q``, on a tiny student shard.

SIGTERM exits 143 (Ctrl-C 130, SIGHUP 129) with a checkpoint to resume from; a ``kill -9`` leaves no
data-loader worker and no traceback behind; ``-q`` prints only warnings, errors and the final
line; ``report.md`` states the optimizer steps the run made.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import orjson
import psutil
import pytest

pytestmark = pytest.mark.cli

TINY = ["--no-kd", "--device", "cpu", "--set", "model.gate_hidden=[16]", "--set",
        "model.expert_depth=1", "--set", "model.expert_bottleneck=4", "--set",
        "model.head_hidden=[32]", "--set", "model.hidden_dim=16", "--set", "train.threads=1",
        "--set", "train.batch_size=16", "--set", "loss.warmup_epochs=1"]


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory, sample_msp: Path) -> Path:
    d = tmp_path_factory.mktemp("sig")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", f"neimsctl msp2jsonl -q {sample_msp} | "
                        "neimsctl featurize -q --mode student -o s.h5"], cwd=d, capture_output=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    return d


def start(d: Path, out: str, *extra: str) -> subprocess.Popen:
    # SIGHUP's default action even when the tests run under nohup (which the command honours)
    return subprocess.Popen(["neimsctl", "distill", "s.h5", *TINY, "--set", "train.epochs=200",
                             *extra, "--out-dir", out], cwd=d, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))


def wait_for_epoch(proc: subprocess.Popen) -> list[bytes]:
    """stderr lines up to the first epoch line (training is under way, loader workers live)."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(b"neimsctl: epoch 1/"):
            return seen
    pytest.fail(f"distill ended early ({proc.wait()}): {b''.join(seen).decode()}")


def test_quiet_shows_the_final_line_only_and_report_counts_every_step(shard: Path) -> None:
    # 236 train rows / 16 = 15 steps per epoch; step records every 7 steps -> the last is 28
    p = subprocess.run(["neimsctl", "distill", "-q", "s.h5", *TINY, "--set", "train.epochs=2",
                        "--set", "train.log_every=7", "--out-dir", "q"], cwd=shard,
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.decode().splitlines()
    assert lines[-1].startswith("neimsctl distill: 2 epochs, 30 steps, best val_recall_at_10 ")
    assert all("warning:" in ln for ln in lines[:-1]), lines     # e.g. expert collapse
    log = [orjson.loads(x) for x in (shard / "q/train_log.jsonl").read_bytes().splitlines()]
    assert max(r["step"] for r in log if r["kind"] == "step") == 28
    assert "- epochs: 2; optimizer steps: 30" in (shard / "q/report.md").read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])  # HUP: terminal closed
def test_signal_checkpoints_and_exits_128_plus_the_signal(shard: Path, sig: int) -> None:
    out = f"run-{sig}"
    proc = start(shard, out)
    wait_for_epoch(proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 128 + sig
    err = proc.stderr.read().decode()
    assert "Traceback" not in err
    name = signal.Signals(sig).name
    assert (f"neimsctl distill: interrupted ({name}); continue with the same command and --resume "
            f"(the run's settings: -c {out}/config.yaml)") in err
    ckpts = {p.name for p in (shard / out / "checkpoints").iterdir()}
    assert "interrupted.pt" in ckpts or "last.pt" in ckpts   # mid-epoch, or at its end
    assert f"interrupted ({name})" in err.splitlines()[-1]


def test_kill_9_leaves_no_loader_worker_and_no_traceback(shard: Path) -> None:
    proc = start(shard, "killed", "--set", "train.num_workers=1")
    wait_for_epoch(proc)
    # an epoch of this tiny run takes ~0.4 s on a quiet machine and its loader worker lives
    # only while the epoch's batches are read: look until one is there, then kill
    workers: list[int] = []
    deadline = time.monotonic() + 30
    while not workers and time.monotonic() < deadline:
        workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        if not workers:
            time.sleep(0.01)
    proc.kill()
    assert workers, "expected a data-loader worker (train.num_workers=1)"
    assert proc.wait(timeout=60) == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(psutil.pid_exists(w) and psutil.Process(w).status()
                                              != psutil.STATUS_ZOMBIE for w in workers):
        time.sleep(0.1)
    left = [w for w in workers if psutil.pid_exists(w)
            and psutil.Process(w).status() != psutil.STATUS_ZOMBIE]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"loader workers {left} outlived the killed distill"
    time.sleep(1.5)  # a worker's dying words would be written by now
    assert b"Traceback" not in proc.stderr.read()


def test_resume_goes_on_with_the_runs_own_settings(shard: Path) -> None:
    """distill --resume without -c reads the run's config.yaml (it built the default 49M-param
    student and failed on the checkpoint); -c RUN/config.yaml with --resume is accepted (it was
    refused as an input the run would overwrite); without --resume it still is."""
    def distill(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["neimsctl", "distill", "-q", "s.h5", "--no-kd", *args], cwd=shard,
                              capture_output=True, timeout=300)

    p = distill(*TINY[1:], "--set", "train.epochs=1", "--out-dir", "cycle")
    assert p.returncode == 0, p.stderr
    p = distill("--resume", "--set", "train.epochs=2", "--out-dir", "cycle")     # one-cycle: fixed
    assert p.returncode == 1 and p.stderr.decode().splitlines() == [
        "neimsctl distill: train.epochs: the run's onecycle learning-rate schedule was laid out for "
        "1 epochs (15 steps) and cannot be lengthened on --resume (asked: 2 epochs); resume with "
        "train.epochs=1, or start a new run"], p.stderr
    p = distill(*TINY[1:], "--set", "schedule.name=none", "--set", "train.epochs=1", "--out-dir", "own")
    assert p.returncode == 0, p.stderr
    p = distill("--resume", "--set", "train.epochs=2", "--out-dir", "own")
    assert p.returncode == 0 and b"2 epochs" in p.stderr.splitlines()[-1], p.stderr
    p = distill("-c", "own/config.yaml", "--resume", "--set", "train.epochs=3", "--out-dir", "own")
    assert p.returncode == 0 and b"3 epochs" in p.stderr.splitlines()[-1], p.stderr
    log = [orjson.loads(x) for x in (shard / "own/train_log.jsonl").read_bytes().splitlines()]
    assert sorted({r["epoch"] for r in log if r["kind"] == "epoch"}) == [1, 2, 3]
    p = distill("-c", "own/config.yaml", "--out-dir", "own")
    assert p.returncode == 2 and b"is the same file as --config own/config.yaml" in p.stderr
    # other model settings than the run's: named, not only torch's tensor shapes
    p = distill("--resume", "--set", "model.hidden_dim=32", "--set", "train.epochs=3", "--out-dir", "own")
    assert p.returncode == 1 and (b"the run was trained with other model settings (model.hidden_dim "
                                  b"16 -> 32): resume with the run's own (-c own/config.yaml)") in p.stderr
