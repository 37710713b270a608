"""PNG plots of ``neimsctl eval --report`` (matplotlib, Agg backend, no display needed).

- ``mirror_best.png``, ``mirror_median.png``, ``mirror_worst.png``: predicted spectrum up,
  measured spectrum down, for the queries with the best, median and worst plain cosine;
- ``recall_at_k.png``: Recall@K for K = 1..max(20, the largest asked K) (with the mass filter
  as a second curve when it was used);
- ``cosine_hist.png``: histogram of the per-query plain cosine;
- ``calibration.png`` (predictions with ``uncertainty`` only): mean |error| against mean predicted
  std per std quantile.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from neimsctl.evaluate.report import EvalResult

__all__ = ["write_plots", "mirror_plot"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write and close ``fig``; returns ``path``."""
    import matplotlib.pyplot as plt

    from neimsctl.io.streams import atomic_path

    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:   # whole or not at all (a full disk, Ctrl-C)
            fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def mirror_plot(pred: np.ndarray, measured: np.ndarray, title: str, path: Path) -> Path:
    """Predicted (up, blue) vs measured (down, red) stick spectra of one compound, base peak 100."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for spec, sign, colour, label in ((pred, 1, "tab:blue", "predicted"),
                                      (measured, -1, "tab:red", "measured")):
        top = float(spec.max()) or 1.0
        mz = np.flatnonzero(spec > 0)
        ax.vlines(mz, 0, sign * 100.0 * spec[mz] / top, colors=colour, linewidth=1.2, label=label)
    both = np.flatnonzero((pred > 0) | (measured > 0))
    hi = int(both.max()) + 10 if len(both) else 500
    ax.set_xlim(0, max(hi, 50))
    ax.set_ylim(-105, 105)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlabel("m/z")
    ax.set_ylabel("relative intensity (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def _recall_curve(result: "EvalResult", path: Path) -> Path:
    plt = _plt()
    kmax = max(20, *result.metrics["settings"]["ks"])
    k = np.arange(1, kmax + 1)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(k, [(result.ranks <= x).mean() for x in k], marker=".", label="no mass filter")
    if result.ranks_mass is not None:
        mf = result.metrics["settings"]["mass_filter"]
        ax.plot(k, [(result.ranks_mass <= x).mean() for x in k], marker=".", label=f"±{mf:g} Da filter")
    ax.set_xlabel("K")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Library matching, {len(result.ranks)} queries", fontsize=10)
    return _save(fig, path)


def _cosine_hist(result: "EvalResult", path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.hist(result.cosine, bins=np.linspace(0, 1, 41), color="tab:blue", edgecolor="white")
    ax.axvline(float(result.cosine.mean()), color="black", linestyle="--",
               label=f"mean {result.cosine.mean():.3f}")
    ax.set_xlabel("cosine (predicted vs measured)")
    ax.set_ylabel("queries")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _calibration(cal: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    s = [b["std_mean"] for b in cal["bins"]]
    e = [b["abs_err_mean"] for b in cal["bins"]]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot(s, e, marker="o", label="per std quantile")
    top = max([*s, *e, 1e-6])
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=0.8, label="|error| = std")
    ax.set_xlabel("mean predicted std")
    ax.set_ylabel("mean |error|")
    ax.set_title(f"Spearman (compound) {cal['spearman_compound']:.3f}", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(result: "EvalResult", out: Path) -> list[Path]:
    """Write every plot of the report into ``out``; returns their paths."""
    task = result.task
    pred = result.paired
    order = np.argsort(-result.cosine, kind="stable")
    picks = {"best": order[0], "median": order[len(order) // 2], "worst": order[-1]}
    paths = []
    for label, i in picks.items():
        title = (f"{label}: {result.query_names[i] or result.query_ids[i]} "
                 f"(id {result.query_ids[i]}), cosine {result.cosine[i]:.3f}, rank {result.ranks[i]}")
        paths.append(mirror_plot(pred[i], task.query_spectra[i], title, out / f"mirror_{label}.png"))
    paths.append(_recall_curve(result, out / "recall_at_k.png"))
    paths.append(_cosine_hist(result, out / "cosine_hist.png"))
    cal = result.metrics.get("uncertainty")
    if cal and cal["bins"]:
        paths.append(_calibration(cal, out / "calibration.png"))
    return paths
