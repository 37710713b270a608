"""neimsctl index + search through the installed CLI: pipes, filters, bad input, exit codes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from neimsctl.cli import main as cli_main

pytestmark = pytest.mark.cli


class Result(NamedTuple):
    returncode: int
    stdout: bytes
    stderr: bytes


def run(exe: str | None, *args: object, stdin: bytes | None = None) -> Result:
    """The real console script through a pipe when ``exe`` is given, else in-process (faster)."""
    if exe is not None:
        p = subprocess.run([exe, *map(str, args)], capture_output=True, timeout=120, input=stdin)
        return Result(p.returncode, p.stdout, p.stderr)
    cli_main.load_commands()
    res = CliRunner().invoke(cli_main.app, [str(a) for a in args], input=stdin)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return Result(res.exit_code, res.stdout_bytes, res.stderr_bytes)


def first_records(msp: Path, n: int) -> bytes:
    """The first ``n`` records of an MSP file whose MW is at most 480 (every peak in m/z 0..500)."""
    text = msp.read_bytes().replace(b"\r\n", b"\n")
    light = [r for r in text.split(b"\n\n") if (m := re.search(rb"^MW: (\d+)", r, re.M)) and int(m.group(1)) <= 480]
    return b"\n\n".join(light[:n]) + b"\n"


@pytest.fixture(scope="module")
def index(sample_msp, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ix") / "sample.h5"
    proc = run(None, "index", sample_msp, "-o", out, "--no-provenance")
    assert proc.returncode == 0, proc.stderr
    assert b"read 300, written 300, rejected 0" in proc.stderr
    return out


def test_each_query_finds_itself_through_a_pipe(neimsctl_exe, index, sample_msp):
    proc = run(neimsctl_exe, "search", "-", "-l", index, "-k", "2", stdin=first_records(sample_msp, 12))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].split("\t")[:5] == ["query_id", "query_name", "rank", "score", "hit_id"]
    rows = [ln.split("\t") for ln in lines[1:]]
    assert len(rows) == 24
    firsts = [r for r in rows if r[2] == "1"]
    assert all(r[0] == r[4] and float(r[3]) == pytest.approx(1.0, abs=1e-4) for r in firsts)
    assert all(r[11] == "measured" and r[10] == "0" for r in firsts)


@pytest.mark.parametrize("score", ["composite", "entropy"])
def test_jsonl_output_other_scores_and_mass_filter(index, sample_msp, score):
    proc = run(None, "search", "-", "-l", index, "-s", score, "-O", "jsonl", "--mass-filter", "5",
               "-q", stdin=first_records(sample_msp, 6))
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    hits = [orjson.loads(x) for x in proc.stdout.splitlines()]
    assert hits and all(abs(h["mass_diff"]) <= 5 for h in hits)
    top = [h for h in hits if h["rank"] == 1]
    assert all(h["hit_id"] == h["query_id"] for h in top)
    assert all(h["score"] == pytest.approx(999.0 if score == "composite" else 1.0, abs=0.01) for h in top)


def test_candidates_and_source_filters(index, sample_msp, tmp_path):
    queries = first_records(sample_msp, 3)
    q = tmp_path / "q.msp"
    q.write_bytes(queries)
    ref = run(None, "search", q, "-l", index, "-k", "1", "-O", "jsonl", "-q")
    keys = [orjson.loads(x)["inchikey"] for x in ref.stdout.splitlines()]
    cand = tmp_path / "cand.txt"
    cand.write_text(f"# suspects\n{keys[0]}\n{keys[1][:14]}\nc1ccccc1 benzene?\nNOTAKEYNOTASMILES((\n"
                    + "C" * 100_000 + "((\n")
    rej = tmp_path / "rej.jsonl"
    proc = run(None, "search", q, "-l", index, "--candidates", cand, "-O", "jsonl", "--rejects", rej)
    assert proc.returncode == 1
    hits = [orjson.loads(x) for x in proc.stdout.splitlines()]
    assert {h["inchikey"][:14] for h in hits} <= {keys[0][:14], keys[1][:14]} and len(hits) >= 3
    err = proc.stderr.decode()
    assert "line 4: c1ccccc1: matches no library entry" in err
    assert "line 5: NOTAKEYNOTASMILES((: neither an InChIKey nor a parsable SMILES" in err
    assert f"line 6: {'C' * 80}... (100,002 characters): neither" in err and len(err) < 2000
    cr = tmp_path / "cr.txt"                                            # old Mac line ends
    cr.write_bytes(cand.read_bytes().replace(b"\n", b"\r"))
    again = run(None, "search", q, "-l", index, "--candidates", cr, "-O", "jsonl")
    assert again.stdout == proc.stdout and "line 6: " in again.stderr.decode()
    got = [orjson.loads(x) for x in rej.read_bytes().splitlines()]       # in the rejects report too
    assert [(r["file"], r["line"], r["reason"]) for r in got] == [
        (str(cand), 4, "candidate_not_found"), (str(cand), 5, "unparsable_candidate"),
        (str(cand), 6, "unparsable_candidate")]
    pred = tmp_path / "pred.jsonl"
    pred.write_bytes(orjson.dumps({"schema": "neimsctl.prediction/1", "id": "p1", "name": "guess",
                                   "smiles": "CCO", "inchikey": "LFQSCWFLJHTTHZ-UHFFFAOYSA-N", "mw": 46,
                                   "mz": list(range(40, 300)), "intensity": [100.0] * 260}) + b"\n")
    proc = run(None, "search", q, "-l", index, "-l", pred, "--source", "predicted", "-O", "jsonl", "-q")
    assert proc.returncode == 0, proc.stderr
    hits = [orjson.loads(x) for x in proc.stdout.splitlines()]
    assert hits and all(h["source"] == "predicted" and h["hit_id"] == "p1" for h in hits)


def test_bad_queries_are_reported_and_skipped(index, sample_msp, tmp_path):
    bad = (b"Name: empty\nNum Peaks: 0\n\n"
           b"Name: words\nNum Peaks: 2\n41 abc\n43 100\n\n"
           b"Name: heavy\nMW: 600\nNum Peaks: 2\n41 10\n612 100\n\n") + first_records(sample_msp, 1)
    q = tmp_path / "bad.msp"
    q.write_bytes(bad)
    rej = tmp_path / "rej.jsonl"
    proc = run(None, "search", q, "-l", index, "-k", "1", "--rejects", rej)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert f"{q}: line 1: record 'empty': no_peaks" in err
    assert f"{q}: line 4: record 'words': non_numeric_peak" in err
    assert f"{q}: line 9: record 'heavy': mz_above_range" in err and "Traceback" not in err
    assert len(proc.stdout.splitlines()) == 2            # header + the one good query
    assert [orjson.loads(x)["reason"] for x in rej.read_bytes().splitlines()] == \
        ["no_peaks", "non_numeric_peak", "mz_above_range"]


def test_bad_libraries_fail_with_one_line(index, sample_msp, tmp_path):
    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 1))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(index.read_bytes()[:5000])
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\nworld\n")
    for lib, msg, code in ((tmp_path / "missing.h5", "no such file", 2), (cut, "not a neimsctl index", 1),
                           (junk, "no usable spectra", 1)):
        proc = run(None, "search", q, "-l", lib)
        assert proc.returncode == code, proc.stderr
        err = proc.stderr.decode().strip().splitlines()
        assert len(err) == 1 and msg in err[0] and err[0].startswith("neimsctl search: "), err
    proc = run(None, "search", q)
    assert proc.returncode == 2 and b"--library" in proc.stderr
    proc = run(None, "index", sample_msp)
    assert proc.returncode == 2 and b"-o must name a file" in proc.stderr


def test_index_rejects_and_mixed_inputs(sample_msp, tmp_path):
    lib = tmp_path / "lib.msp"
    lib.write_bytes(first_records(sample_msp, 5) + b"\nName: nothing\nNum Peaks: 0\n")
    pred = tmp_path / "pred.jsonl"
    pred.write_bytes(orjson.dumps({"schema": "neimsctl.prediction/1", "id": "p1", "name": "", "smiles": "CCO",
                                   "inchikey": None, "mw": None, "mz": [31, 45], "intensity": [999, 300]}) + b"\n")
    out, rej = tmp_path / "ix.h5", tmp_path / "rej.jsonl"
    proc = run(None, "index", lib, pred, "-o", out, "--rejects", rej)
    assert proc.returncode == 1 and b"read 7, written 6, rejected 1 (no_peaks: 1)" in proc.stderr
    assert orjson.loads(rej.read_bytes())["reason"] == "no_peaks"
    from neimsctl.io.spectral_index import open_index

    with open_index(out) as ix:
        assert ix.n == 6 and ix.mw[0] == 46          # mass and InChIKey weighed from the SMILES
        e = ix.entries([0])
        assert e["kind"] == ["predicted"] and e["inchikey"] == ["LFQSCWFLJHTTHZ-UHFFFAOYSA-N"]
        assert [s["kind"] for s in ix.sources] == ["measured", "predicted"]


def test_index_counts_entries_trimmed_above_mz_500_and_names_the_reason(tmp_path):
    lib = tmp_path / "lib.msp"
    lib.write_bytes(b"Name: big\nMW: 600\nNum Peaks: 3\n51 100\n77 999\n600 500\n\n"
                    b"Name: high only\nNum Peaks: 1\n700 999\n\n"
                    b"Name: plain\nNum Peaks: 2\n51 100\n77 999\n\n")
    out, rej = tmp_path / "ix.h5", tmp_path / "rej.jsonl"
    proc = run(None, "index", lib, "-o", out, "--rejects", rej)
    assert proc.returncode == 1
    assert (b"read 3, written 2, rejected 1 (no_peaks: 1); written trimmed: peaks_above_mz_500: 1"
            in proc.stderr), proc.stderr
    r = orjson.loads(rej.read_bytes())
    assert r["record"] == "high only" and "no peak of positive intensity within m/z 0..500" in r["detail"]
    from neimsctl.io.spectral_index import open_index

    with open_index(out) as ix:
        assert ix.n == 2 and sorted(ix.entries([0, 1])["name"]) == ["big", "plain"]


def test_a_stated_mass_that_is_no_mass_is_a_bad_field_reject(index, tmp_path):
    """A query whose MW is no mass would be searched without its mass filter, an entry filed
    under no mass: both are rejects; absent, empty and 0 mean unknown."""
    q = tmp_path / "q.jsonl"
    peaks = {"mz": [51, 77], "intensity": [100, 999]}
    q.write_bytes(b"".join(orjson.dumps({"id": i, **({"mw": mw} if mw != "-" else {}), **peaks}) + b"\n"
                           for i, mw in (("a", "abc"), ("b", -5), ("c", True), ("d", 0), ("e", 78), ("f", "-"))))
    m = tmp_path / "q.msp"
    m.write_bytes(b"Name: x\nMW: 1e99\nNum Peaks: 2\n51 100\n77 999\n\n"
                  b"Name: y\nMW: 0\nNum Peaks: 2\n51 100\n77 999\n\n")
    for cmd in (["search", q, m, "-l", index, "--mass-filter", "5", "-o", tmp_path / "h.tsv"],
                ["index", q, m, "-o", tmp_path / "ix.h5"]):
        proc = run(None, *cmd, "--rejects", tmp_path / "rej.jsonl")
        assert proc.returncode == 1 and b"rejected 4 (bad_field: 4)" in proc.stderr, proc.stderr
        rej = [orjson.loads(x) for x in (tmp_path / "rej.jsonl").read_bytes().splitlines()]
        assert [(r["id"], r["line"]) for r in rej] == [("a", 1), ("b", 2), ("c", 3), ("q:1", 1)]
        assert rej[2]["detail"].startswith("MW true is not a molecular mass")


def test_a_library_given_twice_is_searched_once(index, sample_msp, tmp_path):
    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 3))
    (tmp_path / "again.h5").symlink_to(index)
    once = run(None, "search", q, "-l", index, "-k", "3")
    twice = run(None, "search", q, "-l", index, "-l", tmp_path / "again.h5", "-k", "3")
    assert twice.returncode == once.returncode == 0 and twice.stdout == once.stdout
    assert b"the same file given 2 times: searched once" in twice.stderr


def test_peaks_that_are_no_lists_are_named_so(index, tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_bytes(b'{"id":"a","mz":"51 77","intensity":[1,2]}\n{"id":"b","mz":51,"intensity":2}\n'
                  b'{"id":"c","mz":[51],"intensity":{"a":1}}\n')
    proc = run(None, "search", q, "-l", index, "-o", tmp_path / "h.tsv")
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "rejected 3 (invalid_peak: 3)" in err
    assert err.count("mz is not a list of numbers") == 2 and "intensity is not a list of numbers" in err


def test_an_index_of_nothing_says_so(tmp_path):
    (tmp_path / "empty.msp").write_bytes(b"")
    proc = run(None, "index", tmp_path / "empty.msp", "-o", tmp_path / "e.h5", "-q")
    assert proc.returncode == 0 and b"warning: " in proc.stderr and b"holds no entry" in proc.stderr


def test_index_reads_mona_structures_from_comments(tmp_path):
    """A MoNA export's structures and InChIKeys are only in Comments pairs: the index takes
    them (msp2jsonl's rule), so its entries carry InChIKeys and SMILES."""
    mona = Path(__file__).resolve().parents[1] / "data" / "mona_export.msp"
    out = tmp_path / "mona.h5"
    proc = run(None, "index", mona, "-o", out, "--no-provenance")
    assert proc.returncode == 0 and b"read 6, written 6, rejected 0" in proc.stderr, proc.stderr
    proc = run(None, "search", mona, "-l", out, "-k", "1")
    head, *rows = [ln.split("\t") for ln in proc.stdout.decode().splitlines()]
    hits = {r[head.index("hit_id")]: (r[head.index("inchikey")], r[head.index("smiles")])
            for r in rows}
    assert hits == {
        "TST000001": ("QTBSBXVTEAMEQO-UHFFFAOYSA-N", "CC(O)=O"),      # the first SMILES= pair
        "TST000002": ("UHOVQNZJYSORNB-UHFFFAOYSA-N", "Oc1ccccc1"),    # InChIKey= as stated
        "TST000003": ("YXFVVABEGXRONW-UHFFFAOYSA-N", ""),             # from InChI=
        "TST000004": ("LRHPLDYGYMQRHN-UHFFFAOYSA-N", "CCCCO"),        # SMILES line wins
        "TST000005": ("", ""),                                        # no structure anywhere
        "TST000006": ("XEKOWRVHYACXOJ-UHFFFAOYSA-N", ""),             # from computed InChI=
    }


def test_a_stated_inchikey_that_is_none_is_not_the_entry_s_key(neimsctl_exe, tmp_path):
    """'InChIKey: InChIKey=...' (the InChI tools' prefix) was indexed upper-cased and cut to 27
    characters ('INCHIKEY=UHOVQNZJYSORNB-UHF'), 'InChIKey: N/A' as the key 'N/A' instead of the
    SMILES's: hits showed keys that name no compound and --candidates never found them, silently.
    The prefix is dropped; a key that is none leaves the key to the structure, as eval does."""
    lib = tmp_path / "keys.msp"
    lib.write_text("Name: benzene\nInChIKey: InChIKey=UHOVQNZJYSORNB-UHFFFAOYSA-N\nMW: 78\n"
                   "Num Peaks: 2\n78 999\n51 100\n\n"
                   "Name: toluene\nInChIKey: N/A\nSMILES: Cc1ccccc1\nNum Peaks: 2\n91 999\n65 100\n\n"
                   "Name: unknown\nInChIKey: -\nNum Peaks: 2\n43 999\n41 100\n")
    out = tmp_path / "keys.h5"
    assert run(neimsctl_exe, "index", "-q", lib, "-o", out).returncode == 0
    cand = tmp_path / "cand.txt"
    cand.write_text("UHOVQNZJYSORNB\nYXFVVABEGXRONW-UHFFFAOYSA-N\n")
    for library in (out, lib):
        proc = run(neimsctl_exe, "search", lib, "-l", library, "-k", "1")
        head, *rows = [ln.split("\t") for ln in proc.stdout.decode().splitlines()]
        assert [(r[head.index("hit_name")], r[head.index("inchikey")]) for r in rows] == [
            ("benzene", "UHOVQNZJYSORNB-UHFFFAOYSA-N"), ("toluene", "YXFVVABEGXRONW-UHFFFAOYSA-N"),
            ("unknown", "")], proc.stderr
        proc = run(neimsctl_exe, "search", lib, "-l", library, "-k", "1", "--candidates", cand)
        assert proc.returncode == 0, proc.stderr


def test_a_candidate_list_s_column_header_is_no_candidate(neimsctl_exe, index, sample_msp, tmp_path):
    """A suspect list exported with its column header ('InChIKey', 'SMILES'): the header was an
    unparsable_candidate and search exited 1 on a list nothing was wrong with."""
    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 2))
    ref = run(neimsctl_exe, "search", q, "-l", index, "-k", "1", "-O", "jsonl", "-q")
    keys = [orjson.loads(x)["inchikey"] for x in ref.stdout.splitlines()]
    for header in ("InChIKey", "SMILES\tName", "# suspects\nINCHIKEY"):
        cand = tmp_path / "cand.txt"
        cand.write_text(f"{header}\n{keys[0]}\n{keys[1]}\n")
        proc = run(neimsctl_exe, "search", q, "-l", index, "-k", "1", "-O", "jsonl", "--candidates", cand)
        assert proc.returncode == 0, (header, proc.stderr)
        assert proc.stdout == ref.stdout


