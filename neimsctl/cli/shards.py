"""``neimsctl shards list|merge``: inspect feature files and merge shards (or zblock streams)."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from neimsctl.cli._common import (NoProvenance, fail, Quiet, Verbose, app, command, eprint,
                                  setup_logging, usage_error)

CMD = "shards"
shards_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="List and merge feature shards. See neimsctl-shards(1).")
app.add_typer(shards_app, name=CMD)

Files = Annotated[list[Path], typer.Argument(help="HDF5 shards or zblock streams.",
                                             show_default=False)]


@shards_app.command("list")
def list_cli(
    files: Files,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
) -> None:
    """Print rows, mode, settings hash, shard tag and size of each feature file.

    zblock streams are read to the end to count their rows. See neimsctl-shards(1).
    """
    with command(f"{CMD} list"):
        from neimsctl.io.featsource import list_features

        try:
            infos = list_features(files)
        except OSError as exc:
            fail(f"{CMD} list", str(exc.filename), exc.strerror or str(exc))
        out = sys.stdout
        if not as_json:
            out.write("path\tformat\tmode\trows\tsettings_hash\tshard\tbytes\n")
        for i in infos:
            if as_json:
                out.write(json.dumps(i.__dict__) + "\n")
            else:
                out.write(f"{i.path}\t{i.format}\t{i.mode}\t{i.rows}\t{i.settings_hash}\t"
                          f"{i.shard or '-'}\t{i.size}\n")


@shards_app.command("merge")
def merge_cli(
    files: Files,
    out: Annotated[Path, typer.Option("--output", "-o", help="Output HDF5 shard (written "
                                      "atomically).", show_default=False)] = ...,  # type: ignore[assignment]
    no_provenance: NoProvenance = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Merge shards and/or zblock streams into one HDF5 shard.

    Refuses inputs whose mode or featurizer settings hash differ. A complete set of
    'featurize --shard K/N' outputs is interleaved back into input order; other inputs are
    concatenated in the order given. A single zblock stream is converted to HDF5.
    See neimsctl-shards(1).
    """
    setup_logging(verbose, quiet)
    if str(out) == "-":
        usage_error(f"{CMD} merge", "-o must name a file (HDF5 needs seek)")
    with command(f"{CMD} merge"):
        from neimsctl import __version__
        from neimsctl.io.featsource import merge_shards

        attrs = None if no_provenance else {
            "neimsctl_version": __version__, "argv": json.dumps(sys.argv),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        try:
            n = merge_shards(files, out, attrs=attrs)
        except OSError as exc:
            fail(f"{CMD} merge", str(exc.filename or out), exc.strerror or str(exc))
        if not quiet:
            eprint(f"{CMD} merge", f"{len(files)} inputs, {n} rows -> {out}")
