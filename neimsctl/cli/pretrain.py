"""``neimsctl pretrain``: bond-masking pretraining of the teacher on a stream of SMILES."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from neimsctl.cli._common import (EXIT_FAIL, InPaths, app, check_inputs_or_usage, command, eprint,
                                  input_pairs, refuse_clobber, require_input_or_usage,
                                  setup_logging)
from neimsctl.cli._train_common import (Overrides, Resume, TrainDevice, TrainQuiet, TrainVerbose,
                                        check_config_or_usage, check_run_dir, config_option,
                                        config_pairs, config_sets, finish_run, run_dir_option,
                                        run_dir_outputs, tidy_run_dir, train_log)

CMD = "pretrain"


class InFmt(str, Enum):
    """--input-format choices (neimsctl.data.smiles_stream.FORMATS)."""

    auto = "auto"
    smi = "smi"
    csv = "csv"
    jsonl = "jsonl"


@app.command(CMD)
def pretrain_cli(
    inputs: InPaths = None,
    config: Annotated[Path, config_option(
        "YAML config, e.g. configs/pretrain/teacher-cpu-small.yaml.")
    ] = ...,  # type: ignore[assignment]
    overrides: Overrides = None,
    out_dir: Annotated[Path, run_dir_option("report.md, rejects.jsonl.")] = Path("pretrain-run"),
    resume: Resume = False,
    device: TrainDevice = None,
    max_molecules: Annotated[Optional[int], typer.Option(
        "--max-molecules", min=1, help="Read only the first N molecules of the input "
        "(data.max_records).", show_default=False)] = None,
    steps_per_epoch: Annotated[Optional[int], typer.Option(
        "--steps-per-epoch", min=1, help="An epoch is N optimizer steps instead of one pass "
        "over the input (train.steps_per_epoch).", show_default=False)] = None,
    in_fmt: Annotated[InFmt, typer.Option(
        "--input-format", "-I", help="smi ('SMILES [name]' lines), csv (header + SMILES "
        "column), jsonl (records with a smiles field); auto: from each file's first line.")
    ] = InFmt.auto,
    smiles_column: Annotated[Optional[str], typer.Option(
        "--smiles-column", help="CSV/JSONL field holding the SMILES (default: smiles), e.g. "
        "for PCQM4Mv2's data.csv.gz.", show_default=False)] = None,
    quiet: TrainQuiet = False,
    verbose: TrainVerbose = False,
) -> None:
    """Pretrain the teacher's graph encoder by bond masking on a stream of SMILES.

    Masks 15% of the bonds, predicts their type and flags, and validates masked-bond accuracy
    every epoch on a hash-split 10% of the molecules; memory stays flat for any input size.
    Exit 130 (Ctrl-C), 143 (SIGTERM) or 129 (SIGHUP) when interrupted (a checkpoint is
    written first). See neimsctl-pretrain(1).
    """
    setup_logging(verbose, quiet)
    paths = require_input_or_usage(CMD, inputs)
    sets = config_sets(overrides, {"train.device": device, "data.max_records": max_molecules,
                                   "train.steps_per_epoch": steps_per_epoch})
    check_config_or_usage(CMD, config)
    refuse_clobber(CMD, input_pairs(paths) + config_pairs(config, out_dir, resume),
                   run_dir_outputs(out_dir, ("rejects.jsonl",)))
    with command(CMD), tidy_run_dir(out_dir):
        check_inputs_or_usage(CMD, [p for p in paths if str(p) != "-"], regular="not a regular file")
        from neimsctl.train.config import load_config
        from neimsctl.train.pretrain import run_pretrain

        cfg = load_config(config, sets)
        check_run_dir(CMD, out_dir, cfg, resume)
        result, tally = run_pretrain(cfg, paths, out_dir, input_format=in_fmt.value,
                                     smiles_column=smiles_column, resume=resume or None,
                                     log=train_log(quiet))
        if not quiet:
            eprint(CMD, f"SMILES rejected: {tally.rejected}"
                   + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(tally.reasons.items()))}; "
                      f"see {out_dir / 'rejects.jsonl'})" if tally.rejected else ""))
        finish_run(CMD, result, cfg, out_dir)
    if tally.rejected:
        raise typer.Exit(EXIT_FAIL)
