"""neimsctl.api.SpectralLibrary / open_index: the same hits as the CLI, Python objects in and out."""

from __future__ import annotations

import numpy as np
import pytest

from neimsctl.api import SpectralLibrary, open_index
from neimsctl.errors import ConfigError, FormatError, InputError
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


# --- arguments the CLI refuses are refused (ConfigError / FormatError / InputError), never a silently
# wrong or empty result nor a bare TypeError, MemoryError or AssertionError

@pytest.fixture(scope="module")
def disk_index(sample_msp, tmp_path_factory):
    from neimsctl.io.rejects import Tally
    from neimsctl.search.build import build_index

    out = tmp_path_factory.mktemp("api") / "sample.h5"
    build_index([sample_msp], out, Tally())
    return out


@pytest.fixture(scope="module")
def lib(disk_index):
    with open_index(disk_index) as library:
        yield library


@pytest.fixture(scope="module")
def sample(sample_msp):
    data = load_spectra(sample_msp)
    i = int(np.flatnonzero(data.mw < 400)[0])
    mz = np.flatnonzero(data.spectra[i])
    return data, i, {"mz": mz.tolist(), "intensity": data.spectra[i][mz].tolist(), "mw": int(data.mw[i]),
                     "id": "q"}


@pytest.mark.parametrize("source", ["bogus", "Measured", "", 1])
def test_source_is_measured_predicted_or_none(lib, sample, source):
    with pytest.raises(ConfigError, match="source must be None or one of 'measured', 'predicted'"):
        lib.search([sample[2]], source=source)
    assert len(lib.search([sample[2]], source="measured", top=3)[0]) == 3   # the sample is measured
    assert lib.search([sample[2]], source="predicted") == [[]]


@pytest.mark.parametrize("kw, match", [
    ({"mass_filter": -5}, "mass_filter must be a finite number >= 0, got -5"),
    ({"mass_filter": float("nan")}, "mass_filter must be a finite number >= 0"),
    ({"mass_filter": float("inf")}, "mass_filter must be a finite number >= 0"),
    ({"mass_filter": "5"}, "mass_filter must be a number"),
    ({"mz_power": -1}, r"mz_power must be a finite number 0\.\.10, got -1"),
    ({"mz_power": float("nan")}, r"mz_power must be a finite number 0\.\.10"),
    ({"mz_power": 11}, r"mz_power must be a finite number 0\.\.10"),
    ({"intensity_power": -1}, r"intensity_power must be a finite number 0\.\.10"),
    ({"intensity_power": None}, "intensity_power must be a number"),
    ({"mz_power": 2, "score": "entropy"}, "apply to score='cosine' only"),
    ({"score": "bogus"}, "unknown score 'bogus'"),
    ({"reverse": "no"}, "reverse must be True or False"),
    ({"top": 1.5}, "top must be an integer >= 1, got 1.5"),
    ({"top": None}, "top must be an integer >= 1, got None"),
    ({"top": "3"}, "top must be an integer >= 1, got '3'"),
    ({"top": 0}, "top must be an integer >= 1, got 0"),
    ({"top": True}, "top must be an integer >= 1"),
])
def test_options_out_of_the_clis_range(lib, sample, kw, match):
    with pytest.raises(ConfigError, match=match):
        lib.search([sample[2]], **kw)


def test_edges_of_the_ranges_are_accepted(lib, sample):
    q = [sample[2]]
    assert len(lib.search(q, top=np.int64(2), mass_filter=0, mz_power=0, intensity_power=10)[0]) == 2
    assert len(lib.search(q, top=2, mz_power=3.0, reverse=np.bool_(True))[0]) == 2
    # (mz_power 10 is accepted, as by the CLI; mz_power >= 8 overflowing float32 norms in the engine is
    # another fix, neimsctl/evaluate/matching.py)


def test_a_huge_top_is_the_library_size(lib, sample):
    """top=10**12 tried to allocate TiBs (MemoryError); the CLI caps -k to the libraries' size."""
    hits = lib.search([sample[2]], top=10**12)
    assert len(hits[0]) == len(lib) == 300


def test_candidates_as_the_cli_checks_them(lib, sample):
    data, i, q = sample
    key = data.keys[i]
    # a single string is one candidate (it was iterated character by character: no hit)
    hits = lib.search([q], candidates=key)
    assert hits[0] and {h["inchikey"][:14] for h in hits[0]} == {key[:14]}
    assert lib.search([q], candidates=key[:14]) == hits == lib.search([q], candidates=(key,))
    with pytest.raises(ConfigError, match="candidates is empty"):
        lib.search([q], candidates=[])
    with pytest.raises(ConfigError, match=r"candidates\[1\]: not\(\(\(: neither an InChIKey nor a parsable SMILES"):
        lib.search([q], candidates=[key, "not((("])
    with pytest.raises(ConfigError, match=r"candidates\[0\]: C: matches no library entry"):
        lib.search([q], candidates=["C", key])
    with pytest.raises(ConfigError, match=r"candidates\[0\]: None: not one InChIKey or SMILES"):
        lib.search([q], candidates=[None])
    with pytest.raises(ConfigError, match="candidates must be a list"):
        lib.search([q], candidates=5)


