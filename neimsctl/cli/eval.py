"""``neimsctl eval``: predicted spectra vs measured ones -> JSON metrics (parameters and glue only)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from neimsctl.cli._common import (Quiet, ScoreName, Verbose, app, check_inputs_or_usage, command, finite,
                                  input_pairs, output_pair,
                                  refuse_clobber, setup_logging, usage_error)

#: The files ``--report DIR`` writes (neimsctl.evaluate.plots, evaluate.report).
REPORT_FILES = ("report.md", "mirror_best.png", "mirror_median.png", "mirror_worst.png",
                "recall_at_k.png", "cosine_hist.png", "calibration.png")

CMD = "eval"
#: Records not used (no InChIKey, no usable peaks) named one per line on stderr; the rest counted.
SHOW_UNUSED = 10


def parse_ks(text: str) -> list[int]:
    """``"1,5,10,20"`` -> ``[1, 5, 10, 20]`` (positive, ascending, unique)."""
    try:
        ks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--ks {text!r}: expected comma-separated integers, e.g. 1,5,10,20") from None
    if not ks or ks[0] < 1 or ks[-1] >= 2 ** 63:
        raise ValueError(f"--ks {text!r}: expected positive integers (below 2**63)")
    return ks


@app.command(CMD)
def eval_cli(
    predicted: Annotated[Path, typer.Argument(
        help="Predicted spectra: JSONL (neimsctl.prediction/1 or record/1), MSP or an HDF5 shard; "
             "'-' for stdin.", allow_dash=True, show_default=False, metavar="PREDICTED")],
    measured: Annotated[Path, typer.Argument(
        help="Measured spectra of the query compounds (same formats).", allow_dash=True,
        show_default=False, metavar="MEASURED")],
    library: Annotated[Optional[list[Path]], typer.Option(
        "--library", "-l", help="Measured spectra of other compounds to add to the library "
        "(repeatable). Spectra of query compounds in it are left out.", metavar="LIB")] = None,
    mass_filter: Annotated[Optional[float], typer.Option(
        "--mass-filter", min=0, callback=finite, help="Also report Recall@K with only candidates within +-DA Da "
        "of the query's nominal mass.", metavar="DA")] = None,
    mz_power: Annotated[float, typer.Option(
        "--mz-power", min=0, max=10, callback=finite,
        help="Exponent a of the m/z weight of the matching cosine.")] = 1.0,
    intensity_power: Annotated[float, typer.Option(
        "--intensity-power", min=0, max=10, callback=finite,
        help="Exponent b of the intensity in the matching cosine.")] = 0.5,
    score: Annotated[str, typer.Option(
        "--score", help="Matching similarity: cosine (the default, weighted as above), composite "
        "(NIST-style match factor) or entropy; the engine of neimsctl search.")] = "cosine",
    reverse: Annotated[bool, typer.Option(
        "--reverse", help="Reverse matching: only query peaks present in the library spectrum count.")] = False,
    ks: Annotated[str, typer.Option(
        "--ks", help="The K of Recall@K, comma-separated.", metavar="K,K,...")] = "1,5,10,20",
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="Write report.md and PNG plots into this directory.", metavar="DIR")] = None,
    json_line: Annotated[bool, typer.Option(
        "--json", help="Print the metrics as one compact JSON line (default: indented JSON).")] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Compare predicted spectra with measured ones: Recall@K by library matching, cosine, MAE/RMSE.

    Predictions and measured spectra are paired by the first block of the InChIKey. The library
    holds one predicted spectrum per query compound plus every --library spectrum of other
    compounds. Metrics go to stdout as JSON. See neimsctl-eval(1).
    """
    setup_logging(verbose, quiet)
    try:
        k_list = parse_ks(ks)
    except ValueError as exc:
        usage_error(CMD, str(exc))
    if score not in ScoreName.__members__:
        *first, last = ScoreName.__members__
        usage_error(CMD, f"--score {score!r}: use {', '.join(first)} or {last}")
    if str(predicted) == "-" and str(measured) == "-":
        usage_error(CMD, "only one of PREDICTED and MEASURED can be '-' (stdin)")
    check_inputs_or_usage(CMD, [predicted, measured, *(library or [])])
    if report is not None and report.exists() and not report.is_dir():
        # not after the whole evaluation as "report: File exists" (exit 1)
        usage_error(CMD, f"--report {report}: not a directory (the report and its plots go into one)")
    refuse_clobber(CMD, input_pairs([predicted, measured]) + input_pairs(library or [], "--library"),
                   [output_pair("-o", "-")] + [output_pair("--report", report / name)
                                               for name in (REPORT_FILES if report else ())])
    with command(CMD):
        import orjson

        from neimsctl.io.spectra import load_spectra
        from neimsctl.evaluate.report import run_eval, write_report
        from neimsctl.io.streams import display_name

        pred, meas = load_spectra(predicted), load_spectra(measured)
        libs = [load_spectra(p) for p in (library or [])]
        from neimsctl.evaluate.matching import Score

        result = run_eval(pred, meas, libs, ks=k_list, mass_filter=mass_filter, mz_power=mz_power,
                          intensity_power=intensity_power,
                          score=Score(score, mz_power, intensity_power, reverse))
        if report is not None:
            files = write_report(result, report)
            result.metrics["report"] = [display_name(f) for f in files]
        opt = orjson.OPT_SERIALIZE_NUMPY | (0 if json_line else orjson.OPT_INDENT_2)
        sys.stdout.buffer.write(orjson.dumps(result.metrics, option=opt) + b"\n")
        unused = [s for s in (pred, meas, *libs) if s.skipped]
        if not quiet:
            m, c = result.metrics, result.metrics["counts"]
            recall = ", ".join(f"R@{k} {m[f'recall@{k}']:.3f}" for k in k_list)
            shown = 0
            for s in unused:
                for line in s.problems[:SHOW_UNUSED - shown]:
                    print(f"neimsctl {CMD}: {line}; not used", file=sys.stderr)
                    shown += 1
            for s in unused:
                why = ", ".join(f"{k}: {v}" for k, v in sorted(s.skipped.items()))
                print(f"neimsctl {CMD}: {s.source}: {sum(s.skipped.values())} records not used ({why})",
                      file=sys.stderr)
            print(f"neimsctl {CMD}: {c['n_queries']} queries, {c['n_compounds']} compounds, "
                  f"{c['n_library']} library entries; {recall}; mean cosine {m['mean_cosine']:.3f}",
                  file=sys.stderr, flush=True)
        if unused:             # some input was not used: the metrics stand, the exit says so
            raise typer.Exit(1)
