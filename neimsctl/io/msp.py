"""Streaming reader for NIST-style MSP spectral libraries.

:func:`read_msp` turns a binary stream into :class:`MspRecord` objects, one per record, in
input order, holding only the current record in memory. A record that cannot be read is
still yielded, with :attr:`MspRecord.reason` set (one code per kind of defect), so that the
caller can report it: nothing is ever dropped silently.

Dialects accepted: case variants of keys (``Num Peaks``/``Num peaks``/``NUM PEAKS``), LF,
CRLF and CR line ends (old Mac exports), also mixed in one file, a Ctrl-Z ending the file (``copy /a``), several ``key: value`` pairs on one line (``CAS#: 50-00-0; NIST#: 12``), repeated
``Synon``, several peaks per line separated by ``;``, blanks, tabs, ``:`` or parentheses,
decimal commas in peaks (``88,05 999``, when that reading gives the ``Num Peaks`` stated),
quoted peak annotations, base peak 999 or 9999, a ``Name:`` line starting a new record
without a blank line before it, UTF-8 byte order marks (at the start of the file or of a line:
files concatenated), and Windows-1252 or latin-1 text.

Reject reasons set by the reader: ``truncated_record``, ``non_numeric_peak``,
``invalid_peak``, ``no_peaks``, ``num_peaks_mismatch``, ``binary_garbage``,
``malformed_line``, ``malformed_record``.

A record starts at a ``Name:`` line. Text between records that has none (binary garbage, a
stray comment) is still yielded, as a reject at its line (``binary_garbage`` or
``malformed_record``) with ordinal 0: it is not a record, so it does not shift the ordinals
(and the ``<file stem>:<ordinal>`` fallback IDs) of the records after it.
"""

from __future__ import annotations

import math
import re
from typing import BinaryIO, Iterator

from neimsctl.errors import shown
from neimsctl.io.streams import decode_text, lf_chunks

__all__ = ["MspRecord", "read_msp", "iter_blocks", "parse_block", "parse_comments", "parse_number",
           "KEY_ALIASES", "STRUCTURE_SOURCES", "record_structure", "record_inchikey"]

#: MSP key (lower-cased, blanks squeezed) -> the key used in :attr:`MspRecord.fields`.
KEY_ALIASES: dict[str, str] = {
    "num peaks": "num peaks", "numpeaks": "num peaks", "num_peaks": "num peaks",
    "cas#": "cas", "casno": "cas", "cas": "cas", "nist#": "nist", "nistno": "nist", "nist": "nist",
    "db#": "db", "db": "db", "exactmass": "exactmass", "exact mass": "exactmass",
    "comment": "comments", "comments": "comments", "synon": "synon", "synonym": "synon",
    "mw": "mw", "inchikey": "inchikey", "inchi": "inchi", "smiles": "smiles", "formula": "formula",
    "form": "formula",     # AMDIS .MSL libraries
    "id": "id", "name": "name",
}
_NO_SPLIT = frozenset({"name", "synon", "comments", "smiles", "inchi"})
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_BYTES = bytes([*range(0, 9), 11, 12, *range(14, 32), 127])
_PEAK_SPECIAL = b';:()"\',[]_'  # anything else than digits, '.', signs, e and blanks: slow path
_QUOTED = re.compile(rb'"[^"]*"|\'[^\']*\'|\[[^\]]*\]')
_PEAK_SEPS = bytes.maketrans(b";:(),", b"     ")
_MORE_PAIRS = re.compile(r";\s*(?=[A-Za-z][\w# ]*:)")
_QUOTED_PAIRS = re.compile(r'"([^"]*)"')
_COMMENT_SPLIT = re.compile(r";\s*(?=[^;=\s][^;=]*=)")
_INF = float("inf")
_INT_LIMIT = 2 ** 63
_SEPARATOR = re.compile(rb"\n(?:[ \t\r\f\v]*\n)+")
_NUM_PEAKS = re.compile(rb"[ \t]*num[ _]?peaks[ \t]*:[ \t]*([^\n]*)\n?", re.I)
_FIRST_PEAK = re.compile(rb"^[ \t]*[\d(]", re.M)
_NAME_AT = re.compile(rb"name[ \t]*:")
_NAME_VALUE = re.compile(rb"[ \t]*name[ \t]*:([^\n]*)", re.I)
_KEY_CACHE: dict[str, str] = {}


