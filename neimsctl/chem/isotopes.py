"""Isotope patterns of molecular formulas, and the peaks above the molecular ion they allow.

An EI spectrum has no ion heavier than the molecule except its heavier isotopologues (and a
protonated molecule, ``[M+H]+``, from collisions in the source): what lies at ``M + k`` is the
``+k`` isotopologue of the ions at ``M + k - j`` times the probability of ``+j`` extra mass
units. :func:`isotope_pattern` gives those probabilities for a formula at unit resolution, from
RDKit's isotope abundances; :func:`above_molecule_capped` cuts predicted peaks at ``M+3`` and
beyond that exceed twice what the isotopologues of the peaks below them explain (plus an
``[M+H]+`` of up to 10 % of the base peak and its own isotopologues). ``M+1`` and ``M+2`` are
left alone: measured spectra put more there than isotopes do (``[M+H]+``, quinones reduced in the
source). On the MassBank EI training spectra the rule cuts some intensity in 0.56 % of the
spectra (0.05 % by more than 5 % of the base peak); on the predictions of the shipped default for
MOSES molecules, 0.2 % (BENCHMARKS.md, session 32).
"""

from __future__ import annotations

import functools
import re

import numpy as np
from rdkit import Chem

__all__ = ["isotope_pattern", "above_molecule_capped", "FIRST_CAPPED", "LAST_CAPPED",
           "CAP_FACTOR", "PROTONATED"]

#: The first and last shift above the nominal mass ``M`` whose predicted peak is capped.
FIRST_CAPPED = 3
LAST_CAPPED = 15
#: A peak may be this many times what the isotopologues of the peaks below it explain ...
CAP_FACTOR = 2.0
#: ... plus a protonated molecule of this share of the base peak and its isotopologues.
PROTONATED = 0.1
#: Shifts 0 .. _N - 1 of a pattern (each capped shift reads the shifts 1 .. k + _REACH below it).
_REACH = 8
_N = LAST_CAPPED + _REACH + 1
#: Shifts kept while combining elements (a partial sum may come back into range later:
#: Se and Sn have isotopes below their most common one).
_WINDOW = (-64, _N + 64)
_TERM = re.compile(r"([A-Z][a-z]?)(\d*)")
_PT = Chem.GetPeriodicTable()
#: Element symbol -> atomic number (asking RDKit for an unknown symbol prints a stack trace)
_Z = {_PT.GetElementSymbol(z): z for z in range(1, 119)}


def _trim(lo: int, p: np.ndarray) -> tuple[int, np.ndarray]:
    a, b = max(lo, _WINDOW[0]), min(lo + len(p), _WINDOW[1])
    return a, p[a - lo:b - lo]


def _times(x: tuple[int, np.ndarray], y: tuple[int, np.ndarray]) -> tuple[int, np.ndarray]:
    return _trim(x[0] + y[0], np.convolve(x[1], y[1]))


@functools.lru_cache(maxsize=None)
def _element(z: int) -> tuple[int, np.ndarray]:
    """``(lowest shift, probabilities)`` of one atom of atomic number ``z``, shifts counted
    from its most common isotope."""
    common = _PT.GetMostCommonIsotope(z)
    found = {m - common: _PT.GetAbundanceForIsotope(z, m) for m in range(max(1, common - 12), common + 13)}
    found = {s: a for s, a in found.items() if a > 0} or {0: 100.0}
    lo, hi = min(found), max(found)
    p = np.zeros(hi - lo + 1)
    for s, a in found.items():
        p[s - lo] = a
    return lo, p / p.sum()


@functools.lru_cache(maxsize=4096)
def _power(z: int, n: int) -> tuple[int, np.ndarray]:
    out, base = (0, np.ones(1)), _element(z)
    while n:
        if n & 1:
            out = _times(out, base)
        n >>= 1
        if n:
            base = _times(base, base)
    return out


