"""``neimsctl ensemble``: several models -> one ensemble file (parameters and glue only)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from neimsctl.cli._common import (Quiet, Verbose, app, command, input_pairs, output_pair,
                                  refuse_clobber, setup_logging, usage_error)
from neimsctl.cli.predict import Average, Sharpen, check_models_or_usage, shipped_paths

CMD = "ensemble"


@app.command(CMD)
def ensemble_cli(
    models: Annotated[list[str], typer.Argument(
        help="Members: student | teacher (the shipped models), checkpoint files, or ensemble "
             "files (their members are taken over).", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="The ensemble file to write (neimsctl.ensemble/1; /2 with "
        "--int8, /3 with --include: formats/ensemble.v2.md).", show_default=False)],
    average: Annotated[Optional[Average], typer.Option(
        "--average", help="How predict averages the members' spectra: linear (mean intensity) "
                          "or sqrt (mean of the square roots, squared). Default: the members' "
                          "ensemble files' own when all are ensemble files that agree, else "
                          "linear.")] = None,
    sharpen: Sharpen = None,
    fp32: Annotated[bool, typer.Option(
        "--fp32", help="Store the weights in float32 (float16 or int8 members are widened; "
                       "default: float16, half the size; predict widens them to float32 when "
                       "it loads them).")] = False,
    int8: Annotated[bool, typer.Option(
        "--int8", help="Store the weight matrices as int8 with one scale per row (a quarter of "
                       "float32; the rest float16; file format neimsctl.ensemble/2). predict "
                       "widens them to float32 when it loads them.")] = False,
    include: Annotated[Optional[list[Path]], typer.Option(
        "--include", help="A checkpoint or ensemble file in the output's directory whose members "
                          "the ensemble takes over when loaded, without a copy: the file records "
                          "its name and sha256 (format neimsctl.ensemble/3), and refuses to load "
                          "if it is missing or was replaced. Repeatable.",
        show_default=False)] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Bundle models into one ensemble file that predict, softlabel and the API load as one.

    The members may be any mix of students, NEIMS v1 models and GNN teachers. The file keeps
    only what inference needs (no optimizer state). predict --model ENSEMBLE.pt averages the
    members' spectra; --uncertainty adds the members' disagreement per peak. See
    neimsctl-ensemble(1).
    """
    with command(CMD):
        setup_logging(verbose, quiet)
        if fp32 and int8:
            usage_error(CMD, "--fp32 and --int8 exclude each other")
        if str(output) == "-":
            usage_error(CMD, "-o -: an ensemble file is binary; give a file name")
        check_models_or_usage(CMD, "model", models)
        if include:
            from neimsctl.predict.ensemble import include_problem

            for one in include:
                problem = include_problem(one, output)
                if problem is not None:
                    usage_error(CMD, f"--include {one}: {problem}")
        refuse_clobber(CMD, input_pairs(shipped_paths(models), "model")
                       + input_pairs([str(p) for p in include or []], "--include"),
                       [output_pair("-o", output)])
        from neimsctl.models.checkpoint import power_text
        from neimsctl.predict.ensemble import write_ensemble

        info = write_ensemble(models, output, average=average.value if average else None,
                              sharpen=sharpen,
                              weights="fp32" if fp32 else "int8" if int8 else "fp16",
                              include=include or (), log=sys.stderr)
        shas = [m["sha256"] for m in info["members"]]
        for sha in sorted({s for s in shas if shas.count(s) > 1}):
            labels = ", ".join(m["label"] for m in info["members"] if m["sha256"] == sha)
            print(f"neimsctl {CMD}: warning: the same weights (sha256:{sha}) are {shas.count(sha)} "
                  f"members ({labels}): their disagreement, the --uncertainty spread, is zero",
                  file=sys.stderr)
        if not quiet:
            for m in info["members"]:
                print(f"neimsctl {CMD}: {m['label']}: {m['arch']}, {m['n_parameters']:,} "
                      f"parameters, sha256:{m['sha256']}", file=sys.stderr)
            n = len(info["members"])
            print(f"neimsctl {CMD}: wrote {output}: {n} member{'s' if n != 1 else ''}, "
                  f"{info['average']} average"
                  + (f" sharpened to the power {power_text(info['sharpen'])}" if info["sharpen"] != 1.0 else "")
                  + f", {info['bytes'] / 1e6:.1f} MB", file=sys.stderr,
                  flush=True)
