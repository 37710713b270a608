"""Spectra for ``neimsctl eval``: MSP, JSONL (records or predictions) or HDF5 shards -> dense arrays.

:func:`load_spectra` reads any of

- NIST-style MSP (the ``InChIKey`` and ``MW`` lines are used; a record without ``InChIKey`` but
  with ``SMILES``/``InChI`` gets one from RDKit);
- JSONL ``neimsctl.record/1`` (formats/jsonl-record.v1.md) or ``neimsctl.prediction/1``
  (formats/prediction.v1.md, with its optional ``neimsctl.prediction-run/1`` header line);
- HDF5 feature shards ``neimsctl.h5shard/1`` (the ``spectrum`` dataset, rows with spectra only);

into one :class:`SpectraSet`: 501-bin spectra (m/z 0..500, base peak 1, noise < 0.001 removed,
as :func:`neimsctl.io.spectrum.preprocess_spectrum`), the InChIKey, nominal MW, id and name of
each row, and the optional per-prediction ``experts``, ``uncertainty`` and ``latency_ms``.
Rows without an InChIKey or without peaks cannot be matched; they are skipped and counted.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Sequence

import numpy as np

from neimsctl.io.spectrum import N_BINS, preprocess_spectrum
from neimsctl.errors import FormatError
from neimsctl.io.inchikey import stated_inchikey
from neimsctl.io.jsonl import jsonl_lines
from neimsctl.io.msp import read_msp, record_inchikey, record_structure
from neimsctl.io.spectrum_records import bad_mass, int_mass
from neimsctl.io.streams import check_input, display_name, is_dash, is_regular, open_in, sniff

__all__ = ["SpectraSet", "load_spectra", "PREDICTION_SCHEMA", "RUN_SCHEMA"]

PREDICTION_SCHEMA = "neimsctl.prediction/1"
RUN_SCHEMA = "neimsctl.prediction-run/1"
RECORD_SCHEMA = "neimsctl.record/1"


#: Records not used whose place and reason a :class:`SpectraSet` keeps (the rest are counted).
MAX_PROBLEMS = 1000


@dataclass
class SpectraSet:
    """Spectra of one input, row-aligned.

    Attributes
    ----------
    spectra : float32 ``(N, 501)``, base peak 1.
    keys : full InChIKeys (str array ``(N,)``).
    mw : nominal MW, int64 ``(N,)`` (-1 when unknown).
    ids, names : str arrays ``(N,)``.
    uncertainty : float32 ``(N, 501)`` per-bin std on the same scale, NaN where not given; or None.
    experts : list of ``(index list, weight list)`` per row (None for a row without it); or None.
    latency_ms : float64 ``(N,)`` (NaN where not given); or None.
    header : the ``neimsctl.prediction-run/1`` header line, if any.
    skipped : reason -> number of input records that were not used.
    source : display name of the input.
    problems : where and why, for the first :data:`MAX_PROBLEMS` records not used
        (``"<source>: line 12: bad_peaks"``).
    no_mass : row -> ``(where, kind, text, formula)`` of each row without a stated MW: its place
        (``"line 12 (caffeine)"``), the structure it states (``kind`` ``smiles``/``inchi``/``""``)
        and its formula, from which ``eval --mass-filter`` derives the mass as ``index`` does.
    """

    spectra: np.ndarray
    keys: np.ndarray
    mw: np.ndarray
    ids: np.ndarray
    names: np.ndarray
    uncertainty: np.ndarray | None = None
    experts: list[Any] | None = None
    latency_ms: np.ndarray | None = None
    header: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    source: str = ""
    problems: list[str] = field(default_factory=list)
    no_mass: dict[int, tuple[str | None, str, str, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


class _Rows:
    """Accumulates rows while reading."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.spectra: list[np.ndarray] = []
        self.keys: list[str] = []
        self.mw: list[int] = []
        self.ids: list[str] = []
        self.names: list[str] = []
        self.unc: list[np.ndarray | None] = []
        self.experts: list[Any] = []
        self.latency: list[float] = []
        self.header: dict[str, Any] = {}
        self.skipped: dict[str, int] = {}
        self.problems: list[str] = []
        self.no_mass: dict[int, tuple[str | None, str, str, str]] = {}

    def skip(self, reason: str, where: str | None = None) -> None:
        self.skip_many(reason, 1, [where])

    def skip_many(self, reason: str, n: int, wheres: Sequence[str | None]) -> None:
        """``n`` records not used for ``reason``; ``wheres``: the places of (at least) the first
        ones, of which :data:`MAX_PROBLEMS` in all are kept."""
        self.skipped[reason] = self.skipped.get(reason, 0) + n
        for where in wheres[:max(0, MAX_PROBLEMS - len(self.problems))]:
            self.problems.append(f"{self.source}: {where}: {reason}" if where else f"{self.source}: {reason}")

    def add(self, *, mz: Any, intensity: Any, key: str | None, mw: Any, rid: str, name: str,
            unc: Any = None, experts: Any = None, latency: Any = None, where: str | None = None,
            structure: tuple[str, str] | None = None, formula: Any = None) -> None:
        if not key:
            self.skip("no_inchikey", where)
            return
        key = stated_inchikey(str(key))
        if key is None:     # "N/A", "-", a number: it would pair with nothing, silently
            self.skip("bad_inchikey", where)
            return
        try:
            spec = preprocess_spectrum([] if mz is None else mz, [] if intensity is None else intensity)
        except (ValueError, TypeError):
            self.skip("bad_peaks", where)
            return
        if not spec.max() > 0:
            self.skip("no_peaks", where)
            return
        if bad_mass(mw) is not None:      # a query searched without its mass filter, silently
            self.skip("bad_field", where)
            return
        self.spectra.append(spec)
        self.keys.append(key)
        known = int_mass(mw)              # absent, empty or 0: unknown
        if known is None:
            kind, text = structure if structure else ("", "")
            self.no_mass[len(self.mw)] = (where, kind, text, formula if isinstance(formula, str) else "")
        self.mw.append(-1 if known is None else known)
        self.ids.append(rid)
        self.names.append(name)
        self.unc.append(_dense_uncertainty(mz, intensity, unc) if unc is not None else None)
        self.experts.append(_experts(experts))
        self.latency.append(float(latency) if isinstance(latency, (int, float)) else math.nan)

    def finish(self) -> SpectraSet:
        n = len(self.keys)
        spectra = np.stack(self.spectra) if n else np.zeros((0, N_BINS), np.float32)
        unc = None
        if any(u is not None for u in self.unc):
            unc = np.full((n, N_BINS), np.nan, dtype=np.float32)
            for i, u in enumerate(self.unc):
                if u is not None:
                    unc[i] = u
        experts = self.experts if any(e is not None for e in self.experts) else None
        lat = np.asarray(self.latency, dtype=np.float64)
        return SpectraSet(spectra, np.asarray(self.keys, dtype=str), np.asarray(self.mw, np.int64),
                          np.asarray(self.ids, dtype=str), np.asarray(self.names, dtype=str), unc,
                          experts, lat if np.isfinite(lat).any() else None, self.header,
                          self.skipped, self.source, self.problems, self.no_mass)


