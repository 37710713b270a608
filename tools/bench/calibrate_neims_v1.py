#!/usr/bin/env python3
"""Calibration run of the NEIMS v1 baseline on MassBank EI (not a test; a few minutes of CPU).

Trains :class:`neimsctl.models.neims_v1.NeimsV1` (published settings) for a wall-clock budget on the
compound-grouped 8:1:1 split (seed 42) of ``massbank_ei.msp`` and prints JSON: mean cosine and
Recall@1/5/10/20 on the test compounds (library = one predicted spectrum per test compound + every
training spectrum; with and without the +-5 Da filter), plus the nearest-neighbour baseline on the
same task. The model kept is the epoch with the best validation Recall@10 (validation library =
predicted val compounds + training spectra).

    python tools/bench/calibrate_neims_v1.py --minutes 5 --threads 1
    python tools/bench/calibrate_neims_v1.py --features ecfp-bits   # the shards' 4096 ECFP4 bits
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem, RDLogger
from rdkit.Chem import rdFingerprintGenerator

from neimsctl.io.spectrum import preprocess_spectrum
from neimsctl.data.split import split_indices
from neimsctl.io.inchikey import connectivity_blocks
from neimsctl.io.msp import read_msp
from neimsctl.models.neims_v1 import NeimsV1, NeimsV1Config
from neimsctl.train.losses_v1 import NeimsV1Loss
from neimsctl.evaluate.metrics import build_library_eval, evaluate_predictions, nearest_neighbour_predict

DEFAULT_MSP = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "massbank_ei.msp"


def load(path: Path, features: str) -> dict[str, np.ndarray]:
    """Parse the MSP; keep records with a SMILES and 50 <= MW <= 1000; featurize."""
    RDLogger.DisableLog("rdApp.*")
    counts = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=4096)
    keys, mws, spectra, fps, bits = [], [], [], [], []
    with open(path, "rb") as fh:
        for rec in read_msp(fh, str(path)):
            smi, mw = rec.fields.get("smiles"), rec.fields.get("mw")
            mol = Chem.MolFromSmiles(smi) if smi and rec.reason is None else None
            if mol is None or mw is None or not 50 <= float(mw) <= 1000:
                continue
            keys.append(rec.fields["inchikey"])
            mws.append(int(round(float(mw))))
            spectra.append(preprocess_spectrum(rec.mz, rec.intensity))
            b = counts.GetFingerprintAsNumPy(mol).astype(np.uint8)
            bits.append(np.packbits(b))
            fps.append(counts.GetCountFingerprintAsNumPy(mol).astype(np.float32) if features == "morgan-counts"
                       else b.astype(np.float32))
    return dict(keys=np.asarray(keys), mw=np.asarray(mws, np.int64), spectra=np.stack(spectra),
                x=np.stack(fps), bits=np.stack(bits))


def first_per_compound(keys: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Rows of ``idx`` holding the first record of each connectivity block."""
    _, first = np.unique(connectivity_blocks(keys[idx]), return_index=True)
    return idx[np.sort(first)]


def predict(model: NeimsV1, d: dict, rows: np.ndarray, batch: int = 512) -> np.ndarray:
    model.eval()
    out = [model.predict_spectrum(torch.from_numpy(d["x"][rows[i:i + batch]]),
                                  torch.from_numpy(d["mw"][rows[i:i + batch]])).numpy()
           for i in range(0, len(rows), batch)]
    return np.concatenate(out)


def task_for(d: dict, query_rows: np.ndarray, pred_rows: np.ndarray, pred: np.ndarray, train: np.ndarray):
    return build_library_eval(d["spectra"][query_rows], d["keys"][query_rows], d["mw"][query_rows], pred,
                              d["keys"][pred_rows], d["mw"][pred_rows], d["spectra"][train],
                              d["keys"][train], d["mw"][train])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--msp", type=Path, default=DEFAULT_MSP)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--features", choices=("morgan-counts", "ecfp-bits"), default="morgan-counts")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    d = load(args.msp, args.features)
    split = split_indices(d["keys"], seed=42)
    train, val, test = split.train, split.val, split.test
    val_pred_rows, test_pred_rows = first_per_compound(d["keys"], val), first_per_compound(d["keys"], test)
    log = sys.stderr
    print(f"loaded {len(d['keys'])} spectra in {time.perf_counter() - t0:.1f}s; train/val/test spectra "
          f"{len(train)}/{len(val)}/{len(test)}", file=log)

    model = NeimsV1(NeimsV1Config(input_dim=d["x"].shape[1]))
    loss_fn = NeimsV1Loss(model.config)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x, mw, y = (torch.from_numpy(d[k]) for k in ("x", "mw", "spectra"))
    rng = np.random.default_rng(args.seed)
    best, best_state, epoch, t_train = -1.0, None, 0, time.perf_counter()
    history = []
    while time.perf_counter() - t_train < args.minutes * 60:
        model.train()
        perm = rng.permutation(train)
        total = 0.0
        for i in range(0, len(perm) - 1, args.batch):  # drop a last batch of 1 (BatchNorm)
            b = torch.from_numpy(perm[i:i + args.batch])
            loss = loss_fn(model(x[b], mw[b]), y[b])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item() * len(b)
            if time.perf_counter() - t_train > args.minutes * 60:
                break
        epoch += 1
        vres = evaluate_predictions(task_for(d, val, val_pred_rows, predict(model, d, val_pred_rows), train),
                                    mass_filter=None)
        history.append(dict(epoch=epoch, s=round(time.perf_counter() - t_train, 1), loss=total / len(perm),
                            val_cos=round(vres["mean_cosine"], 4), val_r10=round(vres["recall@10"], 4)))
        print(json.dumps(history[-1]), file=log)
        if vres["recall@10"] > best:
            best = vres["recall@10"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_s = time.perf_counter() - t_train
    model.load_state_dict(best_state)
    test_task = task_for(d, test, test_pred_rows, predict(model, d, test_pred_rows), train)
    res = {"model": evaluate_predictions(test_task, mass_filter=5)}
    nn_pred, _, _ = nearest_neighbour_predict(d["bits"][test_pred_rows], d["bits"][train], d["spectra"][train])
    res["nearest_neighbour"] = evaluate_predictions(task_for(d, test, test_pred_rows, nn_pred, train), mass_filter=5)
    res.update(features=args.features, threads=args.threads, train_seconds=round(train_s, 1), epochs=epoch,
               best_val_recall10=best, n_params=sum(p.numel() for p in model.parameters()), history=history)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