def test_outputs_never_overwrite_an_input(index, sample_msp, tmp_path):
    lib = tmp_path / "lib.h5"
    lib.write_bytes(index.read_bytes())
    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 2))
    cand = tmp_path / "cand.txt"
    cand.write_text("CCO\n")
    before = {p: p.read_bytes() for p in (lib, q, cand)}
    for args in (("-o", lib), ("-o", q), ("--rejects", lib), ("--candidates", cand, "-o", cand)):
        proc = run(None, "search", q, "-l", lib, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert b"refusing to write into an input" in proc.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_index_outputs_never_overwrite_an_input_or_each_other(sample_msp, tmp_path):
    """index -o / --rejects: an input is never emptied (--rejects IN.msp did, exit 0), and the
    index never shares its file with the rejects (a corrupt file was left under -o)."""
    lib = tmp_path / "in.msp"
    lib.write_bytes(first_records(sample_msp, 3))
    before = lib.read_bytes()
    for args, text in ((("-o", tmp_path / "ix.h5", "--rejects", lib), b"refusing to write into an input"),
                       (("-o", lib), b"refusing to write into an input"),
                       (("-o", tmp_path / "x.h5", "--rejects", tmp_path / "x.h5"), b"give each output its own file")):
        proc = run(None, "index", lib, *args)
        assert proc.returncode == 2 and text in proc.stderr, (args, proc.stderr)
    assert lib.read_bytes() == before
    assert not (tmp_path / "ix.h5").exists() and not (tmp_path / "x.h5").exists()


def test_a_cut_jsonl_line_loses_only_itself(sample_msp, tmp_path):
    """A truncated or garbled JSONL line is a bad_json reject of index and search (with its line;
    blank lines counted) and a row eval names and does not use (exit 1); the other records are
    used (before, the whole run stopped at that line)."""
    proc = run(None, "msp2jsonl", "-q", "-j", "1", sample_msp)
    lines = proc.stdout.splitlines()[:4]
    recs = tmp_path / "cut.jsonl"
    recs.write_bytes(lines[0] + b"\n\n" + lines[1] + b"\n[1, 2]\n" + lines[2] + b"\n" + lines[3][:200] + b"\n")
    out, rej = tmp_path / "ix.h5", tmp_path / "rej.jsonl"
    proc = run(None, "index", recs, "-o", out, "--rejects", rej)
    assert proc.returncode == 1 and b"read 5, written 3, rejected 2 (bad_json: 2)" in proc.stderr, proc.stderr
    assert [(r["line"], r["reason"]) for r in map(orjson.loads, rej.read_bytes().splitlines())] == \
        [(4, "bad_json"), (6, "bad_json")]
    proc = run(None, "search", recs, "-l", out, "-k", "1")
    assert proc.returncode == 1 and len(proc.stdout.splitlines()) == 1 + 3
    assert b"cut.jsonl: line 6" in proc.stderr
    proc = run(None, "eval", recs, recs, "--json", "-q")   # rows not used: exit 1, metrics written
    assert proc.returncode == 1, proc.stderr
    assert orjson.loads(proc.stdout)["counts"]["skipped"]["measured"] == {"bad_json": 2}
    proc = run(None, "eval", recs, recs, "--json")
    assert b"cut.jsonl: line 4: bad_json; not used" in proc.stderr
    assert b"cut.jsonl: line 6: bad_json; not used" in proc.stderr


def test_huge_header_and_peak_values_are_no_traceback(sample_msp, tmp_path):
    """MW: 2147483648 (beyond the index's int32 masses) is no molecular mass: a bad_field reject
    (it was read as unknown, then as a reject since session 22); a peak at m/z 1e300 is dropped
    as above the range like any peak above m/z 500 (both were tracebacks of index and of search
    -l LIB.msp; eval warned of an invalid cast)."""
    text = first_records(sample_msp, 3).decode()
    m = re.search(r"^MW: (\d+)$", text, re.M)
    peak = re.search(r"^(\d+) (\d+)$", text, re.M)
    lib = tmp_path / "big.msp"
    lib.write_text(text.replace(m.group(0), "MW: 2147483648", 1).replace(peak.group(0), f"1e300 {peak.group(2)}", 1))
    out = tmp_path / "big.h5"
    proc = run(None, "index", lib, "-o", out)
    assert proc.returncode == 1 and b"read 3, written 2, rejected 1 (bad_field: 1)" in proc.stderr, proc.stderr
    from neimsctl.io.spectral_index import open_index

    with open_index(out) as ix:
        assert ix.n == 2 and sorted(ix.mw.tolist())[0] > 0
    proc = run(None, "search", lib, "-l", lib, "-k", "1")
    assert proc.returncode == 1 and len(proc.stdout.splitlines()) == 3, proc.stderr
    assert b"rejected 1 (bad_field: 1); 2 hits; 2 library entries" in proc.stderr
    lib2 = tmp_path / "peak.msp"                    # as a query, m/z 1e300 is a reject
    lib2.write_text(text.replace(peak.group(0), f"1e300 {peak.group(2)}", 1))
    proc = run(None, "search", lib2, "-l", lib2, "-k", "1")
    assert proc.returncode == 1 and len(proc.stdout.splitlines()) == 3, proc.stderr
    assert b"rejected 1 (mz_above_range: 1); 2 hits; 3 library entries" in proc.stderr
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "neimsctl.cli.main", "eval",
                        str(lib), str(lib), "--json", "-q"], capture_output=True, timeout=120)
    assert p.returncode == 1 and b"Warning" not in p.stderr, p.stderr       # the record is not used
    assert orjson.loads(p.stdout)["counts"]["skipped"]["measured"] == {"bad_field": 1}


