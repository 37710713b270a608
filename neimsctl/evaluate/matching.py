"""The library-matching engine: spectral similarity scores and exact top-k search.

One implementation serves ``neimsctl search`` (top hits per query over an index streamed in
chunks) and ``neimsctl eval`` (Recall@K: :func:`score_all` gives every query-entry score).

Spectra are nominal-mass peak lists held as a :class:`PeakBlock` (CSR: ``ptr``, integer m/z,
linear intensity with base peak 1). Bin ``j`` is m/z ``j``; ``n_bins`` (501) covers m/z 0..500.

Scores (:class:`Score`)
-----------------------
``cosine``
    The cosine of the weighted vectors ``w_j = j**a * I_j**b`` (defaults ``a = 1``, ``b = 0.5``;
    the NEIMS / ``eval`` similarity). Range 0..1.
``composite``
    The NIST-style composite match factor of Stein & Scott (1994), "Optimization and testing of
    mass spectral library search algorithms for compound identification", J Am Soc Mass
    Spectrom 5:859-866, on the 0..999 scale::

        MF = 999 * (N_U * F_D + N_LU * F_R) / (N_U + N_LU)

    with ``W_j = j**3 * I_j**0.6`` (their mass weighting 3 and intensity exponent 0.6),
    ``F_D = (sum W_U W_L)**2 / (sum W_U**2 * sum W_L**2)`` (the squared weighted cosine),
    ``F_R = 1/(N_LU - 1) * sum_i min(r_i, 1/r_i)`` over adjacent peaks ``i-1, i`` of the
    ``N_LU`` peaks the query and the library spectrum share (m/z order),
    ``r_i = (W_L,i / W_L,i-1) * (W_U,i-1 / W_U,i)`` (``F_R = 0`` when ``N_LU < 2``), and
    ``N_U`` the number of query peaks.
``entropy``
    The spectral entropy similarity of Li et al. (2021), "Spectral entropy outperforms MS/MS
    dot product similarity for small-molecule compound identification", Nat Methods 18:1524,
    with integer m/z as the bins: intensities normalised to sum 1, weighted
    ``p**(0.25 + 0.25 S)`` when the spectral entropy ``S < 3`` (then renormalised), and
    ``1 - (2 S_AB - S_A - S_B) / ln 4`` = ``sum_shared [f(a+b) - f(a) - f(b)] / ln 4`` with
    ``f(x) = x ln x``. Range 0..1.

``reverse=True`` (reverse search, for co-eluting peaks) counts only the query peaks present in
the library spectrum: the query is restricted to the library spectrum's peaks before the score
(cosine: the query norm over the shared peaks; composite: ``N_U`` becomes ``N_LU`` and
``F_D`` uses the restricted query; entropy: the restricted query is renormalised to sum 1).

Exactness
---------
Cosine: a matrix product over dense chunks gives every entry's score ``S`` to within a proven
relative margin, ``S (1 - d) <= s <= S (1 + d)`` (float32: ``d = 1e-4``; bfloat16 on CPUs that
compute it natively, for large searches: ``d = 0.012``, see :data:`_BF16_REL`); every entry
that can still reach the top-k by that margin is then scored exactly in float64 (weights
computed in float64 from the peaks, float64 sums), so the hits and their scores are those of a
float64 brute force whatever the precision of the first pass. (The first pass's float32 weights
are within ~3e-7 of the float64 ones, relative: far inside every margin.)
An index's stored weights (bfloat16, :class:`~neimsctl.io.spectral_index.DenseChunk`) give
the first pass directly: on a CPU with AMX tiles the native kernel's product of float32
queries (split into two bfloat16 parts) and the stored weights, or else a float32 product of
their float32 values (both ``d = 0.005``: :data:`_STORED_REL`), or a torch bfloat16 product
(``d = 0.012``); the exact scores come from the entries' peak lists as above. Reverse cosine is a float32 product. The composite and entropy scores are not sums of per-peak
products, so the engine
first computes a rigorous upper bound for every entry by a matrix product, then computes the
exact score, in decreasing order of the bound, only while the bound can still beat the k-th
best exact score: the result is the exact top-k (no approximate pre-selection). The bounds:
``F_R <= 1`` (composite) and ``x ln x`` convexity, ``f(a+b) - f(a) - f(b) <= 2 ln 2 sqrt(ab)``
(entropy; so the entropy similarity is at most the Bhattacharyya coefficient
``sum sqrt(a_j b_j)``, which a search takes in float32 and widens by its proven error,
:data:`_ENTROPY32_REL`; the exact scores are float64 from the entries' peaks).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import numpy as np

from neimsctl.errors import FormatError, InputError
from neimsctl.io.native import amx, module, product, product_select, product_select_run
from neimsctl.io.native import select as native_select
from neimsctl.io.peak_block import PeakBlock, bf16_bits, bf16_values, cosine_weights, row_sums
from neimsctl.io.spectral_index import DenseChunk
from neimsctl.io.spectrum import N_BINS

__all__ = ["SCORES", "DEFAULT_SCORE", "TIE_REL", "Score", "PeakBlock", "TopK", "score_all",
           "search_blocks", "pair_scores", "iter_chunks", "use_bf16", "defers"]

SCORES = ("cosine", "composite", "entropy")
#: The default score of ``search`` (selected on the validation split; see BENCHMARKS.md).
DEFAULT_SCORE = "cosine"
_LN4 = math.log(4.0)
_EPS = 1e-5           # slack on float32 upper bounds (relative to the 0..1 scale)
_EXACT_BATCH = 64     # candidates scored exactly per step while pruning
#: ... doubling up to this many: a step's float64 rows (x the query's peaks) then stay within the
#: CPU's caches (1,000 queries, composite, +-5 Da over 1.59M entries: CPU 29.0 -> 20.5 s, the
#: same pairs scored; 256: 25.0 s, 512: 21.7 s)
_EXACT_STEP = 1024
#: Relative error of a float32 product for the cosine of non-negative vectors of <= 501 terms
#: (every term >= 0, so every rounding error is relative to the exact sum S): inputs rounded to
#: float32 (2 * 2**-24 per product) and 501 float32 additions (501 * 2**-24): ~3.0e-5 (margin 1e-4).
_FP32_REL = 1e-4
#: The same for the bfloat16 product: each input rounded to bf16 (a product within
#: 2 * 2**-8 + 2**-16 of the exact one, relative), float32 sums (501 * 2**-24) and the result
#: rounded to bf16 (2**-8): (1 + 0.00783)(1 + 3.0e-5)(1 + 0.00391) - 1 = 0.01177.
_BF16_REL = 0.012
#: The float32 product over stored bfloat16 weights (exact in float32) and float32 queries: the
#: weights' rounding to bf16 (relative 2**-8, 8 significant bits) and float32 products and sums
#: (502 * 2**-24): (1 + 2**-8)(1 + 3.0e-5) - 1 = 0.00394 (margin 0.005). The AMX product
#: (neimsctl/io/_native.c: each query split as hi + lo in bf16, within 2**-16; products exact,
#: 2 * 501 float32 sums): (1 + 2**-8)(1 + 2**-16)(1 + 6.0e-5) - 1 = 0.00398, the same margin.
_STORED_REL = 0.005
#: Work (multiply-adds of the first pass) above which the bfloat16 pass pays for importing torch
#: (about 2 s) on a CPU with native bf16 (3x the float32 rate there; tools/bench/bench_search.py).
_BF16_MIN_WORK = 2e11


@dataclass(frozen=True)
class Score:
    """Which similarity to compute.

    Parameters
    ----------
    name
        ``cosine``, ``composite`` or ``entropy`` (see the module docstring).
    mz_power, intensity_power
        Weights ``m/z**a * I**b`` of the cosine (ignored by the other scores).
    reverse
        Reverse search: only the query peaks present in the library spectrum count.
    """

    name: str = DEFAULT_SCORE
    mz_power: float = 1.0
    intensity_power: float = 0.5
    reverse: bool = False

    def __post_init__(self) -> None:
        if self.name not in SCORES:
            raise InputError(f"unknown score {self.name!r}: use one of {', '.join(SCORES)}")

    @property
    def scale(self) -> float:
        """The top of the score's range: 999 for the composite match factor, else 1."""
        return 999.0 if self.name == "composite" else 1.0

    @property
    def bounded(self) -> bool:
        """True when the engine prunes with an upper bound before exact scoring."""
        return self.name != "cosine"

    @property
    def dot(self) -> bool:
        """True for a plain dot product of weighted vectors (the forward cosine): the engine's
        first pass within a relative margin, then exact re-scoring (see Exactness)."""
        return self.name == "cosine" and not self.reverse


