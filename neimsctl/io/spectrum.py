"""Spectra as fixed-length vectors: integer m/z bins, normalization, noise removal.

The one place where peak lists become the 501-bin vectors (m/z 0..500) that features,
models, ``eval`` and ``predict`` share (SPEC.md "Preprocessing"):

- m/z is rounded to the nearest integer, halves up (``m/z 77.5`` -> bin 78);
- intensities falling in the same bin are summed; peaks above the last bin are dropped;
- the vector is normalized (base peak = 1.0, or unit L2 norm);
- peaks below 0.001 of the base peak are removed as noise.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

N_BINS = 501
NOISE_LEVEL = 1e-3
#: Stated nominal masses at or above this are unknown: no molecule has them, and an index
#: stores masses as int32 (a rounded mass below it fits).
MASS_LIMIT = 2 ** 31 - 1
#: Spectra whose largest intensity lies beyond ``SCALE_BELOW .. SCALE_ABOVE`` are divided by it
#: before binning: float32 would make them inf or 0, and a bin's sum could overflow float64.
SCALE_ABOVE, SCALE_BELOW = 1e30, 1e-30
Norm = Literal["max", "l2"]


def bin_spectrum(mz: Sequence[float] | np.ndarray, intensity: Sequence[float] | np.ndarray,
                 n_bins: int = N_BINS) -> np.ndarray:
    """Sum peak intensities into integer m/z bins ``0 .. n_bins - 1``.

    Parameters
    ----------
    mz, intensity
        Peak m/z values and intensities, same length (any order).
    n_bins
        Number of bins; peaks with rounded m/z >= ``n_bins`` are dropped.

    Returns
    -------
    numpy.ndarray
        float32, shape ``(n_bins,)``; raw (unnormalized) summed intensities, unless the largest
        intensity lies beyond ``1e-30 .. 1e30`` (float32 would make it inf, or lose the small
        ones): then divided by it first (every consumer normalizes; the ratios are what counts).

    Raises
    ------
    ValueError
        ``mz`` and ``intensity`` differ in length; an m/z or intensity is negative or not finite.

    Examples
    --------
    >>> float(bin_spectrum([77.5, 78.2, 501.0], [1.0, 2.0, 5.0])[78])
    3.0
    """
    mz_a = np.asarray(mz, dtype=np.float64)
    it_a = np.asarray(intensity, dtype=np.float64)
    if mz_a.shape != it_a.shape:
        raise ValueError(f"mz and intensity differ in length: {mz_a.shape} vs {it_a.shape}")
    if not (np.isfinite(mz_a).all() and np.isfinite(it_a).all()):
        raise ValueError("an m/z or intensity is not finite")
    if (mz_a < 0).any() or (it_a < 0).any():
        raise ValueError("a negative m/z or intensity")
    top = float(it_a.max()) if it_a.size else 0.0
    if top > SCALE_ABOVE or 0 < top < SCALE_BELOW:   # 1e300 was inf, then NaN ("no peaks")
        it_a = it_a / top
    rounded = np.floor(mz_a + 0.5)  # round half up; compared as floats (m/z 1e300 is no int64)
    keep = rounded < n_bins
    out = np.bincount(rounded[keep].astype(np.int64), weights=it_a[keep], minlength=n_bins)
    return out.astype(np.float32)


def normalize_max(vec: np.ndarray) -> np.ndarray:
    """Scale so the base peak is 1.0 (an all-zero vector stays zero)."""
    top = float(vec.max()) if vec.size else 0.0
    return (vec / top).astype(np.float32) if top > 0 else vec.astype(np.float32)


def normalize_l2(vec: np.ndarray) -> np.ndarray:
    """Scale to unit Euclidean norm (an all-zero vector stays zero)."""
    norm = float(np.linalg.norm(vec))
    return (vec / norm).astype(np.float32) if norm > 0 else vec.astype(np.float32)


def select_above_noise(vec: np.ndarray, level: float = NOISE_LEVEL) -> np.ndarray:
    """Zero every bin below ``level`` times the base peak (a copy; the input is unchanged)."""
    out = np.array(vec, dtype=np.float32, copy=True)
    top = float(out.max()) if out.size else 0.0
    if top > 0:
        out[out < level * top] = 0.0
    return out


def preprocess_spectrum(mz: Sequence[float] | np.ndarray, intensity: Sequence[float] | np.ndarray,
                        *, n_bins: int = N_BINS, norm: Norm = "max",
                        noise: float = NOISE_LEVEL) -> np.ndarray:
    """Bin, remove noise below ``noise`` relative to the base peak, then normalize.

    Parameters
    ----------
    mz, intensity
        Peak list.
    n_bins
        Number of integer m/z bins (501 covers m/z 0..500).
    norm
        ``"max"`` (base peak = 1.0, the stored target) or ``"l2"``.
    noise
        Relative noise threshold (0 disables).

    Returns
    -------
    numpy.ndarray
        float32, shape ``(n_bins,)``.
    """
    if norm not in ("max", "l2"):
        raise ValueError(f"unknown normalization {norm!r}: use 'max' or 'l2'")
    vec = bin_spectrum(mz, intensity, n_bins)
    top = float(vec.max())
    if top <= 0:
        return vec
    if noise > 0:
        vec[vec < noise * top] = 0.0
    if norm == "max":
        vec /= top
        return vec
    return normalize_l2(vec)