def test_a_huge_top_is_the_library_size(index, sample_msp, tmp_path):
    """--top 10**11 asked for a (queries x 10**11) array (MemoryError traceback); no query can
    have more hits than the library has entries."""
    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 2))
    lib = tmp_path / "lib.msp"
    lib.write_bytes(first_records(sample_msp, 7))
    proc = run(None, "search", q, "-l", lib, "--top", 10 ** 11)
    assert proc.returncode == 0 and b"2 queries" not in proc.stderr, proc.stderr
    ranks = [ln.split(b"\t")[2] for ln in proc.stdout.splitlines()[1:]]
    assert len(ranks) <= 14 and ranks.count(b"1") == 2


def test_a_binary_candidate_list_is_one_line(index, sample_msp, tmp_path):
    """--candidates naming a binary file (an index) printed its raw bytes to stderr."""
    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 1))
    proc = run(None, "search", q, "-l", index, "--candidates", index)
    assert proc.returncode == 1 and b"binary data, not a list of InChIKeys or SMILES" in proc.stderr
    assert b"\x00" not in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_a_jsonl_library_with_a_utf8_bom_loses_nothing(sample_msp, tmp_path):
    """Windows tools write a UTF-8 byte-order mark: a JSONL file starting with one was taken for
    MSP by index (1 malformed record for the whole file), search -l and eval."""
    recs = run(None, "msp2jsonl", "-q", "-j", "1", sample_msp).stdout.splitlines()[:4]
    lib = tmp_path / "bom.jsonl"
    lib.write_bytes(b"\xef\xbb\xbf" + b"\n".join(recs) + b"\n")
    proc = run(None, "index", lib, "-o", tmp_path / "ix.h5")
    assert proc.returncode == 0 and b"read 4, written 4, rejected 0" in proc.stderr, proc.stderr
    proc = run(None, "eval", lib, lib, "--json", "-q")
    assert proc.returncode == 0 and orjson.loads(proc.stdout)["counts"]["n_queries"] == 4


