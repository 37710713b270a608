"""``neimsctl shards list|merge|split``: inspect, merge (shards or zblock streams) and split by compound."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from neimsctl.cli._common import (NoProvenance, fail, Quiet, Verbose, app, check_inputs_or_usage, command, eprint,
                                  h5_error_file, input_pairs, output_pair, refuse_clobber,
                                  setup_logging, usage_error, warn_repeated)

CMD = "shards"
shards_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="List, merge and split feature shards. See neimsctl-shards(1).")
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
    check_inputs_or_usage(f"{CMD} list", files)
    refuse_clobber(f"{CMD} list", input_pairs(files), [output_pair("-o", "-")])
    with command(f"{CMD} list"):
        from neimsctl.errors import FormatError
        from neimsctl.io.featsource import list_features

        out, failed = sys.stdout, 0
        if not as_json:
            out.write("path\tformat\tmode\trows\tsettings_hash\tshard\tbytes\n")
        for path in files:          # a file that cannot be read is reported; the others listed
            try:
                [i] = list_features([path])
            except (FormatError, OSError, RuntimeError) as exc:
                if isinstance(exc, RuntimeError) and h5_error_file(exc) is None:
                    raise                   # not HDF5's finding in a damaged file: a bug
                eprint(f"{CMD} list", *_unreadable(path, exc))
                failed += 1
                continue
            if as_json:
                out.write(json.dumps(i.__dict__) + "\n")
            else:
                out.write(f"{i.path}\t{i.format}\t{i.mode}\t{i.rows}\t{i.settings_hash}\t"
                          f"{i.shard or '-'}\t{i.size}\n")
            out.flush()
        if failed:
            raise typer.Exit(1)


def _unreadable(path: Path, exc: BaseException) -> tuple[str, str | None]:
    """``(what, why)`` of a file ``shards list`` cannot read, as the command boundary words
    the same errors."""
    if isinstance(exc, OSError):
        return str(exc.filename or path), exc.strerror or str(exc)
    if isinstance(exc, RuntimeError):                   # HDF5's own findings
        return str(path), f"damaged HDF5 file: {exc}"
    return (str(exc) if getattr(exc, "file", None) else f"{path}: {exc}"), None


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
    check_inputs_or_usage(f"{CMD} merge", files)
    refuse_clobber(f"{CMD} merge", input_pairs(files), [output_pair("-o", out)])
    warn_repeated(f"{CMD} merge", "input", files, "its rows are written that many times")
    with command(f"{CMD} merge"):
        from neimsctl.io.featsource import merge_shards
        from neimsctl.io.provenance import provenance

        try:
            n = merge_shards(files, out, attrs=provenance(not no_provenance),
                             warn=lambda what: eprint(f"{CMD} merge", f"warning: {what}"))
        except OSError as exc:
            fail(f"{CMD} merge", str(exc.filename or out), exc.strerror or str(exc))
        if not quiet:
            eprint(f"{CMD} merge", f"{len(files)} input{'' if len(files) == 1 else 's'}, {n} rows -> {out}")


@shards_app.command("split")
def split_cli(
    files: Annotated[list[Path], typer.Argument(help="HDF5 shards (any mode).", show_default=False)],
    part: Annotated[str, typer.Option("--part", "-p", help="train | val | test.")] = "test",
    fmt: Annotated[str, typer.Option("--format", "-O", help="jsonl: records with the measured "
                                     "spectra; smi: 'SMILES id', one per compound.")] = "jsonl",
    seed: Annotated[int | None, typer.Option("--seed", help="Split seed (training uses 42).",
                                             show_default="42")] = None,
    split: Annotated[str | None, typer.Option(
        "--split", help="Train,val,test shares, as a run's data.split.",
        show_default="0.8,0.1,0.1")] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", help="Take --split and --seed from the config of this finetune or "
        "distill checkpoint: the parts that model was trained and validated on.")] = None,
    out: Annotated[str, typer.Option("--output", "-o", help="Output file ('-': stdout; a file "
                                     "is written atomically).")] = "-",
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Write one part of the compound-grouped 8:1:1 split that training uses.

    The rows with a spectrum are split by InChIKey connectivity block exactly as pretrain,
    finetune and distill split them, so 'neimsctl shards split F.h5 --part test' gives the
    held-out compounds to predict and their measured spectra to evaluate against.
    See neimsctl-shards(1).
    """
    setup_logging(verbose, quiet)
    from neimsctl.data.split_export import FORMATS, PARTS

    if part not in PARTS:
        usage_error(f"{CMD} split", f"--part must be one of {', '.join(PARTS)}, got {part!r}")
    if fmt not in FORMATS:
        usage_error(f"{CMD} split", f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if any(str(f) == "-" for f in files):
        usage_error(f"{CMD} split", "-: HDF5 shards are read from files, not stdin")
    if checkpoint is not None and (seed is not None or split is not None):
        usage_error(f"{CMD} split", "--checkpoint gives the split and its seed: leave out "
                                    "--split and --seed")
    fractions = _fractions(split) if split is not None else None
    check_inputs_or_usage(f"{CMD} split", [*files, *([checkpoint] if checkpoint else [])])
    refuse_clobber(f"{CMD} split", input_pairs(files), [output_pair("-o", out)])
    with command(f"{CMD} split"):
        from neimsctl.data.split import DEFAULT_FRACTIONS, SPLIT_SEED
        from neimsctl.data.split_export import read_split, write_split
        from neimsctl.io.streams import display_name, open_out

        if checkpoint is not None:
            seed, fractions = _split_of(checkpoint)
            if not quiet:
                eprint(f"{CMD} split", f"the split of {checkpoint}: "
                       f"{','.join(f'{x:g}' for x in fractions)}, seed {seed}")
        try:
            d = read_split(files, part, seed=SPLIT_SEED if seed is None else seed,
                           fractions=fractions or DEFAULT_FRACTIONS)
        except OSError as exc:
            fail(f"{CMD} split", str(exc.filename), exc.strerror or str(exc))
        with open_out(out) as fh:
            n = write_split(d, fh, fmt, source=",".join(display_name(f) for f in files))
        if not quiet:
            what = "compounds" if fmt == "smi" else "spectra"
            eprint(f"{CMD} split", f"{part}: {n} {what}")


def _fractions(text: str) -> tuple[float, float, float]:
    """``--split 0.7,0.15,0.15``: three shares in [0, 1] summing to 1 (else a usage error)."""
    import math

    try:
        shares = tuple(float(x) for x in text.replace(" ", "").strip("[]").split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3 or not all(math.isfinite(x) and 0 <= x <= 1 for x in shares) \
            or abs(sum(shares) - 1) > 1e-6:
        usage_error(f"{CMD} split", f"--split must be 3 shares in [0, 1] (train,val,test) "
                                    f"summing to 1, got {text!r}")
    return shares  # type: ignore[return-value]


def _split_of(path: Path) -> tuple[int, tuple[float, float, float]]:
    """The ``data.split_seed`` and ``data.split`` a training checkpoint's config records."""
    from neimsctl.errors import CheckpointError
    from neimsctl.models.checkpoint import load_checkpoint

    cfg = load_checkpoint(path).get("config") or {}
    if cfg.get("stage") == "pretrain":     # split by SMILES text, not by compound
        raise CheckpointError(f"{path}: a pretraining checkpoint: its split is of SMILES, not "
                              "of library compounds; give a finetune or distill checkpoint")
    data = cfg.get("data")
    try:
        seed, shares = int(data["split_seed"]), tuple(float(x) for x in data["split"])
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(f"{path}: records no training split (data.split, data.split_seed): "
                              "give --split and --seed") from None
    if len(shares) != 3:
        raise CheckpointError(f"{path}: data.split is not 3 shares: {list(shares)}")
    return seed, shares  # type: ignore[return-value]
