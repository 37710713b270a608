"""RowBuilder: chunk-wise spectrum binning equals the one-record function, bad peaks rejected."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from neimsctl.chem.rowbuild import Item, RowBuilder, RowOptions
from neimsctl.io.spectrum import preprocess_spectrum

PEAKS = [
    ([15.0, 29.0, 45.5], [100.0, 999.0, 0.5]),      # half rounds up, a noise peak
    ([77.5, 78.2, 501.0], [1.0, 2.0, 5.0]),         # summed bin, an out-of-range peak
    ([600.0], [10.0]),                              # nothing in range -> no spectrum
    ([50.0, 51.0], [0.0, 0.0]),                     # all zero -> no spectrum
    ([41, 43, 57], [12, 999, 300]),                 # integers as msp2jsonl writes them
    ([], []),                                       # no peaks
]
#: beyond float32 (they lost their spectrum: inf, then NaN; or 0): scaled, the ratios kept
EXTREME = [
    ([91.0, 92.0, 65.0], [1e300, 5e299, 2e299]),
    ([91.0, 92.0, 65.0], [1e-300, 5e-301, 2e-301]),
    ([91.0, 91.0, 65.0], [1e308, 1e308, 1e306]),    # a bin's sum beyond float64
    ([91.0, 92.0], [1e300, 1.0]),
]
#: not a spectrum: rejected with the reason (they were kept without a spectrum, or the
#: negative peak dropped, silently)
INVALID = [
    (([50.0, 51.0], [float("nan"), 3.0]), "not finite"),
    (([50.0, 51.0], [float("inf"), 3.0]), "not finite"),
    (([50.0, 51.0], [-1.0, 3.0]), "negative"),
    (([-3.0, 51.0], [1.0, 3.0]), "negative"),
]


def _expected(mz: list, it: list) -> tuple[np.ndarray, bool]:
    vec = preprocess_spectrum(mz, it) if mz else np.zeros(501, np.float32)
    has = bool(vec.max() > 0)
    return (vec if has else np.zeros(501, np.float32)).astype(np.float16), has


def test_chunk_spectra_equal_per_record_function() -> None:
    rows = [(i, f"r{i}", "CCO", "", "C2H6O", "", 46, 70.0,
             (mz, it) if mz else None, None, None) for i, (mz, it) in enumerate(PEAKS)]
    spectrum, has, late = RowBuilder._spectra(rows)
    assert not late
    for i, (mz, it) in enumerate(PEAKS):
        want, want_has = _expected(mz, it)
        assert has[i] == want_has, i
        assert np.array_equal(spectrum[i].view(np.uint16), want.view(np.uint16)), i


def test_extreme_intensities_keep_their_spectrum_and_invalid_peaks_are_rejected() -> None:
    rows = [(i, f"r{i}", "CCO", "", "C2H6O", "", 46, 70.0, peaks, None, None)
            for i, peaks in enumerate([*EXTREME, *PEAKS])]
    spectrum, has, late = RowBuilder._spectra(rows)
    assert not late and has[:len(EXTREME)].all()
    for i, (mz, it) in enumerate(EXTREME):
        want, _ = _expected(mz, it)
        assert np.array_equal(spectrum[i].view(np.uint16), want.view(np.uint16)), i
    assert spectrum[0, 91] == 1.0 and spectrum[0, 92] == 0.5 and spectrum[2, 91] == 1.0
    rows = [(i, f"r{i}", "CCO", "", "C2H6O", "", 46, 70.0, peaks, None, None)
            for i, (peaks, _) in enumerate(INVALID)] + [(9, "ok", "CCO", "", "C2H6O", "", 46, 70.0,
                                                         PEAKS[0], None, None)]
    spectrum, has, late = RowBuilder._spectra(rows)
    assert [(r.id, r.reason) for r in late] == [(f"r{i}", "bad_peaks") for i in range(len(INVALID))]
    assert all(why in r.detail for r, (_, why) in zip(late, INVALID))
    assert has[-1] and spectrum[-1, 29] == 1.0


@pytest.mark.parametrize("bad", [{"mz": [1.0, 2.0], "intensity": [1.0]},
                                 {"mz": [1.0, "x"], "intensity": [1.0, 2.0]},
                                 {"mz": "15 999", "intensity": [1.0]}])
def test_bad_peaks_rejected_in_order(bad: dict) -> None:
    recs = [{"id": "a", "smiles": "CCCO", "mz": [15.0], "intensity": [1.0]},
            {"id": "b", "smiles": "CCCO", **bad},
            {"id": "c", "smiles": "CCCO", "mz": [29.0], "intensity": [5.0]}]
    items = [Item(i, "t.jsonl", i + 1, "jsonl", orjson.dumps(r)) for i, r in enumerate(recs)]
    block, rejects = RowBuilder(RowOptions(mode="student", min_mw=0, inchikey=False)).build(items)
    assert block["id"].tolist() == ["a", "c"]
    assert [(r.id, r.reason) for r in rejects] == [("b", "bad_peaks")]
    assert block["spectrum"][0, 15] == 1.0 and block["spectrum"][1, 29] == 1.0


def test_repeated_structures_reuse_their_features_and_match_a_fresh_builder() -> None:
    recs = [{"id": f"r{i}", "smiles": s, "mz": [15.0 + i], "intensity": [1.0]}
            for i, s in enumerate(["CCCO", "c1ccccc1O", "CCCO", "C1CC((", "C1CC((", "c1ccccc1O"])]
    items = [Item(i, "t.jsonl", i + 1, "jsonl", orjson.dumps(r)) for i, r in enumerate(recs)]
    cached = RowBuilder(RowOptions(mode="student", min_mw=0, inchikey=False), cache_size=1)
    block, rejects = cached.build(items)
    assert len(cached._cache) == 1  # bounded
    assert [r.id for r in rejects] == ["r3", "r4"]
    assert {r.reason for r in rejects} == {"unparsable_smiles"}
    fresh = [RowBuilder(RowOptions(mode="student", min_mw=0, inchikey=False)).build([it])[0]
             for k, it in enumerate(items) if k not in (3, 4)]
    for col in ("ecfp", "counts", "spectrum", "mw", "formula", "smiles"):
        want = np.concatenate([f[col] for f in fresh])
        assert np.array_equal(block[col], want), col
    assert block["ecfp"][0].tobytes() == block["ecfp"][2].tobytes() != block["ecfp"][1].tobytes()


def test_structures_are_remembered_only_while_they_repeat() -> None:
    def lines(texts: list[str], start: int) -> list[Item]:
        return [Item(start + i, "t.smi", start + i + 1, "smi", t.encode()) for i, t in enumerate(texts)]

    unique = ["C" * k for k in range(1, 17)] + ["O" + "C" * k for k in range(1, 17)]
    builder = RowBuilder(RowOptions(mode="student", min_mw=0, inchikey=False))
    builder.WINDOW = 8
    fresh = RowBuilder(RowOptions(mode="student", min_mw=0, inchikey=False), cache_size=0)
    block = builder.build(lines(unique[:16], 0))[0]       # two windows without a repeat
    assert not builder._remember and not builder._cache
    assert np.array_equal(block["counts"], fresh.build(lines(unique[:16], 0))[0]["counts"])
    again = ["CCO", "CCO", "CCN", "CCN", "CCO", "CCC", "CCC", "CCO"]   # repeats: remember again
    block = builder.build(lines(again, 16))[0]
    assert builder._remember
    builder.build(lines(again, 24))
    assert set(builder._cache) == {"CCO", "CCN", "CCC"}
    assert np.array_equal(block["ecfp"], fresh.build(lines(again, 16))[0]["ecfp"])
    assert not fresh._remember


def test_a_repeat_that_ends_a_window_without_enough_repeats_is_still_featurized() -> None:
    """The last lookup of a window a hit, the window's repeats below MIN_REPEATS: the window's
    end emptied the cache between the hit and its move to the end (a KeyError: `predict` and
    `featurize` of 2,047 distinct SMILES and a repeat on line 2,048 died with a traceback)."""
    texts = ["C" * k for k in range(1, 40)] + ["C"]                  # 40 lookups, 1 repeat
    items = [Item(i, "t.smi", i + 1, "smi", t.encode()) for i, t in enumerate(texts)]
    builder = RowBuilder(RowOptions(mode="student", min_mw=0, inchikey=False))
    builder.WINDOW = 40                                               # 1/40 < 5 %
    block, rejects = builder.build(items)
    assert not rejects and len(block["ecfp"]) == 40
    assert not builder._remember and not builder._cache
    assert block["ecfp"][0].tobytes() == block["ecfp"][39].tobytes()


def test_smiles_lines_canonicalized_and_keyed_once_per_text() -> None:
    items = [Item(i, "t.smi", i + 1, "smi", s) for i, s in enumerate([b"OCC a", b"OCC b", b"C(O)C c"])]
    block, _ = RowBuilder(RowOptions(mode="student", min_mw=0)).build(items)
    assert block["smiles"].tolist() == ["CCO"] * 3
    assert block["inchikey"].tolist() == ["LFQSCWFLJHTTHZ-UHFFFAOYSA-N"] * 3
    assert block["id"].tolist() == ["a", "b", "c"]


def test_cached_structures_keep_no_mol_and_make_late_strings_from_the_smiles() -> None:
    builder = RowBuilder(RowOptions(mode="student", min_mw=0))
    first = {"id": "a", "smiles": "OCC", "formula": "C2H6O", "inchikey": "LFQSCWFLJHTTHZ-UHFFFAOYSA-N",
             "mz": [31.0], "intensity": [999.0]}
    builder.build([Item(0, "t.jsonl", 1, "jsonl", orjson.dumps(first))])
    st = builder._cache["OCC"]
    assert not hasattr(st, "mol") and st._key is None  # the record carried its key: nothing computed
    bare = {"id": "b", "smiles": "OCC", "mz": [31.0], "intensity": [999.0]}  # no formula / key
    block, rejects = builder.build([Item(1, "t.jsonl", 2, "jsonl", orjson.dumps(bare))])
    assert not rejects
    assert block["formula"].tolist() == ["C2H6O"]
    assert block["inchikey"].tolist() == ["LFQSCWFLJHTTHZ-UHFFFAOYSA-N"]


# -- issue 16: fields of the wrong type, unreadable values, control characters ---------------------

def _build(*recs: dict | bytes, mode: str = "student"):
    items = [Item(i, "r.jsonl", i + 1, "jsonl", r if isinstance(r, bytes) else orjson.dumps(r))
             for i, r in enumerate(recs)]
    block, rejects = RowBuilder(RowOptions(mode=mode)).build(items)
    assert len(block["ordinal"]) + len(rejects) == len(items)
    return block, rejects


@pytest.mark.parametrize("field,value", [
    ("smiles", True), ("smiles", ["CCO"]), ("smiles", {"a": 1}), ("smiles", 5), ("name", ["x"]),
    ("formula", True), ("inchikey", 5), ("id", {"x": 1}), ("id", [1]),
])
def test_fields_of_the_wrong_type_are_bad_field(field, value):
    block, rejects = _build({"smiles": "CCCO", field: value}, {"smiles": "CCCCO", "name": "ok"})
    assert [r.reason for r in rejects] == ["bad_field"] and f"{field} is a JSON" in rejects[0].detail
    assert list(block["name"]) == ["ok"]


def test_a_record_of_an_unknown_schema_is_rejected():
    """featurize wrote a `neimsctl.record/9` record (index and search reject it)."""
    block, rejects = _build({"schema": "neimsctl.record/9", "smiles": "CCCO"},
                            {"schema": "neimsctl.record/1", "smiles": "CCCCO", "name": "ok"},
                            {"smiles": "CCCCCO", "name": "no schema"})
    assert [r.reason for r in rejects] == ["unknown_schema"] and "neimsctl.record/9" in rejects[0].detail
    assert list(block["name"]) == ["ok", "no schema"]


def test_unreadable_values_fall_back_and_control_characters_become_blanks():
    block, rejects = _build(
        {"smiles": "CCCO", "formula": "Xx2", "id": 17, "comments": True},   # RDKit: unknown element
        {"smiles": "CCCO", "formula": "C" + "9" * 5000, "mw": True},        # int() refuses the count
        {"smiles": "CCCO", "name": "a\nb\rc\x00d", "comments": {"ionization_energy": "1" * 500}},
        {"smiles": "CCCO", "comments": ["70 eV"], "mw": 60.5, "inchikey": "K\nX"})
    assert rejects == []
    assert list(block["formula"]) == ["C3H8O"] * 4 and list(block["mw"]) == [60] * 4
    assert list(block["id"])[0] == "17" and list(block["name"])[2] == "a b c d"
    assert list(block["inchikey"])[3] == "K X"
    assert np.isnan(block["ionization_energy"]).all()


def test_smiles_line_names_lose_control_characters():
    items = [Item(0, "s.smi", 1, "smi", b"CCCO pro\x0cpanol\x00")]
    block, rejects = RowBuilder(RowOptions()).build(items)
    assert rejects == [] and list(block["name"]) == ["pro panol"]


@pytest.mark.parametrize("raw", [b"\x1c", b"\x1d\x1e", "\u2028".encode(), b"\x1f \x1c"])
def test_smiles_line_of_separator_characters_is_a_reject(raw):
    """Found by tools/fuzz.py: bytes.strip() keeps \\x1c, str.split() drops it: IndexError."""
    items = [Item(0, "s.smi", 1, "smi", raw), Item(1, "s.smi", 2, "smi", b"CCCO x")]
    block, rejects = RowBuilder(RowOptions()).build(items)
    assert [(r.reason, r.item.line) for r in rejects] == [("unparsable_smiles", 1)]
    assert list(block["name"]) == ["x"]


def test_too_large_structures_are_rejected_before_rdkit_parses_them(monkeypatch) -> None:
    from rdkit import Chem

    from neimsctl.chem.structure import MAX_HEAVY_ATOMS

    parse = Chem.MolFromSmiles

    def guarded(smiles, *args, **kwargs):
        assert len(smiles) < 1000, "RDKit was asked to parse a too large SMILES"
        return parse(smiles, *args, **kwargs)
    monkeypatch.setattr(Chem, "MolFromSmiles", guarded)
    big = "C" * (MAX_HEAVY_ATOMS + 1)
    lines = [b"CCCO propanol", f"{big} chain".encode(),
             orjson.dumps({"id": "j", "smiles": "C" * 20000}),
             ("[CH2]" * 150 + " fine").encode()]  # 750 characters, 150 heavy atoms: kept
    items = [Item(i, "t.smi", i + 1, "jsonl" if ln.startswith(b"{") else "smi", ln)
             for i, ln in enumerate(lines)]
    builder = RowBuilder(RowOptions(mode="student", min_mw=0, max_mw=10**9, inchikey=False))
    block, rejects = builder.build(items)
    assert block["name"].tolist() == ["propanol", "fine"]
    assert [(r.item.line, r.id, r.reason) for r in rejects] == [(2, "chain", "too_large"),
                                                                 (3, "j", "too_large")]
    assert rejects[0].detail.startswith(f"{MAX_HEAVY_ATOMS + 1} heavy atoms (limit 500")
    assert rejects[1].detail.startswith("SMILES of 20,000 characters (limit 10,000")
    assert big not in builder._cache  # a refused text is not remembered


def test_crashed_names_the_record_without_rdkit() -> None:
    from neimsctl.chem.rowbuild import crashed, crashed_block

    why = "the worker process was killed by SIGSEGV"
    smi = crashed(Item(4, "x.smi", 7, "smi", b"CCO ethanol"), why)
    assert (smi.id, smi.name, smi.reason, smi.item.line) == \
        ("ethanol", "ethanol", "worker_crashed", 7)
    assert smi.detail == f"{why} while working on this record"
    anon = crashed(Item(4, "dir/x.smi", 7, "smi", b"CCO"), why)
    assert (anon.id, anon.name) == ("x:7", None)
    rec = crashed(Item(0, "r.jsonl", 1, "jsonl", b'{"id": "MB1", "name": "caffeine"}'), why)
    assert (rec.id, rec.name) == ("MB1", "caffeine")
    bad = crashed(Item(0, "r.jsonl", 1, "jsonl", b'{"id": '), why)
    assert (bad.id, bad.reason) == (None, "worker_crashed")
    sdf = crashed(Item(2, "m.sdf", 30, "sdf", b"aspirin\n  RDKit\n\n"), why)
    assert (sdf.id, sdf.name) == ("aspirin", "aspirin")
    block, rejects, n = crashed_block("teacher", [Item(0, "x.smi", 1, "smi", b"C a")], why)
    assert n == 1 and len(block["ordinal"]) == 0 and "atom_x" in block and rejects[0].id == "a"


def test_ionization_energy_from_massbank_and_mona_comments():
    from neimsctl.chem.rowbuild import ionization_energy

    assert ionization_energy({"comments": {"ionization_energy": "70 eV"}}) == 70.0   # MassBank
    assert ionization_energy({"comments": {"ionization energy": "70 eV"}}) == 70.0   # MoNA
    assert np.isnan(ionization_energy({"comments": {"ionization_energy": "unspecified"}}))


def test_dummy_atoms_are_rejected_by_featurize_and_kept_for_predict() -> None:
    """A structure with a '*' atom (an R-group, attachment point) is no molecule a spectrum can
    be learned from: featurize rejects it (dummy_atom, before the mass filter), predict's builder
    (dummy_atoms=True) featurizes it and marks it by its domain flags."""
    lines = [b"*c1ccc(CCCC)cc1 star", b"CCCCc1ccccc1 butylbenzene",
             orjson.dumps({"id": "j", "smiles": "[1*]c1ccc(CCCC)cc1"}),
             orjson.dumps({"id": "k", "smiles": "[#0]C"}),          # too light: dummy_atom first
             b"*C1CC(( broken"]                                       # unparsable comes first
    items = [Item(i, "t.smi", i + 1, "jsonl" if ln.startswith(b"{") else "smi", ln)
             for i, ln in enumerate(lines)]
    block, rejects = RowBuilder(RowOptions(mode="student", inchikey=False)).build(items)
    assert block["name"].tolist() == ["butylbenzene"]
    assert [(r.item.line, r.id, r.reason) for r in rejects] == [
        (1, "star", "dummy_atom"), (3, "j", "dummy_atom"), (4, "k", "dummy_atom"),
        (5, "broken", "unparsable_smiles")]
    assert rejects[0].detail.startswith("SMILES '*c1ccc(CCCC)cc1' has a dummy atom")
    kept, none = RowBuilder(RowOptions(mode="student", inchikey=False, dummy_atoms=True,
                                       min_mw=0)).build(items)
    assert kept["smiles"].tolist()[:3] == ["*c1ccc(CCCC)cc1", "CCCCc1ccccc1", "[1*]c1ccc(CCCC)cc1"]
    assert [r.reason for r in none] == ["unparsable_smiles"]