def test_eval_names_a_mass_beyond_64_bits_as_no_mass(sample_msp, tmp_path):
    """An OverflowError before; then read as unknown; since session 22 a record not used
    (bad_field), as index and search reject it."""
    text = first_records(sample_msp, 3).decode()
    m = re.search(r"^MW: (\d+)$", text, re.M)
    lib = tmp_path / "mw.msp"
    lib.write_text(text.replace(m.group(0), "MW: 9223372036854775808", 1))
    proc = run(None, "eval", lib, lib, "--json", "-q")
    assert proc.returncode == 1 and orjson.loads(proc.stdout)["counts"]["n_queries"] == 2, proc.stderr
    assert orjson.loads(proc.stdout)["counts"]["skipped"]["measured"] == {"bad_field": 1}


def test_progress_bar_only_on_a_terminal(index, sample_msp, tmp_path, neimsctl_exe):
    """index and search show a bar over the input's bytes with the counts when stderr is a
    terminal (search: the queries searched so far, after each --batch); -q, stderr not a
    terminal, or the hits going to that terminal: no bar. The outputs are the same."""
    import os

    from _pty import run_on_tty

    env = {**os.environ, "TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}
    exe = [neimsctl_exe]
    code, tty = run_on_tty([*exe, "index", str(sample_msp), "-o", str(tmp_path / "ix.h5"), "--no-provenance"],
                           env=env)
    text = tty.decode("utf-8", "replace")
    assert code == 0 and "%|" in text and "rec/s" in text and "read 300 written 300 rejected 0" in text, text
    assert text.rstrip().endswith(f"read 300, written 300, rejected 0; written trimmed: "
                                  f"peaks_above_mz_500: 32 -> {tmp_path / 'ix.h5'}")
    code, tty = run_on_tty([*exe, "search", str(sample_msp), "-l", str(tmp_path / "ix.h5"), "--batch", "64",
                            "-o", str(tmp_path / "hits.tsv")], env=env)
    text = tty.decode("utf-8", "replace")
    # 32 of the sample's spectra have peaks above m/z 500: rejected as queries (exit 1), their
    # messages written above the bar
    assert code == 1 and "%|" in text and "read 300 written 268 rejected 32" in text, text
    assert text.rstrip().endswith("queries read 300, written 268, rejected 32 (mz_above_range: 32); "
                                  "2680 hits; 300 library entries")
    plain = run(None, "search", sample_msp, "-l", index, "--batch", "64", "-o", tmp_path / "plain.tsv")
    assert plain.returncode == 1 and b"%|" not in plain.stderr and b"\r" not in plain.stderr
    assert (tmp_path / "plain.tsv").read_bytes() == (tmp_path / "hits.tsv").read_bytes()
    code, tty = run_on_tty([*exe, "search", str(sample_msp), "-l", str(index), "-q", "-o", os.devnull], env=env)
    assert code == 1 and tty == b""
    code, tty = run_on_tty([*exe, "search", str(sample_msp), "-l", str(index), "-k", "1"], env=env,
                           stdout_too=True)
    assert code == 1 and b"%|" not in tty and tty.count(b"\n") >= 268


def test_damaged_indexes_fail_with_one_line(index, sample_msp, tmp_path):
    """An index whose peak offsets go backwards, whose m/z leave the range or whose masses are
    out of order: one 'damaged index' line, exit 1 (a traceback from the exact scores before,
    or, for the masses, silently wrong mass windows)."""
    from _h5damage import damaged_copy

    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 20))

    def damaged(name: str, harm) -> Path:
        return damaged_copy(index, tmp_path / f"{name}{len(list(tmp_path.glob('*.h5')))}.h5", harm)

    def backwards(f):
        p = f["peak_ptr"]
        p[100] = p[102]

    def far_mz(f):          # in every entry: the search checks the peaks it reads (its candidates')
        mz = f["mz"][:]
        mz[::40] = 60000
        f["mz"][:] = mz

    def unsorted(f):
        f["mw"][150] = 30

    for name, harm in (("ptr", backwards), ("mz", far_mz), ("mw", unsorted)):
        for extra in ([], ["--mass-filter", "5"], ["-s", "composite"]):
            proc = run(None, "search", q, "-l", damaged(name, harm), "-q", *extra)
            err = proc.stderr.decode().strip().splitlines()
            assert proc.returncode == 1 and len(err) == 1 and "damaged index" in err[0], (name, extra, err)

    # NaN or negative intensities (the stored weights intact): a NaN exact score made the entry
    # silently no hit (9 hits instead of 10); now one line naming the file, for every score
    def nan_intensity(f):
        x = f["intensity"][:]
        x[:4000] = np.nan
        f["intensity"][:] = x

    def negative_intensity(f):
        x = f["intensity"][:]
        x[:4000] = -1.0
        f["intensity"][:] = x

    for name, harm in (("nan", nan_intensity), ("neg", negative_intensity)):
        bad = damaged(name, harm)
        for extra in ([], ["--mass-filter", "5"], ["-s", "composite"], ["-s", "entropy"]):
            proc = run(None, "search", q, "-l", bad, "-q", *extra)
            err = proc.stderr.decode().strip().splitlines()
            assert proc.returncode == 1 and len(err) == 1, (name, extra, err)
            assert f"{bad.name}: damaged library: peak intensities" in err[0], (name, extra, err)


