"""``neimsctl index``: measured and predicted spectra -> one search index (parameters and glue only)."""

from __future__ import annotations

import contextlib

import datetime
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from neimsctl.cli._common import (NoProvenance, Quiet, RejectsPath, Strict, Verbose, app, check_inputs_or_usage,
                                  command, eprint, once_each,
                                  fail, input_pairs, output_pair, refuse_clobber, setup_logging,
                                  seekable_output, usage_error)

CMD = "index"


@app.command(CMD)
def index_cli(
    inputs: Annotated[list[Path], typer.Argument(
        help="Library spectra: MSP (any dialect), JSONL records or predictions, HDF5 feature "
             "shards; '-' reads MSP/JSONL from stdin. gzip/zstd are decoded transparently.",
        allow_dash=True, show_default=False, metavar="LIB...")],
    out: Annotated[Path, typer.Option("--output", "-o", help="The index file (HDF5, written "
                                      "atomically).", show_default=False)] = Path("-"),
    rejects: RejectsPath = None,
    strict: Strict = False,
    no_provenance: NoProvenance = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Build a spectral search index from measured and predicted spectra.

    Every input record with usable peaks becomes one entry (id, name, InChIKey, SMILES,
    formula, nominal mass, source file, measured or predicted), sorted by nominal mass; a
    record that cannot be indexed (no peaks, bad peaks, no peak within m/z 0..500) is reported
    with its reason and the exit status is 1. Peaks above m/z 500 are dropped, as eval bins
    spectra; the summary counts the records trimmed so. Search it with neimsctl search. See
    neimsctl-index(1).
    """
    setup_logging(verbose, quiet)
    if str(out) == "-":
        usage_error(CMD, "-o must name a file (an index is HDF5, which needs seek)")
    if sum(str(p) == "-" for p in inputs) > 1:
        usage_error(CMD, "stdin ('-') can be given only once")
    check_inputs_or_usage(CMD, inputs)
    inputs = once_each(CMD, "input", inputs, "indexed once (twice would list every hit twice)")
    # -o and --rejects: never an input, never each other (an index with its rejects written
    # into it, or an input emptied by the rejects file)
    seekable_output(CMD, "-o", out)
    refuse_clobber(CMD, input_pairs(inputs), [output_pair("-o", out)]
                   + ([output_pair("--rejects", rejects)] if rejects is not None else []))
    with command(CMD):
        from neimsctl import __version__
        from neimsctl.io.rejects import Tally
        from neimsctl.io.streams import atomic_path, open_out
        from neimsctl.search.build import StrictStop, build_index, no_mass_text

        attrs = None if no_provenance else {
            "neimsctl_version": __version__, "argv": json.dumps(sys.argv),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        from neimsctl.cli._progress import Progress

        tally = Tally()
        try:
            with open_out(rejects) if rejects is not None else contextlib.nullcontext() as sink, \
                    Progress(CMD, list(inputs), quiet=quiet) as bar:
                tally.sink = sink
                with atomic_path(out) as tmp:
                    build_index(inputs, tmp, tally, strict=strict, attrs=attrs, progress=bar.update)
                    if sink is not None:    # a rejects report that cannot be written (a full
                        sink.flush()        # disk) stops the run before the index is put in place
        except StrictStop as exc:
            fail(CMD, str(exc))
        except OSError as exc:
            fail(CMD, str(exc.filename or out), exc.strerror or str(exc))
        if not quiet:
            eprint(CMD, f"{tally.summary()} -> {out}")
        if tally.written == 0:           # valid, but no search can find anything in it
            eprint(CMD, f"warning: {out}: the index holds no entry (no input record could be indexed)")
        elif tally.no_mass:
            eprint(CMD, f"warning: {out}: {no_mass_text(tally.no_mass, tally.written)}")
        if tally.rejected:
            raise typer.Exit(1)