class TopK(NamedTuple):
    """The best ``k`` library entries per query, best first.

    Attributes
    ----------
    scores : float64 ``(nq, k)``; ``-inf`` where fewer than ``k`` entries were admissible.
    index : int64 ``(nq, k)``; library entry index, ``-1`` where there is no hit.
    """

    scores: np.ndarray
    index: np.ndarray


# --- per-peak transforms (computed on the full peak list, before any column restriction) ---

def _weighted_values(block: PeakBlock, score: Score) -> np.ndarray:
    """The per-peak values the score works on, ``(nnz,)``, normalised per spectrum (float32 for
    the cosine, else float64)."""
    counts = np.diff(block.ptr)
    if score.name == "cosine":
        return cosine_weights(block, score.mz_power, score.intensity_power)
    if score.name == "entropy":
        inten = np.asarray(block.intensity, dtype=np.float64)
        p = inten / np.repeat(row_sums(block, inten), counts)
        ent = -row_sums(block, p * np.log(p))
        v = np.power(p, np.repeat(np.where(ent < 3.0, 0.25 + 0.25 * ent, 1.0), counts))
        return v / np.repeat(row_sums(block, v), counts)
    # m**3 * I**0.6 in float64 (the values of mz*mz*mz * inten**0.6, without their temporaries)
    v = np.power(block.intensity, 0.6, dtype=np.float64)
    v *= _cubes()[block.mz]
    norm = np.repeat(np.sqrt(row_sums(block, v * v)), counts)
    return np.divide(v, norm, out=v, where=norm > 0)  # in place: no second array of every peak


@functools.lru_cache(maxsize=1)
def _cubes() -> np.ndarray:
    """``m**3`` in float64 for every uint16 m/z (exact: integers below 2**53)."""
    m = np.arange(1 << 16, dtype=np.float64)
    return m * m * m


def _dense(block: PeakBlock, values: np.ndarray, colmap: np.ndarray, ncols: int,
           work: list[np.ndarray] | None = None) -> np.ndarray:
    """``(n, ncols)`` of ``values``' dtype with ``values`` at the columns ``colmap[mz]`` (``-1``:
    left out), zeros elsewhere.

    ``work``: a one-item list holding a buffer to reuse from chunk to chunk (a fresh array of
    tens of MB costs its page faults on every chunk); the result is a view of it. The peaks
    left out are written to one spare element past the matrix (no pass that drops them), with
    32-bit positions where they fit: 2-3x faster than dropping them first with 64-bit
    positions (8M peaks of 65,536 entries into 300 columns: ~0.09 vs 0.17-0.34 s).
    """
    n = len(block)
    size = n * ncols
    itype = np.int32 if 2 * size < np.iinfo(np.int32).max else np.int64
    flat = np.where(colmap >= 0, colmap, size).astype(itype)[block.mz]
    flat += np.repeat(np.arange(n, dtype=itype) * itype(ncols), np.diff(block.ptr))
    np.minimum(flat, size, out=flat)         # left-out peaks: all to the spare element
    nbytes = (size + 1) * values.itemsize
    if work is None:
        out = np.zeros(size + 1, dtype=values.dtype)
    else:
        if len(work[0]) < nbytes:
            work[0] = np.empty(nbytes, dtype=np.uint8)
        out = work[0][:nbytes].view(values.dtype)
        out.fill(0)
    out[flat] = values
    return out[:size].reshape(n, ncols)


def _colmap(cols: np.ndarray, n_bins: int) -> np.ndarray:
    """m/z -> column of a chunk restricted to ``cols`` (``-1``: left out), for :func:`_dense`."""
    colmap = np.full(n_bins, -1, dtype=np.int64)
    colmap[cols] = np.arange(len(cols))
    return colmap


class _Queries:
    """Query spectra prepared for one score: dense full-width weighted vectors and supports."""

    def __init__(self, block: PeakBlock, score: Score, n_bins: int) -> None:
        self.n = len(block)
        self.values = _dense(block, _weighted_values(block, score), np.arange(n_bins, dtype=np.int64), n_bins)
        #: the cosine's weights in float64 (its exact scores)
        self.values64 = _dense(block, cosine_weights(block, score.mz_power, score.intensity_power, np.float64),
                               np.arange(n_bins, dtype=np.int64), n_bins) if score.dot else None
        self.support = self.values > 0
        self.n_peaks = self.support.sum(axis=1).astype(np.float64)
        has = self.support.any(axis=0)
        self.top_mz = np.where(self.support, np.arange(n_bins)[None, :], -1).max(axis=1)
        self.union = has


class _Chunk:
    """A library chunk prepared for one score on a set of columns.

    ``bounds_only`` (the entropy score in a search): only the first pass's float32 square roots
    (:attr:`sqrt`, within :attr:`rel` of the exact ones; :func:`_entropy_values32`), the exact
    values of the few entries scored exactly computed from their peaks (:meth:`exact_rows`).
    """

    #: relative error of :attr:`sqrt` (0: exact)
    rel = 0.0

    def __init__(self, block: PeakBlock, score: Score, cols: np.ndarray, n_bins: int,
                 work: list[np.ndarray] | None = None, bf16: bool = False, bounds_only: bool = False) -> None:
        colmap = _colmap(cols, n_bins)
        _check_intensities(block)
        self.block = block
        self.score = score
        self.cols = cols
        self.values = None
        if bounds_only and score.name == "entropy":
            self.sqrt = _dense(block, np.sqrt(_entropy_values32(block)), colmap, len(cols), work)
            self.mask = (self.sqrt > 0).astype(np.float32) if score.reverse else None
            self.rel = _ENTROPY32_REL
            return
        self.weights = _weighted_values(block, score)
        #: float32, or (bf16 first pass of the cosine) the bfloat16 bit patterns as uint16
        self.values = _dense(block, bf16_bits(self.weights) if bf16 else self.weights, colmap, len(cols), work)
        self.mask = (self.values > 0).astype(np.float32) if (score.reverse or score.name == "composite") \
            else None
        self.sqrt = np.sqrt(self.values) if score.name == "entropy" else None

    def exact_rows(self, rows: np.ndarray, supp: np.ndarray) -> np.ndarray:
        """Exact (float64) values of entries ``rows`` on the chunk's columns ``supp``: per entry,
        so the same whichever entries are computed with it."""
        if self.values is not None:      # rows first, then columns: ~2x np.ix_'s gather
            return np.take(np.take(self.values, rows, axis=0), supp, axis=1)
        return _values_on(self.block.take(rows), self.score, self.cols[supp], N_BINS)


