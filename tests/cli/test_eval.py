"""neimsctl eval through the installed CLI: JSON on stdout, report files, exit codes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest
from _eval_fixtures import RECALL, RECALL_MASS5, write_case

pytestmark = pytest.mark.cli


def run(exe: str, *args: str, cwd: Path | None = None, stdin: bytes | None = None):
    return subprocess.run([exe, "eval", *map(str, args)], capture_output=True, timeout=120,
                          cwd=cwd, input=stdin)


def test_msp_vs_itself_is_perfect(neimsctl_exe, tmp_path):
    case = write_case(tmp_path)
    proc = run(neimsctl_exe, case["queries_msp"], case["queries_msp"])
    assert proc.returncode == 0, proc.stderr
    m = orjson.loads(proc.stdout)
    assert m["schema"] == "neimsctl.eval/1"
    assert m["recall@1"] == 1.0 and m["mean_cosine"] == pytest.approx(1.0)
    assert m["mae"] == 0.0 and m["counts"]["n_queries"] == 3
    assert b"R@1 1.000" in proc.stderr


def test_sample_msp_vs_its_jsonl(neimsctl_exe, tmp_path, sample_msp):
    """The bundled sample against itself through two formats: every compound ranks first
    except where two compounds share a spectrum shape; id pairing makes every cosine 1."""
    jsonl = tmp_path / "s.jsonl"
    conv = subprocess.run([neimsctl_exe, "msp2jsonl", "-q", str(sample_msp), "-o", str(jsonl)],
                          capture_output=True, timeout=120)
    assert conv.returncode == 0, conv.stderr
    proc = run(neimsctl_exe, jsonl, sample_msp, "--json", "-q")
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert proc.stdout.count(b"\n") == 1
    m = orjson.loads(proc.stdout)
    assert m["counts"]["n_queries"] == 300 and m["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert m["recall@10"] >= 0.99


def test_records_not_used_are_named_and_exit_1(neimsctl_exe, tmp_path):
    """Predictions that cannot be matched (no InChIKey; NaN, negative or no peaks; a line that
    is not JSON) were dropped silently (exit 0, only counts.skipped in the JSON): now each is
    named with its file and line on stderr, counted per reason, and the exit is 1; the metrics
    of the records used are still written."""
    case = write_case(tmp_path)
    lines = Path(case["pred_jsonl"]).read_bytes().splitlines()
    rec = orjson.loads(lines[-1])
    bad = [rec | {"id": "neg", "intensity": [-1.0] * len(rec["mz"])},
           rec | {"id": "empty", "mz": [], "intensity": []},
           rec | {"id": "nokey", "inchikey": None},
           rec | {"id": "badmw", "mw": -5}]
    pred = tmp_path / "pred_bad.jsonl"
    pred.write_bytes(b"\n".join([*lines, *map(orjson.dumps, bad), b"{not json"]) + b"\n")
    n = len(lines)
    proc = run(neimsctl_exe, pred, case["queries"], "--library", case["library"], "--ks", "1,2,3")
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    for k, why in ((1, "bad_peaks"), (2, "no_peaks"), (3, "no_inchikey"), (4, "bad_field"), (5, "bad_json")):
        assert f"pred_bad.jsonl: line {n + k}: {why}; not used" in err, err
    assert ("pred_bad.jsonl: 5 records not used (bad_field: 1, bad_json: 1, bad_peaks: 1, no_inchikey: 1, "
            "no_peaks: 1)") in err
    m = orjson.loads(proc.stdout)
    assert m["recall@1"] == pytest.approx(RECALL[1])
    assert m["counts"]["skipped"]["predicted"] == {"bad_field": 1, "bad_json": 1, "bad_peaks": 1,
                                                   "no_inchikey": 1, "no_peaks": 1}


def test_jsonl_predictions_with_library_and_mass_filter(neimsctl_exe, tmp_path):
    case = write_case(tmp_path)
    proc = run(neimsctl_exe, case["pred_jsonl"], case["queries"], "--library", case["library"],
               "--mass-filter", "5", "--ks", "1,2,3")
    assert proc.returncode == 0, proc.stderr
    m = orjson.loads(proc.stdout)
    for k in (1, 2, 3):
        assert m[f"recall@{k}"] == pytest.approx(RECALL[k])
        assert m[f"recall@{k}_mass5"] == pytest.approx(RECALL_MASS5[k])
    assert m["settings"]["mass_filter"] == 5.0
    assert m["experts"]["n_experts"] == 3 and m["uncertainty"]["spearman_compound"] == pytest.approx(1.0)
    # m/z^0 * I^1 weighting changes nothing here but is accepted and echoed
    proc = run(neimsctl_exe, case["pred_jsonl"], case["queries"], "-l", case["library"],
               "--mz-power", "0", "--intensity-power", "1", "--ks", "1,2,3")
    assert orjson.loads(proc.stdout)["settings"]["mz_power"] == 0.0


def test_report_and_stdin(neimsctl_exe, tmp_path):
    case = write_case(tmp_path)
    rep = tmp_path / "rep"
    proc = run(neimsctl_exe, "-", case["queries"], "-l", case["library"], "--report", rep,
               stdin=case["pred_jsonl"].read_bytes())
    assert proc.returncode == 0, proc.stderr
    m = orjson.loads(proc.stdout)
    assert (rep / "report.md").stat().st_size > 0
    for name in ("mirror_best", "mirror_median", "mirror_worst", "recall_at_k", "cosine_hist"):
        png = (rep / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert str(rep / "report.md") in m["report"]


def test_a_report_directory_that_is_a_file_is_a_usage_error(neimsctl_exe, tmp_path):
    """--report onto a file ran the whole evaluation, then said only "<file>: File exists"
    (exit 1); it is named as a usage error before any work, and the file is left alone."""
    case = write_case(tmp_path)
    taken = tmp_path / "taken.md"
    taken.write_bytes(b"mine\n")
    proc = run(neimsctl_exe, case["pred_jsonl"], case["queries"], "--report", taken)
    assert proc.returncode == 2 and proc.stdout == b""
    assert proc.stderr.decode().strip().splitlines() == [
        f"neimsctl eval: --report {taken}: not a directory (the report and its plots go into one)"]
    assert taken.read_bytes() == b"mine\n"


def test_a_report_plot_that_cannot_be_written_is_named(neimsctl_exe, tmp_path):
    """A full disk (here: a file-size limit) while a plot is saved said only "I/O error: File
    too large": the file that could not be written is named, and no temporary is left."""
    case = write_case(tmp_path)
    rep = tmp_path / "rep"
    proc = subprocess.run(["bash", "-c", 'ulimit -f 8; "$0" eval "$1" "$2" --report "$3"', neimsctl_exe,
                           str(case["pred_jsonl"]), str(case["queries"]), str(rep)],
                          capture_output=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.decode().splitlines()[-1] == \
        f"neimsctl eval: {rep}/mirror_best.png: cannot write: File too large"
    assert sorted(p.name for p in rep.iterdir()) == []


@pytest.mark.parametrize("args, code, message", [
    (["{queries}", "{library}"], 1, b"no measured spectrum"),
    (["{queries}", "{missing}"], 2, b"no such file"),
    (["{bad}", "{queries}"], 1, b"0 predictions read; skipped bad_json: 1"),
    (["{queries}", "{queries}", "--ks", "a,b"], 2, b"--ks"),
    (["{queries}", "{queries}", "--ks", "1,99999999999999999999"], 2, b"below 2**63"),   # a TypeError before
    (["{queries}", "{queries}", "--mass-filter", "-1"], 2, b"mass-filter"),
    (["{queries}"], 2, b"MEASURED"),
    (["-", "-"], 2, b"only one"),
])
def test_exit_codes(neimsctl_exe, tmp_path, args, code, message):
    case = write_case(tmp_path)
    (tmp_path / "bad.jsonl").write_bytes(b"{not json\n")
    names = {"queries": case["queries"], "library": case["library"],
             "missing": tmp_path / "missing.msp", "bad": tmp_path / "bad.jsonl"}
    proc = run(neimsctl_exe, *[a.format(**names) for a in args], stdin=b"")
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and proc.stdout == b""


def test_nn_baseline_tool_agrees_with_eval(neimsctl_exe, tmp_path, sample_msp, repo_root):
    """tools/bench/nn_baseline.py on the bundled sample; `neimsctl eval` on its exported
    predictions reproduces its figures exactly."""
    feats = tmp_path / "s.h5"
    proc = subprocess.run(f"{neimsctl_exe} msp2jsonl -q {sample_msp} | {neimsctl_exe} featurize -q "
                          f"--no-provenance -o {feats} -", shell=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import sys

    tool = subprocess.run([sys.executable, str(repo_root / "tools" / "bench" / "nn_baseline.py"),
                           str(feats), "--export", str(tmp_path / "nn")], capture_output=True, timeout=120)
    assert tool.returncode == 0, tool.stderr
    nn = orjson.loads(tool.stdout)
    assert nn["n_compounds"] > 10 and 0 < nn["mean_tanimoto"] <= 1
    proc = run(neimsctl_exe, tmp_path / "nn" / "pred.jsonl", tmp_path / "nn" / "query.jsonl",
               "-l", tmp_path / "nn" / "train.jsonl", "--mass-filter", "5", "-q")
    assert proc.returncode == 0, proc.stderr
    ev = orjson.loads(proc.stdout)
    for key in ("recall@1", "recall@10", "recall@20_mass5", "mean_cosine", "mae", "rmse"):
        assert ev[key] == pytest.approx(nn[key], abs=1e-6), key
    assert ev["counts"]["n_library"] == nn["n_library"] and ev["counts"]["n_queries"] == nn["n_queries"]


def test_a_search_index_as_library_says_what_it_is(neimsctl_exe, tmp_path):
    """eval's --library holds spectra; a search index given there says it is one (it said only
    "not a neimsctl.h5shard/1 file (schema='neimsctl.index/2')")."""
    case = write_case(tmp_path)
    idx = tmp_path / "lib.h5"
    made = subprocess.run([neimsctl_exe, "index", str(case["library"]), "-o", str(idx), "-q"],
                          capture_output=True, timeout=120)
    assert made.returncode == 0, made.stderr
    proc = run(neimsctl_exe, case["queries"], case["queries"], "-l", idx)
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().strip() == (f"neimsctl eval: {idx}: a search index (neimsctl index; neimsctl "
                                            "search reads it), not a feature shard (neimsctl.h5shard/1, "
                                            "neimsctl featurize)")


def test_a_stated_key_that_is_no_inchikey_is_not_paired_silently(neimsctl_exe, tmp_path):
    """"InChIKey: InChIKey=..." (the InChI tools' output) and "InChIKey: N/A" were taken as keys:
    they paired with no prediction, so their records silently left the queries (exit 0, no word).
    The prefix is dropped; a key that is no InChIKey gives way to the record's SMILES, and
    without one the record is named as not used (bad_inchikey, exit 1)."""
    rec = "Name: {name}\nInChIKey: {key}\n{smiles}Num Peaks: 2\n{a} 999\n{b} 300\n\n"
    pred = "".join(rec.format(name=n, key=k, smiles="", a=a, b=b) for n, k, a, b in (
        ("ethanol", "LFQSCWFLJHTTHZ-UHFFFAOYSA-N", 31, 45), ("benzene", "UHOVQNZJYSORNB-UHFFFAOYSA-N", 78, 52),
        ("ethylamine", "QUSNBJAOOMFDIB-UHFFFAOYSA-N", 30, 45), ("propane", "ATUOYWHBWRKTHZ-UHFFFAOYSA-N", 29, 44)))
    meas = "".join(rec.format(name=n, key=k, smiles=s, a=a, b=b) for n, k, s, a, b in (
        ("ethanol", "lfqscwfljhtthz-uhfffaoysa-n", "", 31, 45),
        ("benzene", "InChIKey=UHOVQNZJYSORNB-UHFFFAOYSA-N", "", 78, 52),
        ("ethylamine", "N/A", "SMILES: CCN\n", 30, 45),
        ("propane", "N/A", "", 29, 44)))
    (tmp_path / "pred.msp").write_text(pred)
    (tmp_path / "meas.msp").write_text(meas)
    proc = run(neimsctl_exe, "pred.msp", "meas.msp", "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    counts = orjson.loads(proc.stdout)["counts"]
    assert counts["n_queries"] == 3 and counts["skipped"]["measured"] == {"bad_inchikey": 1}
    assert "meas.msp: line 20 (propane): bad_inchikey; not used" in proc.stderr.decode()
