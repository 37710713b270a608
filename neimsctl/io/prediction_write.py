"""Predicted spectra -> MSP, JSONL (``neimsctl.prediction/1``) or top-N peak lists.

- ``msp``: :func:`neimsctl.io.msp_write.write_msp`; integer m/z, base peak 999, peaks below
  0.001 of the base peak dropped; ``Comments`` names the model.
- ``jsonl``: formats/prediction.v1.md: ``schema``, ``id``, ``name``, ``smiles``, ``inchikey``,
  ``mw``, ``mz``, ``intensity`` (base peak 999, same peak threshold as MSP), plus
  ``uncertainty`` (per-peak MC-dropout standard deviation, same scale) with ``--uncertainty``
  and ``experts`` (the student's top-k routing).
- ``top``: one block per molecule: a header line ``# <name>  <smiles>  (<id>)`` then the
  ``top`` largest peaks as ``m/z 180: 0.9876`` (relative to the base peak, descending), then
  a blank line.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import numpy as np
import orjson

from neimsctl import __version__
from neimsctl.io.msp_write import (BASE_PEAK, MIN_RELATIVE, format_msp_block, format_msp_record,
                                   spectra_peaks, spectrum_peaks)

__all__ = ["OUTPUT_FORMATS", "PredictionWriter", "top_peaks", "format_top"]

OUTPUT_FORMATS = ("msp", "jsonl")
SCHEMA = "neimsctl.prediction/1"


def top_peaks(spectrum: np.ndarray, top_n: int = 10, threshold: float = 0.01) -> list[tuple[int, float]]:
    """The ``top_n`` largest peaks of a dense spectrum as ``(m/z, intensity relative to base)``.

    Peaks below ``threshold`` of the base peak are left out; sorted by intensity, descending
    (ties: lower m/z first).

    Examples
    --------
    >>> top_peaks(np.array([0, 0.2, 1.0, 0.005]), top_n=5)
    [(2, 1.0), (1, 0.2)]
    """
    s = np.asarray(spectrum, dtype=np.float64)
    top = float(s.max()) if s.size else 0.0
    if not top > 0:
        return []
    rel = s / top
    idx = np.flatnonzero(rel >= threshold)
    order = idx[np.lexsort((idx, -rel[idx]))][:top_n]
    return [(int(i), float(rel[i])) for i in order]


def format_top(header: str, peaks: list[tuple[int, float]]) -> str:
    """A ``--top`` block: ``# header`` then ``m/z 180: 0.9876`` lines, then a blank line."""
    return "\n".join([f"# {header}", *(f"m/z {mz}: {v:.4f}" for mz, v in peaks)]) + "\n\n"


