#!/usr/bin/env python3
"""Issue 17 (a measurement, not a feature): how much of each query's +-5 Da window could a
cheap upper bound of the cosine skip before the full product?

For every query (random sample) the exact top-10 threshold t of its window is computed, then the
share of window entries whose bound is >= t (those a bound-first search would still have to
score). Two rigorous bounds of cos(q, e) for unit, non-negative weight vectors:

- projection: ``p_q . p_e + r_q r_e`` with ``p = V^T w`` on the top-k eigenvectors ``V`` of the
  library's second moment (every 7th entry) and ``r = sqrt(1 - |p|^2)`` (Cauchy-Schwarz on the
  residuals); one (k+1)-dim product per entry, stored per entry;
- query's top-t peaks: ``sum_T q_i e_i + |q_rest| sqrt(1 - sum_T e_i^2)`` over the query's t
  largest weights T (query-adaptive; needs those t columns of every entry).

    python tools/bench/search_bounds.py LIB.h5 QUERIES.msp [--queries 200]
"""

from __future__ import annotations

import argparse

import numpy as np

from neimsctl.evaluate.matching import Score, _Queries
from neimsctl.io.rejects import Tally
from neimsctl.io.spectral_index import open_index
from neimsctl.search.run import read_queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index")
    ap.add_argument("queries")
    ap.add_argument("--queries", dest="n", type=int, default=200)
    ap.add_argument("--tolerance", type=float, default=5.0)
    a = ap.parse_args()
    lib = open_index(a.index)
    w = np.zeros((lib.n, lib.n_bins), dtype=np.float32)
    for b in range(len(lib.dense_width)):
        lo, ch = lib.dense_chunk(b, True)
        w[lo:lo + len(ch.weights), :ch.weights.shape[1]] = ch.weights
    batch = next(read_queries([a.queries], Tally(), batch=1 << 30))
    q = _Queries(batch.block, Score(), lib.n_bins).values64.astype(np.float32)
    lo, hi = lib.window(np.nan_to_num(batch.mw), a.tolerance)
    sel = np.random.default_rng(0).choice(len(q), size=min(a.n, len(q)), replace=False)
    thresholds = {}
    for i in sel:
        s = w[lo[i]:hi[i]] @ q[i]
        thresholds[i] = np.sort(s)[-10] if len(s) >= 10 else 0.0
    sample = w[::7].astype(np.float64)
    ev, vecs = np.linalg.eigh(sample.T @ sample)
    vecs, ev = vecs[:, ::-1], ev[::-1]
    print(f"{lib.n} entries, {len(sel)} queries, window median {int(np.median((hi - lo)[sel]))} entries")
    print("| bound | energy held | window entries kept (median) | kept (mean) |")
    print("|---|---|---|---|")
    for k in (16, 32, 64):
        v = vecs[:, :k].astype(np.float32)
        kept = []
        for i in sel:
            e = w[lo[i]:hi[i]]
            pe, pq = e @ v, q[i] @ v
            bound = pe @ pq + np.sqrt(np.maximum(0, 1 - (pe * pe).sum(1))) * np.sqrt(max(0.0, 1 - pq @ pq))
            kept.append(float((bound >= thresholds[i]).mean()))
        print(f"| projection, k = {k} | {ev[:k].sum() / ev.sum():.3f} (library) | {np.median(kept):.4f} | {np.mean(kept):.4f} |")
    for t in (8, 16, 32):
        kept, held = [], []
        for i in sel:
            e = w[lo[i]:hi[i]]
            top = np.argsort(-q[i])[:t]
            qt = q[i][top]
            held.append(float(qt @ qt))
            et = e[:, top]
            bound = et @ qt + np.sqrt(max(0.0, 1 - qt @ qt)) * np.sqrt(np.maximum(0, 1 - (et * et).sum(1)))
            kept.append(float((bound >= thresholds[i]).mean()))
        print(f"| query's top {t} peaks | {np.median(held):.3f} (query, median) | {np.median(kept):.4f} | {np.mean(kept):.4f} |")


if __name__ == "__main__":
    main()
