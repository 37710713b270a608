"""neimsctl.interrupts: a signal whose KeyboardInterrupt a callback swallows is not lost."""

from __future__ import annotations

import os
import signal
import sys
import weakref

import pytest

from neimsctl import interrupts
from neimsctl.io.parallel import ordered_map


class _Obj:
    pass


def _add_one(x: int) -> int:
    return x + 1


def test_interrupt_swallowed_by_a_weakref_callback_is_raised_at_the_next_check(capsys) -> None:
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    try:
        interrupts.install(signal.SIGINT, signal.SIGTERM)
        interrupts.check()  # nothing yet
        obj = _Obj()
        weakref.finalize(obj, os.kill, os.getpid(), signal.SIGTERM)
        del obj  # the signal handler runs inside the finalizer: its exception is swallowed
        assert interrupts.pending() == signal.SIGTERM
        assert "KeyboardInterrupt" not in capsys.readouterr().err  # no "Exception ignored"
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        with pytest.raises(KeyboardInterrupt):  # the streaming loops check before each chunk
            list(ordered_map(_add_one, [1, 2, 3], 1, max_in_flight=2))
        interrupts.install(signal.SIGINT)  # a new command starts clean
        assert interrupts.pending() is None
        assert list(ordered_map(_add_one, [1, 2], 1, max_in_flight=2)) == [2, 3]
    finally:
        sys.unraisablehook = hook
        for s, h in old.items():
            signal.signal(s, h)


def test_sighup_stops_a_command_unless_ignored_by_nohup() -> None:
    old = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        assert interrupts.stop_signals() == (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)          # nohup: the run goes on
        assert interrupts.stop_signals() == (signal.SIGINT, signal.SIGTERM)
    finally:
        signal.signal(signal.SIGHUP, old)
