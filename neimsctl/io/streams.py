"""Byte streams: ``-`` for stdin/stdout, transparent gzip/zstd input, atomic output files.

Every command reads through :func:`open_in` and writes through :func:`open_out`, so the
conventions (``-`` is stdin/stdout, compressed input is sniffed by magic bytes, outputs are
written under a temporary name and renamed only when complete) hold everywhere.

Text inputs are split into lines by :func:`iter_lines` (or :func:`lf_chunks` for readers that
split records themselves), which read every line-end convention: LF, CRLF, and the CR of old
Mac exports, also mixed in one file. :func:`find_clash` tells when an output would overwrite
an input or another output (compared by device and inode, stdin/stdout included), and an
output that cannot be written raises :class:`~neimsctl.errors.OutputError` naming its path.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import io
import itertools
import logging
import os
import re
import stat
import sys
import zlib
from pathlib import Path
from typing import IO, Any, BinaryIO, Iterable, Iterator, NamedTuple

from neimsctl.errors import InputError, OutputBusy, OutputError
from neimsctl.interrupts import check as check_interrupt

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def decode_text(raw: bytes) -> str:
    """Text of a file that is not ours: UTF-8, else Windows-1252 (what MSP exports of Windows
    tools, NIST MS Search, AMDIS, ChemStation, write: ``'...'``, curly quotes and dashes at
    0x80-0x9F), else latin-1 (the five bytes Windows-1252 leaves undefined). For bytes
    0xA0-0xFF the two agree."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


def is_dash(path: str | os.PathLike | None) -> bool:
    """True when ``path`` names stdin/stdout (``-`` or ``None``)."""
    return path is None or str(path) == "-"


def display_name(path: str | os.PathLike | None) -> str:
    """The name used in messages and outputs (records' ``source.file``, rejects, an index's
    library names): ``<stdin>`` for ``-``; bytes of a file name that are not UTF-8 as ``\\xNN``
    (Python holds them as lone surrogates, which no UTF-8 output can take: JSON, TSV, HDF5).

    Examples
    --------
    >>> display_name(os.fsdecode(b"lib\\xff.msp"))
    'lib\\\\xff.msp'
    """
    if is_dash(path):
        return "<stdin>"
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _peek(raw: BinaryIO, n: int = 8) -> tuple[bytes, BinaryIO]:
    """Return the first ``n`` bytes without consuming them (wraps unseekable streams)."""
    if not isinstance(raw, io.BufferedReader):
        raw = io.BufferedReader(raw)  # type: ignore[arg-type]
    return raw.peek(n)[:n], raw


def _unread_container(head: bytes) -> str | None:
    """What a file starting with ``head`` is when it is a container :func:`open_in` does not
    decode (bzip2, xz, ZIP), else ``None``. Read as text, each was a run of ``binary_garbage``
    or ``unparsable_smiles`` rejects of its compressed bytes."""
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:7] == b"1AY":
        return "bzip2-compressed data"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz-compressed data"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive (an Excel workbook? a checkpoint?)"
    return None


class _GzipRaw(io.RawIOBase):
    """gzip members decoded; corrupt or truncated data is an :class:`InputError`.

    (``GzipFile`` raises ``EOFError`` for a truncated member, which click would print as
    ``Aborted!``.)
    """

    def __init__(self, src: BinaryIO, name: str) -> None:
        self._gz, self._name = gzip.GzipFile(fileobj=src, mode="rb"), name

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            return self._gz.readinto(b)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(f"{self._name}: corrupt or truncated gzip data: {exc}") from None

    def close(self) -> None:
        self._gz.close()
        super().close()


