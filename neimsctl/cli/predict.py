"""``neimsctl predict``: molecules -> predicted EI mass spectra (parameters and glue only)."""

from __future__ import annotations

import contextlib
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from neimsctl.cli._common import (EXIT_FAIL, Device, InPaths, JobsAuto, OutPath, Quiet,
                                  RejectsPath, Strict, Verbose, app, command, eprint, fail, finite, first_lines,
                                  input_pairs, output_pair, check_inputs_or_usage, refuse_clobber, require_input_or_usage,
                                  setup_logging, usage_error, warn_repeated)

CMD = "predict"


#: Where the shipped models are (``neimsctl.predict.model.MODELS_DIR``, without importing torch:
#: --help stays light).
_MODELS_DIR = Path(__file__).resolve().parents[1] / "resources" / "models"
#: The names ``--model`` takes for a shipped model (``neimsctl.predict.model.ARCHS``).
_SHIPPED_NAMES = ("student", "teacher", "neims-v1")


def _shipped() -> str:
    """The default models this installation holds (file names only: --help stays light)."""
    have = [a for a in ("student", "teacher") if (_MODELS_DIR / f"{a}-default.pt").is_file()]
    return ", ".join(have) or "none"


def check_models_or_usage(cmd: str, option: str, models: list[str]) -> None:
    """Exit 2 naming the first model path that does not exist or is not a regular file (a
    shipped name such as ``student`` is resolved later, with its own message)."""
    from neimsctl.io.streams import input_problem

    for m in models:
        if m in _SHIPPED_NAMES:
            continue
        problem = input_problem(m) if m else "no such file"
        if problem is None and not Path(m).is_file():
            problem = "not a regular file"
        if problem is not None:
            usage_error(cmd, f"{option} {m or repr(m)}: {problem}"
                        + (" (a checkpoint file, or one of " + "/".join(_SHIPPED_NAMES) + ")"
                           if problem == "no such file" else ""))


def shipped_paths(models: list[str]) -> list[str]:
    """``--model`` values with ``student``/``teacher`` replaced by the shipped files they load
    (so that an output naming a shipped model is refused like any other input)."""
    return [str(_MODELS_DIR / f"{m}-default.pt") if m in _SHIPPED_NAMES else m for m in models]


class OutFmt(str, Enum):
    msp = "msp"
    jsonl = "jsonl"


class InFmt(str, Enum):
    smi = "smi"
    jsonl = "jsonl"
    sdf = "sdf"


class Domain(str, Enum):
    flag = "flag"
    reject = "reject"


class Average(str, Enum):
    linear = "linear"
    sqrt = "sqrt"


#: ``--sharpen`` of predict and ensemble.
Sharpen = Annotated[Optional[float], typer.Option(
    "--sharpen", min=0.25, max=4.0, callback=finite,
    help="The power an ensemble's averaged spectrum is raised to (1 = as averaged; above 1 gives "
         "back the contrast between peaks that averaging flattens; the shipped default's: 1.1, "
         "chosen on the validation split). Default: the ensemble files' own when every model "
         "is one and they agree, else 1.")]


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    int8 = "int8"


