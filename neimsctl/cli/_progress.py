"""A progress bar on stderr for the streaming commands (``predict``, ``featurize``, ``msp2jsonl``).

Shown only when stderr is a terminal and ``-q`` was not given, so pipes, log files and CI output
carry nothing extra. With input files of known size the bar runs over their bytes (compressed
bytes for gzip/zstd files: what is left of the file is what is left of the work) with rate and
ETA; reading stdin, it counts records. The postfix always says records read / written /
rejected. One library for all commands: tqdm.
"""

from __future__ import annotations

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
    enabled
        Force on/off (default: stderr is a terminal and not ``quiet``).
    """

    def __init__(self, cmd: str, paths: list[Path], *, quiet: bool = False,
                 enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = not quiet and _isatty(sys.stderr)
        self.bar: Any = None
        self._shown = 0.0
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
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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
