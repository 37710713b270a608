"""write_msp / spectrum_peaks / the block forms: format details, round trips, the same bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest

from neimsctl.io.msp import read_msp
from neimsctl.io.msp_write import (format_msp_block, format_msp_record, spectra_peaks,
                                   spectrum_peaks, write_msp)

REC = {"name": "aspirin", "inchikey": "BSYNRYMUTXBXSQ-UHFFFAOYSA-N", "formula": "C9H8O4",
       "mw": 180, "smiles": "CC(=O)Oc1ccccc1C(=O)O", "id": "stdin:1",
       "comments": {"predicted": "neimsctl 0.1.0", "model": "student sha256:0123abcd4567 int8"},
       "mz": [43, 120, 180], "intensity": [999, 512, 87]}


def test_spectrum_peaks_scales_rounds_and_drops_below_threshold():
    spec = np.zeros(501)
    spec[[10, 43, 44, 45, 180]] = [0.0009, 2.0, 1.0, 0.002, 0.5]   # any scale; base = 2.0
    mz, inten = spectrum_peaks(spec)
    assert mz.tolist() == [43, 44, 45, 180]     # 0.00045 relative dropped, 0.001 kept
    assert inten.tolist() == [999, 500, 1, 250]  # 0.001 * 999 = 0.999 -> at least 1
    assert spectrum_peaks(np.zeros(501))[0].size == 0


def test_spectrum_peaks_threshold_option():
    spec = np.array([0.0, 1.0, 0.05, 0.2])
    assert spectrum_peaks(spec, min_relative=0.1)[0].tolist() == [1, 3]


def test_format_layout():
    text = format_msp_record(REC)
    lines = text.split("\n")
    assert lines[:6] == ["Name: aspirin", "InChIKey: BSYNRYMUTXBXSQ-UHFFFAOYSA-N", "Formula: C9H8O4",
                         "MW: 180", "SMILES: CC(=O)Oc1ccccc1C(=O)O", "ID: stdin:1"]
    assert lines[6] == 'Comments: "predicted=neimsctl 0.1.0" "model=student sha256:0123abcd4567 int8"'
    assert lines[7:11] == ["Num Peaks: 3", "43 999", "120 512", "180 87"]
    assert text.endswith("180 87\n\n")


def test_empty_fields_left_out_and_floats_written_plainly():
    text = format_msp_record({"name": "x", "inchikey": "", "mz": [1.0, 2.5], "intensity": [3.25, 999]})
    assert "InChIKey" not in text
    assert text == "Name: x\nNum Peaks: 2\n1 3.25\n2.5 999\n\n"


def test_bad_records_raise():
    with pytest.raises(ValueError, match="length|values"):
        format_msp_record({"name": "x", "mz": [1, 2], "intensity": [1]})
    with pytest.raises(ValueError, match="line break"):
        format_msp_record({"name": "x\nMW: 3", "mz": [], "intensity": []})


def test_block_forms_give_the_bytes_of_the_one_record_forms():
    rng = np.random.default_rng(0)
    spectra = (rng.random((300, 501)) ** 8).astype(np.float32)
    spectra[rng.random(spectra.shape) < 0.7] = 0
    spectra[3] = 0                                   # no peaks
    spectra[4, 0] = 1e-30                            # one tiny peak at m/z 0
    spectra[5] = np.float32(1e-45)                   # denormals: every bin the base peak
    spectra[6] = np.nan                              # not a spectrum: no peaks
    offsets, mz, inten = spectra_peaks(spectra)
    headers = []
    for j, spec in enumerate(spectra):
        one = spectrum_peaks(spec)
        assert np.array_equal(one[0], mz[offsets[j]:offsets[j + 1]])
        assert np.array_equal(one[1], inten[offsets[j]:offsets[j + 1]])
        headers.append({**REC, "name": f"m{j}", "inchikey": "" if j % 3 else REC["inchikey"],
                        "comments": REC["comments"] if j % 2 else {}})
    want = "".join(format_msp_record({**h, "mz": mz[a:b], "intensity": inten[a:b]})
                   for h, a, b in zip(headers, offsets[:-1], offsets[1:])).encode()
    assert format_msp_block(headers, offsets, mz, inten) == want
    # values beyond the digit tables, and no peaks at all
    two = [{"name": "a"}, {"name": "b"}]
    assert format_msp_block(two, [0, 2, 3], np.array([1, 70000, 5]), np.array([3, 4, 999])) == (
        format_msp_record({"name": "a", "mz": np.array([1, 70000]), "intensity": np.array([3, 4])})
        + format_msp_record({"name": "b", "mz": np.array([5]), "intensity": np.array([999])})
    ).encode()
    assert format_msp_block(two, [0, 0, 0], np.zeros(0, np.int64), np.zeros(0, np.int64)) == \
        b"Name: a\nNum Peaks: 0\n\nName: b\nNum Peaks: 0\n\n"
    with pytest.raises(ValueError, match="line break"):
        format_msp_block([{"name": "x\rMW: 3"}], [0, 1], np.array([1]), np.array([999]))


def test_round_trip_through_our_reader():
    other = dict(REC, name="benzene", id="b", mz=[51, 77, 78], intensity=[120, 180, 999])
    buf = io.BytesIO()
    assert write_msp(buf, [REC, other]) == 2
    recs = list(read_msp(io.BytesIO(buf.getvalue()), "rt.msp"))
    assert [r.reason for r in recs] == [None, None]
    assert recs[0].name == "aspirin" and recs[1].name == "benzene"
    assert recs[0].fields["inchikey"] == REC["inchikey"] and recs[0].fields["mw"] == "180"
    assert recs[0].fields["smiles"] == REC["smiles"] and recs[0].record_id == "stdin:1"
    assert recs[0].mz == [43, 120, 180] and recs[0].intensity == [999, 512, 87]
    assert recs[1].num_peaks == 3 and recs[1].mz == [51, 77, 78]


def test_round_trip_through_matchms(tmp_path):
    importing = pytest.importorskip("matchms.importing", reason="matchms not installed")
    path = tmp_path / "rt.msp"
    with open(path, "wb") as fh:
        write_msp(fh, [REC])
    spectra = list(importing.load_from_msp(str(path)))
    assert len(spectra) == 1
    s = spectra[0]
    assert s.peaks.mz.tolist() == [43, 120, 180]
    assert np.allclose(s.peaks.intensities / s.peaks.intensities.max(), [1, 512 / 999, 87 / 999])
    assert s.get("inchikey") == REC["inchikey"] and s.get("smiles") == REC["smiles"]
