"""tools/run_state.py: when a training run counts as finished (sweep and the shell drivers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "run_state.py"


def state(d: Path) -> str:
    return subprocess.run([sys.executable, str(TOOL), str(d)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_done_only_when_every_epoch_is_trained(tmp_path) -> None:
    d = tmp_path / "run"
    assert state(d) == "new"
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.yaml").write_text("train:\n  epochs: 3\n")
    (d / "checkpoints" / "last.pt").write_bytes(b"x")
    (d / "report.md").write_text("stopped at an epoch's end\n")
    log = [{"kind": "epoch", "epoch": e} for e in (1, 2)]
    (d / "train_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in log) + '{"kind": "ep')
    assert state(d) == "partial"                     # report written, but 2 of 3 epochs
    with open(d / "train_log.jsonl", "a") as fh:
        fh.write('\n{"kind": "epoch", "epoch": 3}\n')
    assert state(d) == "done"
    (d / "checkpoints" / "interrupted.pt").write_bytes(b"x")
    assert state(d) == "partial"
    (d / "checkpoints" / "interrupted.pt").unlink()
    (d / "config.yaml").write_text(": not yaml [")
    assert state(d) == "partial"                     # unreadable config: not known to be done


def test_a_run_killed_before_its_first_checkpoint_is_partial(tmp_path) -> None:
    """The drivers pass --resume for 'partial': a directory that holds a run's log (or a file in
    checkpoints/) is refused by a new run, and --resume starts it again."""
    d = tmp_path / "run"
    d.mkdir()
    assert state(d) == "new"
    (d / "checkpoints").mkdir()
    assert state(d) == "new"                         # empty directories hold no run
    (d / "train_log.jsonl").write_text('{"kind": "step", "epoch": 0, "step": 1}\n')
    assert state(d) == "partial"
    (d / "train_log.jsonl").unlink()
    (d / "checkpoints" / "best.pt").write_bytes(b"x")
    assert state(d) == "partial"
