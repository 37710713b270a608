#!/usr/bin/env python3
"""Nearest-neighbour baseline on feature shards: the spectrum of the most Tanimoto-similar
training compound (ECFP4, 4096 bits) as the prediction for each test compound.

Reads HDF5 shards of any mode (student, teacher or v1: all carry ``ecfp``, ``spectrum``,
``inchikey`` and ``mw``), keeps the rows with a spectrum, splits them by compound exactly as
training does (:func:`neimsctl.data.split.split_indices`, 8:1:1, seed 42), predicts each test
compound (the first row of its connectivity block) with
:func:`neimsctl.evaluate.metrics.nearest_neighbour_predict` from every training row, and prints the
eval figures of :func:`neimsctl.evaluate.metrics.evaluate_predictions` as JSON (library = one
prediction per test compound + every training spectrum; Recall@K with and without the +-5 Da
filter, mean cosine, MAE/RMSE) plus timing and the mean Tanimoto similarity of the neighbours.

    neimsctl msp2jsonl ../shared/data/massbank_ei.msp | neimsctl featurize --mode student -o lib.h5
    python tools/bench/nn_baseline.py lib.h5
    python tools/bench/nn_baseline.py lib.h5 --split val --mass-filter 0   # no filter
    python tools/bench/nn_baseline.py lib.h5 --export nn/ && \
        neimsctl eval nn/pred.jsonl nn/query.jsonl -l nn/train.jsonl --mass-filter 5   # same figures
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from neimsctl.data.split import SPLIT_NAMES, split_indices
from neimsctl.io.h5shard import ShardReader
from neimsctl.io.inchikey import connectivity_blocks
from neimsctl.evaluate.metrics import build_library_eval, evaluate_predictions, nearest_neighbour_predict


def read_shards(paths: list[Path]) -> dict[str, np.ndarray]:
    """Rows with a spectrum from every shard: ecfp (packed), spectrum, inchikey, id, mw."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("ecfp", "spectrum", "inchikey", "id", "mw")}
    for p in paths:
        with ShardReader(p) as r:
            has = r.column("has_spectrum").astype(bool)
            for k in cols:
                cols[k].append(r.column(k)[has])
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["spectrum"] = out["spectrum"].astype(np.float32)
    return out


def _lines(d: dict[str, np.ndarray], rows: np.ndarray, spectra: np.ndarray, schema: str) -> bytes:
    """JSONL of ``rows`` with peaks from ``spectra`` (base peak 999), for ``neimsctl eval``."""
    import orjson

    out = []
    for r, spec in zip(rows, spectra):
        mz = np.flatnonzero(spec > 0)
        out.append(orjson.dumps({"schema": schema, "id": str(d["id"][r]), "name": "", "smiles": "",
                                 "inchikey": str(d["inchikey"][r]), "mw": int(d["mw"][r]),
                                 "mz": mz.tolist(),
                                 "intensity": (999.0 * spec[mz] / spec.max()).round(3).tolist()}))
    return b"\n".join(out) + b"\n"


def export(out: Path, d: dict[str, np.ndarray], firsts: np.ndarray, pred: np.ndarray,
           query: np.ndarray, train: np.ndarray) -> None:
    """Write pred.jsonl (neimsctl.prediction/1), query.jsonl and train.jsonl (record/1) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "pred.jsonl").write_bytes(_lines(d, firsts, pred, "neimsctl.prediction/1"))
    (out / "query.jsonl").write_bytes(_lines(d, query, d["spectrum"][query], "neimsctl.record/1"))
    (out / "train.jsonl").write_bytes(_lines(d, train, d["spectrum"][train], "neimsctl.record/1"))


def run(paths: list[Path], split: str = "test", seed: int = 42, mass_filter: float | None = 5.0,
        ks: tuple[int, ...] = (1, 5, 10, 20), export_dir: Path | None = None) -> dict:
    t0 = time.perf_counter()
    d = read_shards(paths)
    blocks = connectivity_blocks(d["inchikey"], as_bytes=True)
    parts = split_indices(blocks, ids=[str(i).encode() for i in d["id"]], seed=seed)
    train, query = parts.train, getattr(parts, split)
    _, first = np.unique(blocks[query], return_index=True)
    firsts = query[np.sort(first)]
    t1 = time.perf_counter()
    pred, _, sim = nearest_neighbour_predict(d["ecfp"][firsts], d["ecfp"][train], d["spectrum"][train])
    t2 = time.perf_counter()
    keys = blocks.astype(str)
    if export_dir is not None:
        export(export_dir, d, firsts, pred, query, train)
    task = build_library_eval(d["spectrum"][query], keys[query], d["mw"][query], pred, keys[firsts],
                              d["mw"][firsts], d["spectrum"][train], keys[train], d["mw"][train])
    out = evaluate_predictions(task, ks=ks, mass_filter=mass_filter)
    out.update(baseline="nearest-neighbour (ECFP4 4096 Tanimoto)", split=split, seed=seed,
               n_train_spectra=int(len(train)), mean_tanimoto=float(sim.mean()),
               seconds_read=round(t1 - t0, 3), seconds_predict=round(t2 - t1, 3),
               ms_per_molecule=round(1000 * (t2 - t1) / max(len(firsts), 1), 3),
               seconds_eval=round(time.perf_counter() - t2, 3))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", nargs="+", type=Path, help="HDF5 feature shards (any mode)")
    ap.add_argument("--split", choices=SPLIT_NAMES[1:], default="test")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--mass-filter", type=float, default=5.0, help="Da; 0 = report no filtered recall")
    ap.add_argument("--export", type=Path, metavar="DIR", help="also write DIR/pred.jsonl, "
                    "query.jsonl, train.jsonl for: neimsctl eval pred.jsonl query.jsonl -l train.jsonl")
    args = ap.parse_args(argv)
    res = run(args.shards, args.split, args.seed, args.mass_filter or None, export_dir=args.export)
    json.dump(res, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