class _ZstdRaw(io.RawIOBase):
    """zstd frames one after another, decoded; a stream that ends inside a frame or holds
    corrupt data is an :class:`InputError`.

    (``ZstdDecompressor.stream_reader`` ends quietly at a truncated frame: the records of its
    last blocks would be lost without a word.)
    """

    def __init__(self, src: BinaryIO, name: str) -> None:
        import zstandard

        self._src, self._name, self._zstd = src, name, zstandard
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = self._dctx.decompressobj()
        self._in_frame = False
        self._buf, self._pos = b"", 0

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Decode more data into the buffer; False at a clean end of the stream."""
        read = getattr(self._src, "read1", self._src.read)
        while self._pos >= len(self._buf):
            data = read(1 << 17)
            if not data:
                if self._in_frame:
                    raise InputError(f"{self._name}: truncated zstd data: the input ends inside a frame")
                return False
            out = []
            try:
                while data:
                    self._in_frame = True
                    out.append(self._dobj.decompress(data))
                    if not self._dobj.eof:
                        break
                    data = self._dobj.unused_data  # the frame ended; another may follow
                    self._dobj, self._in_frame = self._dctx.decompressobj(), False
            except self._zstd.ZstdError as exc:
                raise InputError(f"{self._name}: corrupt zstd data: {exc}") from None
            self._buf, self._pos = b"".join(out), 0
        return True

    def readinto(self, b: Any) -> int:
        if self._pos >= len(self._buf) and not self._fill():
            return 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n


class _Utf16Raw(io.RawIOBase):
    """UTF-16 text (with its byte-order mark, as Windows programs export "Unicode" text)
    re-encoded as UTF-8 on the fly; bytes that are not UTF-16 become U+FFFD."""

    def __init__(self, src: BinaryIO) -> None:
        import codecs

        self._src = src
        self._dec = codecs.getincrementaldecoder("utf-16")(errors="replace")
        self._buf, self._pos, self._eof = b"", 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        read = getattr(self._src, "read1", self._src.read)
        while self._pos >= len(self._buf):
            if self._eof:
                return 0
            data = read(1 << 17)
            self._eof = not data
            self._buf, self._pos = self._dec.decode(data, final=self._eof).encode("utf-8"), 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
UTF8_BOM = b"\xef\xbb\xbf"


def _as_utf8(stream: BinaryIO) -> BinaryIO:
    """The (decompressed) stream as UTF-8 from its first byte: UTF-16 text (its byte-order mark)
    re-encoded, a UTF-8 byte-order mark skipped (JSONL and SMILES readers would take it for data)."""
    head = stream.peek(3)[:3] if hasattr(stream, "peek") else b""
    if head.startswith(UTF16_BOMS):
        return io.BufferedReader(_Utf16Raw(stream), buffer_size=1 << 20)  # type: ignore[return-value]
    if head.startswith(UTF8_BOM):
        stream.read(3)
    return stream


@contextlib.contextmanager
def open_in(path: str | os.PathLike | None) -> Iterator[BinaryIO]:
    """Open an input for binary reading; ``-`` is stdin; gzip and zstd are decoded on the fly,
    UTF-16 text (recognised by its byte-order mark, compressed or not) is read as UTF-8 and a
    UTF-8 byte-order mark is skipped.

    Compression is recognised by its magic bytes, not the file suffix, so piped
    ``.gz``/``.zst`` data works too. Compressed data that is corrupt or ends inside a frame
    (a truncated download) raises :class:`InputError` when it is read: never a silent end.

    Raises
    ------
    InputError
        The file does not exist or cannot be opened; it is bzip2, xz or ZIP data; (on
        reading) corrupt or truncated compressed data.
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
        name = display_name(path)
        try:
            head, buf = _peek(raw)
        except OSError as exc:          # e.g. a closed stdin (EBADF), a directory given as "-"
            raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from exc
        unread = _unread_container(head)
        if unread is not None:
            raise InputError(f"{name}: {unread}, which neimsctl does not read (plain text, gzip "
                             "and zstd): decompress or export it first")
        if head.startswith(GZIP_MAGIC):
            stream: BinaryIO = io.BufferedReader(_GzipRaw(buf, name), buffer_size=1 << 20)  # type: ignore[assignment]
        elif head.startswith(ZSTD_MAGIC):
            stream = io.BufferedReader(_ZstdRaw(buf, name), buffer_size=1 << 20)  # type: ignore[assignment]
        else:
            stream = buf
        yield _as_utf8(stream)
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


