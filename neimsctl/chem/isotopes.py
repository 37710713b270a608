"""Isotope patterns of molecular formulas, and the peaks above the molecular ion they allow.

An EI spectrum has no ion heavier than the molecule except its heavier isotopologues (and a
protonated molecule, ``[M+H]+``, from collisions in the source). :func:`isotope_pattern` gives,
for a formula at unit resolution, the abundance ``A[k]`` of each isotopologue ``M + k`` relative
to the one of nominal mass ``M`` (RDKit's isotope abundances). :func:`above_molecule_capped` cuts
a predicted peak at ``M + k`` (k >= 3) to twice what isotopes explain there::

    cap(k) = 2 * (B * A[k] + sum_j s[M - j] * A[k + j]) + 0.1 * A[k - 1] / max(A)

``B``, the molecular ion's amount, is read from the most abundant isotopologues of the cluster
(``s[M + j] / A[j]`` for the ``j <= 4`` with ``A[j]`` at least half the largest of them: ``M``
alone for most organic molecules, also ``M+2`` and ``M+4`` for polyhalogenated ones); the sum
carries the isotopologues of the ions below ``M`` ([M-H]+ and so on); the last term allows an
``[M+H]+`` of up to 10 % of the base peak. ``M+1`` and ``M+2`` are left as predicted: measured
spectra put more there than isotopes do (``[M+H]+``, quinones reduced in the source). The peaks
that ``cap`` reads are the predicted ones, never ones it cut (so the allowance does not grow
from one cut peak to the next). Applied to the 8,183 measured MassBank EI records it would cut
some intensity in 2.35 % of them, more than 5 % of the base peak in 0.23 % (contaminants,
misassigned peaks: ``tools/bench/isotope_cut.py``); BENCHMARKS.md (session 32) has what it
changes in the predictions.
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
#: A peak may be this many times what isotopes explain at its place ...
CAP_FACTOR = 2.0
#: ... plus a protonated molecule of this share of the base peak and its isotopologues.
PROTONATED = 0.1
#: Ions below M whose isotopologues a cap counts (M-1 .. M-_REACH), and the shifts 0 .. _N - 1 of
#: a pattern they need.
_REACH = 8
_N = LAST_CAPPED + _REACH + 1
#: The molecular ion's amount is read from the isotopologues M .. M + _CLUSTER - 1.
_CLUSTER = 5
#: Shifts kept while combining elements (a partial sum may come back into range later:
#: Se and Sn have isotopes below their most common one).
_WINDOW = (-64, _N + 64)
_TERM = re.compile(r"([A-Z][a-z]?)(\d*)")
#: A whole formula: element terms, then an optional charge (RDKit writes ``C2H6N+``)
_FORMULA = re.compile(r"(?:[A-Z][a-z]?\d{0,6})+[+-]?\d{0,3}")
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
    """float64 ``(24,)``, read-only: the abundance of each shift 0, 1, 2, ... above the nominal
    mass (every atom its most common isotope) relative to shift 0; ``None`` for a formula with
    labelled isotopes (``D``, ``T``, ``[13C]``), a symbol that is no element, or text that is
    not a formula (lower case, blanks, counts of more than six digits).

    Examples
    --------
    >>> a = isotope_pattern("CH3Cl")          # 37Cl: 0.32 of 35Cl; 13C: 0.011
    >>> [round(float(x), 3) for x in a[:4]]
    [1.0, 0.011, 0.32, 0.004]
    """
    if not _FORMULA.fullmatch(formula):
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
    if not pattern[0] > 0:
        return None
    pattern /= pattern[0]
    pattern.setflags(write=False)           # cached: shared by every caller
    return pattern


def above_molecule_capped(spectra: np.ndarray, std: np.ndarray | None, formulas, masses
                          ) -> tuple[np.ndarray, np.ndarray | None]:
    """``(spectra, std)`` with every peak at ``M + k`` (k = :data:`FIRST_CAPPED` ..
    :data:`LAST_CAPPED`) cut to the module docstring's ``cap(k)`` (``A``: :func:`isotope_pattern`
    of the row's formula), rows whose base peak was cut scaled to base peak 1 again (``std`` of a
    cut peak by the cut's factor, of a rescaled row by the row's). ``spectra`` ``(B, n_bins)``
    linear, base peak 1; ``masses`` the nominal masses (rows of a negative mass, or without a
    pattern, are left as they are). In place: the arrays are the caller's own."""
    n_bins = spectra.shape[1]
    mw = np.asarray(masses, dtype=np.int64)
    shifts = np.arange(FIRST_CAPPED, LAST_CAPPED + 1)
    above = _at(spectra, n_bins, mw[:, None] + shifts[None, :])       # s[M + 3], ..., 0 past the end
    rows = np.flatnonzero((mw >= 0) & (above > 0).any(axis=1))
    patterns = [isotope_pattern(str(formulas[r])) for r in rows]
    rows = np.asarray([r for r, a in zip(rows, patterns) if a is not None], dtype=np.int64)
    if not len(rows):
        return spectra, std
    pat = np.stack([a for a in patterns if a is not None]).astype(np.float32)
    s = spectra[rows]                                   # a copy, written back below
    m = mw[rows]
    take = functools.partial(_at, s, n_bins)
    # the molecular ion's amount, from the cluster's most abundant isotopologues
    first = pat[:, :_CLUSTER]
    main = first >= np.float32(0.5) * first.max(axis=1, keepdims=True)
    ion = np.divide(take(m[:, None] + np.arange(_CLUSTER)), first, out=np.zeros_like(first),
                    where=main).max(axis=1)       # (a pattern may hold zeros: not divided by)
    below = take(m[:, None] - np.arange(1, _REACH + 1))                  # s[M - 1], s[M - 2], ...
    allowance = np.float32(PROTONATED) / pat.max(axis=1)
    cut_rows, cut_at, cut_to = [], [], []
    for k in shifts:
        at = m + k
        ok = np.flatnonzero(at < n_bins)
        if not len(ok):
            continue
        cap = np.float32(CAP_FACTOR) * (ion[ok] * pat[ok, k] + (below[ok] * pat[ok, k + 1:k + 1 + _REACH])
                                        .sum(axis=1, dtype=np.float32)) + allowance[ok] * pat[ok, k - 1]
        over = s[ok, at[ok]] > cap
        cut_rows.append(ok[over])
        cut_at.append(at[ok][over])
        cut_to.append(cap[over])
    hit = np.concatenate(cut_rows)
    if not len(hit):
        return spectra, std
    where, to = np.concatenate(cut_at), np.concatenate(cut_to).astype(s.dtype)
    before = s[hit, where]
    s[hit, where] = to
    changed = np.unique(hit)
    s, rows = s[changed], rows[changed]
    top = s.max(axis=1)
    scale = np.where(top > 0, 1.0 / np.where(top > 0, top, 1), 1).astype(spectra.dtype)
    spectra[rows] = s * scale[:, None]
    if std is not None:
        ratio = np.ones((len(changed), n_bins), dtype=std.dtype)
        ratio[np.searchsorted(changed, hit), where] = (to / np.where(before > 0, before, 1)).astype(std.dtype)
        std[rows] = std[rows] * ratio * scale[:, None]
    return spectra, std


def _at(s: np.ndarray, n_bins: int, columns: np.ndarray) -> np.ndarray:
    """``s[i, columns[i, j]]``, 0 where a column lies outside ``0 .. n_bins - 1``."""
    inside = (columns >= 0) & (columns < n_bins)
    got = np.take_along_axis(s, np.clip(columns, 0, n_bins - 1), axis=1)
    return np.where(inside, got, 0).astype(s.dtype)
