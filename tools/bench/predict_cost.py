#!/usr/bin/env python3
"""Per-molecule CPU cost of ``predict``'s two stages, and the process's memory, as it streams.

    python tools/bench/predict_cost.py SMILES_FILE [--n 100000] [--precision auto|fp32|bf16|int8]

Runs what one ``predict --jobs N`` worker runs (:class:`neimsctl.predict.run.ChunkPredictor`
on chunks of 1,024 molecules, 1 torch thread, the shipped student) in this process and prints,
every 20,480 molecules, the CPU time per molecule of featurization and of prediction + MSP
formatting, and the maximum RSS so far: a process whose memory grows with the input shows it
here (``resource.getrusage``).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

EVERY = 20 * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("smiles", type=Path)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--model", default="student")
    args = ap.parse_args()

    import torch

    from neimsctl.io.parallel import chunked
    from neimsctl.io.inputs import iter_items
    from neimsctl.predict.run import CHUNK, ChunkPredictor, PredictOptions
    from neimsctl.predict.model import load_model

    torch.set_num_threads(1)
    lm = load_model(args.model, precision=args.precision)
    stage = ChunkPredictor(lm, PredictOptions())
    print(f"model {lm.describe()}", flush=True)
    n, since, t_feat, t_pred = 0, 0, 0.0, 0.0
    for chunk in chunked(iter_items([args.smiles]), CHUNK):
        a = time.process_time()
        block, rejects, k = stage.featurize(chunk)
        b = time.process_time()
        stage.finish(block, rejects, k)
        t_feat, t_pred = t_feat + b - a, t_pred + time.process_time() - b
        n, since = n + len(chunk), since + len(chunk)
        last = n >= args.n or len(chunk) < CHUNK
        if since >= EVERY or last:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            print(f"{n:>8} molecules  featurize {1e3 * t_feat / since:.3f} ms/mol  predict + format "
                  f"{1e3 * t_pred / since:.3f} ms/mol  max RSS {rss} MiB", flush=True)
            since, t_feat, t_pred = 0, 0.0, 0.0
        if last:
            break


if __name__ == "__main__":
    main()