@functools.lru_cache(maxsize=65536)
def isotope_pattern(formula: str) -> np.ndarray | None:
    """float64 ``(24,)``: the probability of each shift 0, 1, 2, ... above the nominal mass (every
    atom its most common isotope) relative to shift 0; ``None`` for a formula with labelled
    isotopes (``D``, ``T``, ``[13C]``) or none of the elements RDKit knows.

    Examples
    --------
    >>> a = isotope_pattern("CH3Cl")          # 37Cl: 0.32 of 35Cl; 13C: 0.011
    >>> [round(float(x), 3) for x in a[:4]]
    [1.0, 0.011, 0.32, 0.004]
    """
    if "[" in formula or not formula:
        return None
    out = (0, np.ones(1))
    for symbol, count in _TERM.findall(formula):
        z = _Z.get(symbol)                  # None also for D and T (labelled hydrogen)
        if z is None:
            return None
        out = _times(out, _power(z, int(count or 1)))
    lo, p = out
    pattern = np.zeros(_N)
    take = np.arange(max(lo, 0), min(lo + len(p), _N))
    pattern[take] = p[take - lo]
    return pattern / pattern[0] if pattern[0] > 0 else None


def above_molecule_capped(spectra: np.ndarray, std: np.ndarray | None, formulas, masses
                          ) -> tuple[np.ndarray, np.ndarray | None]:
    """``(spectra, std)`` with every peak at ``M + k`` (k = :data:`FIRST_CAPPED` ..
    :data:`LAST_CAPPED`) cut to ``CAP_FACTOR * sum_j s[M + k - j] * A[j] + PROTONATED * A[k - 1]``
    (A: :func:`isotope_pattern` of the row's formula, the peaks below already cut), rows whose
    base peak was cut scaled to base peak 1 again (``std`` of a cut peak by the cut's factor, of
    a rescaled row by the row's). ``spectra`` ``(B, n_bins)`` linear, base peak 1; ``masses`` the
    nominal masses (rows of a negative mass, or without a pattern, are left as they are). In
    place: the arrays are the caller's own."""
    b, n_bins = spectra.shape
    mw = np.asarray(masses, dtype=np.int64)
    shifts = np.arange(FIRST_CAPPED, LAST_CAPPED + 1)
    pos = mw[:, None] + shifts[None, :]
    inside = (mw[:, None] >= 0) & (pos < n_bins)
    rows = np.flatnonzero((np.where(inside, spectra[np.arange(b)[:, None], np.minimum(pos, n_bins - 1)], 0)
                           > 0).any(axis=1))
    patterns = [isotope_pattern(str(formulas[r])) for r in rows]
    rows = np.asarray([r for r, a in zip(rows, patterns) if a is not None], dtype=np.int64)
    if not len(rows):
        return spectra, std
    pat = np.stack([a for a in patterns if a is not None]).astype(np.float32)
    s = spectra[rows]                                   # a copy, written back below
    before = s.copy()
    m = mw[rows]
    j = np.arange(1, _N)
    for k in shifts:
        at = m + k
        ok = at < n_bins
        below = at[:, None] - j[None, :k + _REACH]
        reach = (below >= 0) & ok[:, None]
        got = np.where(reach, np.take_along_axis(s, np.clip(below, 0, n_bins - 1), axis=1), 0)
        env = (got * pat[:, 1:k + _REACH + 1]).sum(axis=1, dtype=np.float32)
        cap = np.float32(CAP_FACTOR) * env + np.float32(PROTONATED) * pat[:, k - 1]
        idx = np.flatnonzero(ok)
        s[idx, at[idx]] = np.minimum(s[idx, at[idx]], cap[idx])
    cut = s < before
    changed = np.flatnonzero(cut.any(axis=1))
    if not len(changed):
        return spectra, std
    s, before, cut, rows = s[changed], before[changed], cut[changed], rows[changed]
    top = s.max(axis=1)
    scale = np.where(top > 0, 1.0 / np.where(top > 0, top, 1), 1).astype(spectra.dtype)
    spectra[rows] = s * scale[:, None]
    if std is not None:
        sd = std[rows]
        ratio = np.where(cut, s / np.where(before > 0, before, 1), 1).astype(sd.dtype)
        std[rows] = sd * ratio * scale[:, None]
    return spectra, std
