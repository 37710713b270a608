#!/usr/bin/env python3
"""Benchmark the MoE student on the CPU: parameters, batch-1 latency and batched throughput.

Inputs are realistic student vectors (ECFP4 bits at ~3% density + log1p counts), weights are
the spec-default random initialisation (latency does not depend on training). Reports, for fp32
weights and for bf16 weights (``model.to(torch.bfloat16)``):

- batch-1 latency: median / p90 of ``--calls`` forward calls after warm-up, ``--threads1`` threads;
- the same for int8 dynamic quantization of every Linear (``quantize_dynamic``), for reference;
- throughput at batch ``--batch`` with ``--threads2`` threads, molecules per second.

Usage::

    python tools/bench/bench_student.py                     # spec defaults
    python tools/bench/bench_student.py --calls 50 --batches 3  # quick sanity run
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings

import torch

from neimsctl.models.student import StudentConfig, StudentModel


def student_inputs(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    bits = (torch.rand(n, 4096, generator=g) < 0.03).float()
    counts = torch.where(torch.rand(n, 2048, generator=g) < 0.02,
                         torch.randint(1, 12, (n, 2048), generator=g).float(), torch.zeros(n, 2048))
    return torch.cat([bits, torch.log1p(counts)], dim=1)


def latency_ms(model: torch.nn.Module, x: torch.Tensor, calls: int, warmup: int) -> tuple[float, float]:
    times = []
    with torch.inference_mode():
        for i in range(warmup + calls):
            row = x[i % len(x): i % len(x) + 1]
            t0 = time.perf_counter()
            model(row)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def throughput(model: torch.nn.Module, x: torch.Tensor, batches: int) -> float:
    with torch.inference_mode():
        model(x)  # warm-up (first calls pay for page faults and kernel set-up)
        model(x)
        t0 = time.perf_counter()
        for _ in range(batches):
            model(x)
        return batches * len(x) / (time.perf_counter() - t0)


def model_variant(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """fp32 / bf16 weights / int8 dynamic quantization of the Linear layers (a copy)."""
    m = copy.deepcopy(model)
    if name == "bf16":
        return m.to(torch.bfloat16)
    if name == "int8dyn":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--threads1", type=int, default=1)
    ap.add_argument("--threads2", type=int, default=2)
    args = ap.parse_args()

    model = StudentModel(StudentConfig()).eval()
    res: dict[str, object] = {"params": model.n_parameters(), "torch": torch.__version__}
    x1 = student_inputs(64, seed=1)
    xb = student_inputs(args.batch, seed=2)
    for name in ("fp32", "bf16", "int8dyn"):
        m = model_variant(model, name)
        torch.set_num_threads(args.threads1)
        p50, p90 = latency_ms(m, x1, args.calls, args.warmup)
        torch.set_num_threads(args.threads2)
        res[name] = {"batch1_p50_ms": round(p50, 2), "batch1_p90_ms": round(p90, 2),
                     f"batch{args.batch}_mol_per_s": round(throughput(m, xb, args.batches))}
    res["threads"] = {"batch1": args.threads1, "batched": args.threads2}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
