"""``neimsctl finetune``: train the teacher on teacher-mode feature shards of a spectral library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from neimsctl.cli._common import (app, check_inputs_or_usage, command, input_pairs,
                                  once_each, refuse_clobber, setup_logging, usage_error)
from neimsctl.cli._train_common import (Overrides, Resume, TrainDevice, TrainQuiet, TrainVerbose,
                                        check_config_or_usage, check_run_dir, config_option,
                                        config_pairs, config_sets, finish_run, run_dir_option,
                                        run_dir_outputs, tidy_run_dir, train_log)

CMD = "finetune"


@app.command(CMD)
def finetune_cli(
    config: Annotated[Path, config_option(
        "YAML config, e.g. configs/finetune/teacher-cpu-small.yaml.")],
    shards: Annotated[Optional[list[Path]], typer.Argument(
        help="Teacher-mode HDF5 shards (neimsctl featurize --mode teacher); default: data.train "
        "of the config.", show_default=False)] = None,
    overrides: Overrides = None,
    out_dir: Annotated[Path, run_dir_option("report.")] = Path("finetune-run"),
    init: Annotated[Optional[Path], typer.Option(
        "--init", help="Start from the weights of a pretrained (or finetuned) teacher "
        "checkpoint; default: from scratch.", show_default=False)] = None,
    resume: Resume = False,
    device: TrainDevice = None,
    quiet: TrainQuiet = False,
    verbose: TrainVerbose = False,
) -> None:
    """Finetune the GNN+ECFP teacher on a spectral library (MSE in sqrt space, MC dropout).

    Trains on the train part of the compound-grouped 8:1:1 split (seed 42) of the shards,
    validates every epoch by library matching on the val part (mean cosine, Recall@K) and
    keeps the best checkpoint; the test part is never used. Exit 130 (Ctrl-C), 143 (SIGTERM)
    or 129 (SIGHUP) when interrupted (a checkpoint is written first). See neimsctl-finetune(1).
    """
    setup_logging(verbose, quiet)
    sets = config_sets(overrides, {"train.device": device})
    check_config_or_usage(CMD, config)
    with command(CMD), tidy_run_dir(out_dir):
        from neimsctl.train.config import load_config

        cfg = load_config(config, sets)
        paths = list(shards or ([Path(cfg.data.train)] if cfg.data.train else []))
        if not paths:
            usage_error(CMD, "no shards: give FEATS.h5 arguments or set data.train in the config")
        check_inputs_or_usage(CMD, [*paths, *([init] if init else [])], regular="not a regular file")
        paths = once_each(CMD, "shard", paths, "read once (twice would train on every spectrum "
                          "twice and put it twice into the validation library)")
        refuse_clobber(CMD, input_pairs(paths) + input_pairs([init] if init else [], "--init")
                       + config_pairs(config, out_dir, resume), run_dir_outputs(out_dir))
        check_run_dir(CMD, out_dir, cfg, resume)
        from neimsctl.train.finetune import run_finetune

        result = run_finetune(cfg, paths, out_dir, init=init, resume=resume or None,
                              log=train_log(quiet))
        finish_run(CMD, result, cfg, out_dir)
