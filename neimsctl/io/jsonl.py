"""JSONL streams: one JSON object per line, read and written with orjson on binary streams."""

from __future__ import annotations

from typing import Any, BinaryIO, Iterable, Iterator

import orjson

from neimsctl.errors import FormatError
from neimsctl.io.streams import iter_lines

__all__ = ["jsonl_lines", "read_jsonl", "write_jsonl"]


def jsonl_lines(stream: BinaryIO) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """``(line number, object, "")`` per non-blank line, or ``(line number, None, why)`` for a
    line that is not a JSON object: for readers that report a bad line and go on (line numbers
    count blank lines too)."""
    loads = orjson.loads
    for lineno, line in enumerate(iter_lines(stream), 1):
        if not line.strip():
            continue
        try:
            obj = loads(line)
        except orjson.JSONDecodeError as exc:
            yield lineno, None, f"not valid JSON: {exc}"
            continue
        if not isinstance(obj, dict):
            yield lineno, None, f"expected a JSON object, got {type(obj).__name__}"
            continue
        yield lineno, obj, ""


def read_jsonl(stream: BinaryIO, file: str = "<stdin>") -> Iterator[dict[str, Any]]:
    """Yield one dict per non-blank line of a binary JSONL stream (LF, CRLF or CR line ends).

    Parameters
    ----------
    stream
        Binary stream, e.g. from :func:`neimsctl.io.streams.open_in`.
    file
        Name used in error messages.

    Yields
    ------
    dict
        The decoded objects, in order.

    Raises
    ------
    FormatError
        A line is not valid JSON or not a JSON object; the message names file and line.

    Examples
    --------
    >>> import io
    >>> list(read_jsonl(io.BytesIO(b'{"a": 1}\\n\\n{"a": 2}\\n')))
    [{'a': 1}, {'a': 2}]
    """
    for lineno, obj, why in jsonl_lines(stream):
        if obj is None:
            raise FormatError(why, file=file, line=lineno)
        yield obj


def write_jsonl(stream: BinaryIO, records: Iterable[dict[str, Any]]) -> int:
    """Write each record as one line of JSON on a binary stream; return how many were written.

    Raises
    ------
    FormatError
        A record cannot be encoded as JSON (e.g. a non-string key or a set).
    """
    dumps, opt, write = orjson.dumps, orjson.OPT_APPEND_NEWLINE, stream.write
    n = 0
    for n, rec in enumerate(records, 1):
        try:
            write(dumps(rec, option=opt))
        except TypeError as exc:
            raise FormatError(f"record {n} cannot be written as JSON: {exc}") from None
    return n