def input_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as an input (``no such file``, ``is a directory``, ...), or
    ``None``: a regular file, or a stream such as a named pipe, bash's ``<(...)`` (``/dev/fd/N``)
    or ``/dev/null``, which is read once from its start like stdin."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot open: {exc.strerror or exc}"
    return "is a directory" if stat.S_ISDIR(mode) else None


def check_input(path: str | os.PathLike) -> None:
    """Raise :class:`InputError` ``<path>: <why>`` when ``path`` is no input (:func:`input_problem`)."""
    problem = input_problem(path)
    if problem is not None:
        raise InputError(f"{path}: {problem}")


def is_regular(path: str | os.PathLike) -> bool:
    """``path`` is a regular file (seekable: HDF5 is possible), not a pipe or device."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def sniff(path: str | os.PathLike) -> str:
    """Guess a real file's container from its magic bytes: ``h5``, ``gz``, ``zst`` or ``text``.

    A stream (a pipe, ``/dev/fd/N``) is ``text`` unread: its bytes can be read only once, by
    :func:`open_in`, which recognises gzip and zstd itself (HDF5 needs a seekable file)."""
    if not is_regular(path):
        return "text"
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(HDF5_MAGIC):
        return "h5"
    if head.startswith(GZIP_MAGIC):
        return "gz"
    if head.startswith(ZSTD_MAGIC):
        return "zst"
    return "text"


def lf_chunks(stream: BinaryIO, chunk_size: int = 1 << 20, *, partial: bool = False) -> Iterator[bytes]:
    """Chunks of ``stream`` with every CRLF and lone CR line end turned into LF.

    A chunk without any CR (the common case) is passed on as it is, found by one ``in``
    scan; a CR at the very end of a chunk is held back until the next one shows whether it
    starts a CRLF pair, so a pair split by the chunking still counts as one line end.
    Empty chunks are never yielded. ``partial``: pass on what a pipe has (``read1``) instead
    of waiting for ``chunk_size`` bytes, so lines arrive as they are written.

    Ctrl-Z bytes that end the input are dropped: DOS's end-of-file mark, which Windows still
    appends to text files it concatenates (``copy /a lib1.msp + lib2.msp all.msp``); the MSP
    reader took the last record for binary data, the SMILES reader the last line for a SMILES.
    So are UTF-8 byte-order marks that start a line: the first bytes of a file that was
    concatenated (``cat a.msp b.msp``) after it was written by a Windows tool; the MSP reader
    took its first record for text outside any record, the JSONL readers its first line for bad
    JSON.
    """
    read = getattr(stream, "read1", stream.read) if partial else stream.read
    hold = b""
    line_start = True   # the chunk to come starts a line
    while True:
        chunk = read(chunk_size)
        if not chunk:
            tail = hold.rstrip(b"\x1a").replace(b"\r", b"\n")
            if tail:
                yield tail
            return
        if hold:
            chunk, hold = hold + chunk, b""
        if chunk[-1] == 26:  # held back until the next read shows whether the input ends there
            end = len(chunk.rstrip(b"\x1a"))
            chunk, hold = chunk[:end], chunk[end:]
        if b"\r" in chunk:
            if chunk[-1] == 13:
                chunk, hold = chunk[:-1], b"\r" + hold
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\xef" in chunk:
            chunk = _drop_boms(chunk, line_start)
            if chunk.endswith(_BOM_CUT) or (line_start and chunk in _BOM_HEADS):
                cut = chunk.rindex(b"\xef")  # a mark cut by the chunking waits for its end
                chunk, hold = chunk[:cut], chunk[cut:] + hold
        if chunk:
            line_start = chunk[-1] == 10
            yield chunk


_BOM_HEADS = (b"\xef", b"\xef\xbb")
_BOM_CUT = (b"\n\xef", b"\n\xef\xbb")
_LINE_BOM = b"\n" + UTF8_BOM


def _drop_boms(chunk: bytes, line_start: bool) -> bytes:
    """``chunk`` without the UTF-8 byte-order marks that start its lines (the first line too
    when ``line_start``)."""
    while _LINE_BOM in chunk:
        chunk = chunk.replace(_LINE_BOM, b"\n")
    while line_start and chunk.startswith(UTF8_BOM):
        chunk = chunk[3:]
    return chunk


def _line_runs(stream: BinaryIO, chunk_size: int) -> Iterator[Iterable[bytes]]:
    parts: list[bytes] = []  # the pieces of a line not ended yet (joined once, never re-copied)
    for chunk in lf_chunks(stream, chunk_size, partial=True):
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            parts.append(chunk)
            continue
        if parts:
            parts.append(chunk[:cut])
            head, parts = b"".join(parts), []
        else:
            head = chunk if cut == len(chunk) else chunk[:cut]
        # iterated line by line (memchr, one line alive at a time) rather than split into a
        # list: holding a whole chunk's lines made reading JSONL 5x slower than the file itself
        yield io.BytesIO(head)
        if cut < len(chunk):
            parts.append(chunk[cut:])
    if parts:
        tail = b"".join(parts)
        if tail:
            yield [tail]


def iter_lines(stream: BinaryIO, chunk_size: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a binary stream, each ending in ``\\n`` (the last one may have none).

    LF, CRLF and CR line ends are all read, mixed too, and given as ``\\n``, so line numbers
    are those an editor shows. Lines are split in C, as fast as iterating the stream itself
    (chunks of 64 KB: with 1 MB, reading JSONL took 3.5x as long, the chunk's copies no longer
    fitting the CPU caches).

    Examples
    --------
    >>> list(iter_lines(io.BytesIO(b"a\\rb\\r\\nc\\nd")))
    [b'a\\n', b'b\\n', b'c\\n', b'd']
    """
    return itertools.chain.from_iterable(_line_runs(stream, chunk_size))


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


