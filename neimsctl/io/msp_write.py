"""Write spectra as NIST-style MSP text (readable by NIST MS Search, matchms and :mod:`neimsctl.io.msp`).

One record per spectrum::

    Name: aspirin
    InChIKey: BSYNRYMUTXBXSQ-UHFFFAOYSA-N
    Formula: C9H8O4
    MW: 180
    SMILES: CC(=O)Oc1ccccc1C(=O)O
    ID: stdin:1
    Comments: "predicted=neimsctl 0.1.0" "model=student" "checkpoint=sha256:0123abcd4567"
    Num Peaks: 3
    43 999
    120 512
    180 87

then a blank line. Peak lines are ``m/z intensity`` with integer m/z and integer intensity,
base peak 999 (NIST convention). :func:`spectrum_peaks` turns a dense linear spectrum into such
peaks: bins below ``min_relative`` (default 0.001 of the base peak, the same noise floor the
feature shards use) are dropped, the rest are scaled to 999 and rounded, never below 1, so
every written peak is visible to library software.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO

import numpy as np

__all__ = ["MIN_RELATIVE", "BASE_PEAK", "spectrum_peaks", "format_msp_record", "write_msp"]

MIN_RELATIVE = 0.001
BASE_PEAK = 999

# (record key, MSP key) in output order; empty values are left out.
_HEADER = (("name", "Name"), ("inchikey", "InChIKey"), ("formula", "Formula"), ("mw", "MW"),
           ("exact_mass", "ExactMass"), ("smiles", "SMILES"), ("id", "ID"))


def spectrum_peaks(spectrum: np.ndarray, *, min_relative: float = MIN_RELATIVE,
                   base_peak: int = BASE_PEAK) -> tuple[np.ndarray, np.ndarray]:
    """Dense linear spectrum (index = nominal m/z) -> integer MSP peaks.

    Parameters
    ----------
    spectrum
        ``(n_bins,)`` non-negative intensities; bin ``i`` is m/z ``i``. Any scale.
    min_relative
        Drop bins below this fraction of the base peak.
    base_peak
        Intensity the largest peak is scaled to.

    Returns
    -------
    (mz, intensity)
        int64 arrays, ascending m/z; intensities in ``1..base_peak``. Empty for an all-zero
        spectrum.

    Examples
    --------
    >>> spectrum_peaks(np.array([0, 0.5, 0, 1.0, 0.0004]))
    (array([1, 3]), array([500, 999]))
    """
    s = np.asarray(spectrum, dtype=np.float64)
    top = float(s.max()) if s.size else 0.0
    if not top > 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rel = s / top
    mz = np.flatnonzero(rel >= min_relative)
    inten = np.maximum(np.rint(rel[mz] * base_peak), 1).astype(np.int64)
    return mz.astype(np.int64), inten


def _comments(value: Any) -> str:
    if isinstance(value, Mapping):
        return " ".join(f'"{k}={v}"' for k, v in value.items())
    return str(value)


def format_msp_record(rec: Mapping[str, Any]) -> str:
    """One MSP record as text, ending with the blank separator line.

    Parameters
    ----------
    rec
        ``name``, ``inchikey``, ``formula``, ``mw``, ``exact_mass``, ``smiles``, ``id`` (each
        optional; empty ones are left out), ``comments`` (str, or a mapping written as
        ``"k=v"`` pairs), and ``mz`` / ``intensity`` (equal-length sequences; integers are
        written without a decimal point, floats with up to 4 decimals).

    Raises
    ------
    ValueError
        ``mz`` and ``intensity`` differ in length, or a header value contains a line break.
    """
    mz_in, int_in = rec.get("mz", ()), rec.get("intensity", ())
    integer = all(isinstance(a, np.ndarray) and a.dtype.kind in "iu" for a in (mz_in, int_in))
    mz = mz_in.tolist() if isinstance(mz_in, np.ndarray) else list(mz_in)
    inten = int_in.tolist() if isinstance(int_in, np.ndarray) else list(int_in)
    if len(mz) != len(inten):
        raise ValueError(f"mz has {len(mz)} values but intensity has {len(inten)}")
    lines = []
    for key, label in _HEADER:
        value = rec.get(key)
        if value is None or value == "":
            continue
        text = str(value)
        if "\n" in text or "\r" in text:
            raise ValueError(f"{label} value contains a line break: {text[:40]!r}")
        lines.append(f"{label}: {text}")
    if rec.get("comments"):
        lines.append(f"Comments: {_comments(rec['comments'])}")
    lines.append(f"Num Peaks: {len(mz)}")
    if integer:  # the common case (spectrum_peaks): plain ints, no per-value type checks
        lines += [f"{m} {i}" for m, i in zip(mz, inten)]
    else:
        lines += [f"{_num(m)} {_num(i)}" for m, i in zip(mz, inten)]
    return "\n".join(lines) + "\n\n"


def _num(x: Any) -> str:
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    f = float(x)
    return str(int(f)) if f.is_integer() else f"{f:.4f}".rstrip("0")


def write_msp(stream: BinaryIO, records: Iterable[Mapping[str, Any]]) -> int:
    """Write records (see :func:`format_msp_record`) to a binary stream; return how many.

    Examples
    --------
    >>> import io
    >>> buf = io.BytesIO()
    >>> write_msp(buf, [{"name": "x", "mz": [18], "intensity": [999]}])
    1
    >>> buf.getvalue()
    b'Name: x\\nNum Peaks: 1\\n18 999\\n\\n'
    """
    n = 0
    for n, rec in enumerate(records, 1):
        stream.write(format_msp_record(rec).encode("utf-8"))
    return n
