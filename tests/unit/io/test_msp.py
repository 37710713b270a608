"""read_msp: one tiny fixture per MSP dialect and one per reject reason."""

from __future__ import annotations

import gzip
import io

import pytest

from neimsctl.io.msp import parse_comments, parse_number, read_msp
from neimsctl.io.streams import open_in

GOOD = b"Name: Benzene\nFormula: C6H6\nMW: 78\nID: 7\nNum Peaks: 3\n51 120\n77 180\n78 999\n"


def read(text: bytes | str, chunk_size: int = 1 << 20) -> list:
    data = text.encode() if isinstance(text, str) else text
    return list(read_msp(io.BytesIO(data), "t.msp", chunk_size=chunk_size))


def one(text: bytes | str):
    recs = read(text)
    assert len(recs) == 1, recs
    return recs[0]


def test_plain_record():
    rec = one(GOOD)
    assert rec.reason is None
    assert (rec.name, rec.record_id, rec.line, rec.ordinal) == ("Benzene", "7", 1, 1)
    assert rec.mz == [51, 77, 78] and rec.intensity == [120, 180, 999]
    assert rec.fields["formula"] == "C6H6" and rec.num_peaks == 3


def test_line_numbers_and_ordinals_across_records_and_blank_runs():
    recs = read(b"\n\n" + GOOD + b"\n \n\t\n" + GOOD.replace(b"Benzene", b"B2") + b"\n" + GOOD)
    assert [r.line for r in recs] == [3, 14, 23]
    assert [r.ordinal for r in recs] == [1, 2, 3]
    assert all(r.reason is None for r in recs)


def test_small_chunks_give_the_same_records():
    text = (GOOD + b"\n\n\n") * 20
    big, small = read(text), read(text, chunk_size=7)
    assert [(r.line, r.name, r.mz) for r in big] == [(r.line, r.name, r.mz) for r in small]
    assert len(small) == 20


@pytest.mark.parametrize("key", ["Num Peaks", "Num peaks", "NUM PEAKS", "num_peaks", "NumPeaks"])
def test_num_peaks_key_variants(key):
    rec = one(GOOD.replace(b"Num Peaks", key.encode()))
    assert rec.reason is None and rec.num_peaks == 3


def test_amdis_msl_form_is_the_formula():
    """AMDIS .MSL libraries write the formula as FORM: (it was kept as an unknown key, so the
    formula and its mismatch check were lost)."""
    rec = one(b"NAME: Benzene\nFORM: C6H6\nMW: 78\nNUM PEAKS: 3\n(51 120) (77 180) (78 999)\n")
    assert rec.reason is None and rec.fields["formula"] == "C6H6" and rec.mz == [51, 77, 78]


def test_key_case_variants():
    rec = one(b"NAME: x\nFORMULA: CH4\nmw: 16\ninchikey: VNWKTOKETHGBQD-UHFFFAOYSA-N\nNum Peaks: 1\n16 999\n")
    assert rec.reason is None and rec.name == "x"
    assert rec.fields["formula"] == "CH4" and rec.fields["mw"] == "16" and "inchikey" in rec.fields


def test_crlf_line_ends():
    rec = one(GOOD.replace(b"\n", b"\r\n") + b"\r\n")
    assert rec.reason is None and rec.name == "Benzene" and rec.mz == [51, 77, 78]
    recs = read((GOOD + b"\n").replace(b"\n", b"\r\n") * 2)
    assert [r.line for r in recs] == [1, 10]


@pytest.mark.parametrize("peaks", [
    b"51 120; 77 180; 78 999;",          # NIST: several pairs, ';'
    b"51 120 77 180\n78 999",            # blanks between pairs
    b"51\t120\n77\t180\n78\t999",        # tabs
    b"51:120 77:180 78:999",             # ':' inside a pair
    b"(51 120) (77 180) (78 999)",       # parentheses
    b"(51,120) (77,180)\n(78,999)",      # parentheses and commas
])
def test_peak_separators(peaks):
    rec = one(b"Name: x\nNum Peaks: 3\n" + peaks + b"\n")
    assert rec.reason is None, rec.detail
    assert rec.mz == [51, 77, 78] and rec.intensity == [120, 180, 999]


