"""The end-of-training report: ``report.md`` and PNG curves from ``train_log.jsonl``.

:func:`write_report` reads the JSONL log the trainer wrote (``kind=step`` and ``kind=epoch``
records), draws ``loss.png``, ``grad_norm.png`` and ``lr.png`` against the optimizer step
(matplotlib, Agg backend, so no display is needed) and writes ``report.md`` with the run's
final numbers, the per-epoch table ``epoch | loss | <val metric> | grad norm | lr`` and every
other number of the epoch records (loss components, loss weights, temperature, routing shares,
the remaining validation metrics: what the console shows only with ``-v``).

Examples
--------
>>> write_report(Path("runs/finetune-1"))          # doctest: +SKIP
PosixPath('runs/finetune-1/report.md')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from neimsctl.errors import InputError
from neimsctl.io.streams import atomic_path

CURVES = (("loss", "training loss"), ("grad_norm", "gradient norm (before clipping)"),
          ("lr", "learning rate"))


def read_log(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """Split a training log into (step records, epoch records)."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the training log: {exc.strerror or exc}") from exc
    recs = [orjson.loads(ln) for ln in lines if ln.strip()]
    return [r for r in recs if r.get("kind") == "step"], [r for r in recs if r.get("kind") == "epoch"]


def _plot(steps: list[dict], epochs: list[dict], key: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    xs = [r["step"] for r in steps if r.get(key) is not None]
    ax.plot(xs, [r[key] for r in steps if r.get(key) is not None], lw=1, label=f"{key} (steps)")
    ep = [r for r in epochs if r.get(key) is not None]
    if key != "lr" and ep:
        ax.plot([r["step"] for r in ep], [r[key] for r in ep], "o-", lw=1.5, label=f"{key} (epoch mean)")
    if key in ("lr", "grad_norm") and xs and min(r[key] for r in steps if r.get(key)) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def optimizer_steps(steps: list[dict], epochs: list[dict]) -> int:
    """The optimizer steps a log shows: the highest ``step`` of its step and epoch records.

    Step records come every ``train.log_every`` steps only; the epoch records carry the step
    count at the end of each epoch, so a finished run is counted exactly.
    """
    return max((int(r["step"]) for r in (*steps, *epochs) if r.get("step") is not None), default=0)


#: Epoch-record fields of the "Per epoch" table or not metrics.
_SHOWN = frozenset({"kind", "epoch", "step", "loss", "grad_norm", "lr", "samples", "seconds",
                    "best", "val"})


def _other_metrics(epochs: list[dict], shown: set[str]) -> list[str]:
    """The "Every other metric" table: the numbers of the epoch records not in "Per epoch"."""
    train = [k for k in dict.fromkeys(k for r in epochs for k in r)
             if k not in _SHOWN and isinstance(next(r[k] for r in epochs if k in r), (int, float))]
    val = [k for k in dict.fromkeys(k for r in epochs for k in r.get("val", {})) if k not in shown]
    if not train and not val:
        return []
    head = ["epoch", *train, *val]
    rows = [[r.get("epoch"), *(r.get(k) for k in train), *(r.get("val", {}).get(k) for k in val)]
            for r in epochs]
    return ["", "## Every other metric per epoch", "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows)]


def write_report(out_dir: str | os.PathLike, log_path: str | os.PathLike | None = None,
                 metric: str | None = None, n_steps: int | None = None) -> Path:
    """Write ``report.md`` and the three PNG curves into ``out_dir``; returns the report path.

    Parameters
    ----------
    out_dir
        The run directory (holds ``train_log.jsonl`` unless ``log_path`` is given).
    metric
        Validation column of the table; default: every key of the epoch records' ``val``.
    n_steps
        Optimizer steps of the run (the trainer's count, exact also for a run interrupted
        mid-epoch); default: :func:`optimizer_steps` of the log.
    """
    out = Path(out_dir)
    steps, epochs = read_log(log_path or out / "train_log.jsonl")
    if n_steps is None:
        n_steps = optimizer_steps(steps, epochs)
    for key, title in CURVES:
        _plot(steps, epochs, key, title, out / f"{key}.png")
    vals = [metric] if metric else sorted({k for r in epochs for k in r.get("val", {})})
    head = ["epoch", "loss", *vals, "grad norm", "lr", "best"]
    rows = [[r.get("epoch"), r.get("loss"), *(r.get("val", {}).get(v) for v in vals),
             r.get("grad_norm"),
             r.get("lr"), r.get("best", False)] for r in epochs]
    sps = [r["samples_per_s"] for r in steps if r.get("samples_per_s")]
    lines = ["# Training report", "",
             f"- epochs: {len(epochs)}; optimizer steps: {n_steps}",
             f"- median throughput: {sorted(sps)[len(sps) // 2]:.1f} samples/s" if sps else
             "- throughput: not logged",
             f"- final training loss: {_fmt(epochs[-1].get('loss'))}" if epochs else "", "",
             "## Curves", "", "![loss](loss.png)", "![grad norm](grad_norm.png)",
             "![learning rate](lr.png)", "", "## Per epoch", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    lines += _other_metrics(epochs, shown=set(vals))
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
