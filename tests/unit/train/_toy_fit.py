"""Toy training run for the trainer tests: a tiny MLP on random tensors (CPU, seconds).

Run as a script (also under torchrun):
``python _toy_fit.py OUT [--epochs N] [--resume auto|PATH] [--step-sleep S] [--set k=v ...]``.
Prints ``EPOCH k`` on stdout after each finished epoch (the tests wait for it), so the test
harness can kill the process at a known point. The data order, dropout and per-sample noise all
draw on the RNGs the checkpoints must restore.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from neimsctl.train.config import load_config
from neimsctl.train.trainer import run_training, seed_everything

N_TRAIN, N_VAL, DIM = 96, 32, 8


class NoisyData(Dataset):
    """Fixed random regression data plus fresh torch/numpy noise at every access."""

    def __init__(self, n: int, seed: int, noise: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, DIM, generator=g)
        self.y = self.x @ torch.randn(DIM, 2, generator=g) + 0.1 * torch.randn(n, 2, generator=g)
        self.noise = noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        if self.noise:
            x = x + 0.01 * torch.randn(DIM) + float(np.random.normal(0, 0.01))
        return x, self.y[i]


def toy_model() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))


def toy_loss(step_sleep: float = 0.0):
    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
        if step_sleep:
            time.sleep(step_sleep)
        x, y = batch
        pred = model(x)
        mse = nn.functional.mse_loss(pred.float(), y)
        l1 = (pred.float() - y).abs().mean()
        return mse + 0.1 * l1, {"mse": float(mse.detach()), "l1": float(l1.detach())}
    return loss_fn


def toy_validate(data: NoisyData):
    def validate(model: nn.Module) -> dict[str, float]:
        pred = model(data.x)
        return {"val_mse": float(nn.functional.mse_loss(pred, data.y)),
                "val_score": float(-nn.functional.l1_loss(pred, data.y))}
    return validate


BASE = ["train.epochs=4", "train.batch_size=16", "train.grad_accum=2", "train.log_every=1",
        "train.device=cpu", "train.threads=1", "train.best_metric=val_score",
        "train.best_mode=max", "optim.lr=0.01", "schedule.name=onecycle", "schedule.interval=step"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--resume", default=None)
    ap.add_argument("--step-sleep", type=float, default=0.0)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--dump-weights", default=None, help="write PREFIX.rank<R>.pt (DDP test)")
    a = ap.parse_args(argv)
    cfg = load_config(None, BASE + a.set)
    torch.set_num_threads(1)
    seed_everything(cfg.train.seed)
    model = toy_model()
    val = NoisyData(N_VAL, 7, noise=False)
    result = run_training(cfg, model, toy_loss(a.step_sleep), NoisyData(N_TRAIN, 3, noise=True),
                          validate=toy_validate(val), out_dir=a.out, resume=a.resume,
                          on_epoch_end=lambda e, s: print(f"EPOCH {e + 1}", flush=True),
                          featurizer_hash="toyhash", report=not a.no_report)
    if a.dump_weights:
        torch.save(model.state_dict(), f"{a.dump_weights}.rank{os.environ.get('RANK', '0')}.pt")
    print(f"INTERRUPTED {result.signal}" if result.interrupted else "DONE", flush=True)
    return 128 + result.signal if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
