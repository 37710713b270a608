"""A progress bar on stderr for the streaming commands (``predict``, ``featurize``, ``msp2jsonl``).

Shown only when stderr is a terminal and ``-q`` was not given, so pipes, log files and CI output
carry nothing extra; nor when the data output is that terminal too (its lines are the
progress). With input files of known size the bar runs over their bytes (compressed bytes for
gzip/zstd files: what is left of the file is what is left of the work) with rate and ETA;
reading stdin, it counts records. The postfix always says records read / written / rejected.
One library for all commands: tqdm.

While the bar is shown, whatever else goes to stderr (reject messages, warnings, the
``neimsctl`` logger) is written above it, whole lines at a time, instead of through it.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["Progress"]


class Progress:
    """``update(tally)`` after each chunk; ``close()`` (or ``with``) at the end.

    Parameters
    ----------
    cmd
        Command name, shown as the bar's label.
    paths
        The inputs (``-`` = stdin).
    quiet
        ``-q``: no bar.
    output
        The command's data output (``-`` = stdout): no bar when it is a terminal.
    enabled
        Force on/off (default: stderr is a terminal, ``output`` is not, and not ``quiet``).
    """

    def __init__(self, cmd: str, paths: list[Path], *, quiet: bool = False,
                 output: Path | None = None, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = not quiet and _isatty(sys.stderr) and not (
                output is not None and str(output) == "-" and _isatty(sys.stdout))
        self.bar: Any = None
        self._shown = 0.0
        self._stderr: Any = None
        self._handlers: list[logging.StreamHandler] = []
        if not enabled:
            return
        from tqdm import tqdm

        sizes = [_size(p) for p in paths]
        self.bytes = all(s is not None for s in sizes) and sum(sizes) > 0  # type: ignore[misc]
        # mininterval / miniters are left to tqdm (TQDM_MININTERVAL and friends override them)
        common = {"desc": f"neimsctl {cmd}", "file": sys.stderr, "dynamic_ncols": True,
                  "leave": False, "smoothing": 0.1}
        if self.bytes:
            self.bar = tqdm(total=sum(sizes), unit="B", unit_scale=True,  # type: ignore[arg-type]
                            unit_divisor=1024, **common)
        else:
            self.bar = tqdm(unit=" rec", unit_scale=True, **common)
        self._stderr = sys.stderr
        sys.stderr = _AboveBar(self._stderr)  # type: ignore[assignment]
        for h in logging.getLogger("neimsctl").handlers:
            if isinstance(h, logging.StreamHandler) and h.stream is self._stderr:
                h.setStream(sys.stderr)
                self._handlers.append(h)

    def update(self, tally: Any) -> None:
        """Show the progress of a :class:`neimsctl.io.rejects.Tally`."""
        if self.bar is None:
            return
        from neimsctl.io.streams import input_bytes_read

        done = min(input_bytes_read(), self.bar.total) if self.bytes else tally.read
        elapsed = self.bar.format_dict.get("elapsed") or 0.0
        rate = f"{tally.read / elapsed:,.0f} rec/s, " if elapsed > 0 else ""
        self.bar.set_postfix_str(f"{rate}read {tally.read:,} written {tally.written:,} "
                                 f"rejected {tally.rejected:,}", refresh=False)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        elif time.monotonic() - self._shown >= self.bar.mininterval:
            self.bar.refresh()  # the input was read ahead: new counts, same position
        self._shown = time.monotonic()

    def close(self) -> None:
        if self.bar is None:
            return
        rest = ""
        if isinstance(sys.stderr, _AboveBar):
            rest, sys.stderr = sys.stderr._part, self._stderr
        for h in self._handlers:
            h.setStream(self._stderr)
        self.bar.close()
        self.bar = None
        if rest:  # an unfinished line: after the bar is gone
            self._stderr.write(rest)
            self._stderr.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _AboveBar(io.TextIOBase):
    """``sys.stderr`` while a bar is shown: complete lines are written above the bar (tqdm
    clears it, the lines go out, the bar is drawn again below them)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self._part, self._pid = stream, "", os.getpid()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._part += text
        if "\n" in self._part:
            lines, _, self._part = self._part.rpartition("\n")
            self._out(lines + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def _out(self, text: str) -> None:
        from tqdm import tqdm

        if os.getpid() != self._pid:  # a forked worker: the bar is not its to redraw
            self.stream.write(text)
            self.stream.flush()
            return
        with tqdm.external_write_mode(file=self.stream):
            self.stream.write(text)
            self.stream.flush()


def _isatty(stream: Any) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False


def _size(path: Path) -> int | None:
    """Size of a regular input file; None for stdin, pipes and the like."""
    if str(path) == "-":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None