class MspRecord:
    """One MSP record as read (no chemistry).

    Attributes
    ----------
    file, line, ordinal
        Source file name, 1-based first line of the record, 1-based position among the
        records of the file (0 for text outside any record: see :attr:`is_record`).
    fields
        ``key -> value`` of the header lines; keys lower-cased and aliased by
        :data:`KEY_ALIASES` (``CAS#`` -> ``cas``); the first occurrence wins.
    synonyms
        Every ``Synon`` value, in order.
    mz, intensity
        Peak lists as given (floats), in file order.
    num_peaks
        The declared ``Num Peaks`` (``None`` when the line is absent).
    reason, detail
        Reject code and explanation when the record could not be read, else ``None`` / ``""``.
    """

    __slots__ = ("file", "line", "ordinal", "fields", "synonyms", "mz", "intensity",
                 "num_peaks", "reason", "detail")

    def __init__(self, file: str, line: int, ordinal: int) -> None:
        self.file, self.line, self.ordinal = file, line, ordinal
        self.fields: dict[str, str] = {}
        self.synonyms: list[str] = []
        self.mz: list[float] = []
        self.intensity: list[float] = []
        self.num_peaks: int | None = None
        self.reason: str | None = None
        self.detail = ""

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        for slot, value in zip(self.__slots__, state):
            setattr(self, slot, value)

    @property
    def name(self) -> str:
        return self.fields.get("name", "")

    @property
    def is_record(self) -> bool:
        """False for text between records that has no ``Name`` line (always a reject)."""
        return self.ordinal > 0

    @property
    def record_id(self) -> str:
        """``ID``, else ``DB#``, else ``NIST#``, else ``<file stem>:<ordinal>``."""
        f = self.fields
        for key in ("id", "db", "nist"):
            if f.get(key):
                return f[key]
        stem = self.file.rsplit("/", 1)[-1].split(".", 1)[0]
        return f"{stem}:{self.ordinal}"

    def reject(self, reason: str, detail: str) -> MspRecord:
        if self.reason is None:
            self.reason, self.detail = reason, detail
        return self

    def __repr__(self) -> str:
        return (f"MspRecord({self.file}:{self.line} #{self.ordinal} {self.name!r}, "
                f"{len(self.mz)} peaks{', ' + self.reason if self.reason else ''})")


def parse_number(text: str) -> float | None:
    """A finite float from MSP text, accepting a decimal comma (``180,16``).

    ``None`` when the text is not a number, or not a finite one (``inf``, ``nan``, ``1e400``):
    no mass or energy in a spectral library is infinite.
    """
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        return None
    return value if value - value == 0 else None


def parse_comments(value: str) -> dict[str, str]:
    """Parse a ``Comments`` value into ``k=v`` pairs.

    Accepts one quoted string of ``k=v`` pairs separated by ``;`` (MassBank export:
    ``"MassBank accession=X; license=CC BY; authors=A, B; C"``; a value may contain ``;`` as
    long as the text after it is not a ``key=``) and NIST's several quoted pairs
    (``"SMILES=CCO" "computed MW=46"``). Text without ``=`` is kept under ``comment``.
    """
    parts = _QUOTED_PAIRS.findall(value)
    if len(parts) <= 1:
        parts = _COMMENT_SPLIT.split(parts[0] if parts else value.strip().strip('"'))
    out: dict[str, str] = {}
    for part in parts:
        key, eq, val = part.partition("=")
        if eq and key.strip():
            out.setdefault(key.strip(), val.strip())
        elif part.strip():
            out["comment"] = (out["comment"] + "; " if "comment" in out else "") + part.strip()
    return out


