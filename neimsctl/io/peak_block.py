"""Nominal-mass spectra as peak lists in CSR form, and the batch binning that makes them.

:class:`PeakBlock` is how the search index stores spectra and how the matching engine
(:mod:`neimsctl.evaluate.matching`) reads them: per spectrum, the integer m/z of its peaks
(ascending, one per m/z) and their linear intensities (base peak 1, peaks below 0.001 of the
base peak removed), exactly the non-zero bins of :func:`neimsctl.io.spectrum.preprocess_spectrum`.

:func:`check_peaks` says why a peak list cannot be indexed or searched (one reason code);
:func:`bin_batch` bins many valid peak lists at once.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from neimsctl.io.spectrum import N_BINS, NOISE_LEVEL, SCALE_ABOVE, SCALE_BELOW

__all__ = ["PeakBlock", "check_peaks", "bin_batch", "row_sums", "cosine_weights", "bf16_bits", "bf16_values"]


class PeakBlock(NamedTuple):
    """Spectra as peak lists in CSR form.

    Attributes
    ----------
    ptr : int64 ``(n + 1,)``, ``ptr[0] == 0``; the peaks of spectrum ``i`` are ``ptr[i]:ptr[i+1]``.
    mz : integer m/z ``(nnz,)`` (uint16 when stored), ``0 <= mz < n_bins``, one peak per m/z.
    intensity : float32 ``(nnz,)``, linear, > 0 (base peak 1 by convention).
    """

    ptr: np.ndarray
    mz: np.ndarray
    intensity: np.ndarray

    def __len__(self) -> int:
        return len(self.ptr) - 1

    @classmethod
    def from_dense(cls, spectra: np.ndarray) -> PeakBlock:
        """CSR of the positive bins of ``(n, n_bins)`` dense spectra."""
        x = np.asarray(spectra, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"spectra must be 2-D (N, bins), got shape {x.shape}")
        rows, cols = np.nonzero(x > 0)
        ptr = np.zeros(len(x) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(x)), out=ptr[1:])
        return cls(ptr, cols.astype(np.uint16), x[rows, cols])

    @classmethod
    def concat(cls, blocks: Sequence[PeakBlock]) -> PeakBlock:
        """One block holding the spectra of ``blocks`` in order."""
        if not blocks:
            return cls(np.zeros(1, np.int64), np.zeros(0, np.uint16), np.zeros(0, np.float32))
        sizes = np.concatenate([np.diff(b.ptr) for b in blocks])
        ptr = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=ptr[1:])
        return cls(ptr, np.concatenate([b.mz for b in blocks]).astype(np.uint16),
                   np.concatenate([b.intensity for b in blocks]).astype(np.float32))

    def row_of_peak(self) -> np.ndarray:
        """The spectrum index of every peak, int64 ``(nnz,)``."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.ptr))

    def slice(self, lo: int, hi: int) -> PeakBlock:
        """Spectra ``lo:hi`` as a new block (views of the peak arrays)."""
        a, b = int(self.ptr[lo]), int(self.ptr[hi])
        return PeakBlock(self.ptr[lo:hi + 1] - a, self.mz[a:b], self.intensity[a:b])

    def take(self, rows: Any) -> PeakBlock:
        """Spectra ``rows`` (any order, repeats allowed) as a new block."""
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        starts, sizes = self.ptr[idx] - self.ptr[0], self.ptr[idx + 1] - self.ptr[idx]
        ptr = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(sizes, out=ptr[1:])
        flat = np.repeat(starts - ptr[:-1], sizes) + np.arange(int(ptr[-1]))
        return PeakBlock(ptr, np.asarray(self.mz)[flat].astype(np.uint16, copy=False),
                         np.asarray(self.intensity)[flat].astype(np.float32, copy=False))

    def to_dense(self, n_bins: int = N_BINS) -> np.ndarray:
        """float32 ``(n, n_bins)``."""
        out = np.zeros((len(self), n_bins), dtype=np.float32)
        out[self.row_of_peak(), self.mz.astype(np.int64)] = self.intensity
        return out


def row_sums(block: PeakBlock, values: np.ndarray) -> np.ndarray:
    """Float64 sum of ``values`` over each spectrum's peaks (peaks are contiguous per spectrum).

    A spectrum's sum depends only on its own peaks, in their order: the same whichever other
    spectra share the block (the search index's stored weights rely on it)."""
    counts = np.diff(block.ptr)
    out = np.zeros(len(block), dtype=np.float64)
    some = counts > 0
    if some.any():
        out[some] = np.add.reduceat(values, (block.ptr[:-1] - block.ptr[0])[some], dtype=np.float64)
    return out


