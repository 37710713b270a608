"""What every subcommand shares: the app, option aliases, the error printer, exit codes.

Exit status (repeated in every man page):

0  success; help on request prints to stdout
1  runtime failure, or some input records were rejected (see the command's page)
2  usage error: bad option, no input while stdin is a terminal, or an output that is the same
   file as an input or another output (:func:`refuse_clobber`)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Iterable, Iterator, NoReturn

import typer

from neimsctl.errors import NeimsError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    name="neimsctl",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=True,         # --install-completion / --show-completion (bash, zsh, fish)
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Predict electron-ionization mass spectra from molecular structure. "
         "Data goes to stdout, logs to stderr; '-' means stdin. See neimsctl(1).",
)

log = logging.getLogger("neimsctl")

# Shared option aliases (defined once, like samtools' sam_opts.h).
InPaths = Annotated[list[Path] | None, typer.Argument(
    help="Input files ('-' or none: stdin). gzip/zstd are decoded transparently.",
    allow_dash=True, show_default=False)]
OutPath = Annotated[Path, typer.Option("--output", "-o", allow_dash=True,
                                       help="Output file ('-': stdout). Written atomically.")]
RejectsPath = Annotated[Path | None, typer.Option(
    "--rejects", help="Write one JSONL line per rejected record (file, line, record, reason).")]
JobsAuto = Annotated[str, typer.Option(
    "--jobs", "-j", help="Worker processes: a number, or auto (one process for inputs of up to "
                         "4,096 records, else one worker per available core).")]
Strict = Annotated[bool, typer.Option("--strict", help="Stop at the first rejected record (exit 1).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging on stderr.")]
NoProvenance = Annotated[bool, typer.Option(
    "--no-provenance", help="Leave out argv/date/version from outputs (byte-stable test output).")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]


def finite(value: float | None) -> float | None:
    """Callback of a number option: nan and inf are a usage error (exit 2), not a run that
    quietly finds nothing."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter("must be a finite number")
    return value