#: Where a record's structure is looked for, in this order: ``(source, kind, where)`` with
#: ``kind`` ``smiles`` or ``inchi`` and ``where`` the header field, or the key of a ``Comments``
#: pair (``comments:KEY``, key compared without case). MoNA's MSP exports carry the structure only
#: in ``Comments`` (``"SMILES=..." "InChI=InChI=1S/..." "computed SMILES=..." "InChIKey=..."``).
STRUCTURE_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("smiles", "smiles", "smiles"),
    ("inchi", "inchi", "inchi"),
    ("comments_smiles", "smiles", "comments:smiles"),
    ("comments_computed_smiles", "smiles", "comments:computed smiles"),
    ("comments_inchi", "inchi", "comments:inchi"),
    ("comments_computed_inchi", "inchi", "comments:computed inchi"),
)


def _comment_pairs(fields: dict[str, str]) -> dict[str, str]:
    """The ``Comments`` pairs of ``fields`` with lower-cased keys (first occurrence wins)."""
    out: dict[str, str] = {}
    for key, value in parse_comments(fields.get("comments", "")).items():
        out.setdefault(key.lower(), value)
    return out


def record_structure(fields: dict[str, str]) -> tuple[str, str, str] | None:
    """``(source, kind, text)`` of the structure a record states, or ``None``.

    The first non-empty one of :data:`STRUCTURE_SOURCES` wins: the record's own ``SMILES`` and
    ``InChI`` lines, then (MoNA) the ``Comments`` pairs ``SMILES=``, ``computed SMILES=``,
    ``InChI=``, ``computed InChI=``. ``source`` names the one taken (``smiles``, ``inchi``,
    ``comments_smiles`` ...); ``kind`` is ``smiles`` or ``inchi``.

    Examples
    --------
    >>> record_structure({"comments": '"InChI=InChI=1S/CH4/h1H4" "computed SMILES=C"'})
    ('comments_computed_smiles', 'smiles', 'C')
    >>> record_structure({"smiles": "CCO", "comments": '"SMILES=C"'})
    ('smiles', 'smiles', 'CCO')
    """
    pairs: dict[str, str] | None = None
    for source, kind, where in STRUCTURE_SOURCES:
        if where.startswith("comments:"):
            if "comments" not in fields:
                return None
            if pairs is None:
                pairs = _comment_pairs(fields)
            text = pairs.get(where[9:], "").strip()
        else:
            text = fields.get(where, "").strip()
        if text:
            return source, kind, text
    return None


def record_inchikey(fields: dict[str, str]) -> str:
    """The InChIKey a record states: its ``InChIKey`` line, else (MoNA) the ``Comments`` pair
    ``InChIKey=``; ``""`` when neither is there."""
    key = fields.get("inchikey", "").strip()
    if key or "comments" not in fields:
        return key
    return _comment_pairs(fields).get("inchikey", "").strip()


_text = decode_text


def _norm_key(raw: str) -> str:
    key = _KEY_CACHE.get(raw)
    if key is None:
        key = " ".join(raw.lower().split())
        key = KEY_ALIASES.get(key, key)
        if len(_KEY_CACHE) < 4096:
            _KEY_CACHE[raw] = key
    return key


def _parse_headers(rec: MspRecord, text: str, first: int) -> None:
    """Store the ``key: value`` lines of ``text`` (the header part of one record)."""
    fields = rec.fields
    # split at LF only: str.splitlines() also breaks at U+0085 (NEL),
    # U+2028 and U+2029, which a name may hold
    for i, line in enumerate(text.split("\n")):
        raw_key, colon, value = line.partition(":")
        if not colon or not raw_key.strip():
            if not line.strip():
                continue
            rec.reject("malformed_line", f"line {first + i}: not a 'key: value' line: {line.strip()[:60]!r}")
            return
        key = _norm_key(raw_key)
        value = value.strip()
        if key == "synon":
            rec.synonyms.append(value)
        elif key in _NO_SPLIT or ";" not in value or not _MORE_PAIRS.search(value):
            if key not in fields:
                fields[key] = value
        else:  # CAS#: 50-00-0; NIST#: 1234
            first_value, *rest = _MORE_PAIRS.split(value)
            fields.setdefault(key, first_value.strip())
            for extra in rest:
                k, _, v = extra.partition(":")
                fields.setdefault(_norm_key(k), v.strip())