@app.command(CMD)
def predict_cli(
    inputs: InPaths = None,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="student | teacher: a model shipped with neimsctl (this "
                              f"installation ships: {_shipped()}) | PATH to a neimsctl "
                              "checkpoint or ensemble file. Repeat it for an ensemble: the "
                              "models' spectra are averaged (--average). Default: student.")
    ] = None,
    average: Annotated[Optional[Average], typer.Option(
        "--average", help="How an ensemble averages its members' spectra: linear (mean "
                          "intensity) or sqrt (mean of the square roots, squared). Default: the "
                          "ensemble files' own when every --model is one and they agree (as "
                          "neimsctl ensemble decides), else linear (measured best on the "
                          "validation split).")] = None,
    sharpen: Sharpen = None,
    fmt: Annotated[OutFmt, typer.Option("--format", "-O", help="Output format.")] = OutFmt.msp,
    in_fmt: Annotated[InFmt | None, typer.Option(
        "--input-format", "-I", help="Input format (default: detected per file: SDF/MOL, "
                                     "JSONL records, else 'SMILES [name]' lines).")] = None,
    top: Annotated[int | None, typer.Option(
        "--top", min=1, help="Print the N largest peaks per molecule ('m/z 180: 0.9876') "
                             "instead of MSP/JSONL.")] = None,
    uncertainty: Annotated[bool, typer.Option(
        "--uncertainty", help="Add per-peak standard deviations (JSONL 'uncertainty'): the "
                              "teacher's MC dropout, or an ensemble's member disagreement (plus "
                              "its teachers' MC dropout; seeded dropout masks: the same "
                              "command gives the same spreads).")] = False,
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
    jobs: JobsAuto = "auto",
    no_inchikey: Annotated[bool, typer.Option(
        "--no-inchikey", help="Leave the InChIKey out of the output (it costs about a third of "
                              "the time per molecule; for very large libraries).")] = False,
    shard: Annotated[Optional[str], typer.Option(
        "--shard", help="K/N: predict only the records with ordinal % N == K-1 (round robin, "
                        "the split of featurize --shard): N machines or array jobs each run one "
                        "K; their outputs together are the library of one run.")] = None,
    out_of_domain: Annotated[Domain, typer.Option(
        "--out-of-domain", help="Molecules outside the model's domain (mixtures, ions, '*', "
                                "labelled isotopes, elements such as metals, mass < 50 or > 500): "
                                "flag (write the spectrum, marked: JSONL 'flags', MSP comment "
                                "out_of_domain, a count in the summary) or reject.")
    ] = Domain.flag,
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
        check_inputs_or_usage(CMD, paths)
        if uncertainty and top is not None:
            usage_error(CMD, "--uncertainty needs -O jsonl (--top lists carry no uncertainty)")
        if uncertainty and fmt is OutFmt.msp:
            usage_error(CMD, "--uncertainty needs -O jsonl (MSP has no place for it)")
        if mc_samples != 30 and not uncertainty:
            eprint(CMD, "warning: --mc-samples counts only with --uncertainty: ignored")
        models = model or ["student"]
        check_models_or_usage(CMD, "--model", models)
        warn_repeated(CMD, "--model", shipped_paths(models),
                      "the ensemble weighs it that many times and --uncertainty counts its agreement with itself")
        refuse_clobber(CMD, input_pairs(paths) + input_pairs(shipped_paths(models), "--model"),
                       [output_pair("-o", output)]
                       + ([output_pair("--rejects", rejects)] if rejects else []))
        from neimsctl.io.parallel import available_cores, max_jobs, parse_jobs, resolve_jobs

        from neimsctl.io.inputs import parse_shard

        try:
            jobs_n = parse_jobs(jobs)
            shard_kn = parse_shard(shard)
        except ValueError as exc:
            usage_error(CMD, str(exc))
        if threads > max_jobs():   # -t 5000 ran 10x slower; beyond 2**63 torch's traceback
            usage_error(CMD, f"--threads {threads}: at most {max_jobs()} (4 per core of this machine)")
        from neimsctl.cli._progress import Progress
        from neimsctl.errors import StrictStop
        from neimsctl.io.inputs import iter_items
        from neimsctl.io.rejects import Tally
        from neimsctl.io.streams import open_out
        from neimsctl.predict.run import ChunkPredictor, PredictOptions, predicted, run_predict
        from neimsctl.predict.model import load_model

        cores = available_cores()
        if threads:
            import torch

            torch.set_num_threads(threads)
        lm = load_model(models if len(models) > 1 else models[0], device=device,
                        precision=precision.value, average=average.value if average else None,
                        sharpen=sharpen, log=sys.stderr)
        for flag, given in (("--average", average), ("--sharpen", sharpen)):
            if given is not None and lm.arch != "ensemble":
                usage_error(CMD, f"{flag} needs an ensemble (several --model, or an ensemble file)")
        if uncertainty and not lm.supports_uncertainty:
            what = "a one-member ensemble of a " + lm.members[0].arch if lm.arch == "ensemble" \
                else f"a {lm.arch}"
            fail(CMD, f"--uncertainty: --model {models[0]} is {what}",
                 "the spread needs the teacher (MC dropout) or an ensemble (member "
                 "disagreement): use --model teacher, or several --model")
        stage = ChunkPredictor(lm, PredictOptions(
            fmt=fmt.value, top=top, strict=strict, batch_size=batch_size, uncertainty=uncertainty,
            mc_samples=mc_samples, inchikey=not no_inchikey, out_of_domain=out_of_domain.value))
        n_jobs, items = resolve_jobs(jobs_n, iter_items(paths, in_fmt.value if in_fmt else None,
                                                          shard_kn))
        results = predicted(items, stage, jobs=n_jobs,
                            worker_threads=threads or max(1, cores // n_jobs))
        with open_out(output) as fout, Progress(CMD, paths, quiet=quiet, output=output) as bar:
            with open_out(rejects) if rejects else contextlib.nullcontext() as sink:
                tally = Tally(sink=sink, workers=n_jobs)
                try:
                    run_predict(results, fout, tally, strict=strict, progress=bar.update,
                                show=first_lines(CMD, verbose, _MORE))
                except StrictStop as exc:
                    fout.flush()
                    fail(CMD, str(exc), "stopped under --strict")
        if not quiet:
            print(f"neimsctl {CMD}: {tally.summary()}", file=sys.stderr, flush=True)
        if tally.rejected:
            raise typer.Exit(EXIT_FAIL)


#: After the first ten rejected molecules shown on stderr (all with -v; also with -q, which drops
#: only the bar and the summary): every one was printed, thousands for a library of millions.
_MORE = "further rejects not shown (see --rejects FILE, or -v)"
