"""One row per stream through stacked bfloat16 linear layers, without oneDNN's per-call costs.

The student stack (:mod:`neimsctl.models.student_stack`) runs an ensemble's members on one
molecule with a batched product per layer, ``torch.baddbmm`` of one row per stream. For one row
oneDNN is far from the memory's speed (it prepares the weights on every call): the shipped
default's 20 products took ~3.8 ms where reading their 30 MB of weights takes ~0.7. The native
kernel (``neimsctl/nn/_rowgemm.c``) reads weights packed once, in the order AVX512-BF16's
``VDPBF16PS`` takes them, and sums in oneDNN's order, so its results are baddbmm's bit for bit.

An int8-stored model file (the shipped default) loads as bf16 weights that are exactly
``bf16(code * row scale)``; the loader remembers the codes on each layer
(:func:`set_int8_source`) and a :class:`PackedLayer` can read them instead, half the bytes, each
code times its scale rounded to the same bf16 weight in the kernel: the same bits again. At
batch 1 the weights come from memory, not the cache, between two molecules (RDKit and the rest
of the call run in between): the default's products took 0.93 ms of an API call with bf16
weights and 0.70 with int8 codes (BENCHMARKS.md, session 31).

The students' fragment path (each member's ``Conv1d(2, 4, 7)`` of the fragment masses, mixed
over its channels: ~3 operator calls per member) runs as one plain C loop too (:class:`FragMix`),
with the order of sums of oneDNN's bf16 convolution (per output, the kernel's taps in order, the
pair of input channels odd first, the bias last) and torch's roundings of the mix.

That order is a fact of oneDNN on this kind of CPU, not a promise: :func:`agrees` checks it for
each layer shape on inputs built so that any other order of the sums shows (large products that
cancel, the bias last), and a :class:`PackedLayer` that fails it keeps ``baddbmm``
(:func:`frag_agrees` likewise for :class:`FragMix`). Without the
extension, on a CPU without AVX512-BF16, or with ``NEIMSCTL_NATIVE=0`` in the environment (for
comparisons), every layer runs through ``baddbmm``.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from neimsctl.nn.sparse_input import SparseInputLinear, SparseRows

try:
    from neimsctl.nn import _rowgemm
    _USABLE = bool(_rowgemm.usable()) and os.environ.get("NEIMSCTL_NATIVE", "1").strip() != "0"
except ImportError:                          # built without a C compiler
    _rowgemm = None
    _USABLE = False

__all__ = ["FragMix", "PackedLayer", "SparseLayers", "agrees", "available", "frag_agrees", "int8_source",
           "pack", "set_int8_source", "sparse_agrees"]

#: Output columns per tile of the packed weights (the kernel's ``TILE``).
TILE = 128


def available() -> bool:
    """True when the native one-row kernel can run here (built, and the CPU has AVX512-BF16)."""
    return _USABLE


def pack(weight_t: Tensor) -> Tensor:
    """Weights ``(S, K, N)`` bfloat16, or their int8 codes (a layer's ``weight.t()`` per stream),
    in the kernel's layout:
    ``(S, ceil(N/16)*16*K)``, tiles of up to :data:`TILE` columns, each ``K/2`` rows of
    ``(columns, 2)`` pairs ``(w[2p, j], w[2p+1, j])``; padded columns are zero."""
    S, K, N = weight_t.shape
    if K % 2:
        raise ValueError(f"pack: the input width must be even, got {K}")
    npad = -(-N // 16) * 16
    w = torch.zeros(S, K, npad, dtype=weight_t.dtype)
    w[:, :, :N] = weight_t
    tiles = [w[:, :, t:t + TILE].reshape(S, K // 2, 2, -1).transpose(2, 3).reshape(S, -1)
             for t in range(0, npad, TILE)]
    return torch.cat(tiles, dim=1).contiguous()


def _bits(t: Tensor) -> np.ndarray:
    return t.view(torch.int16).numpy()


class PackedLayer:
    """A stack of ``S`` bfloat16 linear layers ``(S, K) -> (S, N)`` as the kernel reads them.

    ``weight_t`` ``(S, K, N)`` and ``bias`` ``(S, 1, N)`` as :class:`torch.baddbmm` takes them.
    Calling it on ``x`` ``(S, 1, K)`` gives ``baddbmm(bias, x, weight_t)`` (the same bits).

    With ``scales`` (float32 ``(S, N)``), ``weight_t`` holds int8 codes ``(S, K, N)`` whose
    weights are ``(codes.float() * scales[:, None]).bfloat16()`` (an int8-stored model file as
    loaded; :func:`int8_source`): the kernel reads the codes (half the bytes) and rounds each
    product of code and scale to that same bf16 weight."""

    def __init__(self, weight_t: Tensor, bias: Tensor, scales: Tensor | None = None) -> None:
        self.s, self.k, self.n = weight_t.shape
        self.bias = bias.reshape(bias.shape[0], -1).contiguous()
        self._b = _bits(self.bias)
        self.packed = pack(weight_t)
        self.scales: Tensor | None = None
        self._s = None
        if scales is None:
            self._w = _bits(self.packed)
        else:
            self._w = self.packed.numpy()
            self.scales = torch.zeros(self.s, self.packed.shape[1] // self.k, dtype=torch.float32)
            self.scales[:, :self.n] = scales
            self._s = self.scales.numpy()

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
        _rowgemm.gemm(_bits(x), self._w, self._b, _bits(out.view(rows, self.n)), self.n, streams, self._s)
        return out


def set_int8_source(layer: torch.nn.Module, codes: Tensor, scales: Tensor) -> None:
    """Remember on ``layer`` (an ``nn.Linear``) the int8 codes ``(out, in)`` and row scales
    ``(out,)`` its weight was loaded from (an int8-stored model file: ``weight = bf16(codes x
    scale)``), for :class:`PackedLayer`. Only a hint: :func:`int8_source` checks it."""
    layer._int8_source = (codes, scales.float())


def int8_source(layer: torch.nn.Module) -> tuple[Tensor, Tensor] | None:
    """The int8 codes and row scales ``layer``'s bfloat16 weight is, exactly (``bf16(codes *
    scale)``, every value), or None (no codes remembered, or the weight changed since)."""
    src = getattr(layer, "_int8_source", None)
    w = getattr(layer, "weight", None)
    if src is None or w is None or w.dtype != torch.bfloat16:
        return None
    codes, scales = src
    if codes.shape != w.shape or scales.shape != (w.shape[0],) or codes.dtype != torch.int8:
        return None
    if not torch.equal((codes.float() * scales[:, None]).to(torch.bfloat16), w.detach()):
        return None
    return codes, scales


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
    order of the float32 sums, or the bias added first, changes many of the bfloat16 results,
    and on :func:`_subnormal_probe`'s."""
    return _USABLE and min(S, K, N) >= 1 and K % 2 == 0 and _checked(_gemm_agrees, S, K, N)