def _values_on(block: PeakBlock, score: Score, cols: np.ndarray, n_bins: int) -> np.ndarray:
    """The exact (float64 for the bounded scores) values of every spectrum of ``block`` on the
    m/z columns ``cols``, each from its own peaks (what the exact stage scores)."""
    return _dense(block, _weighted_values(block, score), _colmap(cols, n_bins), len(cols))


#: Relative error of the entropy's float32 first pass (:func:`_entropy_values32`, the square
#: roots of the weighted intensities): sums of <= 501 float32 terms (501 * 2**-24 = 3e-5
#: relative), the entropy ``S <= ln 501`` within 2e-4 absolute, so the exponent ``0.25 + 0.25 S``
#: within 5e-5 and ``p**e`` within ``|ln p| 5e-5 + 3e-5 <= 7e-4`` (``p >= 0.001 / 501``:
#: ``|ln p| <= 13.1``), its normalisation as much again, the square root half of it (7e-4), and a
#: float32 product 1e-4: 8e-4 (margin 2e-3).
_ENTROPY32_REL = 2e-3


def _entropy_values32(block: PeakBlock) -> np.ndarray:
    """The entropy score's per-peak weighted intensities (:func:`_weighted_values`) in float32,
    for the first pass: the power only for spectra of entropy below 3 (the others keep their
    intensities: ``p**1``; in the MOSES predictions ~8 % of the spectra)."""
    counts = np.diff(block.ptr)
    inten = np.asarray(block.intensity, dtype=np.float32)
    p = inten / np.repeat(row_sums(block, inten).astype(np.float32), counts)
    ent = -row_sums(block, p * np.log(p))
    low = (ent < 3.0) & (counts > 0)
    if not low.any():
        return p
    peaks = np.flatnonzero(np.repeat(low, counts))
    n = counts[low]
    v = np.power(p[peaks], np.repeat((0.25 + 0.25 * ent[low]).astype(np.float32), n))
    v /= np.repeat(np.add.reduceat(v, np.cumsum(n) - n, dtype=np.float64).astype(np.float32), n)
    p[peaks] = v
    return p


# --- matrix products ---

#: Multiply-adds below which a product runs on one BLAS thread: waking OpenBLAS's threads costs
#: more than such a product (a 18 x 255 x 1024 product, typical of a mass-filtered search, took
#: 11 ms on 2 threads and 0.4 ms on one on a loaded 2-core machine; the mass-filtered search of
#: 1.59M entries took 7.2 s of CPU with threads above 5e7 multiply-adds, 3.9 s above 5e8).
_SMALL_PRODUCT = 5e8


@functools.lru_cache(maxsize=1)
def _blas() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


#: Rows of ``a`` up to which :func:`_product` computes ``a @ b`` as ``(b.T @ a.T).T``.
_FEW_ROWS = 128


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (C order). With few rows in ``a`` (the queries that reach a library chunk:
    ~20 in a mass-filtered search), OpenBLAS's kernels for the transposed problem are faster:
    (22 x 310) @ (310 x 4096) in float32 on one thread took 1.41 ms as it is, 0.86 ms
    transposed (0.42 vs 0.83 ms at 8 rows, the same at ~100, slower at 256)."""
    if a.shape[0] <= _FEW_ROWS and b.shape[1] > a.shape[0]:
        return np.ascontiguousarray((b.T @ a.T).T)
    return a @ b


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b``; small products on one BLAS thread."""
    if a.shape[0] * a.shape[1] * b.shape[1] < _SMALL_PRODUCT:
        with _blas().limit(limits=1, user_api="blas"):
            return _product(a, b)
    return _product(a, b)


# --- bounds (exact for cosine) over a chunk: (nq_sel, n) ---

def _bounds(q: np.ndarray, qn: np.ndarray, chunk: _Chunk, score: Score) -> np.ndarray:
    """``q``: the selected queries' values on the chunk's columns; ``qn``: their peak counts."""
    if score.name == "cosine":
        num = _mm(q, chunk.values.T)
        if not score.reverse:
            return num
        den = np.sqrt(_mm(q * q, chunk.mask.T))
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    if score.name == "entropy":
        q = q.astype(chunk.sqrt.dtype, copy=False)
        bc = _mm(np.sqrt(q), chunk.sqrt.T)
        if score.reverse:
            mass = _mm(q, chunk.mask.T)
            bc = np.divide(bc, np.sqrt(mass), out=np.zeros_like(bc), where=mass > 0)
        if chunk.rel:
            bc *= np.float32(1.0 + chunk.rel)
        return bc + _EPS
    num = _mm(q, chunk.values.T)
    n_common = _mm((q > 0).astype(np.float32), chunk.mask.T)
    if score.reverse:
        den = _mm(q * q, chunk.mask.T)
        fd = np.divide(num * num, den, out=np.zeros_like(num), where=den > 0)
        return 999.0 * (fd + (n_common >= 2)) / 2 + 999.0 * _EPS
    nu = qn[:, None]
    tot = nu + n_common
    return 999.0 * np.divide(nu * num * num + n_common, tot, out=np.zeros_like(num), where=tot > 0) \
        + 999.0 * _EPS


# --- exact scores of one query against some rows (float64) ---

def _xlogx(x: np.ndarray) -> np.ndarray:
    return x * np.log(np.where(x > 0, x, 1.0))


def _exact(qv: np.ndarray, qn: float, lib: np.ndarray, score: Score) -> np.ndarray:
    """``qv``: one query's values on the chunk's columns; ``lib``: ``(r, C)`` library rows."""
    q = qv.astype(np.float64, copy=False)
    b = lib.astype(np.float64, copy=False)
    common = (b > 0) & (q > 0)[None, :]
    if score.name == "cosine":
        num = b @ q
        if not score.reverse:
            return num
        den = np.sqrt((common * (q * q)[None, :]).sum(axis=1))
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    if score.name == "entropy":
        a = np.broadcast_to(q, b.shape)
        if score.reverse:
            mass = (common * q[None, :]).sum(axis=1, keepdims=True)
            a = np.divide(a, mass, out=np.zeros_like(b), where=mass > 0)
        f = _xlogx(a + b) - _xlogx(a) - _xlogx(b)
        return np.where(common, f, 0.0).sum(axis=1) / _LN4
    n_common = common.sum(axis=1).astype(np.float64)
    num = b @ q
    if score.reverse:
        den = (common * (q * q)[None, :]).sum(axis=1)
        fd = np.divide(num * num, den, out=np.zeros_like(num), where=den > 0)
    else:
        fd = num * num
    # F_R over adjacent shared peaks: min(r, 1/r) of r = (W_L,i / W_U,i) / (W_L,i-1 / W_U,i-1),
    # i.e. the smaller of the two library/query ratios over the larger; from the shared peaks
    # alone (row-major: each row's in m/z order), no pass over every column
    rows = np.repeat(np.arange(len(b)), n_common.astype(np.int64))
    ratio = (b / np.where(q > 0, q, 1.0)[None, :])[common]
    pair = rows[1:] == rows[:-1]
    low, high = np.minimum(ratio[1:], ratio[:-1]), np.maximum(ratio[1:], ratio[:-1])
    terms = np.bincount(rows[1:][pair], weights=(low / high)[pair], minlength=len(b)).astype(np.float64)
    fr = np.divide(terms, n_common - 1, out=np.zeros_like(terms), where=n_common >= 2)
    if score.reverse:
        return np.where(n_common > 0, 999.0 * (fd + fr) / 2, 0.0)
    tot = qn + n_common
    return 999.0 * np.divide(qn * fd + n_common * fr, tot, out=np.zeros_like(fd), where=tot > 0)


# --- top-k bookkeeping ---

