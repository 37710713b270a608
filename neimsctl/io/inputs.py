"""Molecule inputs of ``featurize`` and ``predict``: files -> numbered raw records (:class:`Item`).

Formats, per file detected from its first lines unless ``input_format`` is given:

- ``sdf``: SDF / MOL (a ``V2000``/``V3000`` counts line within the first 4 lines after any
  blank ones); records split at ``$$$$``; blank lines before a MOL block are no part of it; an
  item's line is the first line of its MOL block;
- ``jsonl``: ``neimsctl.record/1`` lines (the first non-blank line starts with ``{``);
- ``smi``: ``SMILES [name]`` per line.

Blank lines, and ``#`` comment lines of SMILES files, are not records; nor is a SMILES file's
first line when its first word is ``SMILES`` (the header RDKit's ``SmilesWriter`` writes). Records are numbered
(``ordinal``) 0, 1, 2 ... across all inputs in order; with ``shard=(K, N)`` only records with
``ordinal % N == K - 1`` are yielded (round robin; ordinals stay those of the whole input).
Items carry the raw bytes: parsing happens in the workers that featurize them
(:mod:`neimsctl.chem.rowbuild`).
"""

from __future__ import annotations

import os
import re
from typing import BinaryIO, Iterable, Iterator, NamedTuple, Sequence

from neimsctl.errors import InputError
from neimsctl.io.streams import display_name, iter_lines, open_in

__all__ = ["INPUT_FORMATS", "Item", "sniff_format", "iter_items", "parse_shard"]

INPUT_FORMATS = ("smi", "jsonl", "sdf")
_HEAD = 4  # lines that may hold an SDF counts line
#: What :func:`sniff_format` finds by its magic bytes that is no molecule input, as
#: :func:`iter_items` names it (it read each line of a feature shard as a SMILES: dozens of rejects of binary text, and a
#: zblock stream had a line RDKit took for a molecule, featurized with exit 1 only).
_NOT_MOLECULES = {"h5": "an HDF5 file (a feature shard?)", "zblock": "a zblock feature stream"}


class Item(NamedTuple):
    """One input record as read: global ordinal, source file and line, kind and raw bytes, and
    its position in its own file (``nth``, 1-based as a record's ``source.ordinal``; 0: not
    known, e.g. an item the API makes)."""

    ordinal: int
    file: str
    line: int
    kind: str          # "jsonl", "smi" or "sdf"
    raw: bytes
    nth: int = 0


#: A MOL block's counts line: atom and bond counts, ..., the version (``  3  2  0 ... V2000``).
_COUNTS_LINE = re.compile(rb"^[ \d]{6}.*V[23]000\s*$")


def sniff_format(head: Sequence[bytes], formats: Sequence[str] = INPUT_FORMATS) -> str:
    """The format of a file starting with the lines ``head`` (see the module docstring).

    ``head`` should reach the first non-blank line (and hold at least 4 lines from it when there
    are: an SDF file may start with blank lines);
    ``sdf`` is considered only when it is among ``formats``.

    Examples
    --------
    >>> sniff_format([b"\\n", b'{"id": "a"}\\n'])
    'jsonl'
    >>> sniff_format([b"CCO ethanol\\n"])
    'smi'

    ``msp`` (a spectral library), ``h5`` (an HDF5 file) and ``zblock`` (a zblock stream) are
    no molecule formats: :func:`iter_items` refuses them.
    """
    if head and head[0].startswith((b"\x89HDF", b"NZBK")):
        return "h5" if head[0].startswith(b"\x89HDF") else "zblock"
    lead = next((i for i, ln in enumerate(head) if ln.strip()), 0)    # blank lines before the first record
    if "sdf" in formats and any(b"V2000" in ln or b"V3000" in ln for ln in head[:lead + _HEAD]):
        return "sdf"
    first = head[lead].strip() if head else b""
    if first[:5].lower() == b"name:":
        return "msp"                  # a spectral library, not structures: refused by iter_items
    return "jsonl" if first.startswith(b"{") else "smi"


def _sniffed(fh: BinaryIO, input_format: str | None,
             formats: Sequence[str]) -> tuple[str, Iterator[bytes]]:
    """``(format, every line of fh)``: reads ahead just far enough to detect the format."""
    head: list[bytes] = []
    it = iter_lines(fh)            # LF, CRLF and CR line ends
    if input_format is None:
        for ln in it:
            head.append(ln)
            lead = next((i for i, h in enumerate(head) if h.strip()), None)
            if lead is not None and len(head) >= lead + _HEAD:
                break

    def lines() -> Iterator[bytes]:
        yield from head
        yield from it
    return input_format or sniff_format(head, formats), lines()