def test_quoted_peak_annotations():
    rec = one(b'Name: x\nNum Peaks: 3\n51 120 "C4H3+"\n77 180 "C6H5+ 2/3"\n78.05 999 "M+; p=1"\n')
    assert rec.reason is None, rec.detail
    assert rec.mz == [51.0, 77.0, 78.05] and rec.intensity == [120.0, 180.0, 999.0]


def test_float_peaks_and_base_peak_9999():
    rec = one(b"Name: x\nNum Peaks: 2\n51.25 1234.5\n78 9999\n")
    assert rec.reason is None and rec.mz == [51.25, 78.0] and rec.intensity == [1234.5, 9999.0]


def test_decimal_comma_in_mw():
    rec = one(GOOD.replace(b"MW: 78", b"MW: 78,11"))
    assert rec.reason is None and rec.fields["mw"] == "78,11"
    assert parse_number(rec.fields["mw"]) == pytest.approx(78.11)
    assert parse_number("n/a") is None


def test_cas_and_nist_on_one_line():
    rec = one(GOOD.replace(b"ID: 7\n", b"CAS#: 71-43-2;  NIST#: 291514\n"))
    assert rec.fields["cas"] == "71-43-2" and rec.fields["nist"] == "291514"
    assert rec.record_id == "291514"  # no ID line: NIST# is the id


def test_db_number_is_the_id_without_id_line_and_fallback():
    assert one(GOOD.replace(b"ID: 7", b"DB#: JP000001")).record_id == "JP000001"
    assert one(GOOD.replace(b"ID: 7\n", b"")).record_id == "t:1"


def test_repeated_synon():
    rec = one(GOOD.replace(b"Formula", b"Synon: Benzol\nSynon: $:00in-source\nSynon: Cyclohexatriene\nFormula"))
    assert rec.synonyms == ["Benzol", "$:00in-source", "Cyclohexatriene"]


def test_comments_massbank_quoted_pairs_with_semicolon_in_authors():
    value = ('"MassBank accession=MSBNK-X-1; instrument_type=EI-B; ionization_energy=70 eV; '
             'license=CC BY; authors=Ara T, Shibata D; Kazusa DNA Research Institute"')
    rec = one(GOOD.replace(b"ID: 7", b"Comments: " + value.encode()))
    c = parse_comments(rec.fields["comments"])
    assert c == {"MassBank accession": "MSBNK-X-1", "instrument_type": "EI-B",
                 "ionization_energy": "70 eV", "license": "CC BY",
                 "authors": "Ara T, Shibata D; Kazusa DNA Research Institute"}


def test_comments_nist_several_quoted_pairs():
    assert parse_comments('"SMILES=CCO" "computed MW=46" "EI"') == {
        "SMILES": "CCO", "computed MW": "46", "comment": "EI"}


def test_name_line_starts_a_record_without_blank_line():
    recs = read(GOOD + GOOD.replace(b"Benzene", b"Toluene"))
    assert [(r.name, r.line, r.reason) for r in recs] == [("Benzene", 1, None), ("Toluene", 9, None)]


def test_utf8_bom_and_latin1_name():
    rec = one(b"\xef\xbb\xbf" + GOOD.replace(b"Benzene", "Benzène".encode("latin-1")))
    assert rec.reason is None and rec.name == "Benzène"