def _dense_uncertainty(mz: Any, intensity: Any, unc: Any) -> np.ndarray:
    """Per-peak std -> per-bin std on the base-peak-1 scale (variances of a shared bin add)."""
    mz_a, it_a, sd = (np.asarray(v, dtype=np.float64) for v in (mz, intensity, unc))
    if sd.shape != mz_a.shape:
        raise FormatError(f"uncertainty has {sd.size} values for {mz_a.size} peaks")
    idx = np.floor(mz_a + 0.5).astype(np.int64)
    keep = (idx >= 0) & (idx < N_BINS)
    summed = np.bincount(idx[keep], weights=it_a[keep], minlength=N_BINS)
    top = summed.max()
    var = np.bincount(idx[keep], weights=np.square(sd[keep]), minlength=N_BINS)
    out = np.full(N_BINS, np.nan, dtype=np.float32)
    listed = np.bincount(idx[keep], minlength=N_BINS) > 0
    out[listed] = np.sqrt(var[listed]) / (top if top > 0 else 1.0)
    return out


def _experts(obj: Any) -> tuple[list[int], list[float]] | None:
    if not isinstance(obj, dict) or "index" not in obj:
        return None
    idx = [int(i) for i in obj["index"]]
    w = [float(x) for x in obj.get("weight", [1.0 / max(len(idx), 1)] * len(idx))]
    if len(w) != len(idx):
        raise FormatError("experts: 'index' and 'weight' differ in length")
    return idx, w


