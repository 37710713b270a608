#!/usr/bin/env python3
"""Bond-masking pretraining throughput (molecules/s) on CPU: model step and featurization.

Both wall-clock molecules/s and molecules per CPU-second of this process are printed; on a
shared machine the second is the steadier number (2 threads: a quiet 2-core machine gives at
most about twice it).

For each config (default: the pretrain cpu-small and paper profiles) and precision (fp32, bf16
autocast) it times optimizer steps (mask + encode + head + backward + clip + AdamW) on real
MOSES batches already featurized, after warm-up steps, and separately the on-the-fly
featurization rate of one process (SMILES -> graph batch), which a DataLoader worker delivers.

    python tools/bench/bench_pretrain.py                       # both configs, fp32 and bf16
    python tools/bench/bench_pretrain.py --steps 5 --configs configs/pretrain/teacher-cpu-small.yaml
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from neimsctl.data.smiles_stream import StreamSpec, featurize_batch  # noqa: E402
from neimsctl.models.teacher import TeacherModel  # noqa: E402
from neimsctl.nn.bond_masking import BondMaskingHead  # noqa: E402
from neimsctl.train.config import load_config  # noqa: E402
from neimsctl.train.epoch import autocast  # noqa: E402
from neimsctl.train.pretrain import BondMaskingModel, pretrain_optimizer  # noqa: E402

MOSES = ROOT.parent / "shared" / "data" / "pretrain" / "moses_train.smi.zst"


def bench(cfg_path: str, precision: str, batches: list, steps: int, warmup: int,
          fused: bool) -> tuple[float, float, int]:
    cfg = load_config(cfg_path, [] if fused else ["optim.name=adamw"])
    torch.manual_seed(0)
    teacher = TeacherModel(TeacherModel.config_class.from_dict(cfg.model))
    model = BondMaskingModel(teacher, BondMaskingHead(teacher.config.hidden, teacher.config.hidden))
    opt = pretrain_optimizer(cfg, model) if fused else torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    dev = torch.device("cpu")
    n_mol, t0, c0 = 0, 0.0, 0.0
    for i, b in enumerate(itertools.islice(itertools.cycle(batches), warmup + steps)):
        if i == warmup:
            t0, c0, n_mol = time.perf_counter(), time.process_time(), 0
        with autocast(dev, precision):
            loss = model(b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        n_mol += b.num_graphs
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n_mol / wall, n_mol / cpu, sum(p.numel() for p in model.parameters() if p.requires_grad)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=[str(ROOT / "configs/pretrain/teacher-cpu-small.yaml"),
                                                     str(ROOT / "configs/pretrain/teacher-paper.yaml")])
    ap.add_argument("--smiles", default=str(MOSES))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: CPU time is not inflated by spin-waiting on a shared machine)")
    ap.add_argument("--no-fused-compare", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items = list(itertools.islice(StreamSpec((args.smiles,)).items(0), 4096))
    t, c = time.perf_counter(), time.process_time()
    featurize_batch(items[:2048])
    print(f"featurize (1 process): {2048 / (time.perf_counter() - t):.0f} mol/s wall, "
          f"{2048 / (time.process_time() - c):.0f} mol per CPU-second")
    for path in args.configs:
        bs = load_config(path).train.batch_size
        batches = [featurize_batch(items[i:i + bs])[0] for i in range(0, 2048, bs)]
        for prec in ("fp32", "bf16"):
            rate, per_cpu, n = bench(path, prec, batches, args.steps, args.warmup, fused=True)
            print(f"{Path(path).name}: batch {bs}, {n:,} trained params, {prec}, fused AdamW: "
                  f"{rate:.0f} mol/s wall, {per_cpu:.0f} mol per CPU-second", flush=True)
        if not args.no_fused_compare:
            rate, per_cpu, _ = bench(path, "fp32", batches, args.steps, args.warmup, fused=False)
            print(f"{Path(path).name}: fp32, plain AdamW: {rate:.0f} mol/s wall, "
                  f"{per_cpu:.0f} mol per CPU-second", flush=True)


if __name__ == "__main__":
    main()