def _peaks_slow(rec: MspRecord, data: bytes, first: int) -> None:
    """Line-by-line peak parsing: separators, annotations, exact error positions."""
    mz: list[float] = []
    inten: list[float] = []
    for i, raw in enumerate(data.splitlines()):
        toks = _QUOTED.sub(b" ", raw).translate(_PEAK_SEPS).split()
        where = f"line {first + i}: {_text(raw).strip()[:60]!r}"
        if len(toks) % 2:
            rec.reject("non_numeric_peak", f"{where}: odd number of values")
            return
        try:
            vals = [float(t) for t in toks]
        except ValueError:
            rec.reject("non_numeric_peak", f"{where}: not a number")
            return
        mz.extend(vals[0::2])
        inten.extend(vals[1::2])
    rec.mz, rec.intensity = mz, inten


def _parse_peaks(rec: MspRecord, data: bytes, first: int) -> None:
    """Fast path: only numbers and blanks -> one split and two C-level ``map(float)``. Without a
    ``Num Peaks`` to check the count against, every line must hold pairs, as on the slow path:
    one split paired three columns (``41 999 12``) across the lines into peaks that are none."""
    if len(data.translate(None, _PEAK_SPECIAL)) == len(data):
        toks = data.split()
        if not len(toks) % 2 and (rec.num_peaks is not None
                                  or not any(len(ln.split()) % 2 for ln in data.split(b"\n"))):
            try:  # integers stay integers (cheaper to parse and to write)
                rec.mz = list(map(int, toks[0::2]))
                rec.intensity = list(map(int, toks[1::2]))
            except ValueError:
                try:
                    rec.mz = list(map(float, toks[0::2]))
                    rec.intensity = list(map(float, toks[1::2]))
                except ValueError:
                    _peaks_slow(rec, data, first)
        else:
            _peaks_slow(rec, data, first)
    else:
        _peaks_slow(rec, data, first)
    if rec.reason is None and rec.mz:
        total = sum(rec.mz) + sum(rec.intensity)
        if (total != total or total == _INF) and not _all_finite(rec.mz, rec.intensity):
            rec.reject("invalid_peak", "negative, infinite or NaN m/z or intensity")
        elif min(rec.mz) < 0 or min(rec.intensity) < 0:
            rec.reject("invalid_peak", "negative, infinite or NaN m/z or intensity")
        elif type(total) is int and total >= _INT_LIMIT:  # 400 digits parse as an int
            rec.reject("invalid_peak", "m/z or intensity too large (not a 64-bit number)")


def _all_finite(*lists: list) -> bool:
    """Every value finite (a sum that overflowed, 1e308 + 1e308, is no bad value)."""
    return all(math.isfinite(v) for values in lists for v in values)


def _find_num_peaks(block: bytes, low: bytes) -> re.Match | None:
    """The ``Num Peaks`` line: ``bytes.find`` on the lower-cased text, then a regex match there."""
    i = 0 if low.startswith(b"num") else low.find(b"\nnum")
    while i != -1:
        m = _NUM_PEAKS.match(block, i + (low[i] == 10))
        if m is not None:
            return m
        i = low.find(b"\nnum", i + 1)
    return None