def cosine_weights(block: PeakBlock, mz_power: float = 1.0, intensity_power: float = 0.5,
                   dtype: Any = np.float32) -> np.ndarray:
    """The cosine's per-peak weights ``mz**a * I**b`` normalised to unit length per spectrum,
    ``(nnz,)`` of ``dtype`` (float32: the search's first pass and the index's stored weights;
    float64: its exact scores; see :mod:`neimsctl.evaluate.matching`). High powers whose
    products could overflow float32 (``--mz-power 8`` reaches 500**16 when squared) are
    computed in float64 and the unit-length weights cast back."""
    if np.dtype(dtype) == np.float32 and _may_overflow(block, mz_power, intensity_power):
        return cosine_weights(block, mz_power, intensity_power, np.float64).astype(np.float32)
    v = _power(np.asarray(block.intensity, dtype=dtype), intensity_power)
    if mz_power != 0.0:
        v = v * _power(np.asarray(block.mz, dtype=dtype), mz_power)
    norm = np.repeat(np.sqrt(row_sums(block, v * v)).astype(dtype), np.diff(block.ptr))
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)


#: log10 of the largest weight whose square float32 holds with room for a sum (3.4e38).
_F32_SAFE_LOG10 = 17.0


def _may_overflow(block: PeakBlock, mz_power: float, intensity_power: float) -> bool:
    """Whether ``mz**a * I**b`` or its square could leave float32's range for this block."""
    if not len(block.intensity):
        return False
    top = mz_power * np.log10(max(float(np.max(block.mz)), 1.0)) \
        + intensity_power * np.log10(max(float(np.max(block.intensity)), 1.0))
    return bool(top > _F32_SAFE_LOG10)


def _power(x: np.ndarray, p: float) -> np.ndarray:
    """``x ** p`` with the common exponents as cheap operations."""
    if p == 1.0:
        return x
    if p == 0.5:
        return np.sqrt(x)
    if p == 2.0:
        return x * x
    return x ** p


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even) as uint16 bit patterns; finite inputs."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)