class PredictionWriter:
    """Writes predicted blocks to a binary stream in one output format.

    Parameters
    ----------
    stream
        Binary output (``None`` when only :meth:`format` is used).
    fmt
        ``msp`` or ``jsonl`` (ignored when ``top`` is given).
    model_desc
        Model identification for MSP comments (``LoadedModel.describe()``).
    top
        Write ``--top N`` peak lists instead.
    min_relative
        Peak threshold for MSP/JSONL, relative to the base peak.
    """

    def __init__(self, stream: BinaryIO | None, fmt: str = "msp", *, model_desc: str = "",
                 top: int | None = None, min_relative: float = MIN_RELATIVE) -> None:
        self.stream, self.fmt, self.top, self.min_relative = stream, fmt, top, min_relative
        self.comments = {"predicted": f"neimsctl {__version__}", "model": model_desc}

    def __call__(self, block: dict[str, np.ndarray], spectra: np.ndarray,
                 std: np.ndarray | None = None, experts: dict[str, np.ndarray] | None = None,
                 flags: list[list[str]] | None = None) -> int:
        """Write one block's predictions; returns how many records were written."""
        if self.stream is None:
            raise ValueError("PredictionWriter without a stream: use format()")
        self.stream.write(self.format(block, spectra, std, experts, flags))
        return len(spectra)

    def format(self, block: dict[str, np.ndarray], spectra: np.ndarray,
               std: np.ndarray | None = None, experts: dict[str, np.ndarray] | None = None,
               flags: list[list[str]] | None = None) -> bytes:
        """One block's predictions as the bytes :meth:`__call__` would write.

        ``flags``: per row, the reasons it lies outside the model's domain
        (:func:`neimsctl.chem.domain.domain_flags`; JSONL ``flags``, MSP comment
        ``out_of_domain``); rows without flags are written as before.
        """
        if self.top is None and self.fmt == "msp":
            return self._msp(block, spectra, flags)
        parts = [self._one(block, j, spectra[j], None if std is None else std[j],
                           None if experts is None else (experts["index"][j], experts["weight"][j]),
                           flags[j] if flags else None)
                 for j in range(len(spectra))]
        return ("".join(parts).encode("utf-8") if self.top is not None or self.fmt == "msp"
                else b"".join(parts))

    def _msp(self, block: dict[str, np.ndarray], spectra: np.ndarray,
             flags: list[list[str]] | None) -> bytes:
        """The MSP records of a block, all peaks at once (:func:`format_msp_block`)."""
        offsets, mz, inten = spectra_peaks(spectra, min_relative=self.min_relative)
        n = len(spectra)
        ids, names, smiles, keys, formulas, mws = (
            block[k][:n].tolist() for k in ("id", "name", "smiles", "inchikey", "formula", "mw"))
        comments, flags = self.comments, flags or [None] * n
        headers = [{"name": str(names[j]) or str(ids[j]), "inchikey": str(keys[j]),
                    "formula": str(formulas[j]), "mw": int(mws[j]), "smiles": str(smiles[j]),
                    "id": str(ids[j]),
                    "comments": {**comments, "out_of_domain": ",".join(flags[j])} if flags[j]
                    else comments}
                   for j in range(n)]
        return format_msp_block(headers, offsets, mz, inten)

    def _one(self, block: dict[str, np.ndarray], j: int, spec: np.ndarray,
             std: np.ndarray | None, exp: tuple[np.ndarray, np.ndarray] | None,
             flags: list[str] | None = None) -> Any:
        rid, name, smiles = str(block["id"][j]), str(block["name"][j]), str(block["smiles"][j])
        if self.top is not None:
            return format_top(f"{name or rid}  {smiles}  ({rid})", top_peaks(spec, self.top, 0.0))
        mz, inten = spectrum_peaks(spec, min_relative=self.min_relative)
        if self.fmt == "msp":
            return format_msp_record({
                "name": name or rid, "inchikey": str(block["inchikey"][j]),
                "formula": str(block["formula"][j]), "mw": int(block["mw"][j]), "smiles": smiles,
                "id": rid, "mz": mz, "intensity": inten,
                "comments": {**self.comments, "out_of_domain": ",".join(flags)} if flags
                else self.comments})
        # rounded in float64, so the JSON holds the short decimal (20.683, not the float32
        # value's 20.683000564575195: the file was twice as large)
        top = float(spec.max()) or 1.0
        rec: dict[str, Any] = {
            "schema": SCHEMA, "id": rid, "name": name, "smiles": smiles,
            "inchikey": str(block["inchikey"][j]) or None, "formula": str(block["formula"][j]),
            "mw": int(block["mw"][j]), "mz": mz.tolist(), "intensity": _rounded(spec[mz] / top * BASE_PEAK, 3)}
        if std is not None:
            rec["uncertainty"] = _rounded(std[mz] / top * BASE_PEAK, 3)
        if exp is not None:
            rec["experts"] = {"index": exp[0].tolist(), "weight": _rounded(exp[1], 4)}
        if flags:
            rec["flags"] = flags
        return orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)


def _rounded(values: np.ndarray, decimals: int) -> list[float]:
    """``values`` rounded to ``decimals`` in float64, as Python floats (short JSON reprs)."""
    return np.round(np.asarray(values, dtype=np.float64), decimals).tolist()
