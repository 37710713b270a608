#!/usr/bin/env python3
"""Teacher CPU throughput: parameter count and training-step molecules/s, fp32 vs bf16 autocast.

Molecules are real: MassBank records (../shared/data/massbank_ei.msp, else the bundled sample)
with ``--min-atoms``..``--max-atoms`` heavy atoms (default 15..25, mean ~20), featurized with the
project's teacher featurizer and cycled into batches of ``--batch-size``. One step = forward +
MSE (sqrt space) + backward + fused AdamW step, in training mode (dropout and DropEdge on).
Also times eval-mode forward (inference) and ``mc_predict`` with 30 samples.

Prints one JSON object per setting on stdout; progress on stderr.

    python tools/bench/bench_teacher.py --iters 10 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rdkit import Chem
from torch_geometric.data import Batch, Data

from neimsctl.chem.features import TeacherFeaturizer, log1p_counts
from neimsctl.io.spectrum import preprocess_spectrum
from neimsctl.io.msp import read_msp
from neimsctl.models.teacher import TeacherConfig, TeacherModel

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (ROOT.parent / "shared" / "data" / "massbank_ei.msp", ROOT / "neimsctl" / "resources" / "sample" / "sample.msp")


def load_batches(path: Path, n_mols: int, batch_size: int, lo: int, hi: int) -> tuple[list[Batch], float]:
    feat, items = TeacherFeaturizer(), []
    with open(path, "rb") as fh:
        for rec in read_msp(fh, str(path)):
            mol = Chem.MolFromSmiles(rec.fields.get("smiles") or "")
            if mol is None or not lo <= mol.GetNumAtoms() <= hi:
                continue
            f = feat(mol)
            items.append(Data(x=torch.from_numpy(f.atom_x),
                              edge_index=torch.from_numpy(f.edge_index.T.astype(np.int64).copy()),
                              edge_attr=torch.from_numpy(f.edge_attr),
                              ecfp=torch.from_numpy(np.unpackbits(f.ecfp)[None].astype(np.float32)),
                              counts=torch.from_numpy(log1p_counts(f.counts)[None]),
                              y=torch.from_numpy(preprocess_spectrum(rec.mz, rec.intensity)[None])))
            if len(items) == n_mols:
                break
    mean_atoms = float(np.mean([d.num_nodes for d in items]))
    return [Batch.from_data_list(items[i:i + batch_size])
            for i in range(0, len(items) - batch_size + 1, batch_size)], mean_atoms


def time_train(model: TeacherModel, batches: list[Batch], iters: int, bf16: bool) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # 5x faster than foreach on CPU
    model.train()
    n = 0
    for k in range(iters + 2):                      # 2 warm-up steps
        if k == 2:
            t0, n = time.perf_counter(), 0
        b = batches[k % len(batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = model(b)
        loss = F.mse_loss(pred.float(), model.from_linear(b.y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += b.num_graphs
    return n / (time.perf_counter() - t0)


@torch.no_grad()
def time_eval(model: TeacherModel, batches: list[Batch], iters: int, bf16: bool) -> float:
    model.eval()
    n = 0
    for k in range(iters + 1):
        if k == 1:
            t0, n = time.perf_counter(), 0
        b = batches[k % len(batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(b)
        n += b.num_graphs
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-atoms", type=int, default=15)
    ap.add_argument("--max-atoms", type=int, default=25)
    ap.add_argument("--mc-samples", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    src = next(p for p in SOURCES if p.is_file())
    batches, mean_atoms = load_batches(src, 4 * args.batch_size, args.batch_size, args.min_atoms, args.max_atoms)
    model = TeacherModel(TeacherConfig())
    info = {"params": model.n_parameters(), "source": src.name, "batch_size": args.batch_size,
            "mean_heavy_atoms": round(mean_atoms, 1), "threads": args.threads, "torch": torch.__version__}
    print(json.dumps(info), flush=True)
    for bf16 in (False, True):
        prec = "bf16-autocast" if bf16 else "fp32"
        print(f"bench_teacher: {prec} ...", file=sys.stderr)
        train = time_train(model, batches, args.iters, bf16)
        infer = time_eval(model, batches, args.iters, bf16)
        print(json.dumps({"precision": prec, "train_mol_per_s": round(train, 1),
                          "eval_mol_per_s": round(infer, 1)}), flush=True)
    model.eval()
    t0 = time.perf_counter()
    model.mc_predict(batches[0], n_samples=args.mc_samples)
    ms = 1000 * (time.perf_counter() - t0) / batches[0].num_graphs
    print(json.dumps({"mc_predict_samples": args.mc_samples, "ms_per_molecule_fp32": round(ms, 1)}))


if __name__ == "__main__":
    main()
