#!/usr/bin/env python3
"""Would a low-rank sketch with an exact bound prune the mass-filtered search? (tried, not kept)

For a library index and query spectra: fits an orthonormal basis U (the top ``r`` eigenvectors
of the stored cosine weights' second moment, on every 16th entry), and for each query counts the
entries of its ±5 Da window whose upper bound ``q_U . l_U + |q_perp| |l_perp|`` reaches the
query's true k-th best score ("oracle": the fewest entries any such bound must keep), and those
that reach the k-th best lower bound ``q_U . l_U - |q_perp| |l_perp|`` (what a search knows
before scoring anything exactly). Prints the energy the basis captures and the counts.

usage: python tools/bench/sketch_bound.py LIB.h5 QUERIES.msp [--ranks 32 64 128] [--k 10]
(about 10 minutes and 9 GB for the 1.59M-entry library of BENCHMARKS.md)
"""

from __future__ import annotations

import argparse

import numpy as np

from neimsctl.evaluate.matching import _dense
from neimsctl.io.peak_block import cosine_weights
from neimsctl.io.rejects import Tally
from neimsctl.io.spectral_index import open_index
from neimsctl.search.run import read_queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library")
    ap.add_argument("queries")
    ap.add_argument("--ranks", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--tolerance", type=float, default=5.0)
    a = ap.parse_args()
    lib = open_index(a.library)
    n = lib.n
    weights = np.zeros((n, 501), dtype=np.float32)
    for b in range(len(lib.dense_width)):
        lo, chunk = lib.dense_chunk(b, True)
        weights[lo:lo + len(chunk), :chunk.weights.shape[1]] = chunk.weights
    sample = weights[::16].astype(np.float64)
    ev, basis = np.linalg.eigh(sample.T @ sample / len(sample))
    ev, basis = ev[::-1], basis[:, ::-1]
    print("energy captured:", {r: round(float(ev[:r].sum() / ev.sum()), 3) for r in a.ranks})
    batch = next(read_queries([a.queries], Tally(), batch=1 << 20))
    qw = _dense(batch.block, cosine_weights(batch.block, 1.0, 0.5, np.float64), np.arange(501), 501)
    lo, hi = lib.window(np.nan_to_num(batch.mw, nan=0.0), a.tolerance)
    known = np.isfinite(batch.mw)
    print(f"{len(qw)} queries, mean window {np.mean(np.where(known, hi - lo, n)):.0f} entries")
    for r in a.ranks:
        u = basis[:, :r]
        proj = np.empty((n, r))
        resid = np.empty(n)
        for s in range(0, n, 100_000):
            w = weights[s:s + 100_000].astype(np.float64)
            proj[s:s + 100_000] = w @ u
            resid[s:s + 100_000] = np.linalg.norm(w - proj[s:s + 100_000] @ u.T, axis=1)
        qp = qw @ u
        qres = np.linalg.norm(qw - qp @ u.T, axis=1)
        oracle, known_thr, window = [], [], []
        for i in range(len(qw)):
            a_, z = (lo[i], hi[i]) if known[i] else (0, n)
            if z <= a_:
                continue
            kk = min(a.k, z - a_)
            exact = weights[a_:z] @ qw[i].astype(np.float32)
            mid = proj[a_:z] @ qp[i]
            slack = qres[i] * resid[a_:z]
            oracle.append(int((mid + slack >= np.sort(exact)[-kk]).sum()))
            known_thr.append(int((mid + slack >= np.sort(np.maximum(mid - slack, 0))[-kk]).sum()))
            window.append(z - a_)
        print(f"r={r}: median residual norm library {np.median(resid):.3f}, queries {np.median(qres):.3f}; "
              f"entries kept per query (mean): oracle threshold {np.mean(oracle):.0f}, lower-bound threshold "
              f"{np.mean(known_thr):.0f}, of {np.mean(window):.0f} in the window")


if __name__ == "__main__":
    main()