def test_a_query_of_mass_0_is_of_unknown_mass(lib, sample):
    """The CLI reads MW 0 as unknown and searches unfiltered; the API found no hit."""
    data, i, q = sample
    zero = lib.search([{**q, "mw": 0}], mass_filter=5, top=3)
    assert zero == lib.search([{**q, "mw": None}], mass_filter=5, top=3)
    assert zero[0] and zero[0][0]["hit_id"] == data.ids[i] and zero[0][0]["mass_diff"] is None
    assert lib.search([{**q, "mw": float(data.mw[i])}], mass_filter=5, top=1)[0][0]["hit_id"] == data.ids[i]


@pytest.mark.parametrize("mw", [float("nan"), float("inf"), "abc", -5, True, [180], 10**400,
                                pytest.param(10**5000, id="int-of-5001-digits")])
def test_a_query_mass_that_is_no_number_names_the_query(lib, sample, mw):
    with pytest.raises(FormatError, match=r"line 2: record 'q2': mw .* is no nominal mass"):
        lib.search([sample[2], {**sample[2], "id": "q2", "mw": mw}], mass_filter=5)


def test_spectra_of_no_known_form(lib, sample):
    for bad in (None, 5, sample[2], np.zeros(501)):
        with pytest.raises(InputError, match="spectra must be|dense array must be"):
            lib.search(bad)
    with pytest.raises(FormatError, match="line 2: a query is a dict with mz and intensity"):
        lib.search([sample[2], 7])
    assert lib.search([]) == []


@pytest.mark.parametrize("value, why", [(-1.0, "a negative m/z or intensity"), (np.nan, "a peak is not finite"),
                                        (np.inf, "a peak is not finite")])
def test_a_dense_row_with_negative_or_nan_intensities_is_refused(lib, sample, value, why):
    """Such peaks were dropped silently; the CLI refuses a query with them."""
    data, i, _ = sample
    rows = data.spectra[[i, i]].astype(np.float64)
    rows[1, 3] = value
    with pytest.raises(FormatError, match=f"line 2: invalid_peak: {why}"):
        lib.search(rows)


def test_a_closed_library_says_so(disk_index, sample):
    library = open_index(disk_index)
    assert library.search([sample[2]], top=1)[0]
    library.close()
    with pytest.raises(InputError, match="the library is closed"):
        library.search([sample[2]])


def test_a_query_file_with_a_bad_record_raises_naming_it_before_searching_on(lib, tmp_path, monkeypatch):
    """search(path): the first query that cannot be searched raises FormatError with its file,
    line and record as soon as it is read (the queries after it are not searched first)."""
    from neimsctl.search import run

    path = tmp_path / "q.msp"
    good = "Name: ok{}\nMW: 100\nNum Peaks: 2\n41 100\n43 999\n\n"
    path.write_text(good.format(1) + "Name: broken\nNum Peaks: 2\n41 abc\n43 999\n\n" + good.format(2))
    assert len(lib.search(_only_good(path, tmp_path))) == 2
    searched = []
    real = run.search_table
    monkeypatch.setattr(run, "search_table", lambda *a: searched.append(len(a[1].mw)) or real(*a))
    with pytest.raises(FormatError) as err:
        lib.search(path)
    assert str(err.value) == (f"{path}: line 7: record 'broken': non_numeric_peak: line 9: '41 abc': "
                              "not a number") and searched == []


def _only_good(path, tmp_path):
    out = tmp_path / "good.msp"
    out.write_text("\n\n".join(b for b in path.read_text().split("\n\n") if "broken" not in b))
    return out


def test_a_query_whose_id_or_name_is_none_is_named_as_one_without(lib, sample):
    """{"id": None, "name": None} (e.g. a DataFrame's to_dict("records") with gaps) came back as
    query_id "None" and query_name "None"; None is no id nor name, as for inchikey and smiles."""
    q = {k: v for k, v in sample[2].items() if k in ("mz", "intensity")}
    hits = lib.search([{**q, "id": None, "name": None}, {**q, "id": "q2", "name": "two"}], top=1)
    assert (hits[0][0]["query_id"], hits[0][0]["query_name"]) == ("1", "")
    assert (hits[1][0]["query_id"], hits[1][0]["query_name"]) == ("q2", "two")
