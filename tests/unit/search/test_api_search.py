"""neimsctl.api.SpectralLibrary / open_index: the same hits as the CLI, Python objects in and out."""

from __future__ import annotations

import numpy as np
import pytest

from neimsctl.api import SpectralLibrary, open_index
from neimsctl.errors import FormatError, InputError
from neimsctl.io.spectra import load_spectra


def test_search_python_objects_and_files(sample_msp, tmp_path):
    data = load_spectra(sample_msp)
    lib = open_index(sample_msp)                       # MSP indexed in memory
    assert len(lib) == 300
    i = int(np.flatnonzero(data.mw < 400)[0])
    mz = np.flatnonzero(data.spectra[i])
    query = {"mz": mz.tolist(), "intensity": data.spectra[i][mz].tolist(), "mw": int(data.mw[i]), "id": "q"}
    hits = lib.search([query, (mz, data.spectra[i][mz])], top=3, score="entropy", mass_filter=5)
    assert len(hits) == 2 and hits[0][0]["hit_id"] == data.ids[i] and hits[0][0]["score"] == pytest.approx(1.0)
    assert all(abs(h["mass_diff"]) <= 5 for h in hits[0]) and hits[1][0]["mass_diff"] is None
    dense = lib.search(data.spectra[[i]], top=1)
    assert dense[0][0]["hit_id"] == data.ids[i]
    only = lib.search([query], top=5, candidates=[data.keys[i + 1]])
    assert {h["inchikey"][:14] for h in only[0]} <= {data.keys[i + 1][:14]}
    with pytest.raises(FormatError, match="mz_above_range"):
        lib.search([{"mz": [10, 600], "intensity": [1, 1]}])
    with pytest.raises(InputError, match="no such file"):
        SpectralLibrary(tmp_path / "none.h5")
