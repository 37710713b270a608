"""Run a command with its stderr on a pseudo-terminal (80x24) and collect what it wrote there."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time


def run_on_tty(cmd: list[str], timeout: float = 120.0, *, stdout_too: bool = False,
               **kwargs) -> tuple[int, bytes]:
    """``(exit status, bytes written to the terminal)``; stdout goes to ``kwargs['stdout']``
    (default: discarded), or to the terminal too with ``stdout_too``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    kwargs.setdefault("stdout", slave if stdout_too else subprocess.DEVNULL)
    proc = subprocess.Popen(cmd, stderr=slave, **kwargs)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:       # the child closed the terminal
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    else:
        proc.kill()
    os.close(master)
    return proc.wait(), out
