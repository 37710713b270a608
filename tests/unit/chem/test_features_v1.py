"""Featurizer mode v1 (NEIMS v1 baseline input): Morgan counts, registry, shards, dataset."""

from __future__ import annotations

import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from neimsctl.chem.features import FEATURIZERS, get_featurizer
from neimsctl.chem.features_v1 import V1Featurizer, v1_vectors

SMILES = ["CCO", "c1ccccc1C(=O)O", "CC(=O)Oc1ccccc1C(=O)O", "C" * 40, "ClC(Cl)(Cl)Cl", "[Na+].[Cl-]"]


def test_registered_and_settings():
    assert FEATURIZERS["v1"] is V1Featurizer
    f = get_featurizer("v1")
    s = f.settings
    assert s["mode"] == "v1" and s["morgan_counts"] == {
        "kind": "morgan", "radius": 2, "fp_size": 4096, "chirality": False, "saturate": 255}
    assert f.settings_hash != get_featurizer("student").settings_hash


@pytest.mark.parametrize("smi", SMILES)
def test_counts_equal_rdkit_clipped_and_student_fields_equal(smi):
    mol = Chem.MolFromSmiles(smi)
    want = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=4096).GetCountFingerprintAsNumPy(mol)
    got = get_featurizer("v1")(mol)
    assert got.morgan_counts.dtype == np.uint8 and got.morgan_counts.shape == (4096,)
    assert np.array_equal(got.morgan_counts, np.minimum(want, 255))
    student = get_featurizer("student")(mol)
    assert np.array_equal(got.ecfp, student.ecfp) and np.array_equal(got.counts, student.counts)


def test_long_chain_saturates():
    mol = Chem.MolFromSmiles("C" * 300)  # > 255 identical CH2 environments
    raw = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=4096).GetCountFingerprintAsNumPy(mol)
    assert raw.max() > 255
    assert get_featurizer("v1")(mol).morgan_counts.max() == 255


def test_v1_vectors():
    c = np.array([[0, 1, 255] + [0] * 4093], dtype=np.uint8)
    assert v1_vectors(c)[0, :3].tolist() == [0.0, 1.0, 255.0]
    assert v1_vectors(c, "log1p")[0, 2] == pytest.approx(np.log1p(255.0))
    with pytest.raises(ValueError):
        v1_vectors(c[:, :100])
    with pytest.raises(ValueError):
        v1_vectors(c, "sqrt")


def test_cli_shard_round_trip_and_dataset(neimsctl_exe, tmp_path: Path):
    smi = tmp_path / "in.smi"
    smi.write_text("\n".join(f"{s} mol{i}" for i, s in enumerate(SMILES[1:5])) + "\n")
    out = tmp_path / "v1.h5"
    proc = subprocess.run([neimsctl_exe, "featurize", "--mode", "v1", "-q", "--no-provenance",
                           "-o", str(out), str(smi)], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out) as f:
        assert f.attrs["mode"] == "v1"
        mc = f["morgan_counts"][:]
        assert mc.shape == (4, 4096) and mc.dtype == np.uint8
        assert f["counts"].shape == (4, 2048) and f["ecfp"].shape == (4, 512)
        smiles = [s.decode() for s in f["smiles"][:]]
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=4096)
    for row, s in zip(mc, smiles):
        assert np.array_equal(row, np.minimum(gen.GetCountFingerprintAsNumPy(Chem.MolFromSmiles(s)), 255))
    from neimsctl.data.dataset import StudentDataset, V1Dataset
    from neimsctl.errors import FormatError

    ds = V1Dataset(out, require_spectrum=False)
    b = ds.get_batch([2, 0])
    assert b["x"].shape == (2, 4096) and b["y"].shape == (2, 501)
    assert np.array_equal(b["x"].numpy(), mc[[2, 0]].astype(np.float32))
    assert b["mw"].tolist() == [int(x) for x in ds.mw[[2, 0]]]
    assert ds[1]["mw"] == int(ds.mw[1])
    logds = V1Dataset(out, require_spectrum=False, x_scale="log1p")
    assert np.allclose(logds.get_batch([0])["x"].numpy(), np.log1p(mc[[0]].astype(np.float32)))
    with pytest.raises(FormatError):
        StudentDataset(out, require_spectrum=False)
