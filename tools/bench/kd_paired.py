#!/usr/bin/env python3
"""Is model group A better than group B on the same queries? A paired bootstrap over compounds.

Reads a ``compare_models.py --out DIR`` directory (``query.jsonl``, ``train.jsonl`` and one
``NAME.pred.jsonl`` per model), scores every query of every model as ``neimsctl eval`` does
(library = one prediction per test compound + every training spectrum; Recall@K by the matching
cosine on m/z^1 * I^0.5, with and without the +-5 Da filter; plain cosine against the query's
own compound's prediction), and compares the seed means of two groups, e.g. students distilled
with KD (A) against students trained without it (B), seed for seed:

- per pair of models (A[i] vs B[i], same seed): the difference of each metric;
- the difference of the group means, with a 95 % interval and the share of resamples where A is
  not ahead, from ``--boot`` resamples of the test *compounds* (with replacement; all spectra of
  a drawn compound come along), so the interval says how much the figure could move on other
  compounds like these. Seed-to-seed variation is only in it through the averaging over the
  group's seeds.

    python tools/bench/kd_paired.py /tmp/s3/cmp6 \\
        --a student-kd-pc student-kd-pc-s1 student-kd-pc-s2 \\
        --b student-nokd-pc student-nokd-pc-s1 student-nokd-pc-s2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from neimsctl.io.spectra import load_spectra
from neimsctl.evaluate.metrics import build_library_eval, cosine_rows, library_match
from neimsctl.io.inchikey import connectivity_blocks

KS = (1, 5, 10, 20)


def per_query(out: Path, name: str, query, train) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Per-query hit@K (with and without the mass filter) and plain cosine of one model."""
    pred = load_spectra(out / f"{name}.pred.jsonl")
    task = build_library_eval(query.spectra, query.keys, query.mw, pred.spectra, pred.keys, pred.mw,
                              train.spectra, train.keys, train.mw)
    args = (task.query_spectra, task.query_keys, task.query_mw, task.library_spectra,
            task.library_keys, task.library_mw)
    res: dict[str, np.ndarray] = {}
    for suffix, mf in (("", None), ("_mass5", 5.0)):
        ranks = library_match(*args, ks=KS, mass_filter=mf)["ranks"]
        for k in KS:
            res[f"recall@{k}{suffix}"] = (ranks <= k).astype(np.float64)
    res["mean_cosine"] = cosine_rows(task.library_spectra[task.query_pred_row], task.query_spectra)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="a compare_models.py --out directory")
    ap.add_argument("--a", nargs="+", required=True, help="model names of group A")
    ap.add_argument("--b", nargs="+", required=True, help="model names of group B (same order of seeds)")
    ap.add_argument("--boot", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    query, train = load_spectra(args.dir / "query.jsonl"), load_spectra(args.dir / "train.jsonl")
    if len(args.a) != len(args.b) and len(args.a) != 1:
        ap.error("--a and --b pair seeds: give as many names to each (or one --a, e.g. a teacher, "
                 "against every --b)")
    a = [per_query(args.dir, n, query, train) for n in args.a]
    b = [per_query(args.dir, n, query, train) for n in args.b]
    if len(a) == 1:
        a = a * len(b)
    metrics = list(a[0])
    comp, inverse = np.unique(connectivity_blocks(query.keys), return_inverse=True)
    rng = np.random.default_rng(args.seed)
    # per compound sums and counts, so a resample of compounds is a weighted sum
    counts = np.bincount(inverse, minlength=len(comp)).astype(np.float64)
    draws = rng.multinomial(len(comp), np.full(len(comp), 1 / len(comp)), size=args.boot).astype(np.float64)
    print(f"command: {' '.join(sys.argv)}")
    print(f"{len(query.keys)} queries of {len(comp)} test compounds; {args.boot} resamples of the "
          f"compounds (seed {args.seed})\n")
    print("| metric | A mean | B mean | A − B | per seed pair | 95 % interval | share of resamples A ≤ B |")
    print("|---|---|---|---|---|---|---|")
    for m in metrics:
        ma = np.mean([r[m] for r in a], axis=0)
        mb = np.mean([r[m] for r in b], axis=0)
        diff_sum = np.bincount(inverse, weights=ma - mb, minlength=len(comp))
        boot = (draws @ diff_sum) / (draws @ counts)
        lo, hi = np.quantile(boot, [0.025, 0.975])
        pairs = " / ".join(f"{ra[m].mean() - rb[m].mean():+.4f}" for ra, rb in zip(a, b))
        print(f"| {m} | {ma.mean():.4f} | {mb.mean():.4f} | {ma.mean() - mb.mean():+.4f} | {pairs} "
              f"| [{lo:+.4f}, {hi:+.4f}] | {np.mean(boot <= 0):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