def _merge_rows(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray) -> None:
    """Merge candidate scores ``s`` / indices ``i`` ``(m, c)`` into ``best_*`` ``(m, k)`` in place."""
    k = best_s.shape[1]
    all_s = np.concatenate([best_s, s], axis=1)
    all_i = np.concatenate([best_i, i], axis=1)
    order = np.lexsort((all_i, -all_s), axis=1)[:, :k]
    best_s[...] = np.take_along_axis(all_s, order, axis=1)
    best_i[...] = np.take_along_axis(all_i, order, axis=1)


def _columns(queries: _Queries, sel: np.ndarray, block: PeakBlock, n_bins: int) -> np.ndarray:
    """The m/z columns a chunk needs for the selected queries: their peaks, up to the chunk's top."""
    union = queries.support[sel].any(axis=0)
    top = int(block.mz.max()) if len(block.mz) else -1
    union[top + 1:] = False
    return np.flatnonzero(union)


def search_blocks(queries: PeakBlock, chunks: Iterable[tuple[int, PeakBlock]], score: Score, k: int,
                  windows: tuple[np.ndarray, np.ndarray] | None = None,
                  allowed: Callable[[int, int], np.ndarray | None] | None = None,
                  n_bins: int = N_BINS, bf16: bool = False, floor: np.ndarray | None = None,
                  peaks: Callable[[np.ndarray], PeakBlock] | None = None) -> TopK:
    """Exact top-``k`` library entries of every query, the library streamed chunk by chunk.

    Parameters
    ----------
    queries
        The query spectra.
    chunks
        ``(start, block)`` pairs: library entries ``start .. start + len(block) - 1`` in
        increasing order of ``start`` (e.g. :func:`iter_chunks` or an index reader); ``block``
        a :class:`PeakBlock`, or a :class:`~neimsctl.io.spectral_index.DenseChunk` of an
        index's stored cosine weights (read as they are by the cosine with the same powers).
    score
        The similarity.
    k
        Hits per query.
    windows
        Optional ``(lo, hi)`` int arrays ``(nq,)``: query ``i`` only sees entries
        ``lo[i] <= index < hi[i]`` (a nominal-mass window over a mass-sorted library).
    allowed
        Optional ``allowed(start, stop)`` -> bool ``(stop - start,)`` (or ``None`` = all): entries
        that may be hits (candidate lists, source filters).
    n_bins
        Width of the m/z axis.
    bf16
        :attr:`Score.dot` scores only: take the bfloat16 first pass (see Exactness; :func:`use_bf16` decides);
        the hits and scores are the same either way.
    floor
        Optional float64 ``(nq,)``, :attr:`Score.bounded` scores only: for each query, a score
        that ``k`` entries it may have as hits reach exactly (the ``k``-th best exact score,
        :func:`pair_scores`, of ``k`` such entries found beforehand, e.g. its best hits by
        another score): no entry below it can be a hit, so entries whose bound is below it are
        not scored exactly; ``-inf`` for none. The hits are the same with or without it.
    peaks
        Optional ``peaks(entries)`` -> :class:`PeakBlock` of the library's entries ``entries``
        (sorted, unique; :meth:`SpectralIndex.entry_peaks`): with the native kernel built, the
        cosine over stored weights (:class:`DenseChunk` read lazily or with ``ptr``) then scores
        its candidates exactly at the end, reading only their peaks (:class:`_Deferred`). The
        hits are the same.

    Returns
    -------
    TopK
        Best first; ties in score go to the lower entry index. Only entries that score above 0
        (share at least one peak with the query) are hits.
    """
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    q = _Queries(queries, score, n_bins)
    work = [np.empty(0, dtype=np.uint8)]
    best_s = np.full((q.n, k), -np.inf)
    best_i = np.full((q.n, k), -1, dtype=np.int64)
    powers = (score.mz_power, score.intensity_power)
    deferred = _Deferred(q, k, peaks, score, windows, _lanes()) if peaks is not None and defers(score, k) else None
    try:
        for start, block, sel, ok in _reached(chunks, q, windows, allowed):
            if isinstance(block, DenseChunk) and not (score.dot and block.powers == powers):
                block = block.block                      # other weights: from the peak lists
            if isinstance(block, DenseChunk) and deferred is not None \
                    and (block.lazy or block.ptr is not None and (block.weights.dtype == np.float32 or amx())):
                deferred.add(sel, start, block, ok)
                continue
            if isinstance(block, DenseChunk):
                bound, rel = _stored_pass(q, sel, block, bf16)
                _exclude(bound, sel, start, windows, ok)
                _take_topk(best_s, best_i, sel, bound, start, k, rel,
                           lambda r, c, ch=block: _exact_cosine(q, sel, ch.block, Score("cosine", *ch.powers), r, c))
                continue
            cols = _columns(q, sel, block, n_bins)
            if len(cols) == 0:
                continue
            chunk = _Chunk(block, score, cols, n_bins, work, bf16=score.dot and bf16, bounds_only=True)
            qv = q.values[np.ix_(sel, cols)]
            if score.dot:
                bound, rel = _approx_cosine(qv, chunk.values)
            else:
                bound, rel = _bounds(qv, q.n_peaks[sel], chunk, score), 0.0
            _exclude(bound, sel, start, windows, ok)
            if score.dot:
                _take_topk(best_s, best_i, sel, bound, start, k, rel,
                           lambda r, c, ch=chunk: _exact_cosine(q, sel, ch.block, score, r, c))
                continue
            if not score.bounded:
                _take_topk(best_s, best_i, sel, bound, start, k)
                continue
            low = np.full(len(sel), -np.inf) if floor is None else _below(floor[sel])
            theta = np.maximum(best_s[sel, -1], low)
            live = np.flatnonzero((bound > theta[:, None]).any(axis=1))
            for j in live:
                qi = sel[j]
                _prune_exact(best_s, best_i, qi, qv[j], q.n_peaks[qi], bound[j], chunk, score, start, low[j])
        if deferred is not None:
            deferred.finish(best_s, best_i, k)
    finally:
        if deferred is not None:
            deferred.close()
    none = ~(best_s > 0)        # a hit shares at least one peak: score 0 is no hit
    best_s[none], best_i[none] = -np.inf, -1
    return TopK(best_s, best_i)


def _reached(chunks: Iterable[tuple[int, Any]], q: _Queries, windows: tuple[np.ndarray, np.ndarray] | None,
             allowed: Callable[[int, int], np.ndarray | None] | None
             ) -> Iterator[tuple[int, Any, np.ndarray, np.ndarray | None]]:
    """``(start, block, sel, ok)`` for every chunk that some query reaches (``sel``: those
    queries) with some allowed entry (``ok``: :func:`search_blocks`' ``allowed``)."""
    for start, block in chunks:
        n = len(block)
        if n == 0 or q.n == 0:
            continue
        if windows is not None:
            sel = np.flatnonzero((windows[0] < start + n) & (windows[1] > start))
        else:
            sel = np.arange(q.n)
        if len(sel) == 0:
            continue
        ok = allowed(start, start + n) if allowed is not None else None
        if ok is None or ok.any():
            yield start, block, sel, ok


def _stored_pass(q: _Queries, sel: np.ndarray, chunk: DenseChunk, bf16: bool) -> tuple[np.ndarray, float]:
    """The cosine's first pass over stored weights (:class:`DenseChunk`) as they are: a bfloat16
    product, or a float32 product of their exact float32 values; the scores within ``rel`` of
    the exact ones (:func:`_take_topk` then scores exactly, from the peaks, every entry that
    can still reach the top-k). Releases the chunk's weights (their memory may serve the next
    block read)."""
    chunk.check()
    lib = chunk.weights
    qv = np.ascontiguousarray(q.values[sel, :lib.shape[1]])
    if bf16 and lib.dtype == np.uint16:
        first = _approx_cosine(qv, lib)             # on AMX tiles where there are some
    else:
        if lib.dtype == np.uint16:
            lib = bf16_values(lib)
        first = _mm(qv, lib.T), _STORED_REL
    chunk.release()
    return first


