#!/usr/bin/env python3
"""API latency of the shipped model: ``SpectrumPredictor.predict_from_smiles`` of one molecule.

    python tools/bench/latency_api.py [--n 200] [--rounds 3]

1 torch thread; featurization (RDKit parse, ECFP4 + atom-pair counts, canonical SMILES,
InChIKey) included. Warm-up on 20 MOSES SMILES, then ``--n`` *other* SMILES timed one call each
(no structure is seen twice, so featurize's per-text cache never hits); p50/p90 per precision,
``--rounds`` alternating rounds, medians of the rounds printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from neimsctl.api import SpectrumPredictor  # noqa: E402

MOSES = ROOT.parent / "shared" / "data" / "pretrain" / "moses_train_100k.smi"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smiles", type=Path, default=MOSES)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    lines = args.smiles.read_text().splitlines()[: 20 + args.n]
    smiles = [ln.split()[0] for ln in lines if ln.strip()]
    warm, timed = smiles[:20], smiles[20:]
    torch.set_num_threads(1)
    res: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for prec in ("int8", "bf16", "fp32"):
            p = SpectrumPredictor({"precision": prec})
            for s in warm:
                p.predict_from_smiles(s)
            ts = []
            for s in timed:
                t = time.perf_counter()
                p.predict_from_smiles(s)
                ts.append((time.perf_counter() - t) * 1e3)
            res.setdefault(prec, []).append((float(np.percentile(ts, 50)), float(np.percentile(ts, 90))))
    print(f"| precision | p50 ms | p90 ms |  ({len(timed)} molecules, medians of {args.rounds} rounds)")
    print("|---|---|---|")
    for prec, v in res.items():
        print(f"| {prec} | {statistics.median(a for a, _ in v):.2f} | {statistics.median(b for _, b in v):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