def test_peaks_of_another_type_fail_with_one_line(index, sample_msp, tmp_path):
    """Peak m/z stored as signed integers with negative values (silently other hits: a negative
    m/z indexed the weights from their end) or as floats (an IndexError traceback): one
    'damaged index' line, exit 1, with the exact stage at the end and per block."""
    from _h5damage import damaged_copy

    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 20))

    def retyped(dtype, change):
        def harm(f):
            mz = change(f["mz"][:].astype(dtype))
            del f["mz"]
            f.create_dataset("mz", data=mz)
        return harm

    def negative(mz):
        mz[::3] = -5
        return mz

    for name, harm in (("neg", retyped(np.int32, negative)), ("float", retyped(np.float32, lambda mz: mz + 0.5))):
        bad = damaged_copy(index, tmp_path / f"{name}.h5", harm)
        for extra in ([], ["--mass-filter", "5"], ["-k", "1001"]):
            proc = run(None, "search", q, "-l", bad, "-q", *extra)
            err = proc.stderr.decode().strip().splitlines()
            assert proc.returncode == 1 and len(err) == 1 and "damaged index" in err[0], (name, extra, err)

def test_mass_filter_never_reaches_entries_of_unknown_mass(tmp_path):
    """An entry without a mass (stored as -1) was inside the window of a query whose MW is at
    most the tolerance minus one."""
    lib = tmp_path / "lib.msp"
    lib.write_text("Name: no mass\nID: u1\nNum Peaks: 2\n40 999\n90 100\n\n"
                   "Name: mass 150\nID: k150\nMW: 150\nNum Peaks: 2\n40 999\n90 100\n\n")
    q = tmp_path / "q.msp"
    q.write_text("Name: q\nID: q3\nMW: 3\nNum Peaks: 2\n40 999\n90 100\n\n"
                 "Name: r\nID: q150\nMW: 152\nNum Peaks: 2\n40 999\n90 100\n\n")
    assert run(None, "index", lib, "-o", tmp_path / "lib.h5", "-q").returncode == 0
    for library in (tmp_path / "lib.h5", lib):
        proc = run(None, "search", q, "-l", library, "--mass-filter", "5", "-q")
        rows = [ln.split("\t") for ln in proc.stdout.decode().splitlines()[1:]]
        assert proc.returncode == 0 and [(r[0], r[4]) for r in rows] == [("q150", "k150")], rows
        proc = run(None, "search", q, "-l", library, "-q")              # no filter: both
        assert sorted(ln.split("\t")[4] for ln in proc.stdout.decode().splitlines()[1:]) == \
            ["k150", "k150", "u1", "u1"]