class Clash(NamedTuple):
    """An output that is the same file as an input or as another output (see :func:`find_clash`)."""

    output: str        # how the output was named, e.g. "-o x.msp", "stdout"
    other: str         # the input or other output it coincides with, e.g. "input x.msp"
    other_is_input: bool


def _identity(path: str | os.PathLike | None, fd: int) -> tuple | None:
    """What makes two paths the same file: ``(dev, inode)`` of an existing regular file or of
    a pipe or FIFO (``-`` on a pipe and ``/dev/stdout`` are one stream: rejects given as
    ``/dev/stdout`` went into the data of a pipe), the resolved path of a file not yet there,
    ``("fd", n)`` for ``-`` (stdin/stdout) on a terminal; ``None`` for devices and directories
    (``/dev/null`` twice is fine).
    """
    try:
        st = os.fstat(fd) if is_dash(path) else os.stat(path)  # type: ignore[arg-type]
    except (OSError, ValueError):
        if is_dash(path):
            return None
        try:
            return ("path", str(Path(path).resolve()))  # type: ignore[arg-type]
        except (OSError, RuntimeError):
            return ("path", os.path.abspath(path))  # type: ignore[arg-type]
    if stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return ("inode", st.st_dev, st.st_ino)
    return ("fd", fd) if is_dash(path) and not stat.S_ISCHR(st.st_mode) else None


def find_clash(inputs: Iterable[tuple[str, str | os.PathLike | None]],
               outputs: Iterable[tuple[str, str | os.PathLike | None]]) -> Clash | None:
    """The first output that is the same file as an input or an earlier output, else ``None``.

    Parameters
    ----------
    inputs, outputs
        ``(label, path)`` pairs, the label naming the path in messages (``"input x.msp"``,
        ``"-o out.jsonl"``); ``-`` is stdin among the inputs and stdout among the outputs,
        compared by what they are open on (``< x.msp``, ``>> x.msp``).

    Notes
    -----
    Existing files are compared by device and inode, so a hard link, a symbolic link or
    another spelling of the path is caught; files not yet there by their resolved path. A pipe
    or FIFO is the same stream under every name (``-`` and ``/dev/stdout``). Devices
    (``/dev/null``) and directories never clash.
    """
    seen: dict[tuple, tuple[str, bool]] = {}
    for label, path in inputs:
        ident = _identity(path, 0)
        if ident is not None and ident[0] != "path":
            seen.setdefault(ident, (label, True))
    for label, path in outputs:
        ident = _identity(path, 1)
        if ident is None:
            continue
        if ident in seen:
            other, is_input = seen[ident]
            return Clash(label, other, is_input)
        seen[ident] = (label, False)
    return None


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


