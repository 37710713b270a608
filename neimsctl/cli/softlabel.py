"""``neimsctl softlabel``: MC-dropout teacher soft labels for distillation."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer

from neimsctl.cli._common import (EXIT_FAIL, NoProvenance, Quiet, RejectsPath, Verbose, app,
                                  check_inputs_or_usage, command, eprint, input_pairs, output_pair, refuse_clobber,
                                  seekable_output, setup_logging, usage_error, warn_repeated)

CMD = "softlabel"


@app.command(CMD)
def softlabel_cli(
    shards: Annotated[list[Path], typer.Argument(
        help="Teacher-mode HDF5 shards (neimsctl featurize --mode teacher).", show_default=False)],
    teacher: Annotated[list[Path], typer.Option(
        "--teacher", "-t", help="Finetuned teacher checkpoint (neimsctl finetune), an ensemble "
        "file, or teacher (the shipped teacher ensemble). Repeat for an "
        "ensemble: soft labels pool every member's MC samples; the hidden representation is "
        "the first one's, which must be a GNN teacher; later ones may be student checkpoints "
        "(neimsctl distill).", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Soft-label HDF5 file (written as OUT.partial, renamed when "
        "complete).", show_default=False)],
    samples: Annotated[int, typer.Option("--samples", "-n", min=2,
                                         help="MC-dropout samples per molecule.")] = 30,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1,
                                            help="Molecules per forward pass.")] = 64,
    part: Annotated[str, typer.Option(
        "--part", help="all: every row; train: only the train part of the compound-grouped "
        "8:1:1 split (seed 42), all distill needs.")] = "all",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the dropout masks.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")] = "auto",
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue OUT.partial of an interrupted run with the same settings.")] = False,
    rejects: RejectsPath = None,
    no_provenance: NoProvenance = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Run a finetuned teacher with MC dropout and write mean spectra, variances, features.

    For every row of the teacher-mode shards: the MC-dropout mean spectrum and per-bin
    variance (linear, base peak 1) and the teacher's penultimate representation, aligned by id
    with the student shards of the same records. See neimsctl-softlabel(1).
    """
    setup_logging(verbose, quiet)
    seekable_output(CMD, "-o", output)
    if part not in ("all", "train"):
        usage_error(CMD, f"--part: 'all' or 'train', got {part!r}")
    from neimsctl.cli.predict import shipped_paths

    if any(str(t) in ("", ".") and not os.path.isfile(str(t)) for t in teacher):
        usage_error(CMD, "--teacher needs a checkpoint file (or teacher)")
    teacher = [Path(p) for p in shipped_paths([str(t) for t in teacher])]
    refuse_clobber(CMD, input_pairs(shards) + input_pairs(teacher, "--teacher"),
                   [output_pair("-o", output)]
                   + ([output_pair("--rejects", rejects)] if rejects else []))
    with command(CMD):
        check_inputs_or_usage(CMD, [*teacher, *shards],
                              regular="not a regular file (HDF5 and checkpoints are read from files)")
        warn_repeated(CMD, "--teacher", teacher, "its MC samples count that many times in the soft labels")
        from neimsctl.io.provenance import provenance
        from neimsctl.io.streams import open_out
        from neimsctl.train.softlabel import SoftLabelSettings, run_softlabel

        attrs = provenance(not no_provenance)
        settings = SoftLabelSettings(samples=samples, seed=seed, batch_size=batch_size, part=part)
        with open_out(rejects) if rejects else contextlib.nullcontext() as rej:
            tally = run_softlabel(teacher, shards, output, settings=settings, device=device,
                                  resume=resume, rejects=rej, attrs=attrs)
        if not quiet:
            eprint(CMD, tally.summary())
        if tally.rejected:
            raise typer.Exit(EXIT_FAIL)