class ScoreName(str, Enum):
    """--score choices of search and eval: neimsctl.evaluate.matching.SCORES, spelled out here so
    that --help does not import the engine; tests/unit/evaluate/test_matching.py checks they agree."""

    cosine = "cosine"
    composite = "composite"
    entropy = "entropy"


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Log to stderr as ``neimsctl: message``; never to stdout."""
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger("neimsctl")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null: what it still holds cannot be written (broken pipe, disk
    full), and Python's flush at exit must not print a traceback about it."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def eprint(cmd: str, what: str, why: str | None = None) -> None:
    """The one error printer: ``neimsctl <cmd>: <what>: <why>`` on stderr (stdout flushed first)."""
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - stdout is gone (full disk, closed pipe): say so on stderr
        _stdout_to_devnull()
    msg = f"neimsctl {cmd}: {what}" + (f": {why}" if why else "")
    print(msg, file=sys.stderr, flush=True)


def first_lines(cmd: str, verbose: bool, more: str, limit: int = 10) -> Callable[[str], None]:
    """A printer of the first ``limit`` messages it is given (every one with ``verbose``: -v) on
    stderr, then of ``more`` once, when one is really held back: how msp2jsonl, predict and search
    show rejected records (every record is in the ``--rejects`` file)."""
    seen = 0

    def show(msg: str) -> None:
        nonlocal seen
        seen += 1
        if seen <= limit or verbose:
            eprint(cmd, msg)
        elif seen == limit + 1:
            eprint(cmd, more)
    return show


def fail(cmd: str, what: str, why: str | None = None, code: int = EXIT_FAIL) -> NoReturn:
    eprint(cmd, what, why)
    raise typer.Exit(code)


def usage_error(cmd: str, what: str) -> NoReturn:
    fail(cmd, what, code=EXIT_USAGE)


def check_inputs_or_usage(cmd: str, paths: Iterable[Path | str], *, label: str = "",
                          regular: str | None = None) -> None:
    """Exit 2 naming the first input that cannot be read (``no such file``, ``is a directory``:
    :func:`neimsctl.io.streams.input_problem`; ``-`` and pipes are inputs).

    ``regular``: these inputs must be regular files (HDF5 shards, checkpoints, configs: no
    ``-``, no pipe or device); the message for one that is not. ``label``: the option named
    before the path (``--config``).
    """
    from neimsctl.io.streams import input_problem, is_dash, is_regular

    for p in paths:
        if regular is None and is_dash(p):
            continue
        problem = input_problem(p)
        if problem is None and regular is not None and not is_regular(p):
            problem = regular
        if problem is not None:
            usage_error(cmd, f"{label} {p}: {problem}" if label else f"{p}: {problem}")


def warn_repeated(cmd: str, label: str, paths: Iterable[Path | str], why: str) -> None:
    """One warning line per file given more than once to ``label`` (the same file by device and
    inode, also under another name)."""
    from neimsctl.io.streams import _identity

    seen: dict[tuple, list[str]] = {}
    for p in paths:
        ident = _identity(p, -1)
        if ident is not None and ident[0] == "inode":
            seen.setdefault(ident, []).append(str(p))
    for names in seen.values():
        if len(names) > 1:
            eprint(cmd, f"warning: {label} {', '.join(dict.fromkeys(names))}: the same file given "
                        f"{len(names)} times", why)


def once_each(cmd: str, label: str, paths: list[Path], why: str) -> list[Path]:
    """``paths`` with every file kept at its first mention only (the same file by device and
    inode, also under another name), and a warning line per file given more than once."""
    warn_repeated(cmd, label, paths, why)
    from neimsctl.io.streams import _identity

    seen: set[tuple] = set()
    kept = []
    for p in paths:
        ident = _identity(p, -1)
        if ident is not None and ident[0] == "inode":
            if ident in seen:
                continue
            seen.add(ident)
        kept.append(p)
    return kept


def require_input_or_usage(cmd: str, inputs: list[Path] | None) -> list[Path]:
    """Default to stdin; with no input while stdin is a terminal, print usage and exit 2."""
    paths = list(inputs) if inputs else [Path("-")]
    if any(str(p) == "-" for p in paths):
        try:
            tty = os.isatty(sys.stdin.fileno())
        except (OSError, ValueError, AttributeError):
            tty = False
        if tty:
            usage_error(cmd, f"no input: give a file or pipe data in (see neimsctl {cmd} --help)")
    return paths


def refuse_clobber(cmd: str, inputs: Iterable[tuple[str, Path | str | None]],
                   outputs: Iterable[tuple[str, Path | str | None]]) -> None:
    """Exit 2 (usage) when an output is the same file as an input or another output.

    ``inputs`` and ``outputs`` are ``(label, path)`` pairs (``-``: stdin / stdout, compared by
    what they are open on, so ``>> x.msp`` and ``< x.msp`` count); see
    :func:`neimsctl.io.streams.find_clash`. Call it before anything is written.
    """
    from neimsctl.io.streams import find_clash

    clash = find_clash([*inputs, *_package_files()], outputs)
    if clash is None:
        return
    if clash.other.startswith(_OWN):
        usage_error(cmd, f"{clash.output} is {clash.other}: refusing to overwrite it")
    if clash.other_is_input:
        note = ""
        if clash.output == "stdout" and not _stdout_appends():
            note = " (the shell's '>' has emptied it already)"
        usage_error(cmd, f"{clash.output} is the same file as {clash.other}: refusing to "
                         f"write into an input{note}")
    usage_error(cmd, f"{clash.output} is the same file as {clash.other}: give each output "
                     "its own file")


_OWN = "neimsctl's own file "


def _package_files() -> list[tuple[str, Path]]:
    """The files the package ships (models, cards, the sample): no command writes over them
    (e.g. ``softlabel -o`` or ``ensemble -o`` pointed at ``student-default.pt`` by mistake)."""
    root = Path(__file__).resolve().parents[1] / "resources"
    return [(_OWN + str(p.relative_to(root.parent)), p) for p in sorted(root.rglob("*")) if p.is_file()]


def _stdout_appends() -> bool:
    """stdout was opened for appending (``>>``), which leaves the file's content in place."""
    try:
        import fcntl

        return bool(fcntl.fcntl(sys.stdout.fileno(), fcntl.F_GETFL) & os.O_APPEND)
    except (ImportError, OSError, ValueError):
        return False


def input_pairs(paths: Iterable[Path | str | None], label: str = "input") -> list[tuple[str, Path | str | None]]:
    """``(label, path)`` pairs for :func:`refuse_clobber` (``-`` is labelled ``stdin``)."""
    return [("stdin" if p is None or str(p) == "-" else f"{label} {p}", p) for p in paths]


