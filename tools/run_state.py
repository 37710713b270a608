#!/usr/bin/env python3
"""Whether a training run directory is finished: ``done``, ``partial`` or ``new``.

    python3 tools/run_state.py RUN_DIR        # prints done | partial | new

``done``: its report is written, no ``interrupted.pt`` is left and ``train_log.jsonl`` holds every
epoch its ``config.yaml`` asks for (a training stopped by a signal exactly at an epoch's end also
writes its report and keeps only ``last.pt``: only the epochs tell it from a finished one).
``partial``: a run to continue with ``--resume``: a checkpoint, or a ``train_log.jsonl`` or
checkpoint file of a run killed before its first checkpoint (``--resume`` then starts it again;
without ``--resume`` the training commands refuse a directory that holds a run). ``new``: nothing
yet. Used by ``tools/sweep.py``, ``tools/pipeline.sh``, ``tools/train_default_model.sh`` and
``tools/bench/kd_oof.sh`` / ``kd_transfer.sh``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def run_state(d: Path) -> str:
    """``done``, ``partial`` or ``new`` (see the module docstring)."""
    ckpts = d / "checkpoints"
    if (d / "report.md").is_file() and not (ckpts / "interrupted.pt").exists() \
            and epochs_done(d) >= epochs_planned(d):
        return "done"
    if (ckpts / "interrupted.pt").exists() or (ckpts / "last.pt").exists():
        return "partial"
    if (d / "train_log.jsonl").exists() or (ckpts.is_dir() and any(not p.is_dir() for p in ckpts.iterdir())):
        return "partial"          # killed before its first checkpoint: --resume starts it again
    return "new"


def epochs_planned(d: Path) -> int:
    try:
        cfg = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
        return int((cfg.get("train") or {}).get("epochs", 0))
    except (OSError, yaml.YAMLError, TypeError, ValueError, AttributeError):
        return 1 << 30            # unreadable: not known to be done


def epochs_done(d: Path) -> int:
    done = 0
    try:
        for line in (d / "train_log.jsonl").read_text(encoding="utf-8").splitlines():
            if '"kind":"epoch"' in line.replace(" ", ""):
                try:
                    done = max(done, int(json.loads(line).get("epoch", 0)))
                except ValueError:
                    continue          # a line cut by an interruption
    except OSError:
        return 0
    return done


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tools/run_state.py RUN_DIR")
    print(run_state(Path(sys.argv[1])))
