"""``neimsctl featurize``: JSONL records or SMILES -> student/teacher features (HDF5 or zblocks)."""

from __future__ import annotations

import contextlib
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from neimsctl.cli._common import (EXIT_FAIL, InPaths, fail, JobsAuto, NoProvenance, OutPath, Quiet,
                                  RejectsPath, Strict, Verbose, app, command, eprint, input_pairs,
                                  output_pair, check_inputs_or_usage, refuse_clobber, require_input_or_usage,
                                  setup_logging, usage_error)

CMD = "featurize"


class Mode(str, Enum):
    """--mode choices: the keys of neimsctl.chem.features.FEATURIZERS, spelled out here so that
    --help does not import RDKit; tests/unit/chem/test_features.py checks they agree."""

    student = "student"
    teacher = "teacher"
    v1 = "v1"


class OutFmt(str, Enum):
    h5 = "h5"
    zst = "zst"


class InFmt(str, Enum):
    jsonl = "jsonl"
    smi = "smi"


@app.command(CMD)
def featurize_cli(
    inputs: InPaths = None,
    mode: Annotated[Mode, typer.Option("--mode", "-m", help="Feature set.")] = Mode.student,
    out: OutPath = Path("-"),
    fmt: Annotated[Optional[OutFmt], typer.Option(
        "--format", "-O", help="h5 (HDF5 shard) or zst (zblock stream). Default: from the -o "
        "suffix; h5 for files and a redirected stdout, zst for a pipe.")] = None,
    in_fmt: Annotated[Optional[InFmt], typer.Option(
        "--input-format", "-I", help="jsonl or smi ('SMILES [name]' lines). Default: detected "
        "per file from the first line.")] = None,
    jobs: JobsAuto = "auto",
    shard: Annotated[Optional[str], typer.Option(
        "--shard", help="K/N: featurize only records with ordinal % N == K-1 (round robin); "
        "merge the N outputs with 'neimsctl shards merge'.")] = None,
    min_mw: Annotated[int, typer.Option("--min-mw", help="Reject nominal mass below.")] = 50,
    max_mw: Annotated[int, typer.Option("--max-mw", help="Reject nominal mass above.")] = 1000,
    inchikey: Annotated[bool, typer.Option(
        "--inchikey/--no-inchikey", help="Compute InChIKeys for SMILES input (JSONL records "
        "carry theirs). --no-inchikey is faster and leaves them empty.")] = True,
    rejects: RejectsPath = None,
    strict: Strict = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue OUT.partial (and the rejects report's .partial) left by an "
        "interrupted run with the same inputs and settings; needs -o FILE with HDF5 output.")] = False,
    no_provenance: NoProvenance = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Featurize molecules for the student or teacher model.

    Reads JSONL records (from msp2jsonl) or SMILES lines, and writes one row per molecule:
    fingerprints (and the graph for the teacher), metadata and the binned target spectrum.
    Every record is written or rejected with a reason. See neimsctl-featurize(1).
    """
    setup_logging(verbose, quiet)
    from neimsctl.io import streams

    paths = require_input_or_usage(CMD, inputs)
    try:
        shard_kn = _parse_shard(shard)
        jobs_n = _parse_jobs(jobs)
    except ValueError as exc:
        usage_error(CMD, str(exc))
    from neimsctl.chem.featurize_run import guess_format

    to_stdout = streams.is_dash(out)
    chosen = fmt.value if fmt else None
    if chosen is None:
        chosen = (guess_format(out) or "h5") if not to_stdout else \
            ("h5" if streams.stdout_is_regular_file() else "zst")
    if to_stdout and streams.stdout_is_tty():
        usage_error(CMD, "refusing to write binary features to a terminal: use -o FILE or a pipe")
    if resume and (to_stdout or chosen != "h5"):
        usage_error(CMD, "--resume needs an HDF5 file output (-o FILE.h5)")
    if min_mw > max_mw:       # every record would be a reject
        usage_error(CMD, f"--min-mw {min_mw} is above --max-mw {max_mw}")
    refuse_clobber(CMD, input_pairs(paths), [output_pair("-o", out)]
                   + ([output_pair("--rejects", rejects)] if rejects else []))

    check_inputs_or_usage(CMD, paths)
    with command(CMD):
        for o in (out, rejects):   # a directory as an output: one line before any work, no OUT.partial
            if o is not None and not streams.is_dash(o) and not streams.is_special_file(o):
                streams.output_name(o)
        try:
            _run(paths, mode.value, out, chosen, in_fmt.value if in_fmt else None, jobs_n, shard_kn,
                 min_mw, max_mw, inchikey, rejects, strict, no_provenance, quiet, verbose, resume)
        except BrokenPipeError:
            raise
        except OSError as exc:
            name = str(exc.filename or ("<stdout>" if to_stdout else out))
            for o in (out, rejects):   # its OUT.partial / REJECTS.partial: name the output asked for
                if o is not None and not streams.is_dash(o) and \
                        name.startswith(str(streams.partial_path(o))):
                    fail(CMD, str(streams.output_error(o, exc)))
            fail(CMD, name, exc.strerror or str(exc))


def _same_rejects(state: dict | None, rejects: Path | None) -> None:
    """A resumed run writes its rejects where the interrupted one did (else the report would
    lose the rejects already counted, or REJECTS.partial would stay behind forever)."""
    from neimsctl.errors import InputError

    if not state or "rejects" not in state:     # a fresh run, or a partial output that predates the check
        return
    had, given = state["rejects"], None if rejects is None else str(rejects)
    if had != given:
        kept = f"--rejects {had} (its first part is {had}.partial)" if had else "no --rejects"
        raise InputError(f"cannot resume: the interrupted run had {kept}; resume with the same "
                         f"{'--rejects' if had else 'options'}, or run again without --resume")


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    from neimsctl.io.inputs import parse_shard

    return parse_shard(text)


def _parse_jobs(text: str) -> int | None:
    from neimsctl.io.parallel import parse_jobs

    return parse_jobs(text)


def _run(paths: list[Path], mode: str, out: Path, fmt: str, in_fmt: str | None, jobs: int | None,
         shard: tuple[int, int] | None, min_mw: int, max_mw: int, inchikey: bool,
         rejects: Path | None, strict: bool, no_provenance: bool, quiet: bool,
         verbose: bool, resume: bool) -> None:
    from neimsctl.chem.featurize_run import (FEATURIZE_FORMATS, open_sink, resume_point,
                                             run_featurize, run_settings)
    from neimsctl.chem.rowbuild import RowOptions
    from neimsctl.cli._progress import Progress
    from neimsctl.errors import InputError, OutputBusy, OutputError, StrictStop
    from neimsctl.io.inputs import iter_items
    from neimsctl.io.parallel import resolve_jobs
    from neimsctl.io.provenance import provenance
    from neimsctl.io.rejects import Tally
    from neimsctl.io.streams import (is_dash, is_special_file, open_out, partial_path,
                                     resumable_out)

    opts = RowOptions(mode=mode, min_mw=min_mw, max_mw=max_mw, inchikey=inchikey)
    settings, digest = run_settings(opts)
    attrs = {"shard": f"{shard[0]}/{shard[1]}" if shard else None, **provenance(not no_provenance)}
    items = iter_items(paths, in_fmt, shard, formats=FEATURIZE_FORMATS)
    file_h5 = fmt == "h5" and not is_dash(out) and not is_special_file(out)
    tally = Tally()
    opened = False          # the rejects report too: from here on, partial work is worth keeping
    # the rejects report is put in place after the output: a run stopped while the output is
    # finished keeps REJECTS.partial beside OUT.partial, and --resume takes both up again
    report = contextlib.ExitStack()
    try:
        with report, open_sink(out, fmt, mode, settings, digest, attrs, resumable=file_h5,
                               resume=resume) as sink:
            state = getattr(sink, "resume_state", None)
            point = resume_point(paths, in_fmt, shard, state, inchikey)  # checks a resumed run's inputs
            if file_h5:
                _same_rejects(state, rejects)
                point["rejects"] = None if rejects is None else str(rejects)
            if rejects is None:
                rej_cm = contextlib.nullcontext()
            elif file_h5:  # kept as REJECTS.partial beside OUT.partial when interrupted
                rej_cm = resumable_out(rejects, keep_bytes=state["rejects_bytes"] if state else None)
            else:
                rej_cm = open_out(rejects)
            rej_fh = report.enter_context(rej_cm)
            opened = True
            tally.sink = rej_fh
            if state:
                tally.read, tally.written = state["read"], state["written"]
                tally.reasons.update(state["reasons"])
                items = (it for it in items if it.ordinal >= state["next_ordinal"])
                if not quiet:
                    eprint(CMD, f"resuming {out} after {state['read']} records "
                                f"({state['written']} rows)")

            def commit(next_ordinal: int) -> None:
                if rej_fh is not None:
                    rej_fh.flush()
                sink.commit({**point, "next_ordinal": next_ordinal, "read": tally.read,
                             "written": tally.written, "reasons": dict(tally.reasons),
                             "rejects_bytes": rej_fh.tell() if rej_fh is not None else 0})

            with Progress(CMD, paths, quiet=quiet, output=out) as bar:
                tally.workers, items = resolve_jobs(jobs, items)
                run_featurize(items, sink, tally, opts=opts, jobs=tally.workers, strict=strict,
                              show=None if quiet else (lambda m: eprint(CMD, m)),
                              show_limit=None if verbose else 10,
                              commit=commit if file_h5 else None, progress=bar.update)
            if rej_fh is not None:      # a report that cannot be written (a full disk) stops the
                rej_fh.flush()          # run before the output is put in place, not after
    except (InputError, OutputError) as exc:
        # --strict, or input that cannot be read (corrupt compressed data): not an interruption;
        # a fresh run's partial output could only be resumed from the same (unreadable) input,
        # so leave nothing behind (a --resume run keeps the partial work it was given). An
        # output that fails mid-run (a full disk) keeps its partial work for --resume; a rejects
        # report that cannot even be opened leaves no OUT.partial either.
        if isinstance(exc, OutputBusy) or isinstance(exc, OutputError) and opened:
            raise                       # another run's partial output, or partial work to keep
        if file_h5 and (isinstance(exc, StrictStop) or not resume):
            shutil.rmtree(partial_path(out), ignore_errors=True)
            if rejects is not None:
                partial_path(rejects).unlink(missing_ok=True)
        raise
    finally:
        # the counts, also of a run that stopped (--strict, unreadable input part-way); not
        # "read 0, written 0" before the line saying the input cannot be read at all, nor
        # anything when the reader of stdout left (`| head`: quietly, as every command)
        stopped = sys.exc_info()[1]
        if not quiet and (tally.read or stopped is None) and not isinstance(stopped, BrokenPipeError):
            eprint(CMD, tally.summary())
    if tally.rejected:
        raise typer.Exit(EXIT_FAIL)