def _exact_cosine(q: _Queries, sel: np.ndarray, block: PeakBlock, score: Score, rows: np.ndarray,
                  cols: np.ndarray) -> np.ndarray:
    """Exact cosines of the pairs (query ``sel[rows[p]]``, entry ``cols[p]`` of ``block``):
    float64 weights of only the entries asked for (per entry, so the same whichever other
    entries share the block) and of the queries, summed in float64 (:func:`_exact_pairs`)."""
    entries, pos = np.unique(cols, return_inverse=True)
    return _exact_of(q, sel, block.take(entries), score, rows, pos)


def _exact_of(q: _Queries, sel: np.ndarray, sub: PeakBlock, score: Score, rows: np.ndarray,
              pos: np.ndarray) -> np.ndarray:
    """Exact cosines of the pairs (query ``sel[rows[p]]``, spectrum ``pos[p]`` of ``sub``), from
    the float64 weights of ``sub``'s peaks (checked first: :func:`_check_intensities`)."""
    _check_intensities(sub)
    weights = cosine_weights(sub, score.mz_power, score.intensity_power, np.float64)
    return _exact_pairs(q.values64, sel, sub, weights, rows, pos)


def _check_intensities(block: PeakBlock) -> None:
    """The peaks about to be scored hold positive finite intensities (a damaged library's NaN or
    negative intensity would make a NaN score, and the entry silently no hit). A chunk read from
    peak lists is checked whole; over an index's stored weights only the few entries scored
    exactly (the first pass reads the weights, not the peaks: no pass over every block's peaks)."""
    inten = np.asarray(block.intensity)
    if len(inten) and not (inten.min() > 0 and np.isfinite(inten.max())):   # NaN fails min > 0
        raise FormatError("damaged library: peak intensities that are not positive finite numbers")


def _take_topk(best_s: np.ndarray, best_i: np.ndarray, sel: np.ndarray, s: np.ndarray, start: int,
               k: int, rel: float = 0.0, exact: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
               ) -> None:
    """Merge a chunk's scores ``s`` ``(len(sel), n)`` into the running top-k.

    ``s`` is exact when ``exact`` is ``None``; else ``S (1 - rel) <= s <= S (1 + rel)`` for the
    exact score ``S``, and ``exact(rows, cols)`` gives the exact (float64) score of the pairs
    ``(sel[rows], cols)``. Only entries whose score can reach each query's current k-th score
    ``t`` (``s >= t (1 - rel)``, and above 0) are candidates, so the cost is one comparison per
    score plus a sort of the few candidates; before ``k`` hits are known, ``t`` is the k-th best
    first-pass score ``a`` of the query's row in this chunk made a lower bound of the chunk's
    exact k-th best, ``a / (1 + rel)``, so no true top-k entry is left out. A row with more than
    ``k`` candidates is cut the same way by its own ``a`` (taken among its candidates): its
    chunk holds ``k`` entries of exact score ``>= a / (1 + rel)``, so an entry below that cannot
    be a hit (in a mass-filtered search of 1.59M entries, 86 % of the pairs scored exactly beat
    the query's k-th score from earlier chunks but not the chunk's own k-th).
    """
    bits = s.dtype == np.uint16          # bfloat16 bit patterns (non-negative: ordered as integers)
    value = bf16_values if bits else (lambda a: a)
    lower = np.float32(1.0 - rel)
    theta = best_s[sel, -1].astype(np.float32) * lower
    n = s.shape[1]
    thr = _floor(theta, bits)
    fresh = np.flatnonzero(~np.isfinite(theta))
    if len(fresh):
        thr[fresh] = _fresh_start(s[fresh], k, bits, value, lower / np.float32(1.0 + rel))
    flat = np.flatnonzero(s >= thr[:, None])
    rows, cols = np.divmod(flat, n)
    if len(rows) == 0:
        return
    if len(rows) > k:
        rows, cols = _own_kth(s, rows, cols, thr, k, bits, value, lower / np.float32(1.0 + rel))
    vals = value(s[rows, cols]).astype(np.float64) if exact is None else exact(rows, cols)
    _merge_pairs(best_s, best_i, sel[rows], cols + start, vals, k)


def _merge_pairs(best_s: np.ndarray, best_i: np.ndarray, qrows: np.ndarray, entries: np.ndarray,
                 vals: np.ndarray, k: int) -> None:
    """Merge exact scores ``vals`` of the pairs (query ``qrows[p]``, entry ``entries[p]``) into
    the running top-k (best first; ties to the lower entry)."""
    if len(qrows) == 0:
        return
    order = np.lexsort((entries, -vals, qrows))
    rows, cols, vals = qrows[order], entries[order], vals[order]
    first = np.searchsorted(rows, rows, "left")
    keep = (np.arange(len(rows)) - first) < k
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    uniq, pos = np.unique(rows, return_index=True)
    slot = np.arange(len(rows)) - np.repeat(pos, np.diff(np.append(pos, len(rows))))
    cand_s = np.full((len(uniq), k), -np.inf)
    cand_i = np.full((len(uniq), k), -1, dtype=np.int64)
    r = np.searchsorted(uniq, rows)
    cand_s[r, slot] = vals
    cand_i[r, slot] = cols
    bs, bi = best_s[uniq], best_i[uniq]
    _merge_rows(bs, bi, cand_s, cand_i)
    best_s[uniq], best_i[uniq] = bs, bi


#: Hits per query above which the search keeps its exact stage per block: the running top-k of
#: the native pass takes each new score in O(k) (20 queries +-5 Da over 1.59M entries: k = 100,000
#: 16.4 s vs 5.0 s per block; k = 10,000 2.3 vs 1.4 s; k = 1,000 0.58 vs 0.56 s, unfiltered 1.3 vs 2.4 s)
_DEFER_MAX_K = 1000


def defers(score: Score, k: int) -> bool:
    """Whether :func:`search_blocks` given ``peaks`` scores exactly at the end (:class:`_Deferred`):
    the cosine, at most :data:`_DEFER_MAX_K` hits per query, the native kernel built."""
    return score.dot and k <= _DEFER_MAX_K and module() is not None


def _lanes() -> int:
    """Lanes of :class:`_Deferred`: one per CPU this process may run on (at most 8) where the
    first pass runs on AMX tiles (the kernel reads and multiplies its blocks without the GIL),
    else one (the float32 product is threaded by BLAS already)."""
    if not amx():
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


