"""Evaluation metrics: NEIMS library matching (Recall@K), cosine, MAE/RMSE.

Everything here works on dense spectra: rows of ``B`` bins where column ``j`` is nominal m/z ``j``
(``B = 501`` covers m/z 0..500), intensities in linear space (any scale; base peak 1 by convention).

Library matching follows SPEC.md "Evaluation" exactly, so numbers compare with NEIMS:

- similarity = cosine of the weighted vectors ``w_j = j**mz_power * I_j**intensity_power``
  (default ``m/z^1 * I^0.5``), computed by the matching engine of ``neimsctl search``
  (:mod:`neimsctl.evaluate.matching`; any of its scores may be chosen);
- compounds are identified by the InChIKey connectivity block (first 14 characters,
  :mod:`neimsctl.io.inchikey`);
- rank of a query = 1 + the number of distinct *other* compounds that have some library entry
  scoring strictly higher than the best entry of the right compound (ties go to the query; scores
  within a relative :data:`~neimsctl.evaluate.matching.TIE_REL` are ties: identical spectra
  score alike only to the last bits of float64);
- Recall@K = share of queries with rank <= K;
- with ``mass_filter=D``, only library entries whose nominal MW is within +-D Da of the query
  compound's MW compete; the right compound's own entries always stay in.

The standard protocol (:func:`build_library_eval`): queries = every measured spectrum of every test
compound; library = one predicted spectrum per test compound + every measured spectrum of the
reference (training) compounds. :func:`evaluate_predictions` runs all of it in one call.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from neimsctl.errors import InputError
from neimsctl.evaluate.matching import TIE_REL, Score, score_all
from neimsctl.io.inchikey import connectivity_blocks
from neimsctl.io.peak_block import PeakBlock

DEFAULT_KS = (1, 5, 10, 20)
_SCORE_BUDGET = 1 << 25  # score-matrix elements per query block (~128 MB float32)


def weighted_vectors(spectra: np.ndarray, mz_power: float = 1.0,
                     intensity_power: float = 0.5) -> np.ndarray:
    """L2-normalised weighted vectors ``m/z**mz_power * I**intensity_power``.

    Parameters
    ----------
    spectra
        ``(N, B)`` linear intensities; bin ``j`` is m/z ``j``. Negative values count as 0.
    mz_power, intensity_power
        Exponents of the m/z weight and of the intensity.

    Returns
    -------
    numpy.ndarray
        float32 ``(N, B)``, each row of unit norm (all-zero rows stay zero).
    """
    x = np.clip(np.asarray(spectra, dtype=np.float32), 0.0, None)
    if x.ndim != 2:
        raise ValueError(f"spectra must be 2-D (N, bins), got shape {x.shape}")
    if intensity_power != 1.0:
        x = np.power(x, np.float32(intensity_power))
    if mz_power != 0.0:
        x = x * np.power(np.arange(x.shape[1], dtype=np.float32), np.float32(mz_power))[None, :]
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def cosine_matrix(a: np.ndarray, b: np.ndarray, mz_power: float = 1.0,
                  intensity_power: float = 0.5) -> np.ndarray:
    """All-pairs weighted cosine, float32 ``(len(a), len(b))``; 0 against an empty spectrum."""
    return weighted_vectors(a, mz_power, intensity_power) @ weighted_vectors(b, mz_power, intensity_power).T


def cosine_rows(pred: np.ndarray, true: np.ndarray, mz_power: float = 0.0,
                intensity_power: float = 1.0) -> np.ndarray:
    """Row-wise cosine between paired spectra (default: plain cosine, no weighting)."""
    p = weighted_vectors(pred, mz_power, intensity_power)
    t = weighted_vectors(true, mz_power, intensity_power)
    if p.shape != t.shape:
        raise ValueError(f"pred and true differ in shape: {p.shape} vs {t.shape}")
    return np.einsum("ij,ij->i", p, t)


def mean_cosine(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over rows of the plain cosine (``I^1``, no m/z weight) of paired spectra."""
    return float(cosine_rows(pred, true).mean()) if len(pred) else float("nan")