def test_windows_1252_names_read_as_windows_writes_them():
    """Windows exports (NIST MS Search, AMDIS, ChemStation) write cp1252: '...', curly quotes
    and dashes at 0x80-0x9F were read as latin-1 control characters (U+0085, U+2019 lost)."""
    name = "Bis(2-ethylhexyl)\u2026 phthalate \u2013 4\u2019-methyl"
    rec = one(GOOD.replace(b"Benzene", name.encode("cp1252")))
    assert rec.reason is None and rec.name == name
    # a byte cp1252 leaves undefined (0x81) is latin-1's, as before
    rec = one(GOOD.replace(b"Benzene", b"Benz\x81\xe8ne"))
    assert rec.reason is None and rec.name == "Benz\x81\xe8ne"


def test_peaks_without_num_peaks_line_are_read():
    rec = one(b"Name: x\n51 120\n78 999\n")
    assert rec.reason is None and rec.mz == [51, 78] and rec.num_peaks is None


# ---- one test per reject reason -------------------------------------------------------------

def test_truncated_last_record():
    recs = read(GOOD + b"\n" + GOOD[: GOOD.index(b"77 180")])
    assert recs[0].reason is None
    assert recs[1].reason == "truncated_record" and "1 of 3" in recs[1].detail


def test_truncated_before_num_peaks():
    assert one(b"Name: x\nFormula: C6H6\nMW: 7").reason == "truncated_record"


def test_non_numeric_peak_names_the_line():
    rec = one(GOOD.replace(b"77 180", b"77 abc"))
    assert rec.reason == "non_numeric_peak" and "line 7" in rec.detail


def test_odd_number_of_peak_values():
    assert one(GOOD.replace(b"77 180", b"77")).reason == "non_numeric_peak"


def test_invalid_peak():
    assert one(GOOD.replace(b"77 180", b"77 -5")).reason == "invalid_peak"
    assert one(GOOD.replace(b"77 180", b"77 nan")).reason == "invalid_peak"


def test_no_peaks():
    assert one(b"Name: x\nNum Peaks: 0\n").reason == "no_peaks"
    recs = read(b"Name: x\nMW: 5\n\n" + GOOD)
    assert recs[0].reason == "no_peaks" and recs[1].reason is None
    # peaks whose every intensity is 0: no spectrum (msp2jsonl wrote it; index and search
    # rejected the same record as no_peaks)
    rec = one(b"Name: toluene\nNum Peaks: 2\n91 0\n92 0.0\n")
    assert rec.reason == "no_peaks" and "every intensity of the 2 peaks is 0" in rec.detail
    assert one(b"Name: toluene\nNum Peaks: 2\n91 0\n92 1\n").reason is None


def test_num_peaks_mismatch():
    rec = read(GOOD.replace(b"Num Peaks: 3", b"Num Peaks: 4") + b"\n" + GOOD)[0]
    assert rec.reason == "num_peaks_mismatch" and "4" in rec.detail
    assert one(GOOD.replace(b"Num Peaks: 3", b"Num Peaks: 2")).reason == "num_peaks_mismatch"


def test_binary_garbage():
    recs = read(GOOD + b"\n\x00\x01\x02\xff\xfe garbage \x07\n\n" + GOOD)
    assert [r.reason for r in recs] == [None, "binary_garbage", None]
    assert one(GOOD.replace(b"78 999", b"78 9\x0099")).reason == "binary_garbage"


def test_malformed_line_and_record():
    assert one(GOOD.replace(b"MW: 78", b"just text")).reason == "malformed_line"
    assert one(GOOD.replace(b"Num Peaks: 3", b"Num Peaks: three")).reason == "malformed_line"
    assert one(b"Formula: C6H6\nNum Peaks: 1\n78 999\n").reason == "malformed_record"


def test_gzip_input_through_open_in(tmp_path):
    path = tmp_path / "x.msp.gz"
    path.write_bytes(gzip.compress(GOOD * 2))
    with open_in(path) as fh:
        assert [r.name for r in read_msp(fh, str(path))] == ["Benzene", "Benzene"]


def test_real_dev_file_reads_without_rejects(shared_data):
    with open_in(shared_data / "massbank_ei.msp") as fh:
        recs = list(read_msp(fh, "massbank_ei.msp"))
    assert len(recs) == 8196 and all(r.reason is None for r in recs)
    assert sum(len(r.synonyms) for r in recs) == 2081
    assert all(len(r.mz) == r.num_peaks for r in recs)