class _Deferred:
    """The cosine's first pass over stored weights with its exact stage at the end (native kernel).

    Every block's first-pass scores update each query's running top-k of first-pass scores
    ``a`` (:func:`neimsctl.io.native.select`) and keep, as candidates, the entries scoring at
    least ``a_k (1 - d) / (1 + d)`` (``d`` = :data:`_STORED_REL`; ``a_k`` its k-th best so far).
    At the end, the candidates still above that bound for the final ``a_k`` are scored exactly,
    from their peaks (:meth:`SpectralIndex.entry_peaks`). Exact: ``k`` entries have first-pass scores
    ``>= a_k``, so exact scores ``>= a_k / (1 + d)``; an entry whose exact score reaches the k-th
    best has a first-pass score ``>= a_k (1 - d) / (1 + d)``, with ``a_k`` never larger in an
    earlier block than at the end. Against scoring each block's candidates as it comes
    (:func:`_take_topk`), on 1,000 queries +-5 Da over 1.59M entries: 11,114 pairs scored
    exactly instead of 34,187, and only their peaks read (not every block's).

    With ``lanes`` > 1 the blocks are dealt in turn to lanes (:class:`_Lane`, a thread each: the
    kernel releases the GIL), each with its own running top-k and candidates; at the end the
    k-th best of the lanes' top-k together is the ``a_k`` above (``k`` distinct entries reach
    it) and every lane's ``a_k`` was at most that, so the candidates kept are the same.
    """

    def __init__(self, q: _Queries, k: int, peaks: Callable[[np.ndarray], PeakBlock], score: Score,
                 windows: tuple[np.ndarray, np.ndarray] | None, lanes: int = 1) -> None:
        self.q = q
        self.windows = windows
        self.score = score
        self.peaks = peaks
        self.factor = (1.0 - _STORED_REL) / (1.0 + _STORED_REL) * (1.0 - 1e-6)
        self.lanes = [_Lane(q.n, k) for _ in range(max(1, lanes))]
        self.pools: list[Any] = []
        self.pending: list[Any] = [[] for _ in self.lanes]
        self.turn = 0
        #: each lane's lazy blocks not yet given to it: ``(start, chunk, ok)`` (:meth:`_Lane.add_run`),
        #: and their (query, entry) pairs
        self.runs: list[list[tuple[int, DenseChunk, np.ndarray | None]]] = [[] for _ in self.lanes]
        self.run_pairs = [0] * len(self.lanes)
        #: a pair's share of a run: more for a larger k (each score may enter a longer top-k)
        self.weight = 1 + k // 64
        if len(self.lanes) > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pools = [ThreadPoolExecutor(1, thread_name_prefix="neimsctl-lane") for _ in self.lanes]

    def add(self, sel: np.ndarray, start: int, chunk: DenseChunk, ok: np.ndarray | None) -> None:
        i, self.turn = self.turn, (self.turn + 1) % len(self.lanes)
        if chunk.lazy:      # the kernel reads it: given to the lane with the next of its blocks
            self.runs[i].append((start, chunk, ok))
            self.run_pairs[i] += len(sel) * len(chunk) * self.weight
            if len(self.runs[i]) >= _RUN or self.run_pairs[i] >= _RUN_PAIRS:
                self._flush(i)
            return
        self._give(i, self.lanes[i].add, self.q, sel, start, chunk, self.windows, ok, self.factor)

    def _flush(self, i: int) -> None:
        """Give lane ``i`` the lazy blocks it holds, as one run."""
        run, self.runs[i], self.run_pairs[i] = self.runs[i], [], 0
        self._give(i, self.lanes[i].add_run, self.q, run, self.windows, self.factor)

    def _give(self, i: int, work: Callable[..., None], *args: Any) -> None:
        """Run ``work(*args)`` in lane ``i`` (here without lanes)."""
        if not self.pools:
            work(*args)
            return
        pending = self.pending[i]
        while len(pending) >= _LANE_AHEAD:     # a bounded queue: blocks held, not the library
            pending.pop(0).result()
        pending.append(self.pools[i].submit(work, *args))

    def finish(self, best_s: np.ndarray, best_i: np.ndarray, k: int) -> None:
        q = self.q
        for i, run in enumerate(self.runs):
            if run:
                self._flush(i)
        for pending in self.pending:
            while pending:
                pending.pop(0).result()
        if not any(lane.parts for lane in self.lanes):
            return
        # the lanes' k-th best first-pass scores, merged: k distinct entries reach it
        kth = np.sort(np.concatenate([lane.top for lane in self.lanes], axis=1), axis=1)[:, -k]
        # each lane scores its own candidates (entries of its own blocks, in the order of its
        # blocks) exactly, in its thread, a piece of at most _EXACT_PAIRS pairs at a time: an
        # interrupt waits for one piece, not for a lane's whole exact stage (which the pieces
        # still queued are not: close() cancels them)
        pieces = []
        for i, lane in enumerate(self.lanes):
            parts, lane.parts = lane.parts, []
            if not parts:
                continue
            qrows, entries, vals = (np.concatenate(p) for p in zip(*parts))
            keep = vals.astype(np.float64) >= kth[qrows].astype(np.float64) * self.factor
            qrows, entries = qrows[keep], entries[keep]
            pieces += [(i, qrows[a:a + _EXACT_PAIRS], entries[a:a + _EXACT_PAIRS])
                       for a in range(0, len(qrows), _EXACT_PAIRS)]
        if self.pools:
            done = [self.pools[i].submit(self._exact, q, qrows, entries) for i, qrows, entries in pieces]
            scored = [d.result() for d in done]
        else:
            scored = [self._exact(q, qrows, entries) for _, qrows, entries in pieces]
        if scored:
            qrows, entries, exact = (np.concatenate(p) for p in zip(*scored))
            _merge_pairs(best_s, best_i, qrows, entries, exact, k)

    def _exact(self, q: _Queries, qrows: np.ndarray, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The exact scores of the candidate pairs (query ``qrows[p]``, entry ``entries[p]``):
        ``(query rows, entries, scores)``."""
        uniq, pos = np.unique(entries, return_inverse=True)
        return qrows, entries, _exact_of(q, np.arange(q.n), self.peaks(uniq), self.score, qrows, pos)

    def close(self) -> None:
        """Stop the lanes (after :meth:`finish`, or when the search failed)."""
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)
        self.pools = []


#: Calls queued per lane of :class:`_Deferred` (a block each, or a run of lazy blocks; neither
#: holds weights).
_LANE_AHEAD = 4
#: Candidate pairs per piece of a lane's exact stage (:meth:`_Deferred.finish`): 1,000 queries
#: +-5 Da have ~11,000 in all, unfiltered with --top 1000 over a million (1.5 s in one piece,
#: 0.2-0.9 s in pieces of 65,536 under two lanes).
_EXACT_PAIRS = 1 << 14
#: Lazy blocks per call of a lane (:meth:`_Lane.add_run`: one native call for all of them), and
#: (query, entry) pairs (times ``1 + k // 64``) after which a run goes even if shorter: a
#: mass-filtered search meets ~22 queries a block (16 blocks: 1.4M pairs), an unfiltered one all
#: of them (1,000 queries: 4.1M pairs a block, four blocks a run), so that a run stays short
#: enough for an interrupt to be felt soon (16 unfiltered blocks took up to 1 s in one call with
#: --top 1000; a block a run was 3 % slower than 16, the kernel's buffers set up for every block).
_RUN = 16
_RUN_PAIRS = 1 << 24


class _Lane:
    """One lane of :class:`_Deferred`: its own running top-k of first-pass scores and candidates,
    over the blocks given to it (in increasing order)."""

    def __init__(self, n: int, k: int) -> None:
        self.top = np.zeros((n, k), dtype=np.float32)
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.work: list[np.ndarray] = []

    def add(self, q: _Queries, sel: np.ndarray, start: int, chunk: DenseChunk,
            windows: tuple[np.ndarray, np.ndarray] | None, ok: np.ndarray | None, factor: float) -> None:
        lib = chunk.weights
        n = len(chunk)
        qv = np.ascontiguousarray(q.values[sel, :chunk.width])
        lo, hi = _window_bounds(windows, sel, start, n)
        top = np.ascontiguousarray(self.top[sel])
        if lib.dtype == np.uint16:    # AMX tiles (search_blocks): no score matrix
            norms = np.empty(n, dtype=np.float32)
            try:
                rows, cols, vals, largest = product_select(qv, lib, top, lo, hi, ok, factor, self.work, norms)
            except OSError as exc:
                raise chunk.unreadable(exc) from None
            chunk.release()
            chunk.verify(norms, largest)    # an unchecked block (the reader left it to this pass)
        else:
            s = _mm(qv, lib.T)
            chunk.release()
            if ok is not None:
                s[:, ~ok] = 0.0
            rows, cols, vals = native_select(s, top, lo, hi, factor, self.work)
        self.top[sel] = top
        if len(rows):
            self.parts.append((sel[rows], cols + start, vals))

    def add_run(self, q: _Queries, run: list[tuple[int, DenseChunk, np.ndarray | None]],
                windows: tuple[np.ndarray, np.ndarray] | None, factor: float) -> None:
        """What :meth:`add` does for each block of ``run`` (lazy chunks of one file, ascending:
        ``(start, chunk, ok)``), in one native call (:func:`product_select_run`); each block
        checked (:meth:`DenseChunk.verify`) before its candidates count."""
        fd = run[0][1].source[0]
        blocks = np.array([(start, chunk.source[1], len(chunk), chunk.width) for start, chunk, _ in run],
                          dtype=np.int64)
        oks = [ok for _, _, ok in run]
        ok = None if all(o is None for o in oks) else np.concatenate(
            [np.ones(len(chunk), bool) if o is None else o for (_, chunk, _), o in zip(run, oks)])
        if windows is None:
            lo, hi = np.zeros(q.n, np.int64), np.full(q.n, 1 << 62, np.int64)
        else:
            lo, hi = (np.ascontiguousarray(w, dtype=np.int64) for w in windows)
        norms = np.empty(int(blocks[:, 2].sum()), dtype=np.float32)
        tops = np.zeros(len(run), dtype=np.int32)
        done, rows, cols, vals, err = product_select_run(np.ascontiguousarray(q.values, dtype=np.float32), fd, blocks,
                                                         lo, hi, self.top, ok, factor, self.work, norms, tops)
        at = 0
        for (_, chunk, _), top in zip(run[:done], tops.tolist()):
            chunk.verify(norms[at:at + len(chunk)], top)
            at += len(chunk)
        if err is not None:
            raise run[done][1].unreadable(err) from None
        if len(rows):
            self.parts.append((rows, cols, vals))


def _floor(t: np.ndarray, bits: bool) -> np.ndarray:
    """Float32 thresholds ``t`` as :func:`_take_topk` compares them with scores: at least the
    smallest positive score (so ``s >= thr`` also says ``s > 0``: 1e-45, the smallest positive
    float32), and for bfloat16 bit patterns truncated to bf16 (never above ``t``), at least
    bits 1 (the smallest positive bf16)."""
    t = np.maximum(np.asarray(t, dtype=np.float32), np.float32(1e-45))     # also -inf (no k hits yet)
    return np.maximum(t.view(np.uint32) >> 16, 1).astype(np.uint16) if bits else t


def _fresh_start(s: np.ndarray, k: int, bits: bool, value: Callable[[np.ndarray], np.ndarray],
                 factor: np.float32) -> np.ndarray:
    """Thresholds for rows ``s`` of queries without ``k`` hits yet: ``factor`` (the first
    pass's ``(1 - rel) / (1 + rel)``) times the highest of 1/2, 1/8 and 1/64 of the row's best
    score that at least ``k`` scores reach, else the smallest positive score (every entry that
    shares a peak). The row's k-th best score ``a`` is at least that part, so every entry that
    can be a hit (first-pass score ``>= a * factor``: :func:`_own_kth` cuts there) is above the
    threshold; the part itself, without ``factor``, left out entries between the two (an
    entry scoring 0.0191414 exactly was missing from a query's top 1,000 while one scoring
    0.0191409 was in it). Sorting each row for its k-th best score took 1.2 ms for 22 rows of
    4,096 (this: 0.3 ms); np.partition was ~20x slower on rows mostly of one value (entries
    outside the window, no shared peak)."""
    best = value(s.max(axis=1))
    start = np.full(len(s), 1 if bits else np.float32(1e-45), dtype=s.dtype)
    todo = np.arange(len(s))
    for part in (0.5, 0.125, 1.0 / 64):
        t = _floor(best[todo] * np.float32(part), bits)
        ok = np.count_nonzero(s[todo] >= t[:, None], axis=1) >= k
        start[todo[ok]] = _floor(value(t[ok]) * factor, bits)
        todo = todo[~ok]
        if len(todo) == 0:
            break
    return start


def _own_kth(s: np.ndarray, rows: np.ndarray, cols: np.ndarray, thr: np.ndarray, k: int, bits: bool,
             value: Callable[[np.ndarray], np.ndarray], factor: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The candidates ``(rows, cols)`` (row-major) of :func:`_take_topk` whose first-pass score is
    at least ``factor`` times the k-th best of their row (rows with more than ``k`` candidates;
    the k-th best of the row is among them, as they are all its scores ``>= thr``)."""
    counts = np.bincount(rows, minlength=len(thr))
    busy = np.flatnonzero(counts > k)
    if len(busy) == 0:
        return rows, cols
    v = s[rows, cols]
    ends = np.cumsum(counts)
    # one sort of (row, score) keys: candidates are > 0, so their bit patterns order like them
    shift = 16 if bits else 32
    key = (rows.astype(np.int64) << shift) | v.view(np.uint16 if bits else np.uint32).astype(np.int64)
    key.sort()
    low = key[ends[busy] - k] & ((1 << shift) - 1)
    kth = value(low.astype(np.uint16)) if bits else low.astype(np.uint32).view(np.float32)
    cut = thr.copy()
    cut[busy] = np.maximum(cut[busy], _floor(kth * factor, bits))
    keep = v >= cut[rows]
    return rows[keep], cols[keep]


def _approx_cosine(q: np.ndarray, lib: np.ndarray) -> tuple[np.ndarray, float]:
    """First pass of the cosine, ``(len(q), len(lib))``, and its relative error margin.

    ``lib`` float32: a float32 product. ``lib`` uint16 (bfloat16 bits): on AMX tiles
    (:func:`~neimsctl.io.native.product`: float32 queries, a float32 result, margin
    :data:`_STORED_REL`), else a torch bfloat16 product whose result stays bfloat16 bits
    (uint16; ordered like the values, as every score is >= 0), so no pass over the result
    converts it.
    """
    if lib.dtype == np.uint16 and (native := product(q, lib)) is not None:
        return native, _STORED_REL          # AMX: float32 queries, a float32 result (neimsctl.io.native)
    if lib.dtype == np.uint16:
        import torch

        qb = torch.from_numpy(bf16_bits(q)).view(torch.bfloat16)
        s = qb @ torch.from_numpy(lib).view(torch.bfloat16).T
        return s.view(torch.int16).numpy().view(np.uint16), _BF16_REL
    return _mm(q, lib.T), _FP32_REL


def _window_bounds(windows: tuple[np.ndarray, np.ndarray] | None, sel: np.ndarray, start: int,
                   n: int) -> tuple[np.ndarray, np.ndarray]:
    """The queries ``sel``'s windows within the chunk of ``n`` entries from ``start``: int64
    ``(lo, hi)``, clipped to ``0..n`` (the whole chunk without windows)."""
    if windows is None:
        return np.zeros(len(sel), np.int64), np.full(len(sel), n, np.int64)
    return np.clip(windows[0][sel] - start, 0, n), np.clip(windows[1][sel] - start, 0, n)


def _exclude(bound: np.ndarray, sel: np.ndarray, start: int,
             windows: tuple[np.ndarray, np.ndarray] | None, ok: np.ndarray | None) -> None:
    """Set the scores of entries outside each query's window, or not ``ok``, to the lowest value."""
    low = 0 if bound.dtype == np.uint16 else -np.inf
    n = bound.shape[1]
    if windows is not None:
        lo, hi = _window_bounds(windows, sel, start, n)
        for j in np.flatnonzero((lo > 0) | (hi < n)):
            bound[j, :lo[j]] = low
            bound[j, max(hi[j], lo[j]):] = low
    if ok is not None:
        bound[:, ~ok] = low


_PAIR_PEAKS = 1 << 23     # peaks gathered at once when scoring candidate pairs exactly


def _exact_pairs(qvalues: np.ndarray, sel: np.ndarray, block: PeakBlock, weights: np.ndarray,
                 rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Exact float64 cosines of the pairs (query ``sel[rows[p]]``, entry ``cols[p]`` of ``block``;
    ``weights``: the block's per-peak cosine weights; ``qvalues``: the queries' dense weights).

    Sums over the library entry's own peaks (its weights times the query's weights at those
    m/z, in float64), in the entry's peak order: a pair's score never depends on which other
    pairs are scored with it.
    """
    ptr = block.ptr - block.ptr[0]
    out = np.zeros(len(rows), dtype=np.float64)
    counts = ptr[cols + 1] - ptr[cols]
    ends = np.cumsum(counts)
    a = 0
    while a < len(rows):
        b = int(np.searchsorted(ends, (ends[a - 1] if a else 0) + _PAIR_PEAKS, "right"))
        b = max(b, a + 1)
        cnt = counts[a:b]
        total = int(cnt.sum())
        if total:
            first = np.repeat(ptr[cols[a:b]] - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
            qrow = np.repeat(sel[rows[a:b]], cnt)
            prod = qvalues[qrow, block.mz[first]] * weights[first]
            some = cnt > 0
            seg = (np.cumsum(cnt) - cnt)[some]
            out[a:b][some] = np.add.reduceat(prod, seg)
        a = b
    return out


def use_bf16(score: Score, work: float) -> bool:
    """Whether a search of ``work`` multiply-adds should take the bfloat16 first pass: a
    :attr:`Score.dot` score, on AMX tiles (the native kernel; any size) or, large enough to pay
    for importing torch, on another CPU that computes bf16 natively."""
    if not score.dot:
        return False
    if amx():
        return True             # the native product: no torch to import
    if work < _BF16_MIN_WORK and "torch" not in sys.modules:
        return False
    if work < _BF16_MIN_WORK / 20:
        return False
    from neimsctl.models.quantize import cpu_has_bf16

    return cpu_has_bf16()


#: Relative difference within which two exact (float64) scores are the same score: one pair's
#: score computed at another place of a matrix product (another BLAS kernel, another order of
#: its sums) may differ in its last bits (identical spectra scored 1 + 2**-52 and 1).
TIE_REL = 1e-12


def _below(floor: np.ndarray) -> np.ndarray:
    """Thresholds that keep every entry scoring ``floor`` or more: a bound ``> _below(floor)``
    is ``>= floor`` less a relative :data:`TIE_REL` (an entry's exact score computed in another
    block of entries may differ from this one's in its last bits)."""
    f = np.asarray(floor, dtype=np.float64)
    return np.where(np.isfinite(f), f - TIE_REL * np.abs(f), -np.inf)


def _prune_exact(best_s: np.ndarray, best_i: np.ndarray, qi: int, qv: np.ndarray, qn: float,
                 bound: np.ndarray, chunk: _Chunk, score: Score, start: int, low: float = -np.inf) -> None:
    """Exact scores of one query's entries in decreasing bound order, while the bound can win.

    Each step scores the ``step`` candidates of highest bound exactly, raises the threshold (the
    k-th best exact score) and drops the candidates whose bound no longer exceeds it; steps
    double from :data:`_EXACT_BATCH` up to :data:`_EXACT_STEP`. ``low``: no candidate whose
    bound is at most this (:func:`search_blocks`' ``floor``).
    """
    supp = np.flatnonzero(qv > 0)      # only the query's own peaks can be shared: exact on those
    if len(supp) == 0:                 # no peak of weight > 0 (e.g. all at m/z 0): no hit
        return
    cand = np.flatnonzero(bound > max(best_s[qi, -1], low))
    step = max(_EXACT_BATCH, best_s.shape[1])
    while len(cand):
        if len(cand) > step:
            top = np.argpartition(-bound[cand], step - 1)[:step]
            rows, rest = cand[top], np.delete(cand, top)
        else:
            rows, rest = cand, cand[:0]
        exact = _exact(qv[supp], qn, chunk.exact_rows(rows, supp), score)
        bs, bi = best_s[qi:qi + 1], best_i[qi:qi + 1]
        _merge_rows(bs, bi, exact[None, :], (rows + start)[None, :])
        cand = rest[bound[rest] > max(best_s[qi, -1], low)]
        step = min(2 * step, _EXACT_STEP)


def pair_scores(queries: PeakBlock, qrow: np.ndarray, entries: PeakBlock, score: Score,
                n_bins: int = N_BINS) -> np.ndarray:
    """Exact float64 scores of the pairs (query ``qrow[p]``, spectrum ``p`` of ``entries``), a
    :attr:`Score.bounded` score: the arithmetic of :func:`search_blocks`' exact stage (each
    entry's values from its own peaks, the query's peaks as columns)."""
    q = _Queries(queries, score, n_bins)
    out = np.zeros(len(entries), dtype=np.float64)
    qrow = np.asarray(qrow, dtype=np.int64)
    for i in np.unique(qrow):
        rows = np.flatnonzero(qrow == i)
        supp = np.flatnonzero(q.values[i] > 0)
        if len(supp) == 0:
            continue
        sub = entries.take(rows)
        _check_intensities(sub)
        out[rows] = _exact(q.values[i][supp], q.n_peaks[i], _values_on(sub, score, supp, n_bins), score)
    return out


def iter_chunks(block: PeakBlock, size: int = 16384) -> Iterator[tuple[int, PeakBlock]]:
    """``(start, block)`` pieces of an in-memory library, ``size`` entries each."""
    for lo in range(0, len(block), size):
        yield lo, block.slice(lo, min(lo + size, len(block)))


def score_all(queries: PeakBlock, library: PeakBlock, score: Score, n_bins: int = N_BINS,
              chunk: int = 8192) -> np.ndarray:
    """Every exact query-entry score, float64 ``(nq, n_library)`` (for ``eval``'s ranks).

    The same per-pair arithmetic as :func:`search_blocks` (the cosine of float64 weights in
    float64, the same sums in another order, so equal to ~1e-16; composite and entropy exactly in
    float64; the reverse cosine in float64 too, where a search takes its float32 products), so
    ranks from here and hits from a search agree. A pair's score may differ in its last bits with
    its place in the library (the matrix product's kernels): scores within :data:`TIE_REL` of each
    other are the same score.
    """
    q = _Queries(queries, score, n_bins)
    out = np.zeros((q.n, len(library)), dtype=np.float64)
    if q.n == 0:
        return out
    sel = np.arange(q.n)
    for start, block in iter_chunks(library, chunk):
        cols = _columns(q, sel, block, n_bins)
        if len(cols) == 0:
            continue
        if score.dot:
            lib = _dense(block, cosine_weights(block, score.mz_power, score.intensity_power, np.float64),
                         _colmap(cols, n_bins), len(cols))
            out[:, start:start + len(block)] = q.values64[:, cols] @ lib.T
            continue
        ch = _Chunk(block, score, cols, n_bins)
        qv = q.values[:, cols]
        for i in range(q.n):
            supp = np.flatnonzero(qv[i] > 0)
            out[i, start:start + len(block)] = _exact(qv[i][supp], q.n_peaks[i], ch.values[:, supp], score)
    return out