def output_name(path: str | os.PathLike) -> Path:
    """``path`` as the name of an output file.

    Raises
    ------
    OutputError
        ``path`` is empty, ``.``, ``/`` or an existing directory: no file can be written
        under that name (checked before any work, not found out at the final rename).
    """
    p = Path(path)
    if not str(path) or not p.name or p.is_dir():
        why = "is a directory" if p.is_dir() else "not a file name"
        raise OutputError(f"{str(path) or repr(str(path))}: cannot write: {why}")
    return p


def partial_path(path: str | os.PathLike) -> Path:
    """Where an unfinished, resumable output lives (beside the final name): ``NAME.partial``."""
    p = output_name(path)
    return p.with_name(p.name + ".partial")


def lock_partial(partial: Path) -> int:
    """Hold an exclusive lock on the existing partial output ``partial`` (a file or a
    directory): a second run writing the same output would interleave its rows with ours
    (HDF5's own file locks are off: worker processes forked later inherit them and fail).
    Returns the descriptor that holds it; the lock goes when it is closed or the process (and
    the workers it forked) ends.

    Raises
    ------
    OutputBusy
        Another process holds the lock.
    """
    import fcntl

    fd = os.open(partial, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputBusy(f"{partial}: another run is writing this output; wait for it to end "
                         "(or stop it) before starting or resuming one") from None
    return fd


def temp_path_for(path: str | os.PathLike) -> Path:
    """The temporary name an output is written under before it is renamed into place:
    ``.NAME.part-PID-TAG`` (``TAG``: :func:`_process_space`; ``.NAME.part-PID`` where it is
    unknown; ``NAME`` cut short by :func:`_temp_stem` when it is too long to take these)."""
    p = output_name(path)
    tag = _process_space()
    return p.with_name(f"{_temp_stem(p.name)}{os.getpid()}" + (f"-{tag}" if tag else ""))


#: bytes a file name may have (NAME_MAX of Linux, macOS and Windows' file systems), and those
#: :func:`temp_path_for` adds to an output's name at most: ``.``, ``.part-``, a PID, ``-TAG``
_NAME_MAX, _TEMP_EXTRA = 255, 1 + 6 + 7 + 1 + 8


def _temp_stem(name: str) -> str:
    """``.NAME.part-``, the start of every temporary of output ``NAME``; a ``NAME`` too long to
    take the rest is cut and ends in ``~`` and 8 hex digits of its hash, so that outputs whose
    names start alike keep their own temporaries (a valid output name of 233-255 bytes was
    refused as 'File name too long', which only its temporary was)."""
    raw, room = os.fsencode(name), _NAME_MAX - _TEMP_EXTRA
    if len(raw) > room:
        import hashlib      # (here: its import loads OpenSSL, 3-11 ms of a search's start)

        raw = raw[:room - 9] + b"~" + hashlib.blake2b(raw, digest_size=4).hexdigest().encode()
    return f".{os.fsdecode(raw)}.part-"


@functools.lru_cache(maxsize=1)
def _process_space() -> str:
    """8 hex digits naming where this process's PID means something: the kernel's boot and
    the PID namespace (Linux; ``""`` elsewhere). A temporary with another tag may belong to a
    live run on another machine sharing the directory, or in another container."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as fh:
            boot = fh.read().strip()
        space = os.readlink("/proc/self/ns/pid").encode()
    except OSError:
        return ""
    import hashlib

    return hashlib.blake2b(boot + b"\0" + space, digest_size=4).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True          # another user's process (or not a PID we can ask about): keep
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[tuple[Path, int]]:
    """Remove the temporaries of ``path`` (:func:`temp_path_for`) that runs killed before they
    could (SIGKILL, the OOM killer) left beside it: only those whose process ran on
    this machine since its last boot, in this PID namespace, and no longer runs (a PID taken by
    another process since is kept). Returns the removed files and their sizes. Temporaries of
    another machine or container, or from before the tag (``.NAME.part-PID``), are left: their
    run may still be writing."""
    p = Path(path)
    tag = _process_space()
    if not tag:
        return []
    stem = _temp_stem(p.name)
    pattern = re.compile(re.escape(stem) + r"(\d+)-" + re.escape(tag) + r"(?:-\w+)?")
    removed = []
    try:
        names = [e.name for e in os.scandir(p.parent if str(p.parent) else ".")
                 if e.name.startswith(stem)]
    except OSError:
        return []
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        stale = p.with_name(name)
        try:
            st = stale.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            stale.unlink()
        except OSError:
            continue
        removed.append((stale, st.st_size))
    return removed


_FD_NAME = re.compile(r"/(?:proc/[^/]+|dev)/fd/\d+|/dev/std(?:in|out|err)")


def names_open_fd(path: str | os.PathLike) -> bool:
    """``path`` is (or links to) a name of an open file descriptor: ``/dev/stdout``,
    ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``. Such an output is written through;
    a temporary file renamed onto it would replace the link (as root, ``/dev/stderr`` itself)."""
    p = os.path.abspath(path)
    for _ in range(40):
        if _FD_NAME.fullmatch(p):
            return True
        if not os.path.islink(p):
            return False
        p = os.path.normpath(os.path.join(os.path.dirname(p), os.readlink(p)))
    return False


def is_special_file(path: str | os.PathLike) -> bool:
    """``path`` exists and is not a regular file or directory (``/dev/null``, a FIFO, a tty),
    or names an open file descriptor (``/dev/stderr``: :func:`names_open_fd`)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) or names_open_fd(path)