def test_rejects_of_a_library_given_as_msp(tmp_path):
    """Records of an MSP library given with -l that cannot be indexed go to --rejects and make
    the exit status 1, as in `index` (they were only counted in a summary line)."""
    lib = tmp_path / "badlib.msp"
    lib.write_text("Name: good\nID: g1\nMW: 100\nNum Peaks: 2\n41 999\n57 100\n\n"
                   "Name: nopeaks\nID: b1\nMW: 100\nNum Peaks: 0\n\n"
                   "Name: negative\nID: b2\nMW: 100\nNum Peaks: 1\n41 -5\n\n")
    q = tmp_path / "q.msp"
    q.write_text("Name: q\nID: q\nNum Peaks: 2\n41 999\n57 100\n\n")
    proc = run(None, "search", q, "-l", lib, "--rejects", tmp_path / "rj.jsonl", "-q")
    assert proc.returncode == 1
    assert proc.stdout.decode().splitlines()[1].split("\t")[4] == "g1"
    rej = [orjson.loads(x) for x in (tmp_path / "rj.jsonl").read_bytes().splitlines()]
    assert sorted(r["reason"] for r in rej) == ["invalid_peak", "no_peaks"] and all(r["file"] == str(lib) for r in rej)


def test_a_large_top_lowers_the_batch_and_stdin_once(index, sample_msp, tmp_path, monkeypatch):
    """A batch holds at most _MAX_HITS hits (600 queries x --top 1000 as JSONL took 2.9 GB in
    one batch): the same output whatever the cap. --candidates - counts as stdin."""
    from neimsctl.cli import search as search_cli

    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 40))
    full = run(None, "search", q, "-l", index, "-k", "50", "-O", "jsonl", "-q")
    monkeypatch.setattr(search_cli, "_MAX_HITS", 120)              # 2 queries per batch
    capped = run(None, "search", q, "-l", index, "-k", "50", "-O", "jsonl", "-q")
    assert full.returncode == capped.returncode == 0 and full.stdout == capped.stdout
    assert full.stdout.count(b"\n") == 40 * 50
    proc = run(None, "search", "-", "-l", index, "--candidates", "-", stdin=b"X\n")
    assert proc.returncode == 2 and b"stdin ('-') can be given only once" in proc.stderr


def test_source_choices_are_the_apis(index, sample_msp, tmp_path):
    """--source and SpectralLibrary.search(source=) accept the same values (search.options.SOURCES)."""
    from neimsctl.cli.search import SourceKind
    from neimsctl.search.options import SOURCES

    assert tuple(s.value for s in SourceKind) == SOURCES
    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 1))
    for args in (("--source", "Measured"), ("--mz-power", "-1"), ("--intensity-power", "10.5"),
                 ("--mass-filter", "nan"), ("-k", "0")):
        assert run(None, "search", q, "-l", index, *args).returncode == 2, args


def test_entries_without_a_mass_are_counted_by_index_and_search(tmp_path):
    """A record with no MW, SMILES, InChI or formula (or an unparsable SMILES) is indexed without
    a mass; index and a --mass-filter search say how many, and only a query of unknown mass (searched
    unfiltered) finds them."""
    lib = tmp_path / "lib.msp"
    lib.write_text("Name: a\nNum Peaks: 2\n41 100\n43 999\n\n"
                   "Name: b\nMW: 58\nNum Peaks: 2\n41 100\n43 999\n\n"
                   "Name: c\nSMILES: CCC(C)=O\nNum Peaks: 2\n43 999\n72 300\n\n"
                   "Name: d\nSMILES: notasmiles((\nNum Peaks: 1\n43 999\n")
    out = tmp_path / "lib.h5"
    proc = run(None, "index", lib, "-o", out)
    assert proc.returncode == 0, proc.stderr
    note = (b"2 of 4 entries have no molecular mass (no MW, nor a SMILES, InChI or formula that "
            b"gives one): with --mass-filter only queries of unknown mass can find them")
    assert note in proc.stderr
    proc = run(None, "search", lib, "-l", out, "--mass-filter", "5", "-k", "4", "-O", "jsonl")
    assert proc.returncode == 0 and proc.stderr.count(note) == 1, proc.stderr
    hits = {}
    for line in proc.stdout.splitlines():
        h = orjson.loads(line)
        hits.setdefault(h["query_name"], []).append(h["hit_name"])
    # b (58) and c (72) see only the entries of their mass window; a and d (unknown mass) all
    assert hits["b"] == ["b"] and hits["c"] == ["c"]
    assert sorted(hits["a"]) == sorted(hits["d"]) == ["a", "b", "c", "d"]
    proc = run(None, "search", lib, "-l", out, "-k", "1")        # no filter: no warning
    assert proc.returncode == 0 and b"no molecular mass" not in proc.stderr


def test_a_candidate_smiles_keeps_its_triple_bond(index, sample_msp, tmp_path):
    """'#' is a SMILES triple bond: it was taken for a comment, so 'CCSC(=O)c1ccc(C#N)cc1' was
    searched as 'CCSC(=O)c1ccc(C' (unparsable) and 'C=CC#N' (acrylonitrile) would have been
    propene. A comment starts a line or follows an InChIKey; a UTF-8 BOM is no part of line 1."""
    text = sample_msp.read_bytes().decode()
    record = next(r for r in text.split("\n\n") if "ID: 7926\n" in r)
    q = tmp_path / "q.msp"
    q.write_text(record + "\n")
    cand = tmp_path / "cand.txt"
    cand.write_bytes("\ufeffCCSC(=O)c1ccc(C#N)cc1\n# a comment line\nQJTWZMGDGWFPJB-UHFFFAOYSA-N#note\n"
                     "  #indented comment\n".encode())
    proc = run(None, "search", q, "-l", index, "--candidates", cand, "-O", "jsonl", "-k", "3")
    assert proc.returncode == 0, proc.stderr
    hits = [orjson.loads(x) for x in proc.stdout.splitlines()]
    assert hits and {h["inchikey"] for h in hits} == {"QJTWZMGDGWFPJB-UHFFFAOYSA-N"}
    assert hits[0]["hit_id"] == "7926"