def iter_items(paths: Iterable[str | os.PathLike], input_format: str | None = None,
               shard: tuple[int, int] | None = None, *,
               formats: Sequence[str] = INPUT_FORMATS) -> Iterator[Item]:
    """Input records of ``paths`` as :class:`Item`, numbered across files, shard-filtered.

    Parameters
    ----------
    paths
        Input files (``-`` = stdin; gzip/zstd are decoded, :func:`neimsctl.io.streams.open_in`).
    input_format
        ``smi``, ``jsonl`` or ``sdf`` for every file; ``None`` detects it per file.
    shard
        ``(K, N)``: yield only records with ``ordinal % N == K - 1``.
    formats
        What detection may choose (``featurize`` reads no SDF: ``("smi", "jsonl")``).
    """
    ordinal = 0

    def keep() -> bool:
        return shard is None or ordinal % shard[1] == shard[0] - 1

    for path in paths:
        name = display_name(path)
        first = ordinal          # the file's records are nth = ordinal - first + 1
        with open_in(path) as fh:
            kind, lines = _sniffed(fh, input_format, formats)
            if kind == "msp":
                lib = "LIB.msp" if name.startswith("<") else name
                raise InputError(f"{name}: an MSP spectral library ('Name:' records), not "
                                 f"structures: convert it first (neimsctl msp2jsonl {lib} | "
                                 "neimsctl ...)")
            if kind in _NOT_MOLECULES:
                given = {"smi": "SMILES lines", "jsonl": "JSONL records", "sdf": "SDF"}
                raise InputError(f"{name}: {_NOT_MOLECULES[kind]}, not molecules ("
                                 + ", ".join(given[f] for f in formats) + ")")
            if kind == "sdf":
                buf: list[bytes] = []
                start, ended = 1, -1     # ended: buf's index of the record's "M  END" line
                for lineno, raw in enumerate(lines, start=1):
                    if raw.startswith(b"$$$$"):
                        if keep():
                            yield Item(ordinal, name, start, "sdf", b"".join(buf), ordinal - first + 1)
                        ordinal, buf, start, ended = ordinal + 1, [], lineno + 1, -1
                        continue
                    if (b"V2000" in raw or b"V3000" in raw) and _COUNTS_LINE.match(raw):
                        if ended >= 0 and len(buf) - ended > 3:
                            # a MOL block's counts line after "M  END" without "$$$$" (MOL files
                            # concatenated, cat *.mol): a record of its own from its 3 header
                            # lines, not the previous record's data, silently lost
                            if keep():
                                yield Item(ordinal, name, start, "sdf", b"".join(buf[:-3]), ordinal - first + 1)
                            ordinal, buf, start, ended = ordinal + 1, buf[-3:], lineno - 3, -1
                        elif ended < 0 and len(buf) > 3 and not b"".join(buf[:-3]).strip():
                            # blank lines before a MOL block (at the start of the file, or after
                            # "$$$$"): not its header, which is the 3 lines before the counts line
                            buf, start = buf[-3:], lineno - 3
                    elif ended < 0 and raw.startswith(b"M  END"):
                        ended = len(buf)
                    buf.append(raw)
                if b"".join(buf).strip():
                    if keep():
                        yield Item(ordinal, name, start, "sdf", b"".join(buf), ordinal - first + 1)
                    ordinal += 1
                continue
            header = kind == "smi"   # RDKit's SmilesWriter starts its files with "SMILES Name"
            for lineno, raw in enumerate(lines, start=1):
                text = raw.strip()
                if not text or (kind == "smi" and text.startswith(b"#")):
                    continue
                if header:
                    header = False
                    if text.split(None, 1)[0].lower() == b"smiles":
                        continue
                if keep():
                    yield Item(ordinal, name, lineno, kind, text, ordinal - first + 1)
                ordinal += 1


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard K/N`` -> ``(K, N)`` with ``1 <= K <= N``; ``None`` passes through.

    The shard holds the records with ``ordinal % N == K - 1`` (:func:`iter_items`), the same
    split for ``featurize --shard`` and ``predict --shard``.

    Raises
    ------
    ValueError
        Not ``K/N`` with ``1 <= K <= N``.
    """
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected K/N, e.g. 1/4") from None
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text!r}: need 1 <= K <= N")
    return k, n
