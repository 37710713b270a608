"""Options and run-end handling shared by the training commands (pretrain, finetune, distill)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional, TextIO

import typer

from neimsctl.cli._common import eprint

__all__ = ["Overrides", "Resume", "TrainDevice", "TrainVerbose", "config_option", "run_dir_option",
           "check_run_dir", "config_sets", "finish_run", "run_dir_outputs", "train_log"]

#: The files a training run writes into its run directory (besides ``epoch_NNNN.pt``).
RUN_DIR_FILES = ("config.yaml", "train_log.jsonl", "report.md", "checkpoints/last.pt",
                 "checkpoints/best.pt", "checkpoints/interrupted.pt")

Overrides = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Config override section.key=value (repeatable), e.g. train.epochs=3.",
    show_default=False)]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Continue the run in --out-dir from its latest checkpoint "
    "(interrupted.pt, else last.pt; from the start when it stopped before its first), on the "
    "run's own input files (other ones are refused). Without it a run directory that holds a "
    "run is refused.")]
TrainVerbose = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Every metric of each epoch on stderr (losses, weights, recalls, "
    "expert usage) instead of the compact line (epoch, loss, selection metric, best, time); "
    "and debug logging. train_log.jsonl and the report always hold them all.")]
TrainQuiet = Annotated[bool, typer.Option(
    "--quiet", "-q", help="Only warnings, errors and the final line (epochs, steps, best "
    "value, where the checkpoints are) on stderr: no epoch lines.")]
TrainDevice = Annotated[Optional[str], typer.Option(
    "--device", help="auto | cpu | cuda | cuda:N (overrides train.device).",
    show_default=False)]


def config_option(help: str) -> Any:
    """The ``--config/-c`` option with a command's own help text."""
    return typer.Option("--config", "-c", help=help, show_default=False)


def check_config_or_usage(cmd: str, config: Path) -> None:
    """Exit 2 when ``--config`` names no readable regular file (as for every input file)."""
    from neimsctl.cli._common import check_inputs_or_usage

    check_inputs_or_usage(cmd, [config], label="--config", regular="not a regular file")


def run_config(out_dir: Path) -> Path:
    """The resolved ``config.yaml`` a training run keeps in its run directory."""
    return Path(out_dir) / "config.yaml"


def config_pairs(config: Path, out_dir: Path, resume: bool) -> list[tuple[str, Path]]:
    """``--config`` as an input ``refuse_clobber`` protects, unless it is the run's own
    ``config.yaml`` given with ``--resume`` (the run rewrites it with the same settings,
    atomically: resuming with the settings the run kept is what that file is for)."""
    from neimsctl.cli._common import input_pairs

    own = run_config(out_dir)
    if resume and own.is_file() and Path(config).is_file() and Path(config).samefile(own):
        return []
    return input_pairs([config], "--config")


def check_run_dir(cmd: str, out_dir: Path, cfg: Any, resume: bool, *,
                  resumable: bool = False) -> None:
    """Before any work: without ``--resume``, exit 2 when ``out_dir`` already holds a training
    run (its ``train_log.jsonl`` or a file in its checkpoint directory: a new run would replace
    its checkpoints and cut its log); with ``--resume``, exit 1 when it holds none (nothing to
    resume, e.g. a mistyped ``-o``), unless ``resumable`` (distill --teacher: soft labels of the
    run were interrupted before training began).

    Raises
    ------
    typer.Exit
        Code 2 (a run is there) or 1 (no run to resume).
    """
    from neimsctl.cli._common import fail, usage_error
    from neimsctl.train.trainer import checkpoint_dir, existing_run

    ckpts = checkpoint_dir(cfg, out_dir)
    held = existing_run(out_dir, ckpts)
    if held is not None and not resume:
        usage_error(cmd, f"--out-dir {out_dir}: holds a training run ({held}); give --resume to "
                         "continue it or choose another --out-dir")
    if held is None and resume and not resumable:
        fail(cmd, f"--resume: {ckpts}", "no checkpoints to resume from")


def run_dir_option(contents: str) -> Any:
    """The ``--out-dir/-o`` run-directory option; ``contents`` ends the list of what it holds."""
    return typer.Option("--out-dir", "-o", help="Run directory: checkpoints/, train_log.jsonl, "
                        f"config.yaml, {contents}")


def config_sets(overrides: list[str] | None, extra: dict[str, object]) -> list[str]:
    """``--set`` overrides followed by ``key=value`` for every option given in ``extra``."""
    sets = list(overrides or [])
    sets += [f"{key}={value}" for key, value in extra.items() if value is not None]
    return sets


def run_dir_outputs(out_dir: Path, extra: tuple[str, ...] = ()) -> list[tuple[str, Path]]:
    """``(label, path)`` of every file a run writes into ``out_dir``, for ``refuse_clobber``:
    a data input or checkpoint given as one of them would be overwritten during the run."""
    return [(f"--out-dir {out_dir} (writes {name})", Path(out_dir) / name)
            for name in (*RUN_DIR_FILES, *extra)]


def train_log(quiet: bool) -> TextIO:
    """The ``log`` stream of a training run: stderr, or only its warnings and errors with -q."""
    from neimsctl.train.trainer import QuietLog

    return QuietLog(sys.stderr) if quiet else sys.stderr


def finish_run(cmd: str, result: Any, cfg: Any, out_dir: Path) -> None:
    """Report a finished training run (the one line also shown with -q), or exit 128 + the
    signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP) with how to continue an interrupted one.

    Raises
    ------
    typer.Exit
        Code 128 + the signal when ``result.interrupted``.
    """
    if result.interrupted:
        signum = getattr(result, "signal", None) or signal.SIGINT
        with contextlib.suppress(OSError):      # SIGHUP: the terminal stderr went to is gone
            eprint(cmd, f"interrupted ({signal.Signals(signum).name}); continue with the same "
                   f"command and --resume (the run's settings: -c {run_config(out_dir)})")
        raise typer.Exit(128 + signum)
    best = "n/a" if result.best_metric is None else f"{result.best_metric:.4f}"
    eprint(cmd, f"{result.epochs_done} epochs, {result.step} steps, best "
           f"{cfg.train.best_metric} {best}; checkpoints in {Path(out_dir) / 'checkpoints'}")


@contextlib.contextmanager
def tidy_run_dir(out_dir: Path) -> Iterator[None]:
    """A run directory the command creates is removed again when the command fails before it
    writes a file there (refused data, a bad config): no empty run directories left behind. A
    run that wrote anything (a checkpoint, rejects) keeps its directory."""
    created = not os.path.lexists(out_dir)
    try:
        yield
    except BaseException:
        if created and os.path.isdir(out_dir) and not os.path.islink(out_dir):
            _remove_if_empty(Path(out_dir))
        raise


def _remove_if_empty(top: Path) -> None:
    """Remove ``top`` when it holds only empty directories."""
    for root, dirs, files in os.walk(top, topdown=False):
        if files:
            return
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                return
    try:
        os.rmdir(top)
    except OSError:
        pass
