"""``neimsctl msp2jsonl``: NIST-style MSP spectra -> JSONL records (parameters and glue only)."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from neimsctl.cli._common import (EXIT_FAIL, InPaths, JobsAuto, OutPath, Quiet, RejectsPath, Strict,
                                  Verbose, app, command, fail, finite, first_lines, input_pairs, output_pair,
                                  check_inputs_or_usage, refuse_clobber, require_input_or_usage, setup_logging,
                                  usage_error)
from neimsctl.errors import shown

CMD = "msp2jsonl"
log = logging.getLogger("neimsctl")


@app.command(CMD)
def msp2jsonl_cli(
    inputs: InPaths = None,
    mol_dir: Annotated[Path | None, typer.Option(
        "--mol-dir", help="Directory of ID<id>.MOL files joined on the record's ID "
                          "(used when a record has no SMILES or InChI line, nor such a Comments "
                          "pair as MoNA writes).")] = None,
    min_mw: Annotated[float, typer.Option("--min-mw", callback=finite, help="Reject records with a nominal MW below this.")] = 50.0,
    max_mw: Annotated[float, typer.Option("--max-mw", callback=finite, help="Reject records with a nominal MW above this.")] = 1000.0,
    max_mz: Annotated[float, typer.Option(
        "--max-mz", callback=finite, help="Drop peaks above this m/z (the record is flagged peaks_above_max_mz).")] = 500.0,
    rejects: RejectsPath = None,
    strict: Strict = False,
    jobs: JobsAuto = "auto",
    no_structure: Annotated[bool, typer.Option(
        "--no-structure", help="Skip RDKit: MSP parsing only (smiles/inchikey/formula/mw null; "
                               "the MW filter uses the MSP's MW line).")] = False,
    output: OutPath = Path("-"),
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Convert NIST-style MSP spectra to JSONL records (neimsctl.record/1).

    Every record read is either written to the output or reported in the rejects file with a
    reason, and counted in the one-line summary on stderr. Structures come from SMILES/InChI
    lines or from --mol-dir; RDKit computes canonical SMILES, InChIKey, formula and nominal
    MW and flags disagreements with the MSP's own lines. See neimsctl-msp2jsonl(1).
    """
    with command(CMD):
        setup_logging(verbose, quiet)
        paths = require_input_or_usage(CMD, inputs)
        if min_mw > max_mw:
            usage_error(CMD, f"--min-mw {min_mw:g} is above --max-mw {max_mw:g}")
        if mol_dir is not None and not mol_dir.is_dir():
            usage_error(CMD, f"--mol-dir {mol_dir}: not a directory")
        if no_structure and mol_dir is not None:
            usage_error(CMD, "--mol-dir and --no-structure exclude each other")
        check_inputs_or_usage(CMD, paths)
        from neimsctl.io.parallel import parse_jobs

        try:
            jobs_n = parse_jobs(jobs)
        except ValueError as exc:
            usage_error(CMD, str(exc))
        refuse_clobber(CMD, input_pairs(paths), [output_pair("-o", output)]
                       + ([output_pair("--rejects", rejects)] if rejects else []))
        if mol_dir is not None:
            _refuse_mol_files(mol_dir, [("-o", output), ("--rejects", rejects)])
        from neimsctl.chem.convert import ConvertOptions, convert_msp
        from neimsctl.cli._progress import Progress
        from neimsctl.io.rejects import Tally
        from neimsctl.io.streams import open_out

        opts = ConvertOptions(mol_dir=str(mol_dir) if mol_dir else None, min_mw=min_mw,
                              max_mw=max_mw, max_mz=max_mz, structure=not no_structure)
        with open_out(output) as fout, Progress(CMD, paths, quiet=quiet, output=output) as bar:
            with open_out(rejects) if rejects else contextlib.nullcontext() as sink:
                tally = Tally(sink=sink)
                stop = convert_msp(paths, fout, tally, opts, jobs=jobs_n, strict=strict,
                                   on_reject=_reject_logger(), progress=bar.update)
            if stop is not None:   # worded as the reject lines above it
                fail(CMD, _reject_line(stop), "rejected under --strict")
        if not quiet:
            print(f"neimsctl {CMD}: {tally.summary()}", file=sys.stderr, flush=True)
        if tally.rejected:
            raise typer.Exit(EXIT_FAIL)


def _reject_line(rej) -> str:  # type: ignore[no-untyped-def]
    """A reject as stderr shows it: ``FILE: line N: [record 'NAME' (id ID): ]reason: detail``."""
    rec = (f"record {shown(rej.record)!r} (id {shown(rej.id)}): "
           if rej.record is not None or rej.id is not None else "")
    return f"{rej.file}: line {rej.line}: {rec}{rej.reason}: {rej.detail}"


def _reject_logger():  # type: ignore[no-untyped-def]
    """A callback that shows the first ten rejects on stderr (all of them with -v, none with -q)."""
    show = first_lines(CMD, log.isEnabledFor(logging.DEBUG), "further rejects not shown (see --rejects FILE, or -v)")
    return lambda rej: show(_reject_line(rej)) if log.isEnabledFor(logging.INFO) else None


def _refuse_mol_files(mol_dir: Path, outputs: list[tuple[str, Path | None]]) -> None:
    """Exit 2 when an output is a file the run may read from ``--mol-dir``: a ``*.MOL`` /
    ``*.mol`` name directly in it (also by a symbolic link or another spelling of the
    directory). ``refuse_clobber`` sees only the command line's inputs, not the MOL files a
    record's ID names."""
    import os

    try:
        here = os.stat(mol_dir)
    except OSError:
        return
    for label, path in outputs:
        if path is None or str(path) == "-":
            continue
        real = Path(os.path.realpath(path))
        try:
            parent = os.stat(real.parent)
        except OSError:
            continue
        if (parent.st_dev, parent.st_ino) == (here.st_dev, here.st_ino) \
                and real.suffix.lower() == ".mol":
            usage_error(CMD, f"{label} {path} is a MOL file of --mol-dir {mol_dir}: refusing "
                             "to write into an input")
