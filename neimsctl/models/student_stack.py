"""Several students of one configuration run as one on a single molecule (an ensemble's latency path).

At batch 1 a student's forward pass is ~100 small operator calls whose cost is mostly per call
(Python, oneDNN dispatch, a bf16 weight reorder per matrix product), not arithmetic; an ensemble
of k students pays it k times. :class:`StudentStack` holds the members' weights stacked along a
leading member axis and runs every layer once for all of them with a batched matrix product
(``torch.baddbmm``); the gate and the routing stay per member.

- **The numbers of a batch.** ``baddbmm`` of one row per member computes each member's
  product the way a many-row product (``predict``'s batches) does; layer norms keep one call
  per stream (a stacked affine would round differently), transcendental element-wise steps
  (GELU, sigmoid) run on whole rows of SIMD vectors or row by row (:func:`_each`), and the
  experts' weighted sum is added in the order :func:`neimsctl.nn.moe.dispatch` adds it. For the
  shipped bf16 default, one molecule through the stack and the same molecule in a batch give
  the same spectrum bit for bit (12,000 molecules checked, 0 differences; the members run one
  by one at batch 1 differed from the batch on 5 of 8,000, in the last bits of a few bins:
  a one-row ``nn.Linear`` of a narrow layer such as the fragment mix, 512 -> 4, sums in another
  order). So the stack is not bit for bit a member's own one-row forward pass: it differs from
  it exactly where that differs from the batch. On a CPU with AMX tiles, which oneDNN takes for
  the batch's bf16 products but not for one row, a few molecules' spectra differ from the
  batch's near bf16 midpoints (8 of 284 sample molecules; cosine >= 0.9999998, at most 9.4e-4
  of the base peak); ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` in the environment makes them
  equal again, for ~15 % of ``predict``'s throughput there (BENCHMARKS.md, session 27). A probe molecule run both ways when the stack
  is built catches systematic differences (for narrow fp32 shapes, e.g. the compact gate's
  64 -> 4, BLAS takes other kernels): :meth:`StudentStack.build` then declines.
- **The bf16 products off oneDNN.** For one row oneDNN is far slower than reading the weights
  (it prepares them on every call: 3.8 of ~8 ms of the shipped default's API call in session
  30). Where the native kernel of :mod:`neimsctl.nn.rowgemm` runs (AVX512-BF16) and sums a
  layer's shape in oneDNN's order on this machine (checked once per shape), the layer's weights
  are packed for it and ``baddbmm`` is not called: the same bits, ~3x faster; other layers, and
  fp32 stacks, keep ``baddbmm``. Layers whose members were loaded from int8 codes (an int8-stored
  file) are packed as those codes (:func:`neimsctl.nn.rowgemm.int8_source` checks that they are
  still exactly the weights): half the bytes to read, the same bits.
- **The fragment path** runs natively as well where its sums are torch's
  (:class:`neimsctl.nn.rowgemm.FragMix`: every member's fragment convolution and mix in one
  call; a copy of the convolutions' weights).
- **The sparse-input layers** (the gate's first and the shared projection) of all members run
  in one native call each where its sums and roundings are torch's here
  (:class:`neimsctl.nn.rowgemm.SparseLayers`, reading each member's own table).
- **Only the chosen experts run**, where every expert block is packed: the kernel takes each
  row's stream, so the ``k * top_k`` chosen streams run and the others are never read (half
  the experts' weights). With ``baddbmm`` every member's every expert runs (one call over
  ``k * n_experts`` streams per layer) and the chosen outputs are picked: at batch 1 one call
  over all streams is cheaper there than a call per chosen stream.
- **A copy of the dense weights.** The stacks are copies of the members' ``nn.Linear`` weights
  (the shipped default's three students: 28.6 MB as bf16, 14.7 MB packed as int8 codes; the
  sparse-input layers are not copied); the members stay untouched. :meth:`StudentStack.fresh` tells when a member changed since (its parameters
  replaced or updated in place, ``.to()``, train mode): the caller then builds a new stack.

Measured (API, the shipped three-student default, one thread): see BENCHMARKS.md "The
single-molecule latency of an ensemble".
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neimsctl.io.featblock import FRAG_BINS
from neimsctl.models.student import StudentModel, _fragment_rows
from neimsctl.nn.mass_head import activate, mask_above_mw, reverse_by_mw
from neimsctl.nn.rowgemm import FragMix, PackedLayer, SparseLayers, agrees, int8_source
from neimsctl.nn.sparse_input import SparseInputLinear, SparseRows

__all__ = ["StudentStack"]


#: Rows this many elements wide are computed in whole SIMD vectors by ATen's element-wise
#: kernels, alone or stacked; other widths end in a scalar tail, whose exp/erf round differently.
_WHOLE_VECTORS = 64


def _each(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """``fn`` (element-wise, e.g. GELU, sigmoid) on the stacked rows ``t`` ``(k, 1, width)``
    with the numbers it gives one member's ``(1, width)`` row: at once when the width is a
    multiple of :data:`_WHOLE_VECTORS`, else row by row (a stacked row would put other
    elements in the scalar tail)."""
    if t.shape[-1] % _WHOLE_VECTORS == 0:
        return fn(t)
    return torch.stack([fn(row) for row in t.unbind(0)])


def _norm(row: Tensor, norm: nn.LayerNorm) -> Tensor:
    """``norm(row)``: the kernel ``F.layer_norm`` calls, without its Python wrapper (a stack runs
    ~40 of them per molecule)."""
    return torch.layer_norm(row, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _linears(seq: nn.Module) -> list[nn.Module]:
    return [m for m in seq.children() if isinstance(m, nn.Linear)]


class _Stacked:
    """The weights and biases of one layer of every stream, as ``baddbmm`` reads them:
    ``weight_t`` ``(S, in, out)`` and ``bias`` ``(S, 1, out)``, stacked copies.

    ``contiguous``: each weight stored transposed (``(in, out)`` rows), else a transposed view
    of ``(S, out, in)``. In bf16 the contiguous layout gives the same bits and is ~20 % faster
    at batch 1 (the shipped default's expert blocks: 1.86 vs 2.39 ms, BENCHMARKS.md session
    30); in fp32 BLAS sums it in another order, so :meth:`StudentStack.build` keeps the view
    where the probe tells them apart."""

    def __init__(self, layers: Sequence[nn.Linear], contiguous: bool = True) -> None:
        self.layers = list(layers)
        weights = [lin.weight.detach() for lin in layers]
        self.bias = torch.stack([lin.bias.detach() for lin in layers]).unsqueeze(1)
        self.packed: PackedLayer | None = None
        w0 = weights[0]
        if w0.dtype == torch.bfloat16 and w0.device.type == "cpu" and \
                agrees(len(weights), w0.shape[1], w0.shape[0]):
            sources = [int8_source(lin) for lin in layers]
            if any(src is None for src in sources):
                self.packed = PackedLayer(torch.stack([w.t() for w in weights]), self.bias)
            else:                                   # the file's int8 codes: half the bytes
                self.packed = PackedLayer(torch.stack([c.t() for c, _ in sources]), self.bias,
                                          torch.stack([sc for _, sc in sources]))
            self.weight_t = None
        else:
            self.weight_t = torch.stack([w.t() for w in weights]) if contiguous \
                else torch.stack(weights).transpose(1, 2)

    def __call__(self, x: Tensor, streams: np.ndarray | None = None) -> Tensor:
        """``x`` ``(S, 1, in)`` -> ``(S, 1, out)``, stream ``s`` through its own layer; with
        ``streams`` (packed layers only), row ``r`` of ``x`` through stream ``streams[r]``."""
        if self.packed is not None:
            return self.packed(x, streams)
        return torch.baddbmm(self.bias, x, self.weight_t)


class StudentStack:
    """``k`` eval-mode students with one configuration, run together on one molecule.

    Build one with :meth:`build` (None when the members cannot be stacked); call it like a
    student's forward pass on a batch of one and get the members' ``pred`` rows ``(k, n_bins)``
    (each member's output space): ``torch.cat([m(x, mw, frags).pred for m in members])`` up to
    the last bits of a few values (see the module docstring).

    Examples
    --------
    >>> from neimsctl.models.student import StudentConfig
    >>> cfg = StudentConfig(input_dim=16, gate_hidden=(8,), expert_bottleneck=4,
    ...                     head_hidden=(12,), hidden_dim=8, n_bins=10, expert_width=8)
    >>> ms = [StudentModel(cfg).eval().to(torch.bfloat16) for _ in range(2)]
    >>> x = torch.rand(1, 16)
    >>> with torch.inference_mode():
    ...     stack = StudentStack.build(ms)
    ...     stack(x).shape
    torch.Size([2, 10])
    """

    def __init__(self, members: Sequence[StudentModel], contiguous: bool = True) -> None:
        self.members = list(members)
        m0 = self.members[0]
        cfg = self.config = m0.config
        self.k, self.n_experts = len(self.members), cfg.n_experts
        self.gate_first = [m.gate.body[0] for m in self.members]
        self.gate_first_native = SparseLayers.build(self.gate_first)
        gate_rest = [_linears(m.gate.body)[1:] for m in self.members]
        self.gate_layers = [_Stacked([g[i] for g in gate_rest], contiguous) for i in range(len(gate_rest[0]))]
        self.gate_logit = _Stacked([m.gate.logit for m in self.members], contiguous)
        self.proj = [m.proj[0] for m in self.members] if m0.proj is not None else None
        self.proj_native = SparseLayers.build(self.proj) if self.proj is not None else None
        # stream s = member * n_experts + expert, one stack per block and projection
        self.blocks = []
        for d in range(cfg.expert_depth):
            blocks = [m.experts[e][d] for m in self.members for e in range(cfg.n_experts)]
            self.blocks.append(([b.norm for b in blocks], _Stacked([b.down for b in blocks], contiguous),
                                _Stacked([b.up for b in blocks], contiguous)))
        self.norms = [m.trunk[0] for m in self.members]
        trunk = [_linears(m.trunk) for m in self.members]
        self.trunk = [_Stacked([t[i] for t in trunk], contiguous) for i in range(len(trunk[0]))]
        if cfg.mass_aware:
            self.heads = [_Stacked([getattr(m.out, name) for m in self.members], contiguous)
                          for name in ("forward_head", "reverse_head", "gate_head")]
        else:
            self.heads = [_Stacked([m.out for m in self.members], contiguous)]
        self.frag_conv = [m.frag_conv for m in self.members] if m0.frag_conv is not None else None
        self.frag_mix = _Stacked([m.frag_mix for m in self.members], contiguous) if m0.frag_conv is not None else None
        self.frag_native = FragMix.build(self.frag_conv, FRAG_BINS) if self.frag_conv is not None else None
        self.blocks_packed = all(a.packed is not None and b.packed is not None for _, a, b in self.blocks)
        stacks = [*self.gate_layers, self.gate_logit, *(st for _, a, b in self.blocks for st in (a, b)),
                  *self.trunk, *self.heads, *([self.frag_mix] if self.frag_mix is not None else [])]
        copied = [lin for st in stacks for lin in st.layers] + \
            (self.frag_conv if self.frag_native is not None else [])   # FragMix copies the convolutions
        self._params = [lin._parameters for lin in copied]
        self._sig = self._signature()

    @classmethod
    def build(cls, members: Sequence[nn.Module]) -> "StudentStack | None":
        """A stack of ``members``, or None when they are not all eval-mode students with one
        configuration, one dtype and one device, and plain ``nn.Linear`` layers (an int8
        member's quantized layers are not stacked: it keeps its own forward pass)."""
        if len(members) < 2 or not all(type(m) is StudentModel and not m.training
                                       and len(m.gate.body) > 0 for m in members):
            return None                  # (a gate without hidden layers reads x directly)
        cfg = members[0].config
        if any(m.config != cfg for m in members):
            return None
        dense = [x for m in members for x in m.modules()
                 if isinstance(x, nn.Linear) and not isinstance(x, SparseInputLinear)]
        kinds = {type(x) for m in members for x in m.modules() if "Linear" in type(x).__name__}
        if not kinds <= {nn.Linear, SparseInputLinear} or any(x.bias is None for x in dense):
            return None
        tensors = [p for m in members for p in m.parameters()]
        if len({(p.dtype, p.device) for p in tensors}) != 1:
            return None
        for contiguous in (True, False):          # the faster layout, if it gives the same bits
            stack = cls(members, contiguous)
            if stack._same_as_members():
                return stack
        return None

    @torch.no_grad()
    def _same_as_members(self) -> bool:
        """One probe molecule through the stack and through each member: bit for bit equal?

        A systematic check, once: where BLAS takes another kernel for a batched product than
        for a one-row ``nn.Linear`` (narrow fp32 shapes, e.g. 128 -> 3 or 64 -> 4), every
        output differs and the probe sees it. (Rounding that differs only near bf16 midpoints,
        for a few molecules in thousands, it cannot see: see the module docstring.)"""
        cfg = self.config
        x = torch.zeros(1, cfg.input_dim, device=self.norms[0].weight.device)
        x[0, ::7] = 1.0
        x[0, -2 * FRAG_BINS::5] = 2.0                   # fragment masses, when there are any
        mw = torch.tensor([cfg.n_bins // 2], device=x.device)
        want = torch.cat([m(x, mw).pred for m in self.members])
        return torch.equal(self(x, mw), want)

    def _signature(self) -> list:
        """What a change of the members changes: their train mode, and each copied layer's
        weight and bias (the parameter objects, their storage and in-place version counters)."""
        sig: list = [m.training for m in self.members]
        for params in self._params:
            for p in (params.get("weight"), params.get("bias")):   # (None: removed since)
                sig += (None, None, None) if p is None else (id(p), p.data_ptr(), p._version)
        return sig

    def fresh(self) -> bool:
        """False when a member changed since the stack was built: a copied layer's parameters
        replaced (``.to()``, int8 quantization, assignment) or updated in place (training), or
        a member put in train mode. ~40 µs for the shipped default. Not seen: a layer of a
        member replaced by another module (``m.trunk[1] = nn.Linear(...)``) and an edit through
        ``.data`` (it bumps no version counter): load the model again after such surgery
        (walking every held layer's place in its member each call cost ~0.37 ms, 8 % of an
        API call, session 31)."""
        return self._signature() == self._sig

    @torch.no_grad()
    def __call__(self, x: Tensor | SparseRows, mw: Tensor | None = None,
                 frags: Tensor | None = None) -> Tensor:
        """The members' ``pred`` ``(k, n_bins)`` for one molecule: ``x`` ``(1, input_dim)``
        (or its :class:`SparseRows`), ``mw`` ``(1,)``, ``frags`` ``(1, 2, 501)`` as
        :meth:`StudentModel.forward` takes them."""
        cfg, k, n_exp = self.config, self.k, self.n_experts
        if x.shape[0] != 1:
            raise ValueError(f"a student stack runs one molecule at a time, got {x.shape[0]}")
        dtype = self.norms[0].weight.dtype
        if isinstance(x, SparseRows) and not self.members[0].reads_sparse():
            x = x.dense()
        x = x.to(dtype)                                  # as StudentModel.forward
        z = self.gate_first_native(x) if self.gate_first_native is not None \
            else torch.stack([layer(x) for layer in self.gate_first])      # (k, 1, gate width)
        for layer in self.gate_layers:
            z = layer(_each(F.gelu, z))
        logits = self.gate_logit(_each(F.gelu, z)).view(k, n_exp)
        # routing exactly as TopKGate.forward (eval: no noise)
        probs = torch.softmax(logits.float(), dim=-1)
        bias = torch.stack([m.gate.expert_bias for m in self.members])
        idx = torch.topk(probs + bias, cfg.top_k, dim=-1).indices
        chosen = probs.gather(1, idx)
        weight = (chosen / chosen.sum(dim=-1, keepdim=True).clamp_min(1e-12)).to(dtype)
        if self.proj is not None:
            h = _each(F.gelu, self.proj_native(x)) if self.proj_native is not None \
                else torch.stack([F.gelu(p(x)) for p in self.proj])
        else:
            h = x.expand(k, 1, -1)
        routes = idx.tolist()
        if self.blocks_packed:
            # only the chosen experts' streams: row r of y is stream chosen[r]
            chosen = sorted({m * n_exp + e for m, experts in enumerate(routes) for e in experts})
            row = {s: r for r, s in enumerate(chosen)}
            streams = np.array(chosen, dtype=np.int64)
            y = h[streams // n_exp]                                          # (streams, 1, width)
            for norms, down, up in self.blocks:
                normed = torch.stack([_norm(t, norms[s]) for t, s in zip(y.unbind(0), chosen)])
                y = up(_each(F.gelu, down(normed, streams)), streams).add_(y)
        else:
            row = {s: s for s in range(k * n_exp)}
            y = h.repeat_interleave(n_exp, dim=0)                           # (k * E, 1, width)
            used = {m * n_exp + e for m, experts in enumerate(routes) for e in experts}
            for norms, down, up in self.blocks:
                # an expert nobody chose runs on its unnormalised stream: its output is never read
                normed = torch.stack([_norm(t, n) if s in used else t
                                      for s, (t, n) in enumerate(zip(y.unbind(0), norms))])
                y = up(_each(F.gelu, down(normed))).add_(y)
        fused, rows, weights = [], y.unbind(0), [w.unbind(0) for w in weight.unbind(0)]
        for m, experts in enumerate(routes):                            # dispatch's b == 1 order
            out = None
            for j, e in enumerate(experts):
                part = rows[row[m * n_exp + e]] * weights[m][j]
                out = part if out is None else out + part
            fused.append(out)
        hidden = torch.stack([_norm(f, n) for f, n in zip(fused, self.norms)])
        for layer in self.trunk:
            hidden = _each(F.gelu, layer(hidden))
        if not cfg.mass_aware:
            return _each(lambda t: activate(t, cfg.output_activation), self.heads[0](hidden)).view(k, -1)
        if mw is None:
            raise ValueError("these students are mass-aware: pass mw, the (1,) nominal mass")
        n_bins = cfg.n_bins
        fwd_head, rev_head, gate_head = self.heads
        f = fwd_head(hidden)
        if self.frag_conv is not None:
            if frags is None:
                frags = _fragment_rows(x, cfg.input_dim - 2 * FRAG_BINS)
            frags = frags.to(hidden.dtype)
            mix = self.frag_mix(hidden)                                     # (k, 1, C)
            if self.frag_native is not None:
                extra = self.frag_native(frags, mix)                        # (k, 1, L)
            else:
                conv = torch.stack([c(frags) for c in self.frag_conv])      # (k, 1, C, L)
                extra = torch.stack([(c * w.unsqueeze(-1)).sum(1) for c, w in zip(conv, mix)])
            extra = F.pad(extra, (0, n_bins - extra.shape[-1])) if extra.shape[-1] < n_bins \
                else extra[..., :n_bins]
            f = f + extra
        mws = mw.reshape(1).expand(k)
        act = cfg.output_activation
        fwd = mask_above_mw(_each(lambda t: activate(t, act), f).view(k, -1), mws, cfg.max_above_mw)
        rev = reverse_by_mw(_each(lambda t: activate(t, act), rev_head(hidden)).view(k, -1), mws,
                            cfg.max_above_mw)
        gate = _each(torch.sigmoid, gate_head(hidden)).view(k, -1)
        return gate * fwd + (1.0 - gate) * rev