def _real_output(path: str | os.PathLike) -> Path:
    """Where an output really goes: the target of a symbolic link (the link is kept)."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() else p


#: Inputs found while a command runs (the files an ensemble includes), by (device, inode):
#: no output of this process may replace them (:func:`refuse_protected`).
_PROTECTED: dict[tuple[int, int], str] = {}


def protect_input(path: str | os.PathLike, why: str) -> None:
    """Register ``path`` as an input that no output of this process may replace (a file read
    indirectly, which the command line's clobber check did not see)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    _PROTECTED[(st.st_dev, st.st_ino)] = f"{path} ({why})"


def refuse_protected(path: str | os.PathLike) -> None:
    """Raise :class:`OutputError` when ``path`` is a file registered by :func:`protect_input`."""
    if not _PROTECTED:
        return
    try:
        st = os.stat(path)
    except OSError:
        return
    hit = _PROTECTED.get((st.st_dev, st.st_ino))
    if hit is not None:
        raise OutputError(f"{path}: is the input {hit}: refusing to write over it")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, shown: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    On an exception (including ``KeyboardInterrupt``) the temporary file is removed and
    ``path`` is left untouched, so an interrupted run never leaves a file that looks complete.
    A special file (``-o /dev/null``, a named pipe, ``/dev/stderr``) is yielded as it is:
    renaming a temporary file onto it would replace the device, pipe or link itself. A
    symbolic link is followed: its target is replaced, the link stays. An output that cannot be
    written is an :class:`OutputError` naming ``shown`` (default: ``path``; e.g. the output the
    user asked for, when ``path`` is a part of it).
    """
    final = Path(path)
    if is_special_file(final):
        yield final
        return
    final = _real_output(final)
    refuse_protected(final)
    _clear_stale_temps(final, "temporary")
    tmp = temp_path_for(final)
    try:
        yield tmp
        refuse_protected(final)            # inputs found while the output was being written
        check_interrupt()                  # a Ctrl-C/SIGTERM an h5py callback swallowed
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
            name = final if shown is None else shown
            if exc.filename in (str(tmp), tmp) or exc.filename is None and exc.errno in _NO_ROOM:
                raise output_error(name, exc) from None     # (no room: a plot's or text's write)
            if exc.errno and str(tmp) in str(exc):   # HDF5's message names the temporary file
                raise output_error(name, OSError(exc.errno, os.strerror(exc.errno))) from None
        raise


def _clear_stale_temps(path: Path, what: str) -> None:
    """:func:`remove_stale_temps` of ``path``, each removal a warning naming it as ``what``
    (``temporary``, ``spool``)."""
    for stale, size in remove_stale_temps(path):
        logging.getLogger("neimsctl").warning(
            "removed %s (%s bytes): the %s of an interrupted run that no longer runs", stale, f"{size:,}", what)


#: errno of a write that found no room: a full disk or quota, a file larger than ``ulimit -f``
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def output_error(path: str | os.PathLike | None, exc: OSError) -> OutputError:
    """``<path>: cannot write: <why>`` for an output that failed (``<stdout>`` for ``-``)."""
    why = exc.strerror or str(exc)
    if exc.errno == errno.ENOENT and not is_dash(path) \
            and not Path(path).parent.is_dir():  # type: ignore[arg-type]  (/proc: it exists)
        why += f" (no directory {Path(path).parent})"  # type: ignore[arg-type]
    return OutputError(f"{'<stdout>' if is_dash(path) else path}: cannot write: {why}")


def make_dirs(path: str | os.PathLike) -> Path:
    """Create directory ``path`` and its parents (nothing when it exists); returns it.

    Raises
    ------
    OutputError
        It cannot be created (a parent is a file, read-only file system, permissions).
    """
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError) or exc.errno == errno.ENOTDIR:
            why = "not a directory" if p.exists() else f"{why} (a parent is a file)"
        raise OutputError(f"{p}: cannot create the directory: {why}") from None
    return p


class OutStream:
    """A binary output stream whose failed writes name the output (:class:`OutputError`).

    Wraps the real file object (or ``sys.stdout.buffer``); everything else is passed through.
    """

    __slots__ = ("_fh", "_path")

    def __init__(self, fh: IO[bytes], path: str | os.PathLike | None) -> None:
        self._fh, self._path = fh, path

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise output_error(self._path, exc) from None

    def flush(self) -> None:
        try:
            self._fh.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise output_error(self._path, exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


@contextlib.contextmanager
def open_out(path: str | os.PathLike | None) -> Iterator[BinaryIO]:
    """Open an output for binary writing: ``-`` is stdout; a file is written atomically.

    Raises
    ------
    OutputError
        The output cannot be created or written (no such directory, read-only file system,
        disk full); the temporary file is removed and ``path`` left as it was.
    """
    if is_dash(path):
        out = OutStream(sys.stdout.buffer, path)
        yield out  # type: ignore[misc]
        out.flush()
        return
    with atomic_path(path) as tmp:
        try:
            fh = open(tmp, "wb", buffering=1 << 20)  # noqa: SIM115
        except OSError as exc:
            raise output_error(path, exc) from None
        with _closed_after(fh, path) as out:
            yield out  # type: ignore[misc]


@contextlib.contextmanager
def _closed_after(fh: BinaryIO, path: str | os.PathLike) -> Iterator[OutStream]:
    """``fh`` as an :class:`OutStream` naming ``path``, closed at the end: quietly after an
    exception (which goes on), else a close that fails (a full disk) is the
    :class:`OutputError` of ``path``."""
    try:
        yield OutStream(fh, path)
    except BaseException:
        with contextlib.suppress(OSError):
            fh.close()
        raise
    try:
        fh.close()
    except OSError as exc:
        raise output_error(path, exc) from None


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
    OutputError
        A write, flush or the close fails (a full disk), naming ``path``.
    """
    tmp: Path | None = None
    if is_special_file(path):  # /dev/null, a pipe: nothing to resume, write straight to it
        fh = open(path, "wb")  # noqa: SIM115
    else:
        path = _real_output(path)
        tmp = partial_path(path)
        if keep_bytes is None:
            try:
                fh = open(tmp, "wb", buffering=1 << 20)  # noqa: SIM115
            except OSError as exc:
                raise output_error(path, exc) from None
        else:
            size = tmp.stat().st_size if tmp.exists() else -1
            if size < keep_bytes:
                raise InputError(f"{tmp}: cannot resume: the partial report is "
                                 f"{'missing' if size < 0 else 'shorter than recorded'}; "
                                 "run again without --resume")
            fh = open(tmp, "r+b", buffering=1 << 20)  # noqa: SIM115
            fh.truncate(keep_bytes)
            fh.seek(keep_bytes)
    with _closed_after(fh, path) as out:
        yield out  # type: ignore[misc]
    if tmp is None:
        return
    refuse_protected(path)
    check_interrupt()                      # a Ctrl-C/SIGTERM an h5py callback swallowed
    os.replace(tmp, path)


#: free disk space kept beyond each write's size: what HDF5 writes when it closes the file
#: (metadata, the chunk caches of one write: tens of KB), with room to spare
ROOM_BYTES = 1 << 20


class RoomCheck:
    """Free-space check before each write of an HDF5 file ``path`` (:meth:`need`).

    HDF5 must never find the disk full itself: a string column's write that fails frees its
    buffers twice, and a file whose writes failed crashes the process as it is closed (SIGSEGV
    or heap corruption, after a traceback per cached chunk). So a writer asks for the room of
    each write first, and fails as an ordinary full disk while the file is still whole.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path, self.raw = Path(path), 0     # raw: bytes asked for so far (uncompressed)

    def need(self, nbytes: int) -> None:
        """Raise ``OSError(ENOSPC)`` naming :attr:`path` unless its file system has room for a
        write of ``nbytes`` uncompressed bytes: at twice the compression ratio the file has
        shown so far (half, before it has any), plus :data:`ROOM_BYTES`."""
        try:
            st = os.statvfs(self.path.parent)
            size = os.stat(self.path).st_size
        except OSError:
            return
        ratio = min(1.0, 2 * size / self.raw) if self.raw else 0.5
        free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
        if free < nbytes * ratio + ROOM_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        self.raw += nbytes


def array_bytes(arrays: Iterable[Any]) -> int:
    """An upper bound of the bytes numpy ``arrays`` take stored uncompressed (strings at 4
    bytes a character, plus their heap entries)."""
    total = 0
    for arr in arrays:
        if arr.dtype == object:
            total += sum(4 * len(v) + 32 for v in arr.tolist())
        else:
            total += arr.nbytes
    return total


def copy_file_to(src: str | os.PathLike, dst: IO[bytes]) -> None:
    """Copy a finished file (e.g. a spooled HDF5) to a binary stream."""
    with open(src, "rb") as fh:
        while chunk := fh.read(1 << 20):
            dst.write(chunk)
    dst.flush()


@contextlib.contextmanager
def spool_path(suffix: str = ".h5") -> Iterator[Path]:
    """A temporary file path that is removed afterwards (for formats that need seek), in the
    temporary directory as ``.neimsctl-spool<suffix>.part-PID-TAG-XXXXXXXX``: a spool that a
    killed run (SIGKILL, the out-of-memory killer) left there is removed by the next spool
    (:func:`remove_stale_temps`; it used to stay for ever, as big as the output or input it held)."""
    import tempfile     # (here: 5-9 ms of every command's start)

    final = Path(tempfile.gettempdir()) / f"neimsctl-spool{suffix}"
    _clear_stale_temps(final, "spool")
    fd, name = tempfile.mkstemp(prefix=temp_path_for(final).name + "-", dir=final.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
