"""``neimsctl predict``: molecules -> predicted EI mass spectra (parameters and glue only)."""

from __future__ import annotations

import contextlib
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from neimsctl.cli._common import (EXIT_FAIL, Device, InPaths, Jobs, OutPath, Quiet, RejectsPath,
                                  Strict, Verbose, app, command, fail, input_pairs, output_pair,
                                  refuse_clobber, require_input_or_usage, setup_logging,
                                  usage_error)

CMD = "predict"


class OutFmt(str, Enum):
    msp = "msp"
    jsonl = "jsonl"


class InFmt(str, Enum):
    smi = "smi"
    jsonl = "jsonl"
    sdf = "sdf"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    int8 = "int8"


@app.command(CMD)
def predict_cli(
    inputs: InPaths = None,
    model: Annotated[str, typer.Option(
        "--model", "-m", help="student | teacher (the models shipped with neimsctl) | PATH "
                              "to a neimsctl checkpoint.")] = "student",
    fmt: Annotated[OutFmt, typer.Option("--format", "-O", help="Output format.")] = OutFmt.msp,
    in_fmt: Annotated[InFmt | None, typer.Option(
        "--input-format", "-I", help="Input format (default: detected per file: SDF/MOL, "
                                     "JSONL records, else 'SMILES [name]' lines).")] = None,
    top: Annotated[int | None, typer.Option(
        "--top", min=1, help="Print the N largest peaks per molecule ('m/z 180: 0.9876') "
                             "instead of MSP/JSONL.")] = None,
    uncertainty: Annotated[bool, typer.Option(
        "--uncertainty", help="Teacher MC dropout: add per-peak standard deviations "
                              "(JSONL 'uncertainty'); needs a teacher model.")] = False,
    mc_samples: Annotated[int, typer.Option(
        "--mc-samples", min=2, help="MC-dropout samples for --uncertainty.")] = 30,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1,
                                            help="Molecules per model call.")] = 1024,
    device: Device = "auto",
    precision: Annotated[Precision, typer.Option(
        "--precision", help="Inference precision: fp32, bf16 (weights cast), int8 (dynamic "
                            "quantization of Linear layers, CPU), auto (see neimsctl-predict(1)).")
    ] = Precision.auto,
    threads: Annotated[int, typer.Option("--threads", "-t", min=0,
                                         help="Torch threads per process (0: torch's default; with "
                                              "--jobs N, cores / N in each worker).")] = 0,
    jobs: Jobs = 1,
    no_inchikey: Annotated[bool, typer.Option(
        "--no-inchikey", help="Leave the InChIKey out of the output (it costs about a third of "
                              "the time per molecule; for very large libraries).")] = False,
    strict: Strict = False,
    rejects: RejectsPath = None,
    output: OutPath = Path("-"),
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Predict EI mass spectra for molecules (SMILES lines, JSONL records or SDF).

    Each input molecule gets one predicted spectrum (m/z 0..500) on the output: MSP by default,
    JSONL (neimsctl.prediction/1) with -O jsonl, or the top peaks with --top. A molecule that
    cannot be parsed is reported on stderr with its file and line, prediction goes on, and the
    exit status is 1 at the end (--strict: stop at the first). See neimsctl-predict(1).
    """
    with command(CMD):
        setup_logging(verbose, quiet)
        paths = require_input_or_usage(CMD, inputs)
        for p in paths:
            if str(p) != "-" and not p.is_file():
                usage_error(CMD, f"{p}: no such file")
        if uncertainty and top is not None:
            usage_error(CMD, "--uncertainty needs -O jsonl (--top lists carry no uncertainty)")
        if uncertainty and fmt is OutFmt.msp:
            usage_error(CMD, "--uncertainty needs -O jsonl (MSP has no place for it)")
        refuse_clobber(CMD, input_pairs(paths) + input_pairs([model], "--model"),
                       [output_pair("-o", output)]
                       + ([output_pair("--rejects", rejects)] if rejects else []))
        import os

        from neimsctl.io.rejects import Tally
        from neimsctl.io.streams import open_out
        from neimsctl.train.predict_run import (ChunkPredictor, PredictOptions, StrictStop,
                                                iter_inputs, predicted, run_predict)
        from neimsctl.train.predictor import load_model

        cores = os.cpu_count() or 1
        if threads:
            import torch

            torch.set_num_threads(threads)
        lm = load_model(model, device=device, precision=precision.value, batch_size=batch_size,
                        log=sys.stderr)
        if uncertainty and lm.arch != "teacher":
            fail(CMD, f"--uncertainty: --model {model} is a {lm.arch}",
                 "MC dropout needs the teacher: use --model teacher or a teacher checkpoint")
        stage = ChunkPredictor(lm, PredictOptions(
            fmt=fmt.value, top=top, strict=strict, batch_size=batch_size, uncertainty=uncertainty,
            mc_samples=mc_samples, inchikey=not no_inchikey))
        results = predicted(iter_inputs(paths, in_fmt.value if in_fmt else None), stage,
                            jobs=jobs, worker_threads=threads or max(1, cores // jobs))
        with open_out(output) as fout:
            with open_out(rejects) if rejects else contextlib.nullcontext() as sink:
                tally = Tally(sink=sink)
                try:
                    run_predict(results, fout, tally, strict=strict,
                                show=lambda msg: print(f"neimsctl {CMD}: {msg}", file=sys.stderr))
                except StrictStop as exc:
                    fout.flush()
                    fail(CMD, str(exc), "stopped under --strict")
        if not quiet:
            print(f"neimsctl {CMD}: {tally.summary()}", file=sys.stderr, flush=True)
        if tally.rejected:
            raise typer.Exit(EXIT_FAIL)
