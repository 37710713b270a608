"""The matching engine: each score against hand-computed values, and exact top-k vs an fp64 brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neimsctl.errors import InputError
from neimsctl.evaluate.matching import Score, iter_chunks, score_all, search_blocks
from neimsctl.io.peak_block import PeakBlock

N = 501


def block(*spectra: dict[int, float]) -> PeakBlock:
    dense = np.zeros((len(spectra), N), dtype=np.float32)
    for i, peaks in enumerate(spectra):
        for mz, val in peaks.items():
            dense[i, mz] = val
    return PeakBlock.from_dense(dense)


def reference(q: dict[int, float], lib: dict[int, float], name: str, reverse: bool = False,
              a: float = 1.0, b: float = 0.5) -> float:
    """Plain fp64 definitions, one pair at a time (the module docstring's formulas)."""
    if reverse:
        q = {m: v for m, v in q.items() if m in lib}
        if not q:
            return 0.0
    shared = sorted(set(q) & set(lib))
    if name == "cosine":
        wq = {m: m ** a * v ** b for m, v in q.items()}
        wl = {m: m ** a * v ** b for m, v in lib.items()}
        nq = math.sqrt(sum(x * x for x in wq.values()))
        nl = math.sqrt(sum(x * x for x in wl.values()))
        return sum(wq[m] * wl[m] for m in shared) / (nq * nl) if nq and nl else 0.0
    if name == "entropy":
        def weigh(s: dict[int, float]) -> dict[int, float]:
            tot = sum(s.values())
            p = {m: v / tot for m, v in s.items()}
            ent = -sum(x * math.log(x) for x in p.values())
            w = 0.25 + 0.25 * ent if ent < 3 else 1.0
            p = {m: x ** w for m, x in p.items()}
            tot = sum(p.values())
            return {m: x / tot for m, x in p.items()}
        pq, pl = weigh(q) if not reverse else None, weigh(lib)
        if reverse:  # weigh the full query, then restrict and renormalise
            return math.nan
        f = lambda x: x * math.log(x) if x > 0 else 0.0  # noqa: E731
        return sum(f(pq[m] + pl[m]) - f(pq[m]) - f(pl[m]) for m in shared) / math.log(4)
    wq = {m: m ** 3 * v ** 0.6 for m, v in q.items()}
    wl = {m: m ** 3 * v ** 0.6 for m, v in lib.items()}
    fd = sum(wq[m] * wl[m] for m in shared) ** 2 / (sum(x * x for x in wq.values()) * sum(x * x for x in wl.values()))
    n = len(shared)
    fr = 0.0
    for i in range(1, n):
        r = (wl[shared[i]] / wl[shared[i - 1]]) * (wq[shared[i - 1]] / wq[shared[i]])
        fr += min(r, 1 / r)
    fr = fr / (n - 1) if n >= 2 else 0.0
    nu = len(q)
    return 999 * (nu * fd + n * fr) / (nu + n)


# query {50: 1, 60: 0.5, 70: 0.25}; library {50: 0.5, 60: 1, 80: 1}
Q = {50: 1.0, 60: 0.5, 70: 0.25}
L = {50: 0.5, 60: 1.0, 80: 1.0}


def one(name: str, reverse: bool = False) -> float:
    return float(score_all(block(Q), block(L), Score(name, reverse=reverse))[0, 0])


def test_cosine_by_hand() -> None:
    # w = m/z * sqrt(I): query (50, 60*0.7071, 70*0.5), library (50*0.7071, 60, 80)
    wq = np.array([50, 60 * 0.5 ** 0.5, 35.0])
    wl = np.array([50 * 0.5 ** 0.5, 60.0, 80.0])
    expect = (wq[0] * wl[0] + wq[1] * wl[1]) / (np.linalg.norm(wq) * np.linalg.norm(wl))
    assert one("cosine") == pytest.approx(expect, abs=1e-6)
    assert one("cosine") == pytest.approx(0.5471, abs=1e-4)  # 4313.4 / (74.33 * 106.07)


def test_reverse_cosine_ignores_query_peaks_missing_from_the_library() -> None:
    wq = np.array([50, 60 * 0.5 ** 0.5])          # m/z 70 is not in the library spectrum
    wl = np.array([50 * 0.5 ** 0.5, 60.0, 80.0])
    expect = (wq @ wl[:2]) / (np.linalg.norm(wq) * np.linalg.norm(wl))
    assert one("cosine", reverse=True) == pytest.approx(expect, abs=1e-6)


def test_composite_by_hand() -> None:
    w = lambda m, i: m ** 3 * i ** 0.6  # noqa: E731
    wq = {50: w(50, 1), 60: w(60, 0.5), 70: w(70, 0.25)}
    wl = {50: w(50, 0.5), 60: w(60, 1), 80: w(80, 1)}
    fd = (wq[50] * wl[50] + wq[60] * wl[60]) ** 2 / (sum(v * v for v in wq.values()) * sum(v * v for v in wl.values()))
    r = (wl[60] / wl[50]) * (wq[50] / wq[60])      # = (2 * 2) ** 0.6 = 2.297 -> take 1/r
    fr = min(r, 1 / r) / 1                           # one adjacent pair, N_LU - 1 = 1
    expect = 999 * (3 * fd + 2 * fr) / (3 + 2)
    assert one("composite") == pytest.approx(expect, abs=1e-3)
    assert one("composite") == pytest.approx(reference(Q, L, "composite"), abs=1e-3)
    # reverse: N_U = N_LU = 2, F_D on the restricted query
    fd_r = (wq[50] * wl[50] + wq[60] * wl[60]) ** 2 / ((wq[50] ** 2 + wq[60] ** 2) * sum(v * v for v in wl.values()))
    assert one("composite", reverse=True) == pytest.approx(999 * (fd_r + fr) / 2, abs=1e-3)


def test_entropy_by_hand() -> None:
    # query p = (4, 2, 1)/7, entropy 0.956 < 3: weight 0.25 + 0.25 * S; library likewise
    def weigh(v: np.ndarray) -> np.ndarray:
        p = v / v.sum()
        s = -(p * np.log(p)).sum()
        p = p ** (0.25 + 0.25 * s)
        return p / p.sum()
    pq = dict(zip((50, 60, 70), weigh(np.array([1.0, 0.5, 0.25]))))
    pl = dict(zip((50, 60, 80), weigh(np.array([0.5, 1.0, 1.0]))))
    f = lambda x: x * math.log(x)  # noqa: E731
    expect = sum(f(pq[m] + pl[m]) - f(pq[m]) - f(pl[m]) for m in (50, 60)) / math.log(4)
    assert one("entropy") == pytest.approx(expect, abs=1e-6)
    # identical spectra score 1, disjoint ones 0
    same = score_all(block(Q), block(Q), Score("entropy"))[0, 0]
    assert same == pytest.approx(1.0, abs=1e-6)
    assert score_all(block(Q), block({90: 1.0}), Score("entropy"))[0, 0] == 0.0
    # reverse: the query restricted to m/z 50, 60 and renormalised
    a = np.array([pq[50], pq[60]])
    a = a / a.sum()
    expect_r = sum(f(x + pl[m]) - f(x) - f(pl[m]) for x, m in zip(a, (50, 60))) / math.log(4)
    assert one("entropy", reverse=True) == pytest.approx(expect_r, abs=1e-6)


def test_entropy_bound_is_an_upper_bound() -> None:
    t = np.linspace(1e-6, 1.0, 100001)
    f = (1 + t) * np.log(1 + t) - t * np.log(t)
    assert (f <= 2 * math.log(2) * np.sqrt(t) + 1e-12).all()


def test_unknown_score_and_bad_k() -> None:
    with pytest.raises(InputError, match="unknown score"):
        Score("dot")
    with pytest.raises(InputError):
        search_blocks(block(Q), iter_chunks(block(L)), Score(), k=0)


def random_library(rng: np.random.Generator, n: int, peaks: int = 40) -> PeakBlock:
    dense = np.zeros((n, N), dtype=np.float32)
    for i in range(n):
        top = int(rng.integers(60, N))
        mz = rng.choice(np.arange(1, top), size=min(peaks, top - 1), replace=False)
        dense[i, mz] = rng.random(len(mz)).astype(np.float32) ** 3
        dense[i, mz[0]] = 1.0
    return PeakBlock.from_dense(dense)


def brute(queries: PeakBlock, lib: PeakBlock, name: str, reverse: bool, k: int) -> tuple[np.ndarray, np.ndarray]:
    """fp64 brute force over every entry, ranking by (score desc, index asc)."""
    qd, ld = queries.to_dense().astype(np.float64), lib.to_dense().astype(np.float64)
    out_s, out_i = [], []
    for q in qd:
        qm = {int(m): q[m] for m in np.flatnonzero(q)}
        s = np.array([reference(qm, {int(m): row[m] for m in np.flatnonzero(row)}, name, reverse) for row in ld])
        order = np.lexsort((np.arange(len(s)), -s))[:k]
        out_s.append(s[order])
        out_i.append(order)
    return np.array(out_s), np.array(out_i)


def assert_same_hits(got_s: np.ndarray, got_i: np.ndarray, ref_s: np.ndarray, ref_i: np.ndarray, tol: float) -> None:
    np.testing.assert_allclose(got_s, ref_s, atol=tol)
    for gs, gi, rs, ri in zip(got_s, got_i, ref_s, ref_i):
        # ids equal, except that entries whose reference scores tie may swap places
        for j in np.flatnonzero(gi != ri):
            assert abs(rs[j] - rs[list(ri).index(gi[j])] if gi[j] in ri else 1.0) < 1e-9 or \
                abs(gs[j] - rs[j]) < 1e-9, (gi, ri)


@pytest.mark.parametrize("name", ["cosine", "composite", "entropy"])
@pytest.mark.parametrize("reverse", [False, True])
def test_exact_top10_equals_fp64_brute_force(name: str, reverse: bool) -> None:
    rng = np.random.default_rng(7)
    lib = random_library(rng, 250)
    # queries: noisy copies of library entries plus random spectra
    qd = lib.to_dense()[[3, 100, 249]] * rng.uniform(0.7, 1.3, size=(3, N)).astype(np.float32)
    queries = PeakBlock.from_dense(np.concatenate([qd, random_library(rng, 2).to_dense()]))
    if name == "entropy" and reverse:
        ref_s = score_all(queries, lib, Score(name, reverse=True))  # no scalar reference: compare engines
        order = np.lexsort((np.broadcast_to(np.arange(len(lib)), ref_s.shape), -ref_s), axis=1)[:, :10]
        ref_i, ref_s = order, np.take_along_axis(ref_s, order, axis=1)
    else:
        ref_s, ref_i = brute(queries, lib, name, reverse, 10)
    res = search_blocks(queries, iter_chunks(lib, 97), Score(name, reverse=reverse), 10)
    tol = 1e-3 if name == "composite" else 1e-5
    assert_same_hits(res.scores, res.index, ref_s, ref_i, tol)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_query_of_only_weightless_peaks_has_no_hit_and_spares_the_others(reverse: bool) -> None:
    """Peaks only at m/z 0 weigh nothing in the composite (m/z^3): that query has no hit, and
    the queries beside it in the batch keep theirs (the exact stage crashed on it)."""
    rng = np.random.default_rng(5)
    lib = random_library(rng, 120)
    good = lib.to_dense()[[7]]
    zero = np.zeros((1, N), dtype=np.float32)
    zero[0, 0] = 1.0
    score = Score("composite", reverse=reverse)
    both = search_blocks(PeakBlock.from_dense(np.concatenate([good, zero])), iter_chunks(lib, 50),
                         score, 5)
    alone = search_blocks(PeakBlock.from_dense(good), iter_chunks(lib, 50), score, 5)
    np.testing.assert_array_equal(both.index[0], alone.index[0])
    np.testing.assert_array_equal(both.scores[0], alone.scores[0])
    assert (both.index[1] == -1).all()


@pytest.mark.parametrize("powers", [(8.0, 0.5), (10.0, 10.0)])
def test_high_powers_do_not_overflow_float32(powers: tuple[float, float]) -> None:
    """m/z**8 squared leaves float32 (500**16): the weights were inf/NaN and hits were dropped."""
    from neimsctl.io.peak_block import cosine_weights

    rng = np.random.default_rng(11)
    dense = random_library(rng, 60).to_dense() * 999.0
    dense[np.arange(60), N - 1 - np.arange(60)] = 999.0   # a high peak of its own each (m/z 441-500)
    lib = PeakBlock.from_dense(dense)
    w32 = cosine_weights(lib, *powers)
    w64 = cosine_weights(lib, *powers, dtype=np.float64)
    assert w32.dtype == np.float32 and np.isfinite(w32).all()
    np.testing.assert_allclose(w32, w64, rtol=1e-6, atol=1e-30)
    res = search_blocks(lib, iter_chunks(lib, 25), Score("cosine", *powers), 1)
    np.testing.assert_array_equal(res.index[:, 0], np.arange(len(lib)))   # each finds itself
    np.testing.assert_allclose(res.scores[:, 0], 1.0, atol=1e-9)


def test_chunk_size_does_not_change_the_hits() -> None:
    rng = np.random.default_rng(3)
    lib = random_library(rng, 500)
    queries = PeakBlock.from_dense(lib.to_dense()[:20])
    for name in ("cosine", "entropy", "composite"):
        a = search_blocks(queries, iter_chunks(lib, 500), Score(name), 5)
        b = search_blocks(queries, iter_chunks(lib, 33), Score(name), 5)
        np.testing.assert_array_equal(a.index, b.index)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
        assert (a.index[:, 0] == np.arange(20)).all()   # each spectrum finds itself first


@pytest.mark.parametrize("bf16", [False, True])
def test_windows_and_allowed_restrict_the_entries(bf16: bool) -> None:
    rng = np.random.default_rng(5)
    lib = random_library(rng, 200)
    queries = PeakBlock.from_dense(lib.to_dense()[[10, 150]])
    lo, hi = np.array([100, 0]), np.array([200, 120])
    res = search_blocks(queries, iter_chunks(lib, 64), Score(), 5, windows=(lo, hi), bf16=bf16)
    assert ((res.index[0] >= 100) & (res.index[0] < 200)).all()
    assert (res.index[1] < 120).all()
    even = lambda a, b: (np.arange(a, b) % 2) == 0  # noqa: E731
    res = search_blocks(queries, iter_chunks(lib, 64), Score("entropy"), 5, allowed=even)
    assert (res.index % 2 == 0).all() and res.index[0, 0] == 10
    few = search_blocks(queries, iter_chunks(lib, 64), Score(), 5, windows=(np.array([0, 0]), np.array([2, 0])),
                        bf16=bf16)
    assert list(few.index[0][:2]) != [-1, -1] and (few.index[0][2:] == -1).all() and (few.index[1] == -1).all()


def test_bf16_first_pass_gives_the_same_exact_hits() -> None:
    """The bfloat16 first pass only chooses which entries are scored exactly: same hits, same scores."""
    rng = np.random.default_rng(11)
    lib = random_library(rng, 600)
    qd = lib.to_dense()[::40] * rng.uniform(0.8, 1.2, size=(15, N)).astype(np.float32)
    queries = PeakBlock.from_dense(qd)
    a = search_blocks(queries, iter_chunks(lib, 128), Score(), 10, bf16=False)
    b = search_blocks(queries, iter_chunks(lib, 128), Score(), 10, bf16=True)
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.scores, b.scores)
    ref_s, ref_i = brute(queries, lib, "cosine", False, 10)
    assert_same_hits(b.scores, b.index, ref_s, ref_i, 1e-6)


