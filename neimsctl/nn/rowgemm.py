"""One row per stream through stacked bfloat16 linear layers, without oneDNN's per-call costs.

The student stack (:mod:`neimsctl.models.student_stack`) runs an ensemble's members on one
molecule with a batched product per layer, ``torch.baddbmm`` of one row per stream. For one row
oneDNN is far from the memory's speed (it prepares the weights on every call): the shipped
default's 20 products took ~3.8 ms where reading their 30 MB of weights takes ~0.7. The native
kernel (``neimsctl/nn/_rowgemm.c``) reads weights packed once, in the order AVX512-BF16's
``VDPBF16PS`` takes them, and sums in oneDNN's order, so its results are baddbmm's bit for bit.

That order is a fact of oneDNN on this kind of CPU, not a promise: :func:`agrees` checks it for
each layer shape on inputs built so that any other order of the sums shows (large products that
cancel, the bias last), and a :class:`PackedLayer` that fails it keeps ``baddbmm``. Without the
extension, on a CPU without AVX512-BF16, or with ``NEIMSCTL_NATIVE=0`` in the environment (for
comparisons), every layer runs through ``baddbmm``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

try:
    from neimsctl.nn import _rowgemm
    _USABLE = bool(_rowgemm.usable()) and os.environ.get("NEIMSCTL_NATIVE", "1").strip() != "0"
except ImportError:                          # built without a C compiler
    _rowgemm = None
    _USABLE = False

__all__ = ["PackedLayer", "agrees", "available", "pack"]

#: Output columns per tile of the packed weights (the kernel's ``TILE``).
TILE = 128

_AGREES: dict[tuple[int, int, int], bool] = {}       # agrees() per layer shape, this process


def available() -> bool:
    """True when the native one-row kernel can run here (built, and the CPU has AVX512-BF16)."""
    return _USABLE


def pack(weight_t: Tensor) -> Tensor:
    """Weights ``(S, K, N)`` bfloat16 (a layer's ``weight.t()`` per stream) in the kernel's layout:
    ``(S, ceil(N/16)*16*K)``, tiles of up to :data:`TILE` columns, each ``K/2`` rows of
    ``(columns, 2)`` pairs ``(w[2p, j], w[2p+1, j])``; padded columns are zero."""
    S, K, N = weight_t.shape
    if K % 2:
        raise ValueError(f"pack: the input width must be even, got {K}")
    npad = -(-N // 16) * 16
    w = torch.zeros(S, K, npad, dtype=torch.bfloat16)
    w[:, :, :N] = weight_t
    tiles = [w[:, :, t:t + TILE].reshape(S, K // 2, 2, -1).transpose(2, 3).reshape(S, -1)
             for t in range(0, npad, TILE)]
    return torch.cat(tiles, dim=1).contiguous()


def _bits(t: Tensor) -> "object":
    return t.view(torch.int16).numpy()


class PackedLayer:
    """A stack of ``S`` bfloat16 linear layers ``(S, K) -> (S, N)`` as the kernel reads them.

    ``weight_t`` ``(S, K, N)`` and ``bias`` ``(S, 1, N)`` as :class:`torch.baddbmm` takes them.
    Calling it on ``x`` ``(S, 1, K)`` gives ``baddbmm(bias, x, weight_t)`` (the same bits)."""

    def __init__(self, weight_t: Tensor, bias: Tensor) -> None:
        self.s, self.k, self.n = weight_t.shape
        self.packed = pack(weight_t)
        self.bias = bias.reshape(bias.shape[0], -1).contiguous()
        self._w, self._b = _bits(self.packed), _bits(self.bias)

    def __call__(self, x: Tensor, streams: np.ndarray | None = None) -> Tensor:
        """``x`` ``(S, 1, K)`` -> ``(S, 1, N)``; with ``streams`` (int64 ``(R,)``, each in
        ``[0, S)``), ``x`` ``(R, 1, K)`` and row ``r`` through stream ``streams[r]`` only."""
        rows = self.s if streams is None else len(streams)
        if tuple(x.shape) != (rows, 1, self.k) or x.dtype != torch.bfloat16:
            raise ValueError(f"expected a bfloat16 x of shape ({rows}, 1, {self.k}), "
                             f"got {x.dtype} {tuple(x.shape)}")
        x = x.reshape(rows, self.k)
        if not x.is_contiguous():
            x = x.contiguous()
        out = torch.empty(rows, 1, self.n, dtype=torch.bfloat16)
        _rowgemm.gemm(_bits(x), self._w, self._b, _bits(out.view(rows, self.n)), self.n, streams)
        return out


def _probe(S: int, K: int, N: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs on which sums in another order give other bits: products of +-2^20 that cancel,
    placed at random, between ordinary ones; biases up to 2^11, so adding them first or last
    differs too."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(S, 1, K, generator=g)
    w = torch.randn(S, K, N, generator=g)
    for s in range(S):
        for _ in range(3):
            a, b = torch.randint(0, K, (2,), generator=g).tolist()
            v = torch.randn(N, generator=g)
            x[s, 0, a] = x[s, 0, b] = 1024.0
            w[s, a], w[s, b] = 1024.0 * v, -1024.0 * v
    bias = torch.randn(S, 1, N, generator=g) * torch.exp2(torch.randint(-4, 12, (S, 1, N), generator=g).float())
    return x.bfloat16(), w.bfloat16(), bias.bfloat16()


def agrees(S: int, K: int, N: int) -> bool:
    """Does the kernel give ``torch.baddbmm``'s bits for this layer shape on this machine?

    Checked once per shape and process on :func:`_probe`'s inputs, built so that any other
    order of the float32 sums, or the bias added first, changes many of the bfloat16 results."""
    if not _USABLE or K % 2:
        return False
    if (S, K, N) not in _AGREES:
        with torch.no_grad():
            x, w, bias = _probe(S, K, N, 0)
            _AGREES[S, K, N] = torch.equal(PackedLayer(w, bias)(x), torch.baddbmm(bias, x, w))
    return _AGREES[S, K, N]