# -- issue 16: line ends, non-record text, numbers ------------------------------------------------

THREE = GOOD + b"\n" + GOOD.replace(b"Benzene", b"B2") + b"\n" + GOOD.replace(b"Benzene", b"B3")


@pytest.mark.parametrize("eol", [b"\r", b"\r\n"])
@pytest.mark.parametrize("chunk_size", [1 << 20, 1, 5, 64])
def test_cr_and_crlf_files_read_like_lf(eol, chunk_size):
    want = [(r.name, r.line, r.ordinal, r.mz, r.reason) for r in read(THREE)]
    got = read(THREE.replace(b"\n", eol), chunk_size=chunk_size)
    assert [(r.name, r.line, r.ordinal, r.mz, r.reason) for r in got] == want
    assert [r.name for r in got] == ["Benzene", "B2", "B3"]


def test_mixed_line_ends_lose_no_record():
    recs = THREE.split(b"\n\n")
    mixed = recs[0].replace(b"\n", b"\r") + b"\r\r" + recs[1].replace(b"\n", b"\r\n") + b"\r\n\n" + recs[2]
    assert [(r.name, r.reason) for r in read(mixed)] == [("Benzene", None), ("B2", None), ("B3", None)]
    assert [r.line for r in read(mixed)] == [r.line for r in read(THREE)]


def test_garbage_between_records_keeps_the_record_numbering():
    clean = read(THREE)
    dirty = THREE.replace(b"\n\nName: B2", b"\n\n\x00\x01\x02\xff\xfe garbage \x07\n\x00\n\nName: B2")
    recs = read(dirty)
    assert [r.reason for r in recs] == [None, "binary_garbage", None, None]
    garbage = recs[1]
    assert (garbage.is_record, garbage.ordinal, garbage.name, garbage.line) == (False, 0, "", 10)
    kept = [r for r in recs if r.is_record]
    assert [(r.name, r.ordinal, r.record_id) for r in kept] == [(r.name, r.ordinal, r.record_id) for r in clean]


def test_stray_text_between_records_is_no_record():
    recs = read(THREE.replace(b"\n\nName: B2", b"\n\n# exported by X\n\nName: B2"))
    assert [r.reason for r in recs] == [None, "malformed_record", None, None]
    assert "no Name line" in recs[1].detail and "exported by X" in recs[1].detail
    assert [r.ordinal for r in recs] == [1, 0, 2, 3]


def test_numbers_that_are_not_finite():
    for text in ("inf", "-inf", "nan", "1e400", "Infinity"):
        assert parse_number(text) is None, text
    assert parse_number("1e300") == 1e300 and parse_number(" 180,5 ") == 180.5


@pytest.mark.parametrize("peaks,reason", [
    (b"51 120\n77 nan\n78 999", "invalid_peak"),
    (b"51 120\n77 inf\n78 999", "invalid_peak"),
    (b"51 120\n77 1e400\n78 999", "invalid_peak"),
    (b"51 120\n77 " + b"9" * 400 + b"\n78 999", "invalid_peak"),   # an int beyond 64 bits
    (b"51 120\n77 " + b"9" * 5000 + b"\n78 999", "invalid_peak"),  # beyond int() (4300 digits)
    (b"51 120\n-77 180\n78 999", "invalid_peak"),
])
def test_peaks_that_are_not_finite_numbers(peaks, reason):
    assert one(b"Name: x\nNum Peaks: 3\n" + peaks + b"\n").reason == reason


@pytest.mark.parametrize("value,reason", [
    (b"99999999999999999999999", "num_peaks_mismatch"),
    (b"9" * 5000, "malformed_line"),
    (b"-3", "num_peaks_mismatch"),
    (b"1e3", "malformed_line"),
])
def test_absurd_num_peaks(value, reason):
    recs = read(GOOD.replace(b"Num Peaks: 3", b"Num Peaks: " + value) + b"\n" + GOOD)
    assert [r.reason for r in recs] == [reason, None]  # (not last: else it looks truncated)


