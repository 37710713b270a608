#!/usr/bin/env python3
"""The single-molecule stack's native kernels (``neimsctl/nn/_rowgemm.c``) against torch.

    python tools/bench/rowgemm_check.py orders      # which order of sums torch's kernels use here
    python tools/bench/rowgemm_check.py equal --ranges 50000:52000 60000:66000
                                                    # API single molecules vs one batch, bit for bit
    python tools/bench/rowgemm_check.py share --n 500
                                                    # the kernels' time in an API call

``orders``: for each layer shape of the shipped default's stack, ``torch.baddbmm`` of one row
in bf16 against numpy emulations of candidate orders (float32, one rounding per step), on
inputs where the order shows (products of +-2^20 that cancel, biases up to 2^11): the share of
outputs each candidate gets bit for bit. The kernel's order is the one at 1.000. The same for
the fragment convolution (``Conv1d(2, 4, 7)``) and for ``embedding_bag``'s rounding of its
float32 sums to bf16 (nearest-even vs ties away from zero), on sums built to fall on ties.

``equal``: ``SpectrumPredictor().predict_from_smiles`` of each SMILES of the given line ranges
of ``moses_train_100k.smi`` against ``predict_batch`` of all of them: how many differ.
``share``: p50 of the API call and of the time spent inside the native kernels per call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
MOSES = ROOT.parent / "shared" / "data" / "pretrain" / "moses_train_100k.smi"

#: (streams, in, out) of the shipped default's stacked dense layers
SHAPES = [(12, 512, 128), (12, 128, 512), (3, 512, 1024), (3, 1024, 512), (3, 256, 64),
          (3, 64, 4), (3, 512, 501), (3, 512, 4)]


def _bf(a: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.asarray(a, np.float32)).bfloat16().float().numpy()


def _sum(xs: np.ndarray, ws: np.ndarray, *, chunk: int, odd_first: bool,
         start: np.ndarray | None = None) -> np.ndarray:
    """sum_k xs[k] ws[k, :] in float32, per chunk of ``chunk`` k from zero (the first chunk
    from ``start`` if given), pairs of k in order (the odd one first or not), the chunks' sums
    added in order."""
    K, N = ws.shape
    tot = None
    for c0 in range(0, K, chunk):
        acc = start.astype(np.float32).copy() if start is not None and c0 == 0 else np.zeros(N, np.float32)
        for p in range(c0, min(K, c0 + chunk), 2):
            for k in ((p + 1, p) if odd_first else (p, p + 1)):
                acc = (acc + np.float32(xs[k]) * ws[k]).astype(np.float32)
        tot = acc if tot is None else (tot + acc).astype(np.float32)
    return tot


def orders() -> None:
    from neimsctl.nn.rowgemm import _probe
    candidates = {"512, odd, last (the kernel)": (512, True, "last"), "512, odd, first": (512, True, "first"),
                  "512, even, last": (512, False, "last"), "256, odd, last": (256, True, "last"),
                  "1024, odd, last": (1024, True, "last")}
    print("Share of baddbmm's bf16 outputs that each order gives bit for bit (k per partial sum; the odd "
          "or even element of each pair of k first; the bias added last or as the first sum's start):\n")
    print("| layer (streams, in, out) | " + " | ".join(candidates) + " |")
    print("|---" * (len(candidates) + 1) + "|")
    for S, K, N in SHAPES:
        x, w, bias = _probe(S, K, N, seed=0)
        want = torch.baddbmm(bias, x, w).float().numpy()
        row = []
        for chunk, odd, b in candidates.values():
            same = 0
            for s in range(S):
                xs, ws, bs = x[s, 0].float().numpy(), w[s].float().numpy(), bias[s, 0].float().numpy()
                if b == "last":
                    got = _bf(_sum(xs, ws, chunk=chunk, odd_first=odd) + bs)
                else:
                    got = _bf(_sum(xs, ws, chunk=chunk, odd_first=odd, start=bs))
                same += int((got == want[s, 0]).sum())
            row.append(f"{same / (S * N):.3f}")
        print(f"| {(S, K, N)} | " + " | ".join(row) + " |")
    _conv_orders()
    _embedding_rounding()


def _conv_orders() -> None:
    g = torch.Generator().manual_seed(0)
    C, KW, L = 4, 7, 501
    conv = torch.nn.Conv1d(2, C, KW, padding=KW // 2).to(torch.bfloat16).eval()
    base = torch.randn(L + KW - 1, generator=g) * torch.exp2(torch.randint(4, 12, (L + KW - 1,), generator=g).float())
    x = torch.randn(1, 2, L, generator=g) * 0.01
    x[0, 0] += base[:L]
    x[0, 1] += base[KW - 1:]                     # the kernel's two ends cancel
    x = x.bfloat16()
    with torch.no_grad():
        w = torch.randn(C, 2, KW, generator=g) * 0.01
        big = torch.randn(C, generator=g) * 64
        w[:, 0, KW - 1], w[:, 1, 0] = big, -big
        conv.weight.copy_(w.bfloat16())
        want = conv(x)[0].float().numpy()
    W, B = conv.weight.detach().float().numpy(), conv.bias.detach().float().numpy()
    X = np.pad(x[0].float().numpy(), ((0, 0), (KW // 2, KW // 2)))
    orders = {"taps in order, channel 1 then 0": [(ic, kw) for kw in range(KW) for ic in (1, 0)],
              "taps in order, channel 0 then 1": [(ic, kw) for kw in range(KW) for ic in (0, 1)],
              "channel 0's taps, then channel 1's": [(ic, kw) for ic in (0, 1) for kw in range(KW)]}
    print("\nConv1d(2, 4, 7) in bf16, bias last:")
    for name, order in orders.items():
        acc = np.zeros((C, L), np.float32)
        for ic, kw in order:
            acc = (acc + (W[:, ic, kw][:, None] * X[ic, kw:kw + L][None, :]).astype(np.float32)).astype(np.float32)
        got = _bf((acc + B[:, None]).astype(np.float32))
        print(f"  {name}: {(got == want).mean():.4f}")


def _embedding_rounding() -> None:
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(1)
    table = (torch.randint(-255, 256, (7146, 512), generator=g) / 64.0).bfloat16()
    cols = torch.randperm(7146, generator=g)[:300].sort().values
    vals = (torch.rand(300, generator=g) * 3 + 0.5).round().bfloat16()
    got = F.embedding_bag(cols, table, torch.tensor([0]), mode="sum", per_sample_weights=vals)[0]
    acc = np.zeros(512, np.float32)
    T, v = table.float().numpy(), vals.float().numpy()
    for i, c in enumerate(cols.tolist()):
        acc = (acc + np.float32(v[i]) * T[c]).astype(np.float32)
    u = acc.view(np.uint32)
    away = ((u + np.uint32(0x8000)) & np.uint32(0xFFFF0000)).view(np.float32)
    print("\nembedding_bag (sum, per-sample weights, bf16), sums in order in float32, rounded to bf16:")
    print(f"  to nearest even: {(_bf(acc) == got.float().numpy()).mean():.4f}; "
          f"ties away from zero: {(away == got.float().numpy()).mean():.4f}")


def _smiles(ranges: list[str]) -> list[str]:
    lines = MOSES.read_text().splitlines()
    out = []
    for r in ranges:
        a, b = (int(v) for v in r.split(":"))
        out += [ln.split()[0] for ln in lines[a:b] if ln.strip()]
    return out


def equal(ranges: list[str]) -> None:
    from neimsctl.api import SpectrumPredictor
    torch.set_num_threads(1)
    smiles = _smiles(ranges)
    p = SpectrumPredictor()
    batch = p.predict_batch(smiles, errors="nan")
    differ = refused = 0
    worst = 0.0
    for i, s in enumerate(smiles):
        if np.isnan(batch[i]).all():
            refused += 1
            continue
        one = p.predict_from_smiles(s)
        if not np.array_equal(one, batch[i]):
            differ += 1
            worst = max(worst, float(np.abs(one - batch[i]).max()))
    print(f"{len(smiles)} molecules ({refused} refused by both): {differ} single-molecule spectra differ "
          f"from the batch's (largest difference {worst:g})")


def share(n: int) -> None:
    from neimsctl.api import SpectrumPredictor
    from neimsctl.nn import rowgemm
    torch.set_num_threads(1)
    native = rowgemm._rowgemm
    if native is None or not rowgemm.available():
        sys.exit("the native kernels are not in use here")
    spent = [0.0]

    class Timed:
        def __getattr__(self, name):
            fn = getattr(native, name)

            def timed(*a):
                t = time.perf_counter()
                try:
                    return fn(*a)
                finally:
                    spent[0] += time.perf_counter() - t
            return timed
    rowgemm._rowgemm = Timed()
    smiles = _smiles([f"0:{n + 20}"])
    p = SpectrumPredictor()
    for s in smiles[:20]:
        p.predict_from_smiles(s)
    calls, kernels = [], []
    for s in smiles[20:]:
        spent[0] = 0.0
        t = time.perf_counter()
        p.predict_from_smiles(s)
        calls.append(time.perf_counter() - t)
        kernels.append(spent[0])
    print(f"{len(calls)} API calls, 1 thread: p50 {np.median(calls) * 1e3:.2f} ms, "
          f"of which in the native kernels {np.median(kernels) * 1e3:.2f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("orders")
    e = sub.add_parser("equal")
    e.add_argument("--ranges", nargs="+", default=["50000:52000", "60000:66000"])
    s = sub.add_parser("share")
    s.add_argument("--n", type=int, default=500)
    args = ap.parse_args()
    if args.cmd == "orders":
        orders()
    elif args.cmd == "equal":
        equal(args.ranges)
    else:
        share(args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
