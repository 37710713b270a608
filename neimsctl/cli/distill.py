"""``neimsctl distill``: train the MoE student from teacher soft labels (or the baselines)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from neimsctl.cli._common import (app, check_inputs_or_usage, command, input_pairs,
                                  once_each, refuse_clobber, setup_logging, usage_error)
from neimsctl.cli._train_common import (Overrides, Resume, TrainDevice, TrainQuiet, TrainVerbose,
                                        check_config_or_usage, check_run_dir, config_option,
                                        config_pairs, config_sets, finish_run, run_config,
                                        run_dir_option, run_dir_outputs, tidy_run_dir, train_log)

CMD = "distill"
#: Bundled profiles used when --config is not given (repo checkout / editable install).
DEFAULT_CONFIGS = {"student": "student-cpu-small.yaml", "neims-v1": "neims-v1-cpu-small.yaml"}


@app.command(CMD)
def distill_cli(
    shards: Annotated[Optional[list[Path]], typer.Argument(
        help="Student- or v1-mode HDF5 shards (neimsctl featurize --mode student|v1); default: data.train "
        "of the config.", show_default=False)] = None,
    config: Annotated[Optional[Path], config_option(
        "YAML config; default: configs/distill/student-cpu-small.yaml "
        "(neims-v1-cpu-small.yaml with --arch neims-v1).")] = None,
    teacher: Annotated[Optional[Path], typer.Option(
        "--teacher", "-t", help="Finetuned teacher checkpoint: soft labels are computed first "
        "into OUT_DIR/soft_labels.h5 (needs --teacher-feats).", show_default=False)] = None,
    teacher_feats: Annotated[Optional[list[Path]], typer.Option(
        "--teacher-feats", help="Teacher-mode shards of the same records (with --teacher).",
        show_default=False)] = None,
    soft_labels: Annotated[Optional[Path], typer.Option(
        "--soft-labels", "-s", help="Precomputed soft labels (neimsctl softlabel); default: "
        "data.soft_labels of the config.", show_default=False)] = None,
    transfer: Annotated[Optional[list[Path]], typer.Option(
        "--transfer", help="Student shards of molecules without spectra (a KD transfer set), "
        "soft-labelled in the --soft-labels file: trained on the soft labels only; library "
        "compounds among them are left out. Repeatable; default: data.transfer.",
        show_default=False)] = None,
    no_kd: Annotated[bool, typer.Option(
        "--no-kd", help="Train on library spectra only (the student-without-KD baseline).")] = False,
    arch: Annotated[Optional[str], typer.Option(
        "--arch", help="student | neims-v1 (must match model.name of the config).",
        show_default=False)] = None,
    samples: Annotated[int, typer.Option(
        "--samples", min=2, help="MC-dropout samples when computing soft labels.")] = 30,
    overrides: Overrides = None,
    out_dir: Annotated[Path, run_dir_option("report.md.")] = Path("distill-run"),
    resume: Resume = False,
    device: TrainDevice = None,
    quiet: TrainQuiet = False,
    verbose: TrainVerbose = False,
) -> None:
    """Distill the teacher into the MoE student; also trains the no-KD and NEIMS v1 baselines.

    Trains on the train part of the compound-grouped 8:1:1 split (seed 42), validates every
    epoch on the val part (mean cosine, Recall@K by library matching; expert usage by compound
    class) and keeps the best checkpoint by val Recall@10; the test part is never used. Exit
    130 (Ctrl-C), 143 (SIGTERM) or 129 (SIGHUP) when interrupted (a checkpoint is written
    first); -q shows only warnings, errors and the final line. See neimsctl-distill(1).
    """
    setup_logging(verbose, quiet)
    if arch is not None and arch not in DEFAULT_CONFIGS:
        usage_error(CMD, f"--arch: one of {', '.join(DEFAULT_CONFIGS)}, got {arch!r}")
    kd = [o for o, v in (("--teacher", teacher), ("--soft-labels", soft_labels)) if v is not None]
    if len(kd) > 1 or (kd and no_kd):
        got = ", ".join(kd + ["--no-kd"] * no_kd)
        usage_error(CMD, f"give one of --teacher, --soft-labels, --no-kd (got {got})")
    if teacher is not None and not teacher_feats:
        usage_error(CMD, "--teacher needs --teacher-feats (teacher-mode shards of the records)")
    sets = config_sets(overrides, {"train.device": device})
    if config is None and resume and run_config(out_dir).is_file():
        config = run_config(out_dir)            # --resume goes on with the run's own settings
    if config is None:
        config = Path(__file__).resolve().parents[2] / "configs/distill" / DEFAULT_CONFIGS[arch or "student"]
        if not config.is_file():
            usage_error(CMD, "--config: no bundled config found; give a configs/distill/*.yaml")
    check_config_or_usage(CMD, config)
    with command(CMD), tidy_run_dir(out_dir):
        from neimsctl.errors import ConfigError
        from neimsctl.train.config import load_config

        cfg = load_config(config, sets)
        name = cfg.model.get("name", "student")
        if arch is not None and name != arch:
            raise ConfigError(f"{config}: model.name is {name!r}, not --arch {arch}; use "
                              f"configs/distill/{DEFAULT_CONFIGS[arch]}")
        if transfer:
            cfg.data.transfer = [str(p) for p in transfer]
        paths = list(shards or ([Path(cfg.data.train)] if cfg.data.train else []))
        if not paths:
            usage_error(CMD, "no shards: give FEATS.h5 arguments or set data.train in the config")
        soft = soft_labels or (Path(cfg.data.soft_labels) if cfg.data.soft_labels and
                               teacher is None and not no_kd else None)
        if name == "student" and soft is None and teacher is None and not no_kd:
            usage_error(CMD, "the student needs --teacher, --soft-labels or --no-kd")
        if cfg.data.transfer and soft is None:
            usage_error(CMD, "--transfer rows have no spectra: they need --soft-labels")
        if name != "student" and (soft or teacher):
            usage_error(CMD, f"{name} is trained without KD: drop --teacher/--soft-labels")
        check_inputs_or_usage(CMD, [*paths, *(teacher_feats or []), *map(Path, cfg.data.transfer),
                                    *[x for x in (teacher, soft) if x]], regular="not a regular file")
        paths = once_each(CMD, "shard", paths, "read once (twice would train on every spectrum "
                          "twice and put it twice into the validation library)")
        refuse_clobber(CMD, input_pairs(paths) + input_pairs(teacher_feats or [], "--teacher-feats")
                       + input_pairs(map(Path, cfg.data.transfer), "--transfer")
                       + input_pairs([x for x in (teacher, soft) if x], "input")
                       + config_pairs(config, out_dir, resume), run_dir_outputs(out_dir))
        # a run to resume is there, or (with --teacher) a directory whose soft labels were
        # interrupted before training began
        check_run_dir(CMD, out_dir, cfg, resume, resumable=teacher is not None and out_dir.is_dir())
        from neimsctl.train.distill import resume_inputs, run_distill

        inputs = None
        if teacher is not None:
            # the run keeps the teacher and its shards as inputs: another is refused on
            # --resume before the soft labels are computed or reused
            inputs = resume_inputs(cfg, out_dir, resume, paths, teacher=teacher,
                                   teacher_feats=teacher_feats or [])
            soft = _soft_labels_first(teacher, teacher_feats or [], out_dir, samples, device,
                                      cfg.data.split_seed, cfg.data.split, resume, quiet)
        result = run_distill(cfg, paths, out_dir, soft_labels=soft, resume=resume or None,
                             log=train_log(quiet), inputs=inputs)
        finish_run(CMD, result, cfg, out_dir)


def _soft_labels_first(teacher: Path, feats: list[Path], out_dir: Path, samples: int,
                       device: str | None, split_seed: int, split: list[float],
                       resume: bool, quiet: bool = False) -> Path:
    """Compute the train part's soft labels into OUT_DIR/soft_labels.h5 (reused when present)."""
    from neimsctl.train.softlabel import SoftLabelSettings, run_softlabel

    out = Path(out_dir) / "soft_labels.h5"
    if out.is_file():
        _same_soft_labels(out, teacher, samples, split_seed, split)
        if not quiet:
            print(f"neimsctl {CMD}: using the soft labels in {out}", file=sys.stderr)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)     # removed again if left empty: tidy_run_dir
    settings = SoftLabelSettings(samples=samples, part="train", split_seed=split_seed,
                                 split=tuple(split))  # type: ignore[arg-type]
    tally = run_softlabel(teacher, feats, out, settings=settings, device=device or "auto",
                          resume=resume, log=train_log(quiet))
    if not quiet:
        print(f"neimsctl {CMD}: soft labels: {tally.summary()} -> {out}", file=sys.stderr)
    return out


def _same_soft_labels(out: Path, teacher: Path, samples: int, split_seed: int,
                      split: list[float]) -> None:
    """Refuse OUT_DIR/soft_labels.h5 made by another teacher or with other settings (it was
    reused as soon as it existed: a student distilled from another teacher's labels)."""
    from neimsctl.errors import InputError
    from neimsctl.io.softlabel_shard import SoftLabelReader
    from neimsctl.models.checkpoint import file_sha256

    with SoftLabelReader(out) as r:
        made = r.settings
    want = {"teacher_sha256": file_sha256(teacher), "samples": samples, "part": "train",
            "split_seed": split_seed, "split": list(split)}
    differ = [f"{k} {made.get(k)!r} (asked: {v!r})" for k, v in want.items()
              if (made.get(k) if k != "split" else list(made.get(k) or [])) != v]
    if differ:
        raise InputError(f"{out} was made with other settings than this run's --teacher "
                         f"{teacher}: {'; '.join(differ)}; remove it (or give another -o) to "
                         "compute them again")