@functools.cache
def _checked(check: Callable[..., bool], *shape: int) -> bool:
    """``check(*shape)``, once per process (its probes built outside inference mode and
    autograd, whatever the caller's): the memo behind :func:`agrees`, :func:`frag_agrees`
    and :func:`sparse_agrees`."""
    with torch.inference_mode(False), torch.no_grad():
        return bool(check(*shape))


def _gemm_agrees(S: int, K: int, N: int) -> bool:
    return all(torch.equal(PackedLayer(w, bias)(x), torch.baddbmm(bias, x, w))
               for x, w, bias in (_probe(S, K, N, 0), _subnormal_probe(S, K, N)))


#: The largest subnormal bf16 value's neighbourhood: 2**-130 (bf16 keeps fp32's exponent range).
_TINY = 2.0 ** -130


def _subnormal_probe(S: int, K: int, N: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs whose last output column is a subnormal input times a large weight plus a large
    input times a subnormal weight, and nothing else (no bias): zero where the kernel reads
    subnormals as zero (AVX512-BF16 does), 2**-29 where it does not."""
    x = torch.zeros(S, 1, K)
    w = torch.zeros(S, K, N)
    x[:, 0, 0], x[:, 0, 1] = _TINY, 2.0 ** 100
    w[:, 0, N - 1], w[:, 1, N - 1] = 2.0 ** 100, _TINY
    return x.bfloat16(), w.bfloat16(), torch.zeros(S, 1, N, dtype=torch.bfloat16)


class FragMix:
    """``k`` students' fragment paths on one molecule: each one's ``Conv1d(2, C, KW,
    padding=KW // 2)`` of the fragment rows, times its mix weights, summed over the ``C``
    channels (``StudentModel``'s ``(frag_conv(frags) * mix[..., None]).sum(1)``), in one native
    call instead of ~3 ``k`` operator calls, with the sums and roundings of torch's bf16 kernels
    (:func:`frag_agrees` checks them here). Build it with :meth:`build` (None where it does not
    apply)."""

    def __init__(self, convs: "list[torch.nn.Conv1d]") -> None:
        self.k = len(convs)
        self.c, self.kw = convs[0].out_channels, convs[0].kernel_size[0]
        self.w = torch.stack([c.weight.detach() for c in convs]).reshape(self.k, -1).contiguous()
        self.b = torch.stack([c.bias.detach() for c in convs]).contiguous()
        self._w, self._b = _bits(self.w), _bits(self.b)

    @classmethod
    def build(cls, convs: "list[torch.nn.Conv1d]", length: int) -> "FragMix | None":
        """A FragMix of ``convs`` (bf16, CPU, 2 input channels, odd kernel, zero padding of half
        the kernel, stride 1, with biases), or None: another layer, no native module, or the
        kernel's sums differ from torch's here (:func:`frag_agrees`)."""
        if not convs:
            return None
        c0 = convs[0]
        for c in convs:
            if type(c) is not torch.nn.Conv1d or c.bias is None or c.weight.dtype != torch.bfloat16 or \
                    c.weight.device.type != "cpu" or c.in_channels != 2 or c.groups != 1 or \
                    c.stride != (1,) or c.dilation != (1,) or c.padding_mode != "zeros" or \
                    c.kernel_size != c0.kernel_size or c.out_channels != c0.out_channels or \
                    c.kernel_size[0] % 2 == 0 or c.padding != (c.kernel_size[0] // 2,):
                return None
        if not frag_agrees(len(convs), c0.out_channels, c0.kernel_size[0], length):
            return None
        return cls(convs)

    def __call__(self, frags: Tensor, mix: Tensor) -> Tensor:
        """``frags`` ``(1, 2, L)`` and ``mix`` ``(k, 1, C)``, bf16 -> ``(k, 1, L)``."""
        if frags.dim() != 3 or tuple(frags.shape[:2]) != (1, 2) or tuple(mix.shape) != (self.k, 1, self.c) or \
                frags.dtype != torch.bfloat16 or mix.dtype != torch.bfloat16:
            raise ValueError(f"expected bfloat16 fragment rows (1, 2, L) and mix ({self.k}, 1, {self.c}), got "
                             f"{frags.dtype} {tuple(frags.shape)} and {mix.dtype} {tuple(mix.shape)}")
        x = frags.reshape(2, -1).contiguous()
        out = torch.empty(self.k, x.shape[1], dtype=torch.bfloat16)
        _rowgemm.frag_mix(_bits(x), self._w, self._b, _bits(mix.reshape(self.k, self.c).contiguous()), _bits(out))
        return out.unsqueeze(1)


def frag_agrees(k: int, C: int, KW: int, L: int) -> bool:
    """Does :class:`FragMix` give torch's bits for this shape here? Checked once per shape and
    process on inputs where another order of the sums shows: fragment rows whose products
    cancel across the two channels and the kernel, large biases, mixes that cancel; and on
    subnormals (oneDNN's bf16 convolution reads them as zero)."""
    return _USABLE and min(k, C, KW, L) >= 1 and KW % 2 == 1 and _checked(_frag_agrees, k, C, KW, L)


def _frag_agrees(k: int, C: int, KW: int, L: int) -> bool:
    g = torch.Generator().manual_seed(0)
    convs = [torch.nn.Conv1d(2, C, KW, padding=KW // 2).to(torch.bfloat16).eval() for _ in range(k)]
    base = torch.randn(L + KW - 1, generator=g) * torch.exp2(torch.randint(2, 10, (L + KW - 1,), generator=g).float())
    frags = torch.randn(1, 2, L, generator=g) * 0.01
    frags[0, 0] += base[:L]
    frags[0, 1] += base[KW - 1:]                  # x1[t] = x0[t + KW - 1]: the kernel's ends cancel
    frags = frags.bfloat16()
    for conv in convs:
        big = torch.randn(C, generator=g) * 64
        w = torch.randn(C, 2, KW, generator=g) * 0.01
        w[:, 0, KW - 1], w[:, 1, 0] = big, -big
        conv.weight.copy_(w.bfloat16())
        conv.bias.copy_((torch.randn(C, generator=g) * torch.exp2(torch.randint(0, 12, (C,), generator=g).float())).bfloat16())
    mix = (torch.randn(k, 1, C, generator=g) * 4).bfloat16()
    want = torch.stack([(conv(frags) * m.unsqueeze(-1)).sum(1) for conv, m in zip(convs, mix)])
    if not torch.equal(FragMix(convs)(frags, mix), want):
        return False
    # subnormals: a subnormal fragment value under a large weight, a large value under a
    # subnormal weight, no bias
    frags = torch.zeros(1, 2, L)
    frags[0, 0, 0], frags[0, 1, L - 1] = _TINY, 2.0 ** 100
    for conv in convs:
        conv.weight.zero_()
        conv.weight[:, 0, :] = 2.0 ** 100
        conv.weight[:, 1, :] = _TINY
        conv.bias.zero_()
    frags, mix = frags.bfloat16(), torch.ones(k, 1, C, dtype=torch.bfloat16)
    want = torch.stack([(conv(frags) * m.unsqueeze(-1)).sum(1) for conv, m in zip(convs, mix)])
    return torch.equal(FragMix(convs)(frags, mix), want)


class SparseLayers:
    """``k`` students' sparse-input layers (:class:`SparseInputLinear`, one per member, one
    shape) on one molecule's :class:`SparseRows` in one native call, each reading its own
    member's table (no copy), with the sums and roundings of torch's ``embedding_bag`` and bias
    add here (:func:`sparse_agrees` checks them). Inputs those layers would not take their
    sparse path for (dense, too many non-zeros, several rows, autograd on) go member by member.
    Build it with :meth:`build` (None where it does not apply)."""

    def __init__(self, layers: "list[SparseInputLinear]") -> None:
        self.layers = list(layers)
        self.k, self.d = len(self.layers), self.layers[0].out_features

    @classmethod
    def build(cls, layers: "list[torch.nn.Module]") -> "SparseLayers | None":
        if not layers:
            return None
        l0 = layers[0]
        for lin in layers:
            if type(lin) is not SparseInputLinear or lin.bias is None or lin.weight.dtype != torch.bfloat16 or \
                    lin.weight.device.type != "cpu" or lin.weight.shape != l0.weight.shape:
                return None
        if not sparse_agrees(len(layers), l0.in_features, l0.out_features):
            return None
        return cls(layers)

    def __call__(self, x: "Tensor | SparseRows") -> Tensor:
        """``x`` ``(1, in)`` -> ``(k, 1, out)``: member ``m``'s layer on it in row ``m``."""
        if not isinstance(x, SparseRows) or x.shape[0] != 1 or not all(lin.reads_rows(x) for lin in self.layers):
            return torch.stack([lin(x) for lin in self.layers])
        out = torch.empty(self.k, self.d, dtype=torch.bfloat16)
        _rowgemm.sparse(x.cols.contiguous().numpy(), _bits(x.values.to(torch.bfloat16).contiguous()),
                        tuple(_bits(lin._transposed()) for lin in self.layers),
                        tuple(_bits(lin.bias.detach()) for lin in self.layers), _bits(out))
        return out.view(self.k, 1, self.d)


def sparse_agrees(k: int, n_in: int, n_out: int) -> bool:
    """Does :class:`SparseLayers` give torch's bits for ``k`` layers of this shape here? Checked
    once per shape and process on inputs where another order of the sums, or another rounding,
    shows: rows whose products cancel, sums that fall on bf16 ties, large biases; and on
    subnormal weights."""
    return _USABLE and min(k, n_in, n_out) >= 1 and k <= 64 and _checked(_sparse_agrees, k, n_in, n_out)


def _sparse_agrees(k: int, n_in: int, n_out: int) -> bool:
    g = torch.Generator().manual_seed(0)
    rows = min(n_in, 1024)             # how many rows a table has changes no sum
    layers = [SparseInputLinear(rows, n_out).to(torch.bfloat16).eval() for _ in range(k)]
    nnz = max(2, min(rows // 4, 300))
    cols = torch.randperm(rows, generator=g)[:nnz].sort().values
    vals = (torch.rand(nnz, generator=g) * 3 + 0.5).round()
    vals[:2] = 1.0
    x = SparseRows(torch.tensor([0, nnz]), cols, vals.bfloat16(), rows)
    for ties in (False, True):
        for lin in layers:
            if ties:              # few-bit values: many sums fall halfway between two bf16
                w = torch.randint(-255, 256, (n_out, rows), generator=g) / 64.0
            else:                 # two large rows that cancel: another order loses the rest
                w = torch.randn(n_out, rows, generator=g) * 0.05
                big = torch.randn(n_out, generator=g) * 256
                w[:, cols[0]], w[:, cols[1]] = big, -big
            lin.weight.copy_(w.bfloat16())
            lin.bias.copy_((torch.randn(n_out, generator=g) *
                            torch.exp2(torch.randint(0, 8, (n_out,), generator=g).float())).bfloat16())
        if not torch.equal(SparseLayers(layers)(x), torch.stack([lin(x) for lin in layers])):
            return False
    for lin in layers:                    # subnormal weights under large values, no bias
        lin.weight.fill_(_TINY)
        lin.bias.zero_()
    big = SparseRows(x.offsets, x.cols, torch.full_like(x.values, 2.0 ** 100), rows)
    return torch.equal(SparseLayers(layers)(big), torch.stack([lin(big) for lin in layers]))
