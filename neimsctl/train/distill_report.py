"""Expert-usage statistics and the distill report (``report.md`` of a ``neimsctl distill`` run).

Usage is the **share of routing slots** each expert receives (top-k routing gives every
molecule k slots; the shares sum to 1, uniform = 1/E), measured on the validation compounds
with eval-mode routing (no gate noise), overall and per compound class
(:mod:`neimsctl.chem.compound_class`). An expert is flagged as **collapsed** when it gets
< 5 % of the slots (starved) or is picked for > 80 % of the molecules, i.e. a slot share above
``0.8 / k`` (dominant).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from neimsctl.chem.compound_class import CLASSES
from neimsctl.evaluate.metrics import DEFAULT_KS
from neimsctl.evaluate.validation import VAL_MASS_FILTER
from neimsctl.io.streams import atomic_path
from neimsctl.train.report import read_log, write_report

__all__ = ["MIN_SHARE", "MAX_PICKED", "usage_table", "collapse_flags", "write_distill_report"]

MIN_SHARE = 0.05     # an expert with fewer routing slots is starved
MAX_PICKED = 0.80    # an expert picked for more molecules than this is dominant


def _shares(routes: np.ndarray, n_experts: int) -> list[float]:
    counts = np.bincount(routes.reshape(-1), minlength=n_experts).astype(float)
    return (counts / max(counts.sum(), 1.0)).tolist()


def usage_table(routes: np.ndarray, classes: np.ndarray, n_experts: int) -> dict[str, Any]:
    """Routing-slot shares overall and per class.

    Parameters
    ----------
    routes
        ``(N, k)`` chosen expert indices per molecule.
    classes
        ``(N,)`` class ids (positions in :data:`CLASSES`).

    Returns
    -------
    dict
        ``{"overall": [E floats], "by_class": {class: [E floats]}, "n_by_class": {class: n}}``;
        a class with no molecules has shares of 0.
    """
    routes, classes = np.asarray(routes), np.asarray(classes)
    by = {c: _shares(routes[classes == i], n_experts) for i, c in enumerate(CLASSES)}
    n = {c: int((classes == i).sum()) for i, c in enumerate(CLASSES)}
    return {"overall": _shares(routes, n_experts), "by_class": by, "n_by_class": n}


def collapse_flags(overall: list[float], top_k: int) -> list[str]:
    """Human-readable collapse findings (empty when routing is healthy)."""
    out = []
    for i, s in enumerate(overall):
        if s < MIN_SHARE:
            out.append(f"expert {i} gets {s:.1%} of routing slots (< {MIN_SHARE:.0%})")
        elif s * top_k > MAX_PICKED:
            out.append(f"expert {i} is picked for {s * top_k:.0%} of molecules (> {MAX_PICKED:.0%})")
    return out


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |"


def write_distill_report(out_dir: Path, *, mode: str = "", n_steps: int | None = None) -> Path:
    """The shared report (curves, per-epoch table with val Recall@10; ``n_steps`` optimizer
    steps, see :func:`~neimsctl.train.report.write_report`) plus validation and expert-usage
    sections from ``train_log.jsonl``; returns the report path."""
    path = write_report(out_dir, metric="val_recall_at_10", n_steps=n_steps)
    _, epochs = read_log(out_dir / "train_log.jsonl")
    experts = [orjson.loads(ln) for ln in (out_dir / "train_log.jsonl").read_bytes().splitlines()
               if ln.strip() and b'"kind":"experts"' in ln]
    keys = ["val_mean_cosine", *(f"val_recall_at_{k}" for k in DEFAULT_KS),
            f"val_recall_at_10_mass{VAL_MASS_FILTER:g}"]
    lines = ["", f"## Validation (distill: {mode})" if mode else "## Validation", "",
             _row(["epoch", "mean cos", *(f"R@{k}" for k in DEFAULT_KS),
                   f"R@10 +-{VAL_MASS_FILTER:g} Da", "best"]),
             "|" + "---|" * (len(keys) + 2)]
    for e in epochs:
        v = e.get("val", {})
        lines.append(_row([e.get("epoch"), *(v.get(k, "-") for k in keys),
                           "yes" if e.get("best") else ""]))
    if experts:
        last = experts[-1]
        n_exp = len(last["overall"])
        lines += ["", "## Expert usage (val compounds, share of routing slots)", "",
                  "Per epoch, overall:", "",
                  _row(["epoch", *(f"e{i}" for i in range(n_exp)), "collapse"]),
                  "|" + "---|" * (n_exp + 2)]
        lines += [_row([r["epoch"], *r["overall"], "; ".join(r["collapse"]) or "no"])
                  for r in experts]
        lines += ["", f"By compound class, epoch {last['epoch']}:", "",
                  _row(["class", "n", *(f"e{i}" for i in range(n_exp))]),
                  "|" + "---|" * (n_exp + 2)]
        lines += [_row([c, last["n_by_class"][c], *last["by_class"][c]]) for c in CLASSES]
    with atomic_path(path) as tmp:
        tmp.write_text(path.read_text(encoding="utf-8") + "\n".join(lines) + "\n",
                       encoding="utf-8")
    return path