def stored_index(tmp_path, lib: PeakBlock, block_size: int):
    """An index of ``lib`` (all one mass: the entry order is kept) with stored weights in blocks
    of ``block_size`` entries."""
    import h5py

    from neimsctl.io.spectral_index import IndexWriter, _write_dense, open_index

    w = IndexWriter(tmp_path / "ix.h5")
    n = len(lib)
    w.add(lib, mw=[100] * n, predicted=[True] * n, source=[w.add_source("lib", "predicted")] * n,
          inchikey=[""] * n, ids=[str(i) for i in range(n)], names=[""] * n, smiles=[""] * n, formula=[""] * n)
    w.close()
    w.file.close()
    with h5py.File(tmp_path / "ix.h5", "a") as f:
        for key in ("dense", "dense_ptr", "dense_width"):
            del f[key]
        _write_dense(f, n, block_size)
    return open_index(tmp_path / "ix.h5")


@pytest.mark.parametrize("bf16", [False, True])
def test_stored_weights_give_the_exact_hits(tmp_path, bf16: bool) -> None:
    """The first pass over an index's stored bfloat16 weights only chooses which entries are
    scored exactly: the hits and scores equal those of the peak lists, with windows and allowed
    entries; a cosine of other powers reads the peak lists of the same chunks."""
    rng = np.random.default_rng(13)
    lib = random_library(rng, 700)
    qd = lib.to_dense()[::35] * rng.uniform(0.8, 1.2, size=(20, N)).astype(np.float32)
    queries = PeakBlock.from_dense(qd)
    ix = stored_index(tmp_path, lib, 128)
    dense = [ix.dense_chunk(b, float32=not bf16) for b in range(-(-len(lib) // 128))]
    bits = [ix.dense_chunk(b) for b in range(-(-len(lib) // 128))]
    lo = rng.integers(0, 600, size=20)
    windows = (lo, lo + rng.integers(1, 300, size=20))
    odd = lambda a, b: (np.arange(a, b) % 3) != 0  # noqa: E731
    for score in (Score(), Score(mz_power=0.5)):
        for kw in ({}, {"windows": windows}, {"allowed": odd}):
            a = search_blocks(queries, iter_chunks(lib, 128), score, 10, **kw)
            b = search_blocks(queries, iter(dense), score, 10, bf16=bf16, **kw)
            c = search_blocks(queries, iter(bits), score, 10, **kw)       # bits, float32 pass
            np.testing.assert_array_equal(c.scores, b.scores)
            np.testing.assert_array_equal(a.index, b.index)
            np.testing.assert_array_equal(a.scores, b.scores)
            if score == Score() and not kw:
                plain = b
    ref_s, ref_i = brute(queries, lib, "cosine", False, 10)
    assert_same_hits(plain.scores, plain.index, ref_s, ref_i, 1e-6)
    ix.close()


@pytest.mark.parametrize("first_pass", ["peaks", "stored", "stored-bf16"])
def test_a_chunks_own_kth_score_cuts_its_candidates(tmp_path, monkeypatch, first_pass: str) -> None:
    """A chunk with many entries above the query's k-th score from earlier chunks: only those
    that can reach the chunk's own k-th score (its k-th first-pass score, less the margin) are
    scored exactly; the hits still equal the float64 brute force, ties (identical copies) included."""
    from neimsctl.evaluate import matching

    rng = np.random.default_rng(29)
    base = random_library(rng, 1).to_dense()[0]
    weak = random_library(rng, 64).to_dense()                  # chunk 0: unrelated spectra
    noisy = base * rng.uniform(0.0, 2.0, size=(128, N)).astype(np.float32) ** rng.uniform(0.2, 3.0, size=(128, 1))
    noisy[:, np.argmax(base)] = 1.0
    copies = np.repeat(base[None], 10, axis=0)                 # ties at the top
    lib = PeakBlock.from_dense(np.concatenate([weak, noisy[:64], copies, noisy[64:]]).astype(np.float32))
    queries = PeakBlock.from_dense(np.array([base, noisy[3]], dtype=np.float32))
    pairs: list[int] = []
    exact = matching._exact_cosine

    def counted(q, sel, block, score, rows, cols):
        pairs.append(len(rows))
        return exact(q, sel, block, score, rows, cols)

    monkeypatch.setattr(matching, "_exact_cosine", counted)
    if first_pass == "peaks":
        chunks = iter_chunks(lib, 64)
    else:
        ix = stored_index(tmp_path, lib, 64)
        chunks = iter([ix.dense_chunk(b, float32=first_pass == "stored") for b in range(-(-len(lib) // 64))])
    res = search_blocks(queries, chunks, Score(), 5, bf16=first_pass == "stored-bf16")
    ref_s, ref_i = brute(queries, lib, "cosine", False, 5)
    assert_same_hits(res.scores, res.index, ref_s, ref_i, 1e-6)
    np.testing.assert_array_equal(res.index[0], np.arange(128, 133))    # the first copies, in order
    # chunk 1 (64 noisy copies, all above the unrelated chunk's k-th): far fewer than all scored
    assert pairs[1] < 40, pairs


@pytest.mark.parametrize("bits", [False, True])
def test_fresh_start_is_at_most_the_kth_score(bits: bool) -> None:
    """The first threshold of a query without k hits: at most its row's k-th best score times
    the margin factor (so every entry that can still be a hit is kept, not only the k-th best),
    at least k scores reach it where k are positive, and it is positive (entries sharing no peak
    are never candidates)."""
    from neimsctl.evaluate.matching import _fresh_start
    from neimsctl.io.peak_block import bf16_bits, bf16_values

    rng = np.random.default_rng(31)
    rows = [rng.random(300) ** p for p in (1, 8, 40, 200)]          # spread, then steep rows
    rows.append(np.where(np.arange(300) < 3, rng.random(300), 0.0))  # fewer than k positive
    rows.append(np.zeros(300))
    s = np.array(rows, dtype=np.float32)
    s[:4, 7] = 1.0
    if bits:
        s = bf16_bits(s)
    k = 10
    factor = np.float32(0.995 / 1.005)
    start = _fresh_start(s, k, bits, bf16_values if bits else (lambda a: a), factor)
    vals = bf16_values(s) if bits else s
    for row, t in zip(vals, bf16_values(start) if bits else start):
        positive = np.sort(row[row > 0])[::-1]
        assert t > 0
        assert np.count_nonzero(row >= t) >= min(k, len(positive))
        if len(positive) >= k:
            assert t <= positive[k - 1] * factor


def test_a_hit_just_below_the_fresh_start_is_kept() -> None:
    """A query's first chunk: 1/2 of its best first-pass score is reached by k scores and its
    k-th best lies just above that; an entry whose first pass is just below 1/2 but whose exact
    score beats the k-th (within the margin) is a hit. It was left out: the fresh threshold was
    1/2 itself, not 1/2 times the margin (found with -k 1000 on the MassBank spectra)."""
    from neimsctl.evaluate.matching import _take_topk

    rel = 0.005
    s = np.array([[1.0, 0.6, 0.502, 0.499, 0.1]], dtype=np.float32)    # k = 3: 0.5 reached by 3
    exact = np.array([1.0, 0.6, 0.502 * 0.996, 0.499 * 1.004, 0.1])     # entry 3 beats entry 2
    best_s, best_i = np.full((1, 3), -np.inf), np.full((1, 3), -1, dtype=np.int64)
    _take_topk(best_s, best_i, np.array([0]), s, 0, 3, rel, lambda rows, cols: exact[cols])
    assert best_i.tolist() == [[0, 1, 3]]
    np.testing.assert_array_equal(best_s[0], exact[[0, 1, 3]])


def _filtered_brute(queries: PeakBlock, lib: PeakBlock, k: int, windows, keep) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of score_all's float64 cosines within each query's window and the allowed entries."""
    s = score_all(queries, lib, Score())
    idx = np.arange(len(lib))
    ok = s > 0
    if windows is not None:
        ok &= (idx[None] >= windows[0][:, None]) & (idx[None] < windows[1][:, None])
    if keep is not None:
        ok &= keep[None]
    s = np.where(ok, s, -np.inf)
    order = np.lexsort((np.broadcast_to(idx, s.shape), -s), axis=1)[:, :k]
    top = np.take_along_axis(s, order, 1)
    return top, np.where(np.isfinite(top), order, -1)


@pytest.mark.parametrize("seed", range(4))
def test_random_cases_give_the_brute_force_hits(tmp_path, seed: int) -> None:
    """Random libraries with clusters of near-copies (scores packed within the first passes'
    margins) and exact duplicates, windows, allowed entries, k from 1 to 12: every first pass
    (peaks, stored weights as float32 or bf16 bits, a bf16 product) gives the float64 brute
    force's hits. (Cutting at a chunk's own k-th first-pass score without the margin, or
    starting a fresh query above its k-th score, fails here.)"""
    for case in range(6):
        rng = np.random.default_rng(1000 + 6 * seed + case)
        n = int(rng.integers(20, 400))
        k = int(rng.integers(1, 13))
        dense = random_library(rng, n, peaks=int(rng.integers(3, 40))).to_dense()
        for _ in range(int(rng.integers(0, 30))):                # near and exact copies
            i, j = rng.integers(0, n, 2)
            dense[j] = dense[i] * (1 + rng.normal(0, 10 ** rng.uniform(-8, -1), N).astype(np.float32) * (dense[i] > 0))
        if rng.random() < 0.5:                                   # a cluster packed near the top
            src = dense[int(rng.integers(0, n))]
            pos = rng.choice(n, int(rng.integers(12, min(n, 120))), replace=False)
            noise = rng.normal(0, 10 ** rng.uniform(-4, -1.5), (len(pos), N)).astype(np.float32)
            dense[pos] = src * (1 + noise * (src > 0))
        dense = np.abs(dense)
        dense[dense.sum(axis=1) == 0, 50] = 1.0
        lib = PeakBlock.from_dense(dense.astype(np.float32))
        nq = int(rng.integers(1, 30))
        qd = dense[rng.integers(0, n, nq)] * rng.uniform(0.5, 1.5, (nq, N)).astype(np.float32) ** rng.uniform(0, 1)
        queries = PeakBlock.from_dense(qd.astype(np.float32))
        windows = keep = None
        if rng.random() < 0.5:
            lo = rng.integers(0, n, nq)
            windows = (lo, np.minimum(n, lo + rng.integers(0, n, nq)))
        if rng.random() < 0.3:
            keep = rng.random(n) < 0.6
        kw = {"windows": windows, "allowed": (lambda a, b, m=keep: m[a:b]) if keep is not None else None}
        ref_s, ref_i = _filtered_brute(queries, lib, k, windows, keep)
        block = int(rng.choice([8, 16, 64, 128]))
        (tmp_path / f"{case}").mkdir()
        ix = stored_index(tmp_path / f"{case}", lib, block)
        nb = -(-n // block)
        for mode in ("peaks", "f32", "bits", "bf16"):
            chunks = iter_chunks(lib, block) if mode == "peaks" else \
                iter([ix.dense_chunk(b, float32=mode == "f32") for b in range(nb)])
            res = search_blocks(queries, chunks, Score(), k, bf16=mode == "bf16", **kw)
            got = np.where(np.isfinite(res.scores), res.scores, -9.0)
            np.testing.assert_allclose(got, np.where(np.isfinite(ref_s), ref_s, -9.0), rtol=0, atol=1e-9,
                                       err_msg=f"case {case} {mode}")
            for gs, gi, rs, ri in zip(res.scores, res.index, ref_s, ref_i):
                for j in np.flatnonzero(gi != ri):       # only tied entries may swap places
                    assert np.isfinite(rs[j]) and abs(gs[j] - rs[j]) < 1e-12, (case, mode, gi, ri)
        ix.close()


def test_pooled_chunks_are_released_and_reused(tmp_path) -> None:
    """Chunks read with ``pooled=True`` (as ``search`` reads them) give the same hits; the search
    releases each one's weights after its first pass and the next block reads into that memory;
    a chunk read without the pool keeps its weights (searchable again)."""
    rng = np.random.default_rng(17)
    lib = random_library(rng, 600)
    queries = PeakBlock.from_dense(lib.to_dense()[::40] * rng.uniform(0.8, 1.2, size=(15, N)).astype(np.float32))
    ix = stored_index(tmp_path, lib, 128)
    nblocks = -(-len(lib) // 128)
    plain = [ix.dense_chunk(b, float32=True) for b in range(nblocks)]
    ref = search_blocks(queries, iter(plain), Score(), 10)
    again = search_blocks(queries, iter(plain), Score(), 10)
    np.testing.assert_array_equal(ref.index, again.index)
    assert all(len(c.weights) for _, c in plain)
    pooled = [ix.dense_chunk(b, float32=True, pooled=True) for b in range(nblocks)]
    memory = [c.weights.base for _, c in pooled]
    got = search_blocks(queries, iter(pooled), Score(), 10)
    np.testing.assert_array_equal(ref.index, got.index)
    np.testing.assert_array_equal(ref.scores, got.scores)
    assert all(len(c.weights) == 0 for _, c in pooled)            # released
    _, later = ix.dense_chunk(0, float32=True, pooled=True)
    assert any(np.shares_memory(later.weights, m) for m in memory)
    ix.close()


def test_peak_read_errors_reach_the_caller(tmp_path) -> None:
    """A block whose peaks cannot be read (as from a damaged file) when its candidates are
    scored exactly: the error is raised by the search."""
    from neimsctl.errors import FormatError
    from neimsctl.io.spectral_index import DenseChunk

    rng = np.random.default_rng(19)
    lib = random_library(rng, 300)
    ix = stored_index(tmp_path, lib, 128)
    chunks = [ix.dense_chunk(b, float32=True) for b in range(3)]

    def broken() -> PeakBlock:
        raise FormatError("damaged index: cannot read peaks", file="ix.h5")

    start, good = chunks[1]
    chunks[1] = (start, DenseChunk(good.weights, broken, good.powers))
    with pytest.raises(FormatError, match="cannot read peaks"):
        search_blocks(lib.take(np.arange(5)), iter(chunks), Score(), 5)
    ix.close()


@pytest.mark.parametrize("rows", [1, 7, 22, 128, 129, 300])
def test_product_of_few_rows_transposed(rows: int) -> None:
    """``_product`` (the transposed form for few query rows) is ``a @ b`` in C order."""
    from neimsctl.evaluate.matching import _product

    rng = np.random.default_rng(rows)
    a = rng.random((rows, 310), dtype=np.float32)
    lib = rng.random((1000, 310), dtype=np.float32)
    got = _product(a, lib.T)
    assert got.flags.c_contiguous and got.shape == (rows, 1000)
    np.testing.assert_allclose(got, a.astype(np.float64) @ lib.T.astype(np.float64), rtol=1e-5)


def test_stored_weight_margin_holds() -> None:
    """The float32 product over bfloat16-rounded weights stays within ``_STORED_REL`` of the
    float64 score of the float32 weights (identical vectors, one-peak spectra, random ones)."""
    from neimsctl.evaluate import matching as m

    rng = np.random.default_rng(2)
    ones = np.zeros((3, N), dtype=np.float32)
    ones[0, 77] = ones[1, 77] = 1.0
    ones[2, 300:330] = 1.0
    both = PeakBlock.from_dense(np.concatenate([random_library(rng, 400).to_dense(), ones]))
    q = m._Queries(both, Score(), N).values
    exact = q.astype(np.float64) @ q.T.astype(np.float64)
    approx = q @ m.bf16_values(m.bf16_bits(q)).T
    assert (np.abs(approx - exact) <= m._STORED_REL * exact).all()


@pytest.mark.parametrize("amx", [False, True], ids=["numpy-torch", "amx"])
def test_first_pass_margins_hold(amx: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The error margins the exact re-scoring relies on, measured on realistic and extreme
    vectors: the float32 product, and the bfloat16 one on AMX tiles (native kernel) or in torch."""
    from neimsctl.evaluate import matching as m
    from neimsctl.io import native

    if amx and not native.amx():
        pytest.skip("no AMX tiles here (or the native kernel is not built)")
    if not amx:
        monkeypatch.setattr(m, "product", lambda q, lib: None)

    rng = np.random.default_rng(2)
    lib = random_library(rng, 400)
    dense = lib.to_dense()
    # worst cases for relative rounding: identical vectors (score 1) and one-peak spectra
    ones = np.zeros((3, N), dtype=np.float32)
    ones[0, 77] = ones[1, 77] = 1.0
    ones[2, 300:330] = 1.0
    both = PeakBlock.from_dense(np.concatenate([dense, ones]))
    q = m._Queries(both, Score(), N).values
    exact = q.astype(np.float64) @ q.T.astype(np.float64)
    for bf16, rel in ((False, m._FP32_REL), (True, m._STORED_REL if amx else m._BF16_REL)):
        approx, margin = m._approx_cosine(q, m.bf16_bits(q) if bf16 else q)
        if bf16 and not amx:
            assert approx.dtype == np.uint16
            approx = m.bf16_values(approx)
        assert margin == rel
        assert (np.abs(approx - exact) <= rel * exact).all()


def test_entropy_float32_first_pass_margin_holds() -> None:
    """The entropy's float32 first pass (square roots of the weighted intensities) stays within
    its margin of the float64 Bhattacharyya coefficient, forward and reverse, on random spectra
    and on spectra at the weighting's edge (20 equal peaks: entropy ln 20 = 2.996 < 3; 21: 3.04)
    or with tiny peaks beside a base peak."""
    from neimsctl.evaluate import matching as m

    rng = np.random.default_rng(8)
    extreme = np.zeros((6, N), dtype=np.float32)
    extreme[0, 100:120] = 1.0
    extreme[1, 100:121] = 1.0
    extreme[2, 77] = 1.0
    extreme[3, 1:300] = 0.001
    extreme[3, 400] = 1.0
    extreme[4, 50:70] = np.linspace(0.2, 1.0, 20)
    extreme[5, [60, 61]] = [1.0, 0.001]
    lib = PeakBlock.from_dense(np.concatenate([random_library(rng, 300).to_dense(), extreme]))
    cols = np.arange(N)
    for reverse in (False, True):
        score = Score("entropy", reverse=reverse)
        q = m._Queries(lib, score, N)
        fast = m._Chunk(lib, score, cols, N, bounds_only=True)
        slow = m._Chunk(lib, score, cols, N)
        assert fast.rel == m._ENTROPY32_REL and fast.sqrt.dtype == np.float32
        got = m._bounds(q.values, q.n_peaks, fast, score).astype(np.float64)
        bc = m._bounds(q.values, q.n_peaks, slow, score) - m._EPS     # float64, no slack
        assert (got >= bc * (1 + m._ENTROPY32_REL / 4)).all()       # the margin is not used up
        assert (got <= bc * (1 + 2 * m._ENTROPY32_REL) + 2 * m._EPS).all()
        assert (got >= score_all(lib, lib, score)).all()
        np.testing.assert_array_equal(fast.exact_rows(np.arange(len(lib)), cols), slow.values)


def test_bf16_bits_round_to_nearest_even_like_torch() -> None:
    import torch

    from neimsctl.evaluate import matching as m

    x = np.random.default_rng(4).random(100_000, dtype=np.float32) ** 4
    x[:3] = [0.0, 1.0, np.float32(1 + 2 ** -8)]          # 1 + 2**-8 is a tie: rounds to even (1.0)
    ours = m.bf16_bits(x)
    theirs = torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(m.bf16_values(ours), torch.from_numpy(x).bfloat16().float().numpy())


def test_cli_score_choices_are_the_engines() -> None:
    from neimsctl.cli._common import ScoreName
    from neimsctl.evaluate.matching import SCORES

    assert tuple(m.value for m in ScoreName) == SCORES


@pytest.mark.parametrize("stored", [False, True])
def test_near_copies_rank_as_in_float64(tmp_path, stored: bool) -> None:
    """Copies of a spectrum whose intensities differ by 1e-9..1e-6 (relative): their scores
    differ below float32 resolution, yet the hits come in the order of the float64 brute force."""
    rng = np.random.default_rng(21)
    base = random_library(rng, 1).to_dense()[0].astype(np.float64)
    rows = [base]
    for eps in np.geomspace(1e-9, 1e-6, 23):
        x = base.copy()
        nz = np.flatnonzero(x)
        x[rng.choice(nz, 3, replace=False)] *= 1 + eps * rng.choice([-1, 1], 3)
        rows.append(x)
    lib = PeakBlock(*PeakBlock.from_dense(np.array(rows, dtype=np.float32)))
    queries = PeakBlock.from_dense(np.array([base, rows[7]], dtype=np.float32))
    ref_s, ref_i = brute(queries, lib, "cosine", False, 15)
    chunks = iter_chunks(lib, 10)
    if stored:
        ix = stored_index(tmp_path, lib, 8)
        chunks = iter([ix.dense_chunk(b, float32=True) for b in range(3)])
    res = search_blocks(queries, chunks, Score(), 15)
    np.testing.assert_allclose(res.scores, ref_s, rtol=0, atol=1e-14)
    for got, want, s in zip(res.index, ref_i, ref_s):
        same = got == want
        assert (same | np.isclose(s, s[np.searchsorted(-s, -s)], rtol=0, atol=1e-15)).all(), (got, want)


@pytest.mark.parametrize("name, reverse", [("composite", False), ("composite", True), ("entropy", False)])
def test_pair_scores_are_the_engines_exact_scores(name: str, reverse: bool) -> None:
    """pair_scores (a search's floor) scores a pair exactly as the engine does: score_all's
    values for the same pairs, whatever else is in the block."""
    from neimsctl.evaluate.matching import pair_scores

    rng = np.random.default_rng(21)
    lib = random_library(rng, 150)
    queries = PeakBlock.from_dense(lib.to_dense()[[4, 50, 99]] * rng.uniform(0.7, 1.3, size=(3, N)).astype(np.float32))
    score = Score(name, reverse=reverse)
    every = score_all(queries, lib, score)
    qrow = rng.integers(0, 3, size=60)
    entry = rng.integers(0, len(lib), size=60)
    got = pair_scores(queries, qrow, lib.take(entry), score)
    np.testing.assert_allclose(got, every[qrow, entry], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 10])
def test_a_floor_from_entries_found_beforehand_keeps_the_hits(k: int, monkeypatch) -> None:
    """search_blocks' floor (the k-th best exact score of k entries a query may have) only spares
    exact scores: the hits equal those without it, also when the floor is the k-th hit itself;
    and fewer pairs are scored exactly."""
    import neimsctl.evaluate.matching as m

    rng = np.random.default_rng(8)
    lib = random_library(rng, 400)
    queries = PeakBlock.from_dense(lib.to_dense()[::40] * rng.uniform(0.7, 1.3, size=(10, N)).astype(np.float32))
    score = Score("composite")
    counted: list[int] = []
    exact = m._exact

    def counting(*args):
        counted.append(len(args[2]))
        return exact(*args)

    monkeypatch.setattr(m, "_exact", counting)
    plain = search_blocks(queries, iter_chunks(lib, 64), score, k)
    without, counted[:] = sum(counted), []
    assert (plain.index >= 0).all()
    # (a pair's float64 score may move in its last bits with the rows scored beside it)
    got = search_blocks(queries, iter_chunks(lib, 64), score, k, floor=plain.scores[:, -1])  # the k-th hit
    np.testing.assert_array_equal(got.index, plain.index)
    np.testing.assert_allclose(got.scores, plain.scores, rtol=1e-14)
    assert sum(counted) < without
    some = np.where(np.arange(10) % 2 == 0, plain.scores[:, -1] * 0.9, -np.inf)
    got = search_blocks(queries, iter_chunks(lib, 64), score, k, floor=some)
    np.testing.assert_array_equal(got.index, plain.index)
    np.testing.assert_allclose(got.scores, plain.scores, rtol=1e-14)