def _max_norm(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, None)
    top = x.max(axis=1, keepdims=True)
    return np.divide(x, top, out=np.zeros_like(x), where=top > 0)


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute intensity error over all bins of max-normalised (base peak 1) spectra."""
    return float(np.abs(_max_norm(pred) - _max_norm(true)).mean())


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    """Root of the mean squared intensity error over all bins of max-normalised spectra."""
    return float(np.sqrt(np.square(_max_norm(pred) - _max_norm(true)).mean()))


def library_match(query_spectra: np.ndarray, query_keys: Sequence[str], query_mw: Sequence[int] | None,
                  library_spectra: np.ndarray, library_keys: Sequence[str],
                  library_mw: Sequence[int] | None, ks: Sequence[int] = DEFAULT_KS,
                  mass_filter: float | None = None, mz_power: float = 1.0,
                  intensity_power: float = 0.5, score: Score | None = None) -> dict:
    """Rank each query's right compound in a library (NEIMS protocol; see the module docstring).

    The scores come from the matching engine that ``neimsctl search`` uses
    (:func:`neimsctl.evaluate.matching.score_all`), so a search's hits and these ranks agree.

    Parameters
    ----------
    query_spectra, library_spectra
        ``(Nq, B)`` and ``(Nl, B)`` linear intensities.
    query_keys, library_keys
        InChIKeys (or connectivity blocks) of each row.
    query_mw, library_mw
        Nominal molecular weights; required only with ``mass_filter``.
    ks
        The K of Recall@K.
    mass_filter
        Half-width in Da of the nominal-mass window on candidates, or ``None`` for no filter.
    mz_power, intensity_power
        Weighting of the cosine.
    score
        Another similarity of the engine (composite, entropy, reverse); overrides the two above.

    Returns
    -------
    dict
        ``recall@K`` (float) for each K, ``ranks`` (int64 ``(Nq,)``, 1 = right compound first),
        ``top_hit`` (int64 ``(Nq,)``, library row of the best-scoring admissible entry),
        ``n_queries`` and ``n_library``.

    Raises
    ------
    InputError
        A query compound without a library entry, mismatched lengths, or a mass filter without MWs.
    """
    qb, lb = connectivity_blocks(query_keys), connectivity_blocks(library_keys)
    if len(qb) != len(query_spectra) or len(lb) != len(library_spectra):
        raise InputError("keys and spectra differ in length")
    if len(lb) == 0:
        raise InputError("the library is empty")
    comps, lib_comp = np.unique(lb, return_inverse=True)
    pos = np.minimum(np.searchsorted(comps, qb), len(comps) - 1)
    missing = comps[pos] != qb
    if missing.any():
        raise InputError(f"{int(missing.sum())} queries have no entry of their compound in the library, "
                         f"e.g. {qb[np.flatnonzero(missing)[0]]!r}")
    q_comp = pos.astype(np.int64)
    if mass_filter is not None:
        if query_mw is None or library_mw is None:
            raise InputError("a mass filter needs query_mw and library_mw")
        qmw = np.asarray(query_mw, dtype=np.float64)
        lmw = np.asarray(library_mw, dtype=np.float64)
        if len(qmw) != len(qb) or len(lmw) != len(lb):
            raise InputError("molecular weights and spectra differ in length")
    order = np.argsort(lib_comp, kind="stable")
    if mass_filter is not None:
        lmw = lmw[order]
    starts = np.searchsorted(lib_comp[order], np.arange(len(comps)))
    spec = score if score is not None else Score("cosine", mz_power, intensity_power)
    lib_block = PeakBlock.from_dense(np.clip(np.asarray(library_spectra, np.float32), 0, None)[order])
    lib_comp_sorted = lib_comp[order]
    ranks = np.empty(len(qb), dtype=np.int64)
    top_hit = np.empty(len(qb), dtype=np.int64)
    step = max(1, min(4096, _SCORE_BUDGET // len(lb)))
    for lo in range(0, len(qb), step):
        hi = min(lo + step, len(qb))
        q_block = PeakBlock.from_dense(np.clip(np.asarray(query_spectra[lo:hi], np.float32), 0, None))
        scores = score_all(q_block, lib_block, spec, n_bins=np.shape(query_spectra)[1])
        if mass_filter is not None:
            far = np.abs(qmw[lo:hi, None] - lmw[None, :]) > mass_filter
            far &= lib_comp_sorted[None, :] != q_comp[lo:hi, None]
            scores[far] = -np.inf
        per_comp = np.maximum.reduceat(scores, starts, axis=1)
        right = per_comp[np.arange(hi - lo), q_comp[lo:hi]]
        ranks[lo:hi] = 1 + (per_comp > (right + TIE_REL * np.abs(right))[:, None]).sum(axis=1)
        top_hit[lo:hi] = order[np.argmax(scores, axis=1)]
    out: dict = {f"recall@{k}": float((ranks <= k).mean()) if len(ranks) else float("nan") for k in ks}
    out.update(ranks=ranks, top_hit=top_hit, n_queries=int(len(qb)), n_library=int(len(lb)))
    return out


class LibraryEval(NamedTuple):
    """Query and library arrays of the standard protocol (see :func:`build_library_eval`)."""

    query_spectra: np.ndarray
    query_keys: np.ndarray
    query_mw: np.ndarray
    library_spectra: np.ndarray
    library_keys: np.ndarray
    library_mw: np.ndarray
    library_is_predicted: np.ndarray
    query_pred_row: np.ndarray


def build_library_eval(test_spectra: np.ndarray, test_keys: Sequence[str], test_mw: Sequence[int],
                       predicted_spectra: np.ndarray, predicted_keys: Sequence[str],
                       predicted_mw: Sequence[int], reference_spectra: np.ndarray,
                       reference_keys: Sequence[str], reference_mw: Sequence[int]) -> LibraryEval:
    """Assemble the standard NEIMS library-matching task.

    Parameters
    ----------
    test_spectra, test_keys, test_mw
        Every measured spectrum of every test compound (the queries).
    predicted_spectra, predicted_keys, predicted_mw
        Predicted spectra of the test compounds; exactly one per compound is used (the first row
        of each connectivity block).
    reference_spectra, reference_keys, reference_mw
        Measured spectra of the other (training) compounds. Rows of a test compound are dropped,
        so the right compound is present only through its prediction.

    Returns
    -------
    LibraryEval
        ``query_pred_row[i]`` is the library row of query ``i``'s prediction (for mean cosine).

    Raises
    ------
    InputError
        A test compound without a prediction.
    """
    tb, pb, rb = (connectivity_blocks(k) for k in (test_keys, predicted_keys, reference_keys))
    _, first = np.unique(pb, return_index=True)
    first = np.sort(first)
    pb1 = pb[first]
    lookup = {b: i for i, b in enumerate(pb1)}
    missing = [b for b in tb if b not in lookup]
    if missing:
        raise InputError(f"{len(missing)} test spectra have no predicted spectrum, e.g. {missing[0]!r}")
    keep_ref = ~np.isin(rb, np.unique(tb))
    lib = np.concatenate([np.asarray(predicted_spectra, np.float32)[first],
                          np.asarray(reference_spectra, np.float32)[keep_ref]])
    lib_keys = np.concatenate([pb1, rb[keep_ref]])
    lib_mw = np.concatenate([np.asarray(predicted_mw)[first], np.asarray(reference_mw)[keep_ref]])
    is_pred = np.zeros(len(lib), dtype=bool)
    is_pred[: len(first)] = True
    return LibraryEval(np.asarray(test_spectra, np.float32), tb, np.asarray(test_mw), lib, lib_keys,
                       lib_mw, is_pred, np.asarray([lookup[b] for b in tb], dtype=np.int64))


def evaluate_predictions(task: LibraryEval, ks: Sequence[int] = DEFAULT_KS,
                         mass_filter: float | None = 5.0, mz_power: float = 1.0,
                         intensity_power: float = 0.5) -> dict:
    """All headline metrics of a :class:`LibraryEval`: Recall@K with and without the mass filter,
    mean cosine, MAE and RMSE of each query against its compound's prediction.

    Returns
    -------
    dict
        ``recall@K``, ``recall@K_mass<D>`` (when ``mass_filter`` is set), ``mean_cosine``, ``mae``,
        ``rmse``, ``n_queries``, ``n_compounds``, ``n_library`` (floats and ints only).
    """
    args = (task.query_spectra, task.query_keys, task.query_mw, task.library_spectra,
            task.library_keys, task.library_mw)
    res = library_match(*args, ks=ks, mz_power=mz_power, intensity_power=intensity_power)
    out = {f"recall@{k}": res[f"recall@{k}"] for k in ks}
    if mass_filter is not None:
        resm = library_match(*args, ks=ks, mass_filter=mass_filter, mz_power=mz_power,
                             intensity_power=intensity_power)
        out.update({f"recall@{k}_mass{mass_filter:g}": resm[f"recall@{k}"] for k in ks})
    pred = task.library_spectra[task.query_pred_row]
    out.update(mean_cosine=mean_cosine(pred, task.query_spectra), mae=mae(pred, task.query_spectra),
               rmse=rmse(pred, task.query_spectra), n_queries=int(len(task.query_keys)),
               n_compounds=int(task.library_is_predicted.sum()), n_library=int(len(task.library_keys)))
    return out


def _popcount_rows(packed: np.ndarray) -> np.ndarray:
    return np.unpackbits(packed, axis=1).sum(axis=1, dtype=np.int64)


def nearest_neighbour_predict(query_fps: np.ndarray, train_fps: np.ndarray, train_spectra: np.ndarray,
                              chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-neighbour baseline: the spectrum of the most Tanimoto-similar training row.

    Parameters
    ----------
    query_fps, train_fps
        Bit-packed fingerprints (``np.packbits``, uint8 ``(N, nbytes)``), e.g. the shards' ``ecfp``.
    train_spectra
        ``(Nt, B)`` spectra aligned with ``train_fps`` (one row per training spectrum).
    chunk
        Rows per block of the pairwise computation (bounds memory to ~``chunk**2`` floats).

    Returns
    -------
    tuple of numpy.ndarray
        ``(predicted (Nq, B), neighbour index (Nq,), Tanimoto similarity (Nq,))``. Ties go to the
        lowest training index; two empty fingerprints have similarity 0.
    """
    q = np.asarray(query_fps, dtype=np.uint8)
    t = np.asarray(train_fps, dtype=np.uint8)
    if q.ndim != 2 or t.ndim != 2 or q.shape[1] != t.shape[1]:
        raise ValueError(f"fingerprints must be packed 2-D arrays of equal width: {q.shape}, {t.shape}")
    if len(t) == 0:
        raise InputError("nearest_neighbour_predict needs at least one training fingerprint")
    q_pop, t_pop = _popcount_rows(q), _popcount_rows(t)
    best_sim = np.full(len(q), -1.0)
    best_idx = np.zeros(len(q), dtype=np.int64)
    for qlo in range(0, len(q), chunk):
        qbits = np.unpackbits(q[qlo:qlo + chunk], axis=1).astype(np.float32)
        qp = q_pop[qlo:qlo + chunk, None]
        for tlo in range(0, len(t), chunk):
            tbits = np.unpackbits(t[tlo:tlo + chunk], axis=1).astype(np.float32)
            inter = qbits @ tbits.T  # exact: integer counts <= nbits < 2**24
            union = qp + t_pop[None, tlo:tlo + chunk] - inter
            sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            j = np.argmax(sim, axis=1)
            s = sim[np.arange(len(j)), j]
            better = s > best_sim[qlo:qlo + chunk]
            best_sim[qlo:qlo + chunk][better] = s[better]
            best_idx[qlo:qlo + chunk][better] = tlo + j[better]
    return np.asarray(train_spectra)[best_idx], best_idx, best_sim
