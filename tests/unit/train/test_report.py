"""The training report: markdown table and non-empty PNG curves from a JSONL log."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from neimsctl.errors import InputError
from neimsctl.train.report import read_log, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _log(path: Path, epochs: int = 3, steps_per_epoch: int = 4) -> None:
    recs, step = [], 0
    for e in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            recs.append({"kind": "step", "epoch": e, "step": step, "batch": step, "loss": 1.0 / step,
                         "mse": 0.5 / step, "grad_norm": 2.0 / step, "lr": 1e-3 * 0.9 ** step,
                         "samples_per_s": 1000.0 + step})
        recs.append({"kind": "epoch", "epoch": e, "step": step, "loss": 1.0 / step,
                     "grad_norm": 2.0 / step, "lr": 1e-3 * 0.9 ** step, "samples": 128,
                     "seconds": 1.5, "val": {"val_recall_at_10": 0.5 + 0.1 * e}, "best": e != 2})
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))


def test_report_files_and_table(tmp_path: Path) -> None:
    _log(tmp_path / "train_log.jsonl")
    report = write_report(tmp_path)
    assert report == tmp_path / "report.md"
    for name in ("loss.png", "grad_norm.png", "lr.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
    text = report.read_text()
    assert "| epoch | loss | val_recall_at_10 | grad norm | lr | best |" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| epoch")]
    assert len(rows) == 3
    assert rows[2].startswith("| 3 | 0.08333 | 0.8 | 0.1667 |")
    assert "optimizer steps: 12" in text and "median throughput: 1007.0 samples/s" in text
    assert "![loss](loss.png)" in text
    assert not list(tmp_path.glob(".*part*"))


def test_report_metric_choice_and_empty_log(tmp_path: Path) -> None:
    _log(tmp_path / "log.jsonl", epochs=1)
    write_report(tmp_path, tmp_path / "log.jsonl", metric="val_recall_at_10")
    assert "| 1 | 0.25 | 0.6 |" in (tmp_path / "report.md").read_text()
    (tmp_path / "empty.jsonl").write_bytes(b"")
    write_report(tmp_path, tmp_path / "empty.jsonl")
    assert "epochs: 0" in (tmp_path / "report.md").read_text()


def test_missing_log_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read the training log"):
        read_log(tmp_path / "nope.jsonl")


def test_report_states_the_real_number_of_optimizer_steps(tmp_path: Path) -> None:
    """Step records come every train.log_every steps; the last one is not the step count."""
    _log(tmp_path / "full.jsonl")                      # 3 epochs of 4 steps
    recs = [orjson.loads(x) for x in (tmp_path / "full.jsonl").read_bytes().splitlines()]
    kept = [r for r in recs if r["kind"] == "epoch" or r["step"] % 5 == 0]  # log_every 5
    assert max(r["step"] for r in kept if r["kind"] == "step") == 10
    (tmp_path / "train_log.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in kept))
    text = write_report(tmp_path).read_text()
    assert "optimizer steps: 12" in text               # from the last epoch record
    # a run interrupted mid-epoch: the trainer's own count
    assert "optimizer steps: 14" in write_report(tmp_path, n_steps=14).read_text()