@pytest.mark.parametrize("char", ["\u0085", "\u2028", "\u2029"])
def test_unicode_line_separators_in_a_name_are_no_line_end(char):
    """Found by the fuzz suite: predict wrote 'Name: x\\u0085y', the reader split it in two."""
    for data in (f"Name: x{char}y\nNum Peaks: 1\n15 999\n".encode(),
                 b"Name: Bis(2-ethylhexyl)\x85 phthalate\nNum Peaks: 1\n15 999\n"):  # cp1252 '...'
        rec = one(data)
        assert rec.reason is None and rec.name.startswith(("x", "Bis")), rec.detail


MONA_COMMENTS = ('"accession=TST000001" "license=CC0" "SMILES=CC(O)=O" '
                 '"InChI=InChI=1S/C2H4O2/c1-2(3)4/h1H3,(H,3,4)" "computed SMILES=CC(=O)O" '
                 '"SMILES=[H]OC(=O)C([H])([H])[H]" "InChIKey=QTBSBXVTEAMEQO-UHFFFAOYSA-N"')


@pytest.mark.parametrize("fields,expected", [
    ({"comments": MONA_COMMENTS}, ("comments_smiles", "smiles", "CC(O)=O")),   # first SMILES= wins
    ({"comments": MONA_COMMENTS.replace('"SMILES=', '"X=')},
     ("comments_computed_smiles", "smiles", "CC(=O)O")),
    ({"comments": '"InChI=InChI=1S/CH4/h1H4" "computed InChI=InChI=1S/H2O/h1H2"'},
     ("comments_inchi", "inchi", "InChI=1S/CH4/h1H4")),
    ({"comments": '"computed InChI=InChI=1S/H2O/h1H2"'},
     ("comments_computed_inchi", "inchi", "InChI=1S/H2O/h1H2")),
    ({"comments": '"smiles=CCO"'}, ("comments_smiles", "smiles", "CCO")),      # keys without case
    ({"smiles": "CCCCO", "comments": MONA_COMMENTS}, ("smiles", "smiles", "CCCCO")),
    ({"inchi": "InChI=1S/CH4/h1H4", "comments": MONA_COMMENTS}, ("inchi", "inchi", "InChI=1S/CH4/h1H4")),
    ({"smiles": " ", "comments": '"SMILES= "'}, None),
    ({"comments": '"accession=X" "license=CC0"'}, None),
    ({}, None),
])
def test_record_structure_explicit_lines_then_mona_comment_pairs(fields, expected):
    from neimsctl.io.msp import record_structure

    assert record_structure(fields) == expected


def test_record_inchikey_line_wins_over_the_comments_pair():
    from neimsctl.io.msp import record_inchikey

    assert record_inchikey({"comments": MONA_COMMENTS}) == "QTBSBXVTEAMEQO-UHFFFAOYSA-N"
    assert record_inchikey({"inchikey": "LFQSCWFLJHTTHZ-UHFFFAOYSA-N",
                            "comments": MONA_COMMENTS}) == "LFQSCWFLJHTTHZ-UHFFFAOYSA-N"
    assert record_inchikey({"comments": '"SMILES=C"'}) == "" and record_inchikey({}) == ""


def test_eval_reader_pairs_mona_records_by_their_comment_structures():
    """eval's reader (io.spectra) takes the InChIKey a MoNA record states in Comments, else
    computes it from the structure there; a record with neither is skipped as before."""
    from pathlib import Path

    from neimsctl.io.spectra import load_spectra

    got = load_spectra(Path(__file__).resolve().parents[2] / "data" / "mona_export.msp")
    assert dict(zip(got.ids.tolist(), got.keys.tolist())) == {
        "TST000001": "QTBSBXVTEAMEQO-UHFFFAOYSA-N", "TST000002": "UHOVQNZJYSORNB-UHFFFAOYSA-N",
        "TST000003": "YXFVVABEGXRONW-UHFFFAOYSA-N", "TST000004": "LRHPLDYGYMQRHN-UHFFFAOYSA-N",
        "TST000006": "XEKOWRVHYACXOJ-UHFFFAOYSA-N"}
    assert sum(got.skipped.values()) == 1