def test_filters_that_leave_no_entry_and_queries_of_unknown_mass_are_said(index, sample_msp, tmp_path):
    """--source predicted over measured libraries gave an empty table, exit 0 and only 'N queries
    without a hit'; queries that --mass-filter cannot filter (no MW, SMILES or usable formula)
    were searched unfiltered without a word."""
    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 2)
                  + b"\nName: no mass\nNum Peaks: 2\n41 999\n43 500\n"
                  + b"\nName: unusable formula\nFormula: Xx2\nNum Peaks: 2\n41 999\n43 500\n")
    proc = run(None, "search", q, "-l", index, "--source", "predicted")
    assert proc.returncode == 0 and proc.stdout.count(b"\n") == 1, proc.stderr
    assert b"warning: no library entry is predicted: no query can have a hit" in proc.stderr
    cand = tmp_path / "cand.txt"
    cand.write_text("C1CCCCCCCCCCCCCCCCCC1\n")                  # parsable, in no library
    proc = run(None, "search", q, "-l", index, "--candidates", cand, "--source", "measured")
    assert proc.returncode == 1 and b"no library entry is measured and of a --candidates compound" in proc.stderr
    proc = run(None, "search", q, "-l", index, "--mass-filter", "5")
    assert proc.returncode == 0, proc.stderr
    assert b"2 queries of unknown mass (no MW, nor a SMILES or formula that gives one) searched " \
           b"without --mass-filter" in proc.stderr
    assert b"unknown mass" not in run(None, "search", q, "-l", index).stderr
    assert b"warning" not in run(None, "search", q, "-l", index, "--source", "measured").stderr


def test_a_query_id_given_twice_is_said_and_a_file_given_twice_read_once(index, sample_msp, tmp_path):
    """Hits are grouped by query_id: two queries of one id (two exports of 'ID: 1', a file given
    twice) were merged in the output without a word; index listed a file given twice twice."""
    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 3))
    same = tmp_path / "same.jsonl"
    same.write_bytes(b'{"id": "A", "mz": [41, 43], "intensity": [999, 500]}\n'
                     b'{"id": "B", "mz": [41, 43], "intensity": [999, 500]}\n'
                     b'{"id": "A", "mz": [41, 55], "intensity": [999, 500]}\n')
    proc = run(None, "search", q, same, str(q).replace("/q.msp", "/./q.msp"), "-l", index, "-k", "1")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert "query file" in err and "the same file given 2 times: searched once" in err
    assert f"warning: 1 queries have the query_id of an earlier query (first: 'A', {same}: line 3)" in err
    assert "queries read 6, written 6" in err and proc.stdout.count(b"\n") == 7
    out = tmp_path / "ix.h5"
    proc = run(None, "index", q, q, "-o", out)
    assert proc.returncode == 0 and b"read 3, written 3" in proc.stderr, proc.stderr
    assert b"indexed once" in proc.stderr


def test_queries_of_no_record_are_said(index, tmp_path):
    """An empty export (or a file of no MSP/JSONL record) gave a bare header line and exit 0."""
    empty = tmp_path / "empty.msp"
    empty.write_bytes(b"\n\n")
    proc = run(None, "search", empty, "-l", index)
    assert proc.returncode == 0 and proc.stdout.count(b"\n") == 1
    assert f"warning: no query record in {empty}".encode() in proc.stderr


def test_a_huge_query_name_is_cut_in_the_reject_line(index, tmp_path):
    """A query of 200,000-character name and no peaks was reported in one 200 KB stderr line."""
    q = tmp_path / "q.msp"
    q.write_bytes(b"Name: " + b"X" * 200_000 + b"\nNum Peaks: 0\n")
    proc = run(None, "search", q, "-l", index)
    assert proc.returncode == 1 and len(proc.stderr) < 1000, proc.stderr[:300]
    assert b"X" * 200 + b"... (200,000 characters)': no_peaks" in proc.stderr
    out = tmp_path / "ix.h5"
    proc = run(None, "index", q, "-o", out, "--strict")
    assert proc.returncode == 1 and len(proc.stderr) < 1000 and b"(200,000 characters)" in proc.stderr


def test_a_shard_row_without_a_spectrum_is_named_by_its_id_not_line_none(index, tmp_path):
    """A feature shard's row has no line: its reject read 'shard.h5: line None: no_peaks: ...'."""
    shard = tmp_path / "smi.h5"
    proc = run(None, "featurize", "-", "-o", shard, "-q", stdin=b"CCCCO\n")
    assert proc.returncode == 0, proc.stderr
    proc = run(None, "search", shard, "-l", index)
    assert proc.returncode == 1
    assert f"{shard}: id 'stdin:1': no_peaks: shard row without a spectrum; skipped".encode() in proc.stderr
    assert b"line None" not in proc.stderr


def test_the_first_query_without_a_hit_is_named(index, sample_msp, tmp_path):
    """A query that shares no peak with any entry has no row in the table: the summary names the
    first such query (it gave only their count)."""
    q = tmp_path / "q.msp"
    first = first_records(sample_msp, 1)
    q.write_bytes(first + b"\nName: lonely\nID: L1\nNum Peaks: 1\n2 999\n"
                  + b"\nName: lonely too\nID: L2\nNum Peaks: 1\n3 999\n")
    proc = run(None, "search", q, "-l", index)
    assert proc.returncode == 0, proc.stderr
    line = first.count(b"\n") + 2
    assert f"; 2 queries without a hit (first: 'L1', {q}: line {line});".encode() in proc.stderr


def test_a_candidate_given_as_an_inchi(neimsctl_exe, index, sample_msp, tmp_path):
    """Suspect lists often give InChI strings: one is matched by its structure's InChIKey (it
    was reported unparsable); a broken one is unparsable."""
    from rdkit import Chem

    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 3))
    ref = run(None, "search", q, "-l", index, "-k", "1", "-O", "jsonl", "-q")
    hit = orjson.loads(ref.stdout.splitlines()[0])
    inchi = Chem.MolToInchi(Chem.MolFromSmiles(hit["smiles"]))
    cand = tmp_path / "cand.txt"
    cand.write_text(f"{inchi}\nInChI=1S/garbage\nC1CC((\n")
    proc = run(neimsctl_exe, "search", q, "-l", index, "--candidates", cand, "-O", "jsonl")
    assert proc.returncode == 1
    hits = [orjson.loads(x) for x in proc.stdout.splitlines()]
    assert hits and {h["inchikey"][:14] for h in hits} == {hit["inchikey"][:14]}
    err = proc.stderr.decode()
    assert "line 2: InChI=1S/garbage: neither an InChIKey nor a parsable SMILES or InChI" in err
    # RDKit's own log stays off after an InChI (it was turned back on: 'SMILES Parse Error' lines)
    assert "line 3: C1CC((: neither" in err and "Parse Error" not in err


