"""The model shipped in the package: loads from a fresh install and predicts plausible spectra."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from neimsctl.predict.model import MODELS_DIR

pytestmark = pytest.mark.cli


def test_shipped_files_card_and_size() -> None:
    pt, card_path = MODELS_DIR / "student-default.pt", MODELS_DIR / "student-default.json"
    assert pt.is_file() and card_path.is_file()
    assert pt.stat().st_size <= 25 * 2 ** 20
    card = json.loads(card_path.read_text())
    import hashlib

    assert hashlib.sha256(pt.read_bytes()).hexdigest() == card["sha256"]
    assert "NON-COMMERCIAL" in card["license"] and card["retrain_command"].startswith("tools/")
    assert card["test_metrics"]["recall@10"] > 0.5


def test_aspirin_from_the_readme_and_benzene_molecular_ion() -> None:
    proc = subprocess.run(["neimsctl", "predict"], input=b"CC(=O)Oc1ccccc1C(=O)O aspirin\n",
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert b"Name: aspirin" in proc.stdout and b"Num Peaks:" in proc.stdout
    proc = subprocess.run(["neimsctl", "predict", "--top", "5", "-q"], input=b"c1ccccc1 benzene\n",
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    peaks = [int(line.split()[1].rstrip(":")) for line in proc.stdout.decode().splitlines()
             if line.startswith("m/z")]
    assert len(peaks) == 5 and 78 in peaks      # benzene's base peak is its molecular ion, m/z 78


def test_api_default_model_spectrum_shape() -> None:
    from neimsctl import SpectrumPredictor

    p = SpectrumPredictor()
    s = p.predict_from_smiles("CCO")
    assert s.shape == (501,) and s.max() == pytest.approx(1.0)
    assert np.all(s[46 + 6:] == 0)              # nothing above M + 5 (ethanol, M = 46)
