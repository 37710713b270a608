"""Streaming reader of spectra of any kind for ``index`` and ``search``.

:func:`read_spectrum_records` yields one :class:`SpectrumRecord` per input record, in input
order, holding only the current record (or one HDF5 block) in memory, from

- MSP of every dialect :func:`neimsctl.io.msp.read_msp` reads (NIST, MassBank, MoNA, AMDIS,
  MS-DIAL, ChemStation / MassHunter exports); a ``Comments`` with ``predicted=`` (what
  ``neimsctl predict`` writes) marks the record as predicted;
- JSONL ``neimsctl.record/1`` and ``neimsctl.prediction/1`` (predicted), with the optional
  ``neimsctl.prediction-run/1`` header line;
- HDF5 feature shards ``neimsctl.h5shard/1`` (the measured ``spectrum`` of each row).

No chemistry happens here: a record without an ``MW`` keeps ``mw = None`` and the caller may
derive it from the SMILES or formula. A record the reader cannot use carries ``reason``.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

import numpy as np

from neimsctl.errors import FormatError, shown
from neimsctl.io.inchikey import stated_inchikey
from neimsctl.io.jsonl import jsonl_lines
from neimsctl.io.msp import parse_number, read_msp, record_inchikey, record_structure
from neimsctl.io.spectrum import MASS_LIMIT
from neimsctl.io.streams import check_input, display_name, is_dash, open_in, sniff

__all__ = ["SpectrumRecord", "bad_mass", "int_mass", "read_spectrum_records"]

_PREDICTION = "neimsctl.prediction/1"
_RUN = "neimsctl.prediction-run/1"
_RECORD = "neimsctl.record/1"


@dataclass
class SpectrumRecord:
    """One input spectrum and what is known of its compound.

    ``line`` is the 1-based first line of the record (0 for HDF5 rows), ``ordinal`` its
    1-based position in the file. ``mw`` is the nominal mass when the record states one.
    """

    file: str
    line: int
    ordinal: int
    id: str
    name: str = ""
    inchikey: str = ""
    smiles: str = ""
    formula: str = ""
    mw: int | None = None
    predicted: bool = False
    mz: Any = None
    intensity: Any = None
    reason: str | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def int_mass(value: Any) -> int | None:
    """The stated nominal mass; ``None`` (unknown) when it is not a positive number that an
    index can hold (``MW: 2147483648`` is no molecule's mass)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = parse_number(value)
    # (NaN and infinities fail the range: no np.isfinite, ~1 us on a Python number)
    if isinstance(value, (int, float)) and 0 < value < MASS_LIMIT \
            and round(value) >= 1:            # MW 0.3 is no nominal mass either
        return int(round(value))
    return None


def bad_mass(value: Any) -> str | None:
    """Why a stated ``MW`` cannot be a molecular mass (``None``: it can, or none is stated:
    absent, empty and 0 mean unknown). A query with such a mass would be searched without its
    mass filter, an entry sorted under no mass: the record is a ``bad_field`` reject."""
    if value is None or int_mass(value) is not None:
        return None
    number = parse_number(value) if isinstance(value, str) else value
    if (isinstance(value, str) and not value.strip()) or (
            isinstance(number, (int, float)) and not isinstance(number, bool) and number == 0):
        return None
    text = repr(shown(value, 80)) if isinstance(value, str) else shown(json.dumps(value), 80)
    return f"MW {text} is not a molecular mass (a positive number below {MASS_LIMIT:,})"


def _with_mass(rec: SpectrumRecord, value: Any) -> SpectrumRecord:
    """``rec`` with its stated mass, or a ``bad_field`` reject when that is no mass."""
    why = None if rec.reason else bad_mass(value)
    if why is not None:
        rec.reason, rec.detail = "bad_field", why
    return rec


def _msp_records(fh: BinaryIO, source: str) -> Iterator[SpectrumRecord]:
    for rec in read_msp(fh, source):
        f = rec.fields
        # the structure and InChIKey the record states, by msp2jsonl's rule (the SMILES / InChI /
        # InChIKey lines, else the Comments pairs of MoNA exports); a key that is none ('N/A',
        # 'InChIKey=...' cut to 27 characters) is left for complete_record to take from the structure
        stated = record_structure(f)
        kind, text = stated[1:] if stated is not None else ("", "")
        out = _with_mass(SpectrumRecord(source, rec.line, rec.ordinal, rec.record_id, rec.name,
                                        stated_inchikey(record_inchikey(f)) or "", text if kind == "smiles" else "",
                                        f.get("formula", "").strip(), int_mass(f.get("mw")),
                                        "predicted=" in f.get("comments", ""), rec.mz, rec.intensity,
                                        rec.reason, rec.detail), f.get("mw", "").strip())
        if kind == "inchi":
            out.extra["inchi"] = text
        elif f.get("inchi"):
            out.extra["inchi"] = f["inchi"]
        yield out


def _jsonl_records(fh: BinaryIO, source: str) -> Iterator[SpectrumRecord]:
    """One record per non-blank line; a line that is not a JSON object is a ``bad_json``
    record (reported and skipped by the caller: one bad or cut line loses only itself)."""
    stem = source.rsplit("/", 1)[-1].split(".", 1)[0]
    ordinal = 0
    for lineno, rec, why in jsonl_lines(fh):
        if rec is None:
            ordinal += 1
            yield SpectrumRecord(source, lineno, ordinal, f"{stem}:{ordinal}", reason="bad_json", detail=why)
            continue
        schema = rec.get("schema")
        if schema == _RUN:
            continue
        ordinal += 1
        if schema not in (_PREDICTION, _RECORD, None):
            yield SpectrumRecord(source, lineno, ordinal, f"{stem}:{ordinal}", reason="unknown_schema",
                                 detail=f"schema {shown(repr(schema), 80)} is neither {_RECORD} nor {_PREDICTION}")
            continue
        yield _with_mass(SpectrumRecord(source, lineno, ordinal, str(rec.get("id") or f"{stem}:{ordinal}"),
                                        str(rec.get("name") or ""), str(rec.get("inchikey") or "").strip().upper(),
                                        str(rec.get("smiles") or ""), str(rec.get("formula") or ""),
                                        int_mass(rec.get("mw")), schema == _PREDICTION, rec.get("mz"),
                                        rec.get("intensity")), rec.get("mw"))


def _shard_records(path: str | os.PathLike, source: str, block: int = 4096) -> Iterator[SpectrumRecord]:
    from neimsctl.io.h5shard import ShardReader

    r = ShardReader(path)
    try:
        has = r.column("has_spectrum").astype(bool)
        cols = {c: r.column(c) for c in ("id", "name", "inchikey", "smiles", "formula")}
        mw = r.column("mw").astype(np.int64)
        spectra = r.file["spectrum"]
        for lo in range(0, len(has), block):
            dense = spectra[lo:lo + block].astype(np.float32)
            for j in range(len(dense)):
                i = lo + j
                rec = SpectrumRecord(source, 0, i + 1, str(cols["id"][i]), str(cols["name"][i]),
                                     str(cols["inchikey"][i]).upper(), str(cols["smiles"][i]),
                                     str(cols["formula"][i]), int(mw[i]) if mw[i] > 0 else None)
                if has[i]:
                    rec.mz = np.flatnonzero(dense[j])
                    rec.intensity = dense[j][rec.mz]
                else:
                    rec.reason, rec.detail = "no_peaks", "shard row without a spectrum"
                yield rec
    finally:
        r.close()


def read_spectrum_records(path: str | os.PathLike) -> Iterator[SpectrumRecord]:
    """Yield every record of one input (``-`` is stdin: MSP or JSONL), rejects included.

    The format is recognised by content: HDF5 by its magic bytes, JSONL by a first non-blank
    character ``{``, anything else is read as MSP.

    Raises
    ------
    InputError
        The file does not exist or cannot be opened.
    FormatError
        The content violates its format (e.g. a JSONL line that is not JSON).
    """
    source = display_name(path)
    if not is_dash(path):
        check_input(path)
        if sniff(path) == "h5":
            yield from _shard_records(path, source)
            return
    with open_in(path) as fh:
        if not hasattr(fh, "peek"):
            fh = io.BufferedReader(fh)  # type: ignore[arg-type]
        head = fh.peek(4096)[:4096]
        reader = _jsonl_records if head.lstrip().startswith(b"{") else _msp_records
        try:
            yield from reader(fh, source)
        except UnicodeDecodeError as exc:
            raise FormatError(f"not text: {exc}", file=source) from None

