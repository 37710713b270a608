"""Byte streams: ``-`` for stdin/stdout, transparent gzip/zstd input, atomic output files.

Every command reads through :func:`open_in` and writes through :func:`open_out`, so the
conventions (``-`` is stdin/stdout, compressed input is sniffed by magic bytes, outputs are
written under a temporary name and renamed only when complete) hold everywhere.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO, BinaryIO, Iterator

from neimsctl.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def is_dash(path: str | os.PathLike | None) -> bool:
    """True when ``path`` names stdin/stdout (``-`` or ``None``)."""
    return path is None or str(path) == "-"


def display_name(path: str | os.PathLike | None) -> str:
    """The name used in messages: ``<stdin>`` for ``-``."""
    return "<stdin>" if is_dash(path) else str(path)


def _peek(raw: BinaryIO, n: int = 8) -> tuple[bytes, BinaryIO]:
    """Return the first ``n`` bytes without consuming them (wraps unseekable streams)."""
    if not isinstance(raw, io.BufferedReader):
        raw = io.BufferedReader(raw)  # type: ignore[arg-type]
    return raw.peek(n)[:n], raw


@contextlib.contextmanager
def open_in(path: str | os.PathLike | None) -> Iterator[BinaryIO]:
    """Open an input for binary reading; ``-`` is stdin; gzip and zstd are decoded on the fly.

    Compression is recognised by its magic bytes, not the file suffix, so piped
    ``.gz``/``.zst`` data works too.

    Raises
    ------
    InputError
        The file does not exist or cannot be opened.
    """
    if is_dash(path):
        raw: BinaryIO = sys.stdin.buffer
        owned = False
    else:
        try:
            raw = open(path, "rb", buffering=1 << 20)  # noqa: SIM115
        except OSError as exc:
            raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from exc
        owned = True
    if owned:
        _READING.append(raw)
    try:
        head, buf = _peek(raw)
        if head.startswith(GZIP_MAGIC):
            stream: BinaryIO = gzip.GzipFile(fileobj=buf, mode="rb")  # type: ignore[assignment]
        elif head.startswith(ZSTD_MAGIC):
            import zstandard

            stream = io.BufferedReader(
                zstandard.ZstdDecompressor().stream_reader(buf, read_across_frames=True),
                buffer_size=1 << 20)
        else:
            stream = buf
        yield stream
    finally:
        if owned:
            global _BYTES_DONE
            with contextlib.suppress(OSError, ValueError):
                _BYTES_DONE += raw.tell()
            _READING.remove(raw)
            raw.close()


#: Input files open in :func:`open_in` now, and the bytes of those already closed.
_READING: list[BinaryIO] = []
_BYTES_DONE = 0


def input_bytes_read() -> int:
    """Bytes of input files consumed so far in this process (compressed bytes for gzip/zstd
    inputs; what a progress bar compares with the files' sizes). Stdin is not counted."""
    pos = _BYTES_DONE
    for raw in _READING:
        with contextlib.suppress(OSError, ValueError):
            pos += raw.tell()
    return pos


def sniff(path: str | os.PathLike) -> str:
    """Guess a real file's container from its magic bytes: ``h5``, ``gz``, ``zst`` or ``text``."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(HDF5_MAGIC):
        return "h5"
    if head.startswith(GZIP_MAGIC):
        return "gz"
    if head.startswith(ZSTD_MAGIC):
        return "zst"
    return "text"


def stdout_is_regular_file() -> bool:
    """True when stdout was redirected to a regular (seekable) file, e.g. ``> feats.h5``."""
    try:
        return stat.S_ISREG(os.fstat(sys.stdout.fileno()).st_mode)
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


def stdout_is_tty() -> bool:
    try:
        return os.isatty(sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


class Writer:
    """Context-manager protocol shared by the file writers (shards, soft labels): the ``with``
    block ending cleanly calls ``close()`` (finish and put in place), an exception calls
    ``abort(exc)`` (drop or keep the unfinished output, as the writer documents)."""

    def close(self) -> None:
        raise NotImplementedError

    def abort(self, exc: BaseException | None = None) -> None:
        raise NotImplementedError

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, et: object, ev: BaseException | None, tb: object) -> None:
        if ev is None:
            self.close()
        else:
            self.abort(ev)


def partial_path(path: str | os.PathLike) -> Path:
    """Where an unfinished, resumable output lives (beside the final name): ``NAME.partial``."""
    p = Path(path)
    return p.with_name(p.name + ".partial")


def temp_path_for(path: str | os.PathLike) -> Path:
    """The temporary name an output is written under before it is renamed into place."""
    p = Path(path)
    return p.with_name(f".{p.name}.part-{os.getpid()}")


def is_special_file(path: str | os.PathLike) -> bool:
    """``path`` exists and is not a regular file or directory (``/dev/null``, a FIFO, a tty)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    On an exception (including ``KeyboardInterrupt``) the temporary file is removed and
    ``path`` is left untouched, so an interrupted run never leaves a file that looks complete.
    A special file (``-o /dev/null``, a named pipe) is yielded as it is: renaming a temporary
    file onto it would replace the device or pipe itself.
    """
    final = Path(path)
    if is_special_file(final):
        yield final
        return
    tmp = temp_path_for(final)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.replace(tmp, final)


@contextlib.contextmanager
def open_out(path: str | os.PathLike | None) -> Iterator[BinaryIO]:
    """Open an output for binary writing: ``-`` is stdout; a file is written atomically."""
    if is_dash(path):
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=1 << 20) as fh:
        yield fh


@contextlib.contextmanager
def resumable_out(path: str | os.PathLike, keep_bytes: int | None = None) -> Iterator[BinaryIO]:
    """Open ``PATH.partial`` for binary writing; rename it onto ``path`` on success only.

    On an exception the partial file is kept (an interrupted run can be resumed).
    ``keep_bytes`` continues an existing partial file, cut back to its first ``keep_bytes``
    bytes (what a resume point recorded); ``None`` starts afresh.

    Raises
    ------
    InputError
        ``keep_bytes`` is given but the partial file is missing or shorter.
    """
    if is_special_file(path):  # /dev/null, a pipe: nothing to resume, write straight to it
        with open(path, "wb") as fh:
            yield fh
        return
    tmp = partial_path(path)
    if keep_bytes is None:
        fh = open(tmp, "wb", buffering=1 << 20)
    else:
        size = tmp.stat().st_size if tmp.exists() else -1
        if size < keep_bytes:
            raise InputError(f"{tmp}: cannot resume: the partial report is "
                             f"{'missing' if size < 0 else 'shorter than recorded'}; "
                             "run again without --resume")
        fh = open(tmp, "r+b", buffering=1 << 20)
        fh.truncate(keep_bytes)
        fh.seek(keep_bytes)
    try:
        yield fh
    finally:
        fh.close()
    os.replace(tmp, path)


def copy_file_to(src: str | os.PathLike, dst: IO[bytes]) -> None:
    """Copy a finished file (e.g. a spooled HDF5) to a binary stream."""
    with open(src, "rb") as fh:
        while chunk := fh.read(1 << 20):
            dst.write(chunk)
    dst.flush()


@contextlib.contextmanager
def spool_path(suffix: str = ".h5") -> Iterator[Path]:
    """A temporary file path that is removed afterwards (for formats that need seek)."""
    fd, name = tempfile.mkstemp(suffix=suffix, prefix="neimsctl-")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