def test_rejected_queries_shown_ten_then_one_line(index, tmp_path):
    """Twelve bad queries: ten lines and one saying more are not shown (every one was printed:
    99 lines for the MassBank file); -v shows all; the rejects report holds all."""
    q = tmp_path / "q.msp"
    q.write_bytes(b"".join(b"Name: high %d\nNum Peaks: 1\n600 999\n\n" % i for i in range(12)))
    rej = tmp_path / "rej.jsonl"
    proc = run(None, "search", q, "-l", index, "--rejects", rej)
    assert proc.returncode == 1
    lines = proc.stderr.decode().splitlines()
    assert sum("mz_above_range" in x and "skipped" in x for x in lines) == 10
    assert "neimsctl search: further rejected queries not shown (see --rejects FILE, or -v)" in lines
    assert len(rej.read_bytes().splitlines()) == 12
    verbose = run(None, "search", q, "-l", index, "-v").stderr.decode()
    assert verbose.count("skipped") == 12 and "not shown" not in verbose


@pytest.mark.parametrize("extra", [[], ["--mass-filter", "5"], ["--mass-filter", "5", "-k", "1"]])
def test_without_the_native_extension_the_hits_are_the_same(neimsctl_exe, index, sample_msp, tmp_path, extra):
    """``NEIMSCTL_NATIVE=0`` (numpy's first pass and per-block exact stage, what a machine
    without a C compiler or without AMX runs) and the default: byte-identical hits."""
    import os

    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 60))
    outs = []
    for native in ("1", "0"):
        p = subprocess.run([neimsctl_exe, "search", str(q), "-l", str(index), "-q", *extra], capture_output=True,
                           timeout=120, env={**os.environ, "NEIMSCTL_NATIVE": native})
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout)
    assert outs[0] == outs[1] and outs[0].count(b"\n") > 60


@pytest.mark.parametrize("extra", [[], ["--mass-filter", "5"]])
def test_damaged_stored_weights_fail_with_one_line_on_every_path(neimsctl_exe, index, sample_msp, tmp_path, extra):
    """Stored weights that are not unit vectors (a NaN, a zeroed entry) are refused whether the
    fused native pass checks them (the reader leaves them unchecked: the default path on AMX
    tiles) or the reader thread does (``NEIMSCTL_NATIVE=0``, and other CPUs)."""
    import os

    from _h5damage import damaged_copy

    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 20))

    def nan(f):
        d = f["dense"][:]
        d[::97] = 0x7FC0
        f["dense"][:] = d

    def zero_row(f):
        w = int(f["dense_width"][0])
        d = f["dense"][:]
        d[:w] = 0
        f["dense"][:] = d

    for name, harm in (("nan", nan), ("zero", zero_row)):
        lib = damaged_copy(index, tmp_path / f"{name}{len(extra)}.h5", harm)
        for native in ("1", "0"):
            p = subprocess.run([neimsctl_exe, "search", str(q), "-l", str(lib), "-q", *extra], capture_output=True,
                               timeout=120, env={**os.environ, "NEIMSCTL_NATIVE": native})
            err = p.stderr.decode().strip().splitlines()
            assert p.returncode == 1 and len(err) == 1 and "not unit vectors" in err[0], (name, native, err)


def test_the_program_ends_at_once_but_a_host_of_main_gets_its_exit(neimsctl_exe, index, sample_msp, tmp_path):
    """``search`` run as the program (the script, ``python -m``) ends without the interpreter's
    teardown once its outputs are closed (cli.main.run): the same hits, the status kept. A
    program that runs ``main()`` in-process gets its SystemExit, its atexit handlers run and its
    buffered files are written (os._exit there ended the host)."""
    import sys

    q = tmp_path / "q.msp"
    q.write_bytes(first_records(sample_msp, 5))
    script = run(neimsctl_exe, "search", q, "-l", index, "-k", "2", "-q")
    module = subprocess.run([sys.executable, "-m", "neimsctl.cli.main", "search", str(q), "-l", str(index),
                             "-k", "2", "-q"], capture_output=True, timeout=120)
    assert script.returncode == module.returncode == 0 and script.stdout == module.stdout
    assert script.stdout.count(b"\n") == 11
    host = tmp_path / "host.py"
    host.write_text(
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
        f"log = open({str(tmp_path / 'host.log')!r}, 'w'); log.write('before')\n"
        f"sys.argv = ['neimsctl', 'search', {str(q)!r}, '-l', {str(index)!r}, '-k', '1', '-q', '-o', "
        f"{str(tmp_path / 'hits.tsv')!r}]\n"
        "from neimsctl.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('caught', e.code, file=sys.stderr)\n"
        "log.write(' after'); log.close()\n")
    p = subprocess.run([sys.executable, str(host)], capture_output=True, timeout=120)
    assert p.returncode == 0 and b"caught 0" in p.stderr and b"atexit ran" in p.stderr, p.stderr
    assert (tmp_path / "host.log").read_text() == "before after"
    assert (tmp_path / "hits.tsv").read_bytes().count(b"\n") == 6


def test_predictions_piped_into_index_keep_their_formula_and_name_their_part(neimsctl_exe, tmp_path):
    """`predict -O jsonl | index - -o part1.h5` (man neimsctl-index): the JSONL predictions
    carry the formula the MSP output has, and hits from parts read from stdin say which index
    holds them (all were `<stdin>`)."""
    smiles = b"c1ccc2ncccc2c1 quinoline\nCn1cnc2c1c(=O)n(C)c(=O)n2C caffeine\n"
    pred = subprocess.run([neimsctl_exe, "predict", "-q", "-O", "jsonl"], input=smiles,
                          capture_output=True, timeout=120, check=True).stdout
    assert [orjson.loads(x)["formula"] for x in pred.splitlines()] == ["C9H7N", "C8H10N4O2"]
    part = tmp_path / "part1.h5"
    proc = run(neimsctl_exe, "index", "-", "-o", part, "-q", stdin=pred)
    assert proc.returncode == 0, proc.stderr
    query = subprocess.run([neimsctl_exe, "predict", "-q"], input=smiles[:25],
                           capture_output=True, timeout=120, check=True).stdout
    proc = run(neimsctl_exe, "search", "-", "-l", part, "-k", "1", "-O", "jsonl", stdin=query)
    assert proc.returncode == 0, proc.stderr
    hit = orjson.loads(proc.stdout.splitlines()[0])
    assert (hit["hit_name"], hit["formula"], hit["source"]) == ("quinoline", "C9H7N", "predicted")
    assert hit["library"] == f"<stdin> ({part})"            # the index as search was given it
