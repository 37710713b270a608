"""Shared fixtures: where the repo, its bundled sample and ../shared/data are."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NEIMSCTL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SAMPLE_DIR = REPO_ROOT / "neimsctl" / "resources" / "sample"

# Tests run with --import-mode=importlib (test files in different folders share basenames);
# shared test helpers (tests/unit/*/_*.py) are importable by their module name.
for _helper_dir in sorted({p.parent for p in (REPO_ROOT / "tests").rglob("_*.py")}):
    if str(_helper_dir) not in sys.path:
        sys.path.insert(0, str(_helper_dir))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The bundled CC BY / CC BY-SA sample (always present)."""
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def sample_msp() -> Path:
    return SAMPLE_DIR / "sample.msp"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repo; tests using it skip cleanly when it is absent."""
    if not (SHARED_DATA / "massbank_ei.msp").is_file():
        pytest.skip(f"../shared/data not found at {SHARED_DATA} (set NEIMSCTL_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def neimsctl_exe() -> str:
    """The installed console script (end-to-end tests run the real CLI)."""
    exe = shutil.which("neimsctl")
    if exe is None:
        pytest.fail("the neimsctl console script is not on PATH: pip install -e . first")
    return exe
