"""README "Identify unknowns": the shell block, run as written, gives the hits the README shows."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _blocks() -> tuple[str, list[list[str]]]:
    text = (ROOT / "README.md").read_text()
    part = text[text.index("## Identify unknowns"):]
    script = re.search(r"```bash\n(.*?)```", part, re.S).group(1)
    shown = re.search(r"```text\n(.*?)```", part, re.S).group(1)
    rows = [re.split(r"\s{2,}", line.strip()) for line in shown.strip().splitlines()]
    return script, rows


def test_the_readme_identification_example_gives_the_hits_it_shows(tmp_path):
    script, shown = _blocks()
    script = script.replace("S=neimsctl/resources/sample/sample.msp",
                            f"S={ROOT / 'neimsctl/resources/sample/sample.msp'}")
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = [re.split(r"\s{2,}", line.strip()) for line in proc.stdout.strip().splitlines()]
    assert got[0] == shown[0]                                   # the header
    by_key = {(r[0], r[2]): r for r in got[1:]}                  # (query_id, rank)
    for row in shown[1:]:
        run = by_key[(row[0], row[2])]
        # ids, names, masses, source and file exactly; the score to the last digits of bf16 vs fp32
        assert run[:3] + run[4:] == row[:3] + row[4:]
        assert float(run[3]) == pytest.approx(float(row[3]), abs=2e-3)