def test_decimal_commas_in_peaks_of_a_european_locale_export():
    """'88,05<TAB>999,0' was read as two peaks (88, 5) and (999, 0): the record a num_peaks_mismatch
    reject (or, with '88,5 99', non_numeric_peak). A comma between digits is a decimal point when
    that reading gives valid peaks, as many as Num Peaks states; else a separator, as before."""
    recs = read(b"Name: a\nNum Peaks: 2\n88,05\t999,0\n101,1\t400,5\n\n"
                b"Name: b\nNum Peaks: 2\n88,5 99\n101,4 40\n\n"
                b"Name: c\nNum Peaks: 2\n51,27 55,80\n\n"          # commas as separators: 2 peaks
                b"Name: d\nNum Peaks: 1\n51,27 55,80\n\n"          # one peak with decimal commas
                b"Name: e\nNum Peaks: 3\n88,5 99\n101,4 40\n")
    assert [(r.mz, r.intensity, r.reason) for r in recs] == [
        ([88.05, 101.1], [999.0, 400.5], None), ([88.5, 101.4], [99.0, 40.0], None),
        ([51, 55], [27, 80], None), ([51.27], [55.8], None), ([], [], "non_numeric_peak")]


def test_a_huge_num_peaks_or_mw_value_is_cut_in_the_detail():
    """'Num Peaks: 999...' and 'MW: 111...' of 100,000 digits were echoed whole in the detail."""
    from neimsctl.io.spectrum_records import bad_mass

    rec = one(b"Name: a\nNum Peaks: " + b"9" * 100_000 + b"\n88 10\n")
    assert rec.reason == "malformed_line" and len(rec.detail) < 200 and "(100,000 characters)" in rec.detail
    why = bad_mass("1" * 100_000)
    assert len(why) < 250 and "(100,000 characters)" in why
    assert bad_mass("abc") == "MW 'abc' is not a molecular mass (a positive number below 2,147,483,647)"


def test_a_huge_unknown_schema_is_cut_in_the_detail(tmp_path):
    """A JSONL record whose 'schema' is 100,000 characters was echoed whole in its reject."""
    from neimsctl.io.spectrum_records import read_spectrum_records

    path = tmp_path / "s.jsonl"
    path.write_text('{"schema": "' + "s" * 100_000 + '", "mz": [1], "intensity": [1]}\n')
    (rec,) = read_spectrum_records(path)
    assert rec.reason == "unknown_schema" and len(rec.detail) < 250 and "(100,002 characters)" in rec.detail


def test_three_columns_without_num_peaks_are_no_peaks():
    """Without a Num Peaks line, 'm/z intensity rel.int' lines were paired across the lines
    ([41, 12, 500] / [999, 43, 13]) and written as that spectrum, silently; the same lines with a
    ';' took the line-by-line path and were rejected. Now both are rejected at their line."""
    for sep in (b"", b";"):
        data = b"Name: a\n41 999 12" + sep + b"\n43 500 13" + sep + b"\n"
        (rec,) = read_msp(io.BytesIO(data), "t.msp")
        assert (rec.reason, rec.detail) == ("non_numeric_peak", f"line 2: {'41 999 12' + sep.decode()!r}: odd number of values")
    (rec,) = read_msp(io.BytesIO(b"Name: a\n41 999 43 500\n57 20\n"), "t.msp")
    assert (rec.reason, rec.mz, rec.intensity) == (None, [41, 43, 57], [999, 500, 20])
