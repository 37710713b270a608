"""eval library code on hand-made spectra whose ranks are known by construction (see _eval_fixtures)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _eval_fixtures import RECALL, RECALL_MASS5, write_case

from neimsctl.errors import FormatError, InputError
from neimsctl.io.spectra import load_spectra
from neimsctl.evaluate.report import run_eval, spearman, write_report

KS = (1, 2, 3)


@pytest.fixture()
def case(tmp_path: Path) -> dict[str, Path]:
    return write_case(tmp_path)


def test_recall_known_by_construction_msp_predictions(case):
    res = run_eval(load_spectra(case["pred_msp"]), load_spectra(case["queries"]),
                   [load_spectra(case["library"])], ks=KS, mass_filter=5)
    m = res.metrics
    for k in KS:
        assert m[f"recall@{k}"] == pytest.approx(RECALL[k])
        assert m[f"recall@{k}_mass5"] == pytest.approx(RECALL_MASS5[k])
    assert res.ranks.tolist() == [1, 2, 3] and res.ranks_mass.tolist() == [1, 1, 2]
    c = m["counts"]
    assert (c["n_queries"], c["n_compounds"], c["n_library"], c["n_library_measured"]) == (3, 3, 5, 2)
    # plain cosines: A exact, B 0.5/sqrt(1.25), C 0.5/sqrt(1.89)
    want = [1.0, 0.5 / math.sqrt(1.25), 0.5 / math.sqrt(1.89)]
    assert res.cosine == pytest.approx(want, abs=1e-5)
    assert m["mean_cosine"] == pytest.approx(np.mean(want), abs=1e-5)
    assert "experts" not in m and "uncertainty" not in m and "efficiency" not in m


def test_jsonl_predictions_experts_uncertainty_efficiency(case):
    res = run_eval(load_spectra(case["pred_jsonl"]), load_spectra(case["queries_msp"]),
                   [load_spectra(case["library"])], ks=KS)
    m = res.metrics
    assert [m[f"recall@{k}"] for k in KS] == pytest.approx([RECALL[k] for k in KS])
    ex = m["experts"]
    assert ex["n_experts"] == 3 and ex["n_compounds"] == 3 and ex["unused_experts"] == []
    assert ex["share_routed"] == pytest.approx([1.0, 1 / 3, 2 / 3], abs=1e-4)
    assert ex["mean_weight"] == pytest.approx([0.45, 0.25 / 3, 1.4 / 3], abs=1e-4)
    assert ex["share_top"] == pytest.approx([2 / 3, 0.0, 1 / 3], abs=1e-4)
    un = m["uncertainty"]
    # uncertainty grows with the error (A < B < C) by construction
    assert un["spearman_compound"] == pytest.approx(1.0)
    assert un["spearman_compound_mae"] == pytest.approx(1.0)
    assert un["coverage_1sd"] == pytest.approx(2 / 3) and un["n_bins_given"] == 3
    assert sum(b["n"] for b in un["bins"]) == 3
    eff = m["efficiency"]
    assert eff["model"] == "toy" and eff["n_parameters"] == 1234 and eff["model_bytes"] == 5678
    assert eff["throughput_mol_s"] == pytest.approx(2.0)
    assert eff["latency_ms_p50"] == pytest.approx(4.0) and eff["latency_n"] == 3


def test_predictions_of_compounds_without_a_query_stay_out_of_the_library(case):
    """The library holds one prediction per *query* compound (eval --help): a prediction of
    another compound (F, a copy of query A's spectrum; D, also measured in --library) is not
    one more candidate, and is counted as unused."""
    text = case["pred_msp"].read_text() + (
        "Name: compound F\nID: F\nInChIKey: FFFFFFFFFFFFFF-UHFFFAOYSA-N\nMW: 100\nNum Peaks: 1\n50 999\n\n"
        "Name: compound D\nID: D\nInChIKey: DDDDDDDDDDDDDD-UHFFFAOYSA-N\nMW: 305\nNum Peaks: 1\n60 999\n\n")
    case["pred_msp"].write_text(text)
    res = run_eval(load_spectra(case["pred_msp"]), load_spectra(case["queries"]),
                   [load_spectra(case["library"])], ks=KS, mass_filter=5)
    assert res.ranks.tolist() == [1, 2, 3] and res.ranks_mass.tolist() == [1, 1, 2]
    c = res.metrics["counts"]
    assert (c["n_queries"], c["n_compounds"], c["n_library"], c["n_library_measured"]) == (3, 3, 5, 2)
    assert (c["n_predicted"], c["n_predicted_unused"]) == (5, 2)
    assert [res.metrics[f"recall@{k}"] for k in KS] == pytest.approx([RECALL[k] for k in KS])


def test_a_mass_filter_needs_no_mass_of_predictions_the_library_does_not_use(case):
    """Only the first prediction of each query compound enters the library: a second one
    without a mass (a duplicate, counted as unused) must not stop --mass-filter."""
    case["pred_msp"].write_text(case["pred_msp"].read_text() +
                                "Name: compound A again\nID: A2\nInChIKey: AAAAAAAAAAAAAA-UHFFFAOYSA-N\n"
                                "Num Peaks: 1\n50 999\n\n")
    res = run_eval(load_spectra(case["pred_msp"]), load_spectra(case["queries"]),
                   [load_spectra(case["library"])], ks=KS, mass_filter=5)
    assert res.ranks_mass.tolist() == [1, 1, 2] and res.metrics["counts"]["n_predicted_unused"] == 1


def test_same_library_twice_is_perfect(case):
    s = load_spectra(case["queries"])
    m = run_eval(s, load_spectra(case["queries"]), ks=KS).metrics
    assert m["recall@1"] == 1.0 and m["mean_cosine"] == pytest.approx(1.0) and m["mae"] == 0.0


def test_no_match_and_mass_filter_without_mw(case, tmp_path):
    with pytest.raises(InputError, match="no measured spectrum"):
        run_eval(load_spectra(case["pred_msp"]), load_spectra(case["library"]))
    from _eval_fixtures import PRED, msp_text

    nomw = tmp_path / "nomw.msp"
    nomw.write_text(msp_text(PRED, with_mw=False))
    run_eval(load_spectra(nomw), load_spectra(case["queries"]))  # fine without the filter
    with pytest.raises(InputError, match=r"--mass-filter needs the molecular mass of every spectrum: "
                       r".*nomw.msp: line 1 \(compound A\) has none .*\(3 records in all\)"):
        run_eval(load_spectra(nomw), load_spectra(case["queries"]), mass_filter=5)


def test_mass_filter_takes_the_mass_of_a_smiles_inchi_or_formula_as_index_does(case, tmp_path):
    """An MSP without MW lines but with SMILES (or InChI, or a formula) was refused by eval
    --mass-filter ('an MSP record lacks its MW line', naming none), while index and search derive
    the mass from them; a JSONL record without mw but with a SMILES likewise."""
    from _eval_fixtures import PRED, msp_text

    # the fixtures' MWs: heptane C7H16 = 100, lauric acid C12H24O2 = 200, C25 = 300
    extra = {"A": "SMILES: CCCCCCC", "B": "InChI: InChI=1S/C12H24O2/c1-2-3-4-5-6-7-8-9-10-11-12(13)14"
             "/h2-11H2,1H3,(H,13,14)", "C": "Formula: C25"}
    text = msp_text(PRED, with_mw=False)
    for c, line in extra.items():
        text = text.replace(f"ID: {c}\n", f"ID: {c}\n{line}\n")
    nomw = tmp_path / "nomw.msp"
    nomw.write_text(text)
    res = run_eval(load_spectra(nomw), load_spectra(case["queries"]), [load_spectra(case["library"])],
                   ks=KS, mass_filter=5)
    assert [res.metrics[f"recall@{k}_mass5"] for k in KS] == pytest.approx([RECALL_MASS5[k] for k in KS])
    queries = tmp_path / "q.jsonl"
    lines = case["queries"].read_bytes().replace(b'"mw":100,', b'"smiles":"CCCCCCC",')
    queries.write_bytes(lines)
    res = run_eval(load_spectra(case["pred_jsonl"]), load_spectra(queries), [load_spectra(case["library"])],
                   ks=KS, mass_filter=5)
    assert [res.metrics[f"recall@{k}_mass5"] for k in KS] == pytest.approx([RECALL_MASS5[k] for k in KS])
    queries.write_bytes(lines.replace(b'"smiles":"CCCCCCC",', b'"smiles":"not a smiles",'))
    with pytest.raises(InputError, match=r"q.jsonl: line 1 has none .*SMILES, InChI or formula"):
        run_eval(load_spectra(case["pred_jsonl"]), load_spectra(queries), mass_filter=5)


def test_loader_formats_and_errors(case, tmp_path, sample_msp):
    a = load_spectra(case["queries"])
    b = load_spectra(case["queries_msp"])
    assert np.array_equal(a.spectra, b.spectra) and list(a.keys) == list(b.keys)
    assert a.spectra.max(axis=1).tolist() == [1.0, 1.0, 1.0]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"schema": "neimsctl.prediction/1"}\n{oops\n')
    assert load_spectra(bad).skipped == {"no_inchikey": 1, "bad_json": 1}   # a bad line is skipped, counted
    bad.write_bytes(b'{"schema": "neimsctl.other/9"}\n')
    with pytest.raises(FormatError):
        load_spectra(bad)
    with pytest.raises(InputError):
        load_spectra(tmp_path / "missing.msp")
    s = load_spectra(sample_msp)
    assert len(s) == 300 and s.spectra.shape == (300, 501) and (s.mw > 0).all()


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_report_files_are_nonempty_pngs(case, tmp_path):
    res = run_eval(load_spectra(case["pred_jsonl"]), load_spectra(case["queries"]),
                   [load_spectra(case["library"])], ks=KS, mass_filter=5)
    files = write_report(res, tmp_path / "rep")
    names = {f.name for f in files}
    assert {"report.md", "mirror_best.png", "mirror_median.png", "mirror_worst.png",
            "recall_at_k.png", "cosine_hist.png", "calibration.png"} <= names
    for f in files:
        assert f.stat().st_size > 1000 or f.suffix == ".md"
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "Recall@1 | 0.3333" in text and "(mirror_worst.png)" in text and "## Uncertainty" in text


def test_a_stated_mass_that_is_no_mass_is_not_used(tmp_path):
    msp = tmp_path / "s.msp"
    rec = "Name: {n}\nInChIKey: WPYMKLBDIGXBTP-UHFFFAOYSA-N\n{mw}Num Peaks: 2\n105 999\n122 700\n\n"
    msp.write_text("".join(rec.format(n=n, mw=mw) for n, mw in (
        ("ok", "MW: 122\n"), ("text", "MW: abc\n"), ("neg", "MW: -3\n"), ("zero", "MW: 0\n"), ("none", ""))))
    s = load_spectra(msp)
    assert s.skipped == {"bad_field": 2} and s.mw.tolist() == [122, -1, -1]


def test_msp_without_inchikey_gets_one_from_smiles(tmp_path):
    from rdkit import Chem

    msp = tmp_path / "s.msp"
    msp.write_text("Name: benzoic acid\nSMILES: OC(=O)c1ccccc1\nMW: 122\nNum Peaks: 2\n105 999\n122 700\n\n"
                   "Name: no structure\nNum Peaks: 1\n50 10\n")
    s = load_spectra(msp)
    assert list(s.keys) == [Chem.MolToInchiKey(Chem.MolFromSmiles("OC(=O)c1ccccc1"))]
    assert s.skipped == {"no_inchikey": 1} and s.mw.tolist() == [122]


def test_report_files_are_written_whole_or_not_at_all(case, tmp_path, monkeypatch):
    """report.md and the plots went straight to their names: a plot that failed half-written
    (a full disk, Ctrl-C) stayed as a truncated PNG beside the complete ones. Each file is
    now written under a temporary name and renamed when complete."""
    import matplotlib.figure

    res = run_eval(load_spectra(case["pred_jsonl"]), load_spectra(case["queries"]),
                   [load_spectra(case["library"])], ks=KS, mass_filter=5)
    real = matplotlib.figure.Figure.savefig

    def half(fig, fname, **kw):
        if "cosine_hist" in str(getattr(fname, "name", fname)) or \
                Path(str(fname)).name.startswith(".cosine_hist"):
            Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n half")
            raise KeyboardInterrupt
        return real(fig, fname, **kw)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half)
    rep = tmp_path / "rep"
    with pytest.raises(KeyboardInterrupt):
        write_report(res, rep)
    left = sorted(p.name for p in rep.iterdir())
    assert "cosine_hist.png" not in left and not [n for n in left if ".part" in n], left
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", real)
    files = write_report(res, rep)
    assert (rep / "cosine_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in rep.iterdir()) == sorted(f.name for f in files)