def seekable_output(cmd: str, label: str, path: Path | str) -> None:
    """Exit 2 unless ``path`` can take an HDF5 file: ``-``, or an existing named pipe, device
    or socket, would be replaced by the file (the output is renamed into place) or cannot
    seek."""
    import stat

    if str(path) == "-":
        usage_error(cmd, f"{label} -: HDF5 needs a seekable file; give a file name")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):      # a directory: named elsewhere
        usage_error(cmd, f"{label} {path}: not a regular file (a named pipe or device); HDF5 "
                         "needs a seekable file: give a file name")


def output_pair(label: str, path: Path | str | None) -> tuple[str, Path | str | None]:
    """``(label, path)`` of one output for :func:`refuse_clobber`: ``-o -`` is labelled
    ``stdout``, another option's ``-`` e.g. ``--rejects - (stdout)``."""
    if path is None or str(path) == "-":
        return ("stdout" if label == "-o" else f"{label} - (stdout)", path)
    return (f"{label} {path}", path)


def h5_error_file(exc: BaseException) -> str | None:
    """The file an error raised inside h5py was reading (found among the callers' h5py objects,
    innermost first; ``"HDF5 input"`` when none names it), or ``None`` for an error h5py did not
    raise."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not frames or not any(f.f_globals.get("__name__", "").startswith("h5py") for f in frames):
        return None
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if type(value).__module__.startswith("h5py"):
                try:
                    return str(value.file.filename)
                except Exception:  # noqa: BLE001 - a closed or invalid object: look further out
                    continue
    return "HDF5 input"


def _flush_stdout() -> None:
    """Flush what a command printed (a report, a table, JSON metrics); a stdout that cannot take
    it (closed, a full disk) is named: :class:`~neimsctl.errors.OutputError`, not a bare
    ``I/O error``."""
    from neimsctl.io.streams import output_error

    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise output_error("-", exc) from None


def _stdout_closed() -> bool:
    """Whether the command was started with stdout closed (``>&-``): Python then has no
    ``sys.__stdout__``, and file descriptor 1 is closed or taken by a file opened since."""
    if sys.__stdout__ is None:
        return True
    try:
        os.fstat(1)
    except OSError:
        return True
    return False


@contextlib.contextmanager
def command(cmd: str) -> Iterator[None]:
    """Error boundary of a subcommand: typed errors -> message + exit 1; quiet on broken pipe.

    An ``OSError`` no library code turned into a typed error is one line too (its file name and
    reason), exit 1: never a traceback.

    Ctrl-C (SIGINT), SIGTERM and SIGHUP (a closed terminal; not under ``nohup``) always unwind
    as ``KeyboardInterrupt`` (temporary outputs removed, exit 128 + the signal number: 130,
    143, 129), also when a non-interactive shell started
    the command with SIGINT ignored (``cmd &``), and also when the first ``KeyboardInterrupt``
    is swallowed by a callback (:mod:`neimsctl.interrupts`). Training commands replace these
    handlers with their own while they train (a checkpoint at the next step).
    """
    from neimsctl import interrupts

    interrupts.install(*interrupts.stop_signals())
    try:
        yield
        _flush_stdout()
    except typer.Exit:
        raise
    except BrokenPipeError:
        # `neimsctl ... | head`: point stdout at devnull and leave quietly.
        _stdout_to_devnull()
        raise typer.Exit(EXIT_OK) from None
    except NeimsError as exc:
        fail(cmd, str(exc))
    except OSError as exc:  # an I/O failure no library code named: still one line, exit 1
        if not exc.filename and _stdout_closed():      # printing into a closed stdout (>&-)
            fail(cmd, "<stdout>", f"cannot write: {exc.strerror or exc}")
        fail(cmd, str(exc.filename) if exc.filename else "I/O error", exc.strerror or str(exc))
    except RuntimeError as exc:  # HDF5's own findings in a damaged file (checksums, metadata)
        where = h5_error_file(exc)
        if where is None:
            raise
        fail(cmd, where, f"damaged HDF5 file: {exc}")
    except MemoryError:
        # an input the readers cannot hold (a line without end: /dev/zero, a multi-GB binary
        # file read as text; a process under ulimit -v): one line, temporaries removed
        fail(cmd, "out of memory", "an input line or record too large to hold (an endless input "
             "without line ends?), or too little memory for this run")
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):      # SIGHUP: the terminal stderr went to is gone
            eprint(cmd, "interrupted")
        raise typer.Exit(128 + (interrupts.pending() or signal.SIGINT)) from None