def parse_block(block: bytes, file: str, line: int, ordinal: int, at_eof: bool = False,
                low: bytes | None = None) -> MspRecord:
    """Parse the text of one record (no blank lines inside) that starts at ``line``.

    ``low`` is ``block.lower()`` when the caller has it already.
    """
    rec = MspRecord(file, line, ordinal)
    if low is None:
        low = block.lower()
    if not _is_record(low):
        rec.ordinal = 0
        if len(block.translate(None, _CONTROL_BYTES)) != len(block):
            return rec.reject("binary_garbage", "binary data (control bytes) outside any record")
        first = _text(block.split(b"\n", 1)[0]).strip()[:60]
        return rec.reject("malformed_record", f"text outside any record (no Name line): {first!r}")
    if len(block.translate(None, _CONTROL_BYTES)) != len(block):
        name = _NAME_VALUE.match(block)
        if name and not _CONTROL.search(name.group(1)):
            rec.fields["name"] = _text(name.group(1)).strip()
        return rec.reject("binary_garbage", "control bytes in the record (binary data?)")
    m = _find_num_peaks(block, low)
    if m is not None:
        head, peaks = block[:m.start()], block[m.end():]
        try:
            rec.num_peaks = int(m.group(1))
        except ValueError:
            rec.reject("malformed_line", f"Num Peaks is not an integer: {shown(_text(m.group(1)).strip(), 80)!r}")
        rec.fields["num peaks"] = _text(m.group(1)).strip()
    else:
        p = _FIRST_PEAK.search(block)
        head, peaks = (block, b"") if p is None else (block[:p.start()], block[p.start():])
    head_text = _text(head)
    if head_text.strip():
        _parse_headers(rec, head_text.rstrip("\r\n"), line)
    if rec.reason:
        return rec
    if "name" not in rec.fields:
        return rec.reject("malformed_record", "no Name line")
    if peaks.strip():
        _parse_peaks(rec, peaks, line + block.count(b"\n", 0, len(block) - len(peaks)))
        if (rec.reason == "non_numeric_peak" or (rec.reason is None and rec.num_peaks is not None
                                                  and len(rec.mz) != rec.num_peaks)) and b"," in peaks:
            _decimal_commas(rec, peaks)
        if rec.reason:
            return rec
    declared, got = rec.num_peaks, len(rec.mz)
    if declared is None and got == 0:
        if at_eof:
            return rec.reject("truncated_record", "input ends before the Num Peaks line")
        return rec.reject("no_peaks", "no Num Peaks line and no peaks")
    if declared is not None and got != declared:
        if at_eof and got < declared:
            return rec.reject("truncated_record", f"input ends after {got} of {declared} peaks")
        return rec.reject("num_peaks_mismatch", f"Num Peaks {declared}, found {got} peaks")
    if got == 0:
        return rec.reject("no_peaks", "Num Peaks: 0")
    if not max(rec.intensity) > 0:          # as check_peaks (index, search): no positive intensity
        return rec.reject("no_peaks", f"every intensity of the {got} peaks is 0")
    return rec


_DECIMAL_COMMA = re.compile(rb"(?<=\d),(?=\d)")


def _decimal_commas(rec: MspRecord, peaks: bytes) -> None:
    """Take the peaks of an export written with decimal commas (``88,05\t999,0``: a European
    locale) when commas read as separators fail (``88,5 99``: an odd number of values) or
    disagree with ``Num Peaks``, and each comma between digits read as a decimal point gives
    valid peaks, as many as ``Num Peaks`` states (when stated)."""
    alt = MspRecord(rec.file, rec.line, rec.ordinal)
    _parse_peaks(alt, _DECIMAL_COMMA.sub(b".", peaks), 0)
    if alt.reason is None and alt.mz and (rec.num_peaks is None or len(alt.mz) == rec.num_peaks):
        rec.mz, rec.intensity = alt.mz, alt.intensity
        rec.reason, rec.detail = None, ""


def _is_record(low: bytes) -> bool:
    """A block (lower-cased, no leading blanks) is a record when it starts with ``Name:``."""
    return _NAME_AT.match(low) is not None