def _read_jsonl(fh: BinaryIO, rows: _Rows) -> None:
    """Every line a record; a line that is not a JSON object is counted as ``bad_json`` in
    ``skipped`` (like an MSP record the reader cannot use), the others are read."""
    for n, (lineno, rec, _why) in enumerate(jsonl_lines(fh)):
        if rec is None:
            rows.skip("bad_json", f"line {lineno}")
            continue
        schema = rec.get("schema")
        if schema == RUN_SCHEMA:
            if n == 0:
                rows.header = {k: v for k, v in rec.items() if k != "schema"}
            continue
        if schema not in (PREDICTION_SCHEMA, RECORD_SCHEMA, None):
            raise FormatError(f"unknown schema {schema!r}", file=rows.source, line=n + 1)
        rows.add(mz=rec.get("mz"), intensity=rec.get("intensity"), key=rec.get("inchikey"),
                 mw=rec.get("mw"), rid=str(rec.get("id") or f"{rows.source}:{n + 1}"),
                 name=str(rec.get("name") or ""), unc=rec.get("uncertainty"),
                 experts=rec.get("experts"), latency=rec.get("latency_ms"), where=f"line {lineno}",
                 structure=("smiles", rec["smiles"]) if isinstance(rec.get("smiles"), str) else None,
                 formula=rec.get("formula"))


def _msp_key(fields: dict[str, str]) -> str | None:
    """The record's InChIKey: as stated (the line, else MoNA's ``InChIKey=`` comment pair), else
    from the structure it states (:func:`neimsctl.io.msp.record_structure`)."""
    key = record_inchikey(fields)
    stated = record_structure(fields)
    if key and (stated_inchikey(key) or stated is None):
        return key      # one that is no InChIKey, without a structure: add() names it
    if stated is None:
        return None
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    _, kind, text = stated
    mol = Chem.MolFromSmiles(text) if kind == "smiles" else Chem.MolFromInchi(text)
    return Chem.MolToInchiKey(mol) or None if mol is not None else None


def _read_msp(fh: BinaryIO, rows: _Rows) -> None:
    for rec in read_msp(fh, rows.source):
        where = f"line {rec.line}" + (f" ({rec.name})" if rec.name else "") if rec.line else rec.name or None
        if rec.reason:
            rows.skip(rec.reason, where)
            continue
        stated = record_structure(rec.fields)
        rows.add(mz=rec.mz, intensity=rec.intensity, key=_msp_key(rec.fields),
                 mw=rec.fields.get("mw", "").strip() or None, rid=rec.record_id, name=rec.name, where=where,
                 structure=stated[1:] if stated else None, formula=rec.fields.get("formula", "").strip())


def _read_h5(path: str | os.PathLike, rows: _Rows) -> None:
    from neimsctl.io.h5shard import ShardReader

    r = ShardReader(path)
    try:
        has = r.column("has_spectrum").astype(bool)
        keys, ids, names = r.column("inchikey"), r.column("id"), r.column("name")
        mw = r.column("mw").astype(np.int64)
        spectra = r.file["spectrum"]
        missing = np.flatnonzero(~has)           # counted at once; places kept for the first
        rows.skip_many("no_peaks", len(missing), [f"row {int(i)} (id {ids[i]})" for i in missing[:MAX_PROBLEMS]])
        for lo in range(0, len(has), 4096):
            block = spectra[lo:lo + 4096].astype(np.float32)
            for j in np.flatnonzero(has[lo:lo + 4096]):
                i = lo + int(j)
                mz = np.flatnonzero(block[j])
                rows.add(mz=mz, intensity=block[j][mz], key=keys[i], mw=int(mw[i]), rid=ids[i],
                         name=names[i], where=f"row {i} (id {ids[i]})")
    finally:
        r.close()


def load_spectra(path: str | os.PathLike) -> SpectraSet:
    """Read one input (MSP, JSONL or an HDF5 shard; ``-`` is stdin, MSP or JSONL).

    The format is recognised by content: HDF5 by its magic bytes, JSONL by a first non-blank
    character ``{``, anything else is read as MSP.

    Raises
    ------
    InputError
        The file cannot be opened.
    FormatError
        The content violates its format.
    """
    source = display_name(path)
    rows = _Rows(source)
    if not is_dash(path):
        check_input(path)
        if sniff(path) == "h5":
            _read_h5(path, rows)
            return rows.finish()
    if is_dash(path) or not is_regular(path):      # a stream is read once
        with open_in(path) as fh:
            data = fh.read()
        reader = _read_jsonl if data.lstrip().startswith(b"{") else _read_msp
        reader(io.BytesIO(data), rows)
        return rows.finish()
    with open_in(path) as fh:
        head = fh.read(4096)
    reader = _read_jsonl if head.lstrip().startswith(b"{") else _read_msp
    with open_in(path) as fh:
        reader(fh, rows)
    return rows.finish()