def bf16_values(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 values (exact); ``out``: a uint32 array of the
    same shape to write into (no allocation)."""
    if out is None:
        out = np.empty(bits.shape, dtype=np.uint32)
    np.left_shift(bits, 16, out=out, dtype=np.uint32)
    return out.view(np.float32)


def check_peaks(mz: Any, intensity: Any, n_bins: int = N_BINS,
                above_range: bool = False) -> tuple[str, str] | None:
    """Why a peak list cannot be used, as ``(reason, detail)``, or ``None`` when it can.

    Reasons: ``no_peaks`` (empty, or no positive intensity), ``non_numeric_peak``,
    ``invalid_peak`` (lengths differ, negative or non-finite values), ``mz_above_range``
    (a peak whose rounded m/z is beyond the last bin, ``n_bins - 1``; only a reason when
    ``above_range`` is False, else such peaks are left for :func:`bin_batch` to drop).
    """
    for name, v in (("mz", mz), ("intensity", intensity)):
        if isinstance(v, (str, bytes, dict)) or (v is not None and not hasattr(v, "__len__")):
            return "invalid_peak", f"{name} is not a list of numbers"
    if mz is None or intensity is None or len(mz) == 0:
        return "no_peaks", "no peaks"
    if len(mz) != len(intensity):
        return "invalid_peak", f"{len(mz)} m/z values but {len(intensity)} intensities"
    if isinstance(mz, list) and isinstance(intensity, list):
        fast = _check_lists(mz, intensity, n_bins, above_range)
        if fast is not False:
            return fast
    try:
        m = np.asarray(mz, dtype=np.float64)
        i = np.asarray(intensity, dtype=np.float64)
    except (TypeError, ValueError):
        return "non_numeric_peak", "a peak is not a number"
    if m.ndim != 1 or i.ndim != 1:
        return "invalid_peak", "peaks are not flat lists of numbers"
    if not (np.isfinite(m).all() and np.isfinite(i).all()):
        return "invalid_peak", "a peak is not finite"
    if (m < 0).any() or (i < 0).any():
        return "invalid_peak", "a negative m/z or intensity"
    top = float(m.max())
    if math.floor(top + 0.5) >= n_bins:
        if not above_range:
            return "mz_above_range", f"peak at m/z {top:g} is above the range m/z 0..{n_bins - 1}"
        i = i[np.floor(m + 0.5) < n_bins]
        if not (i > 0).any():
            return "no_peaks", _NONE_IN_RANGE.format(n_bins - 1)
    if not (i > 0).any():
        return "no_peaks", "every intensity is 0"
    return None


_NONE_IN_RANGE = "no peak of positive intensity within m/z 0..{} (the peaks above are dropped)"


def _check_lists(mz: list, intensity: list, n_bins: int, above_range: bool) -> tuple[str, str] | None | bool:
    """:func:`check_peaks` on plain lists of numbers with built-ins (the common case, several
    times faster than converting to arrays); ``False`` when the lists hold other types."""
    try:
        if not (math.isfinite(sum(mz)) and math.isfinite(sum(intensity))) and not (
                all(map(math.isfinite, mz)) and all(map(math.isfinite, intensity))):
            return "invalid_peak", "a peak is not finite"
        if min(mz) < 0 or min(intensity) < 0:
            return "invalid_peak", "a negative m/z or intensity"
        top = max(mz)
    except TypeError:
        return False
    if isinstance(top, bool) or any(isinstance(v, bool) for v in (mz[0], intensity[0])):
        return False
    if math.floor(top + 0.5) >= n_bins:
        if not above_range:
            return "mz_above_range", f"peak at m/z {top:g} is above the range m/z 0..{n_bins - 1}"
        if not any(i > 0 for m, i in zip(mz, intensity) if math.floor(m + 0.5) < n_bins):
            return "no_peaks", _NONE_IN_RANGE.format(n_bins - 1)
        return None
    if not max(intensity) > 0:
        return "no_peaks", "every intensity is 0"
    return None


def scale_rows(intensity: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """Intensities (float64) of spectra whose largest lies beyond ``1e-30 .. 1e30`` divided by
    it (float32 would make them inf or 0, and a bin's sum could overflow even float64); the
    others as they are. ``rows``: the spectrum of each value, ``0 .. n - 1``."""
    if not len(intensity) or (intensity.max() <= SCALE_ABOVE and not ((intensity > 0) & (intensity < SCALE_BELOW)).any()):
        return intensity
    top = np.zeros(n)
    np.maximum.at(top, rows, intensity)
    odd = (top > SCALE_ABOVE) | ((top > 0) & (top < SCALE_BELOW))
    return intensity / np.where(odd, top, 1.0)[rows]


def _flat(lists: Sequence[Any]) -> np.ndarray:
    """Lists (or arrays) of numbers end to end as one float64 array: one conversion for lists of
    Python numbers (a conversion per list cost ~2 us each)."""
    if not len(lists):
        return np.zeros(0)
    if all(type(x) is list for x in lists):
        return np.array(list(itertools.chain.from_iterable(lists)), dtype=np.float64)
    return np.concatenate([np.asarray(x, dtype=np.float64) for x in lists])


def bin_batch(mz: Sequence[Any], intensity: Sequence[Any], n_bins: int = N_BINS,
              noise: float = NOISE_LEVEL) -> PeakBlock:
    """Bin valid peak lists (see :func:`check_peaks`) into one :class:`PeakBlock`.

    The same rules as :func:`neimsctl.io.spectrum.preprocess_spectrum`: m/z rounded half up,
    intensities of a bin summed, peaks above the last bin dropped, peaks below ``noise`` of the
    base peak removed, base peak 1.
    """
    n = len(mz)
    sizes = np.fromiter((len(m) for m in mz), dtype=np.int64, count=n)
    rows = np.repeat(np.arange(n, dtype=np.int64), sizes)
    m, i = _flat(mz), _flat(intensity)
    i = scale_rows(i, rows, n)
    r = np.floor(m + 0.5)
    inside = r < n_bins             # compared as floats: m/z 1e300 is no int64
    if not inside.all():
        rows, r, i = rows[inside], r[inside], i[inside]
    b = r.astype(np.int64)
    key = rows * n_bins + b
    uniq, inv = np.unique(key, return_inverse=True)
    summed = np.bincount(inv, weights=i, minlength=len(uniq))
    urow = uniq // n_bins
    top = np.zeros(n)
    np.maximum.at(top, urow, summed)
    keep = (summed > 0) & (summed >= noise * top[urow])
    urow, umz, val = urow[keep], (uniq % n_bins)[keep], summed[keep] / top[urow[keep]]
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(urow, minlength=n), out=ptr[1:])
    return PeakBlock(ptr, umz.astype(np.uint16), val.astype(np.float32))