def _blocks(buf: bytes, line: int) -> Iterator[tuple[bytes, int, bytes]]:
    """Split the text of one or more records (no blank line inside) at ``Name:`` lines."""
    stripped = buf.lstrip()
    line += buf.count(b"\n", 0, len(buf) - len(stripped))
    low = stripped.lower()
    i = low.find(b"\nname")
    if i == -1:
        yield stripped, line, low
        return
    pos = 0
    while i != -1:
        if _NAME_AT.match(low, i + 1):
            yield stripped[pos:i], line, low[pos:i]
            line += stripped.count(b"\n", pos, i + 1)
            pos = i + 1
        i = low.find(b"\nname", i + 1)
    yield stripped[pos:], line, low[pos:]


def iter_blocks(stream: BinaryIO, chunk_size: int = 1 << 20) -> Iterator[tuple[bytes, int, int, bool]]:
    """Split an MSP stream into the raw text of its records, without parsing them.

    Yields ``(block, line, ordinal, at_eof)``: the record's bytes (line ends as LF), its
    1-based first line, its 1-based position among the records (0 for text outside any
    record) and whether it is the last one of a stream that ends inside it.
    :func:`parse_block` turns each into an :class:`MspRecord`; splitting is several times
    cheaper than parsing, so ``msp2jsonl --jobs N`` splits in the main process and parses in
    the workers.
    """
    for block, line, ordinal, at_eof, _low in _iter_blocks(stream, chunk_size):
        yield block, line, ordinal, at_eof


def _iter_blocks(stream: BinaryIO, chunk_size: int) -> Iterator[tuple[bytes, int, int, bool, bytes]]:
    carry, line, ordinal, first = b"", 1, 0, True
    chunks = lf_chunks(stream, chunk_size)  # CRLF and CR line ends arrive as LF
    while True:
        chunk = next(chunks, b"")
        if first and chunk.startswith(b"\xef\xbb\xbf"):
            chunk = chunk[3:]
        first = False
        buf = carry + chunk if carry else chunk
        eof = not chunk
        pos = 0
        seps = list(_SEPARATOR.finditer(buf))
        if not eof and seps:
            seps.pop()  # the last blank-line run may go on in the next chunk
        for m in seps:
            if buf[pos:m.start()].strip():
                for block, at, low in _blocks(buf[pos:m.start()], line):
                    if _is_record(low):
                        ordinal += 1
                        yield block, at, ordinal, False, low
                    else:
                        yield block, at, 0, False, low
            line += buf.count(b"\n", pos, m.end())
            pos = m.end()
        carry = buf[pos:]
        if eof:
            if carry.strip():
                blocks = list(_blocks(carry, line))
                for i, (block, at, low) in enumerate(blocks):
                    record = _is_record(low)
                    ordinal += record
                    yield block, at, ordinal if record else 0, i == len(blocks) - 1, low
            return


def read_msp(stream: BinaryIO, file: str = "<stdin>", chunk_size: int = 1 << 20) -> Iterator[MspRecord]:
    """Yield every record of an MSP stream, rejected ones included (``reason`` set).

    Parameters
    ----------
    stream
        Binary stream (e.g. from :func:`neimsctl.io.streams.open_in`), read in chunks of
        ``chunk_size`` bytes; memory is bounded by the chunk size and the largest record.
    file
        Name used in :attr:`MspRecord.file` and for fallback IDs.

    Yields
    ------
    MspRecord
        In input order; a record with ``reason`` set is a reject.

    Examples
    --------
    >>> import io
    >>> recs = list(read_msp(io.BytesIO(b"Name: x\\nNum Peaks: 1\\n15 999\\n"), "t.msp"))
    >>> recs[0].name, recs[0].mz, recs[0].reason
    ('x', [15], None)
    """
    for block, line, ordinal, at_eof, low in _iter_blocks(stream, chunk_size):
        yield parse_block(block, file, line, ordinal, at_eof, low)
