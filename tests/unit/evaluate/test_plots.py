"""The plots of ``eval --report`` are written and closed through one helper (no figure leaks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neimsctl.evaluate.plots import _plt, _save, mirror_plot


def test_save_writes_and_closes_the_figure(tmp_path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    assert _save(fig, tmp_path / "a.png") == tmp_path / "a.png"
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.number not in plt.get_fignums()


def test_mirror_plot_leaves_no_open_figure(tmp_path: Path) -> None:
    plt = _plt()
    before = set(plt.get_fignums())
    spec = np.zeros(501, np.float32)
    spec[[41, 43, 58]] = [0.3, 1.0, 0.5]
    out = mirror_plot(spec, spec[::-1].copy(), "acetone", tmp_path / "m.png")
    assert out.is_file() and set(plt.get_fignums()) == before
