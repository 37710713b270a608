"""Ctrl-C, SIGTERM and SIGHUP that cannot be lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when the signal
arrives. If that is inside a weakref or ``__del__`` callback (h5py and the multiprocessing
pool run many), the interpreter prints "Exception ignored in ..." and goes on: the
interrupt is lost and the command runs to the end (seen with ``featurize -j 2 -o FILE.h5``
about one Ctrl-C in two). :func:`install` makes the signal also leave a mark that
:func:`check` turns into ``KeyboardInterrupt`` again at a safe point; the streaming loops
(:func:`neimsctl.io.parallel.ordered_map`) call it for every chunk, ``shards merge`` for every
block, and every output checks it before it is renamed into place
(:func:`neimsctl.io.streams.atomic_path`, ``resumable_out``, the soft-label writer's close).
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

__all__ = ["install", "check", "pending", "interrupt", "stop_signals"]

_PENDING: int | None = None


def _on_signal(signum: int, frame: object) -> None:
    global _PENDING
    _PENDING = signum
    raise KeyboardInterrupt


def _unraisable(hook):  # type: ignore[no-untyped-def]
    def quiet(args) -> None:  # type: ignore[no-untyped-def]
        if not (_PENDING is not None and isinstance(args.exc_value, KeyboardInterrupt)):
            hook(args)  # the swallowed interrupt is raised again by check(): no traceback
    quiet.neimsctl = True  # type: ignore[attr-defined]
    return quiet


def stop_signals() -> tuple[int, ...]:
    """The signals a command stops on cleanly (temporaries removed, a training checkpoint
    first): SIGINT, SIGTERM and SIGHUP (the terminal was closed), but not SIGHUP when this
    process ignores it (``nohup``: the run must go on)."""
    hup = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hup)


def install(*signums: int) -> None:
    """Handle ``signums`` (default SIGINT) by raising ``KeyboardInterrupt`` and marking it."""
    global _PENDING
    _PENDING = None
    if not getattr(sys.unraisablehook, "neimsctl", False):
        sys.unraisablehook = _unraisable(sys.unraisablehook)
    for s in signums or (signal.SIGINT,):
        signal.signal(s, _on_signal)


def interrupt(signum: int) -> NoReturn:
    """Mark ``signum`` as arrived and raise ``KeyboardInterrupt``: for a signal handler that
    replaced :func:`install`'s (the trainer's), so the command still exits 128 + ``signum``."""
    _on_signal(signum, None)
    raise AssertionError("unreachable")  # _on_signal raised


def pending() -> int | None:
    """The signal that arrived since :func:`install`, if any."""
    return _PENDING


def check() -> None:
    """Raise ``KeyboardInterrupt`` when a signal arrived (its first exception may be lost)."""
    if _PENDING is not None:
        raise KeyboardInterrupt
