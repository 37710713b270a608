"""The ``neimsctl`` console script: one shared typer app, one module per subcommand.

Command modules import only light libraries at module level, so ``neimsctl --help`` and
``neimsctl <cmd> --help`` never import torch or RDKit.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated

import typer

from neimsctl.cli._common import app

# A command is listed here only once it really works (no placeholders in --help).
COMMAND_MODULES: tuple[str, ...] = (
    # in pipeline order
    "msp2jsonl",
    "featurize",
    "shards",
    "membench",
    "pretrain",
    "finetune",
    "softlabel",
    "distill",
    "predict",
    "ensemble",
    "eval",
    "index",
    "search",
)


def load_commands(only: str | None = None) -> None:
    """Register the subcommands (import their modules); ``only``: just that one, when it is
    one of them (typer builds every registered command's parameters at each start-up: ~70 ms
    for all thirteen, which every command of a pipeline paid)."""
    names = (only,) if only in COMMAND_MODULES else COMMAND_MODULES
    for name in names:
        importlib.import_module(f"neimsctl.cli.{name}")


def _version(value: bool) -> None:
    if value:
        from neimsctl import __version__

        print(f"neimsctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", "-V", callback=_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """Predict electron-ionization mass spectra from molecular structure.

    Data goes to stdout; logs, progress and warnings go to stderr; '-' means stdin.
    Exit 0 success, 1 some input rejected or a runtime failure, 2 usage error. See neimsctl(1).
    """


def _reopen_closed_std_streams() -> None:
    """Standard streams the shell closed (``<&-``, ``>&-``): Python leaves ``sys.stdin`` etc.
    ``None`` (a traceback at first use), and the next file opened would take the free
    descriptor 0, 1 or 2 (an output file written through "stdout"). Each closed descriptor
    gets ``/dev/null`` opened the other way round (a read of stdin, a write to stdout then fail
    with EBADF, as on the closed descriptor, and are reported as any read or write error);
    a closed stderr discards the messages."""
    modes = ((0, os.O_WRONLY, "stdin", "r"), (1, os.O_RDONLY, "stdout", "w"),
             (2, os.O_WRONLY, "stderr", "w"))
    for fd, flags, name, mode in modes:
        try:
            os.fstat(fd)
        except OSError:
            got = os.open(os.devnull, flags)
            if got != fd:                  # a lower descriptor was free too: put it in place
                os.dup2(got, fd)
                os.close(got)
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115


def main(argv: list[str] | None = None) -> None:
    """Entry point; ``neimsctl help CMD`` is the same as ``neimsctl CMD --help``."""
    _reopen_closed_std_streams()
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["help"]:
        args = args[1:2] + ["--help"] if len(args) > 1 else ["--help"]
    load_commands(args[0] if args else None)
    app(args=args, prog_name="neimsctl")


def run() -> None:
    """The program's entry point (the ``neimsctl`` script, ``python -m neimsctl.cli.main``):
    :func:`main`, and for ``search`` an exit without the interpreter's teardown once its
    outputs are closed (:func:`_exit_now`). A host that runs :func:`main` in-process gets its
    SystemExit as always."""
    try:
        main()
    except SystemExit as done:
        if sys.argv[1:2] == ["search"]:
            _exit_now(done)
        raise


def _exit_now(done: SystemExit) -> None:
    """End the process at once with ``done``'s status, without the interpreter's teardown
    (``search`` run as the program, :func:`run`: its whole run is a fraction of a second, 1,000
    queries ~0.5 s, of which tearing down numpy, h5py, typer and the package took 25 ms).
    Every file the command wrote is closed (and renamed into place) by the time its SystemExit
    gets here; the standard streams are flushed. Falls back to the normal exit when the status
    is not a number or a stream cannot be flushed (a closed pipe: Python's own handling)."""
    code = 0 if done.code is None else done.code
    if not isinstance(code, int):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


if __name__ == "__main__":
    run()
