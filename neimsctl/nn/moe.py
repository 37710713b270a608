"""Mixture-of-experts building blocks: bottleneck residual experts, a top-k gate, sparse dispatch.

The student of NEIMS v2 routes each fingerprint to 2 of 4 experts. An expert is a stack of
pre-norm residual blocks that stay at the full input width (6144) but squeeze through a narrow
bottleneck (~100), which is what keeps 4 x 6 blocks near 30M parameters instead of ~620M
(see SPEC.md, "The original's student sizes do not add up").

References: Shazeer et al. 2017, "Outrageously Large Neural Networks" (noisy top-k gating,
https://arxiv.org/abs/1701.06538); Fedus et al. 2021, "Switch Transformers"
(https://arxiv.org/abs/2101.03961); Wang et al. 2024 / DeepSeek-V3, auxiliary-loss-free
balancing with a per-expert selection bias (https://arxiv.org/abs/2408.15664).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neimsctl.nn.residual import BottleneckResidualBlock
from neimsctl.nn.sparse_input import SparseInputLinear


class Expert(nn.Sequential):
    """A stack of ``depth`` :class:`BottleneckResidualBlock` at width ``dim``.

    Shapes
    ------
    x: (B, dim) -> (B, dim)
    """

    def __init__(self, dim: int, bottleneck: int, depth: int, dropout: float = 0.0) -> None:
        if depth < 1:
            raise ValueError(f"an expert needs at least one block, got depth={depth}")
        super().__init__(*(BottleneckResidualBlock(dim, bottleneck, dropout) for _ in range(depth)))


class GateOutput(NamedTuple):
    """What :class:`TopKGate` returns.

    Fields: ``logits`` (B, E) the gate's clean logits; ``probs`` (B, E) their softmax; ``topk_idx`` (B, k) long, chosen experts by descending
    weight; ``topk_weight`` (B, k) the chosen probabilities renormalised to sum to 1.
    """

    logits: Tensor
    probs: Tensor
    topk_idx: Tensor
    topk_weight: Tensor


#: Initial noise scale softplus(-2) = 0.13: exploration without drowning the logits.
NOISE_BIAS_INIT = -2.0


class TopKGate(nn.Module):
    r"""MLP gate with noisy top-k routing and an optional load-balancing selection bias.

    ``hidden`` gives the gate's widths, e.g. ``(6144, 512, 128)`` builds
    6144 -> 512 -> 128 -> ``n_experts`` with GELU between layers.

    .. math::
        p = \mathrm{softmax}(h),\quad
        S = \mathrm{topk}(\mathrm{softmax}(h + \epsilon \odot \mathrm{softplus}(W_n z)) + b),\quad
        w_i = p_i / \textstyle\sum_{j \in S} p_j

    The noise term (Shazeer et al. 2017) is used only in training, only when ``noisy`` is set, and
    only for the choice of ``S``.
    The bias ``b`` (a buffer, not trained by gradients) only changes *which* experts are chosen,
    never their weights; :meth:`update_bias` nudges it toward equal load.

    Shapes
    ------
    x: (B, hidden[0]) -> :class:`GateOutput`
    """

    def __init__(self, hidden: tuple[int, ...], n_experts: int, k: int = 2, *,
                 noisy: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if not 1 <= k <= n_experts:
            raise ValueError(f"top-k must satisfy 1 <= k <= n_experts, got k={k}, n_experts={n_experts}")
        if len(hidden) < 1:
            raise ValueError("gate needs at least the input width in `hidden`")
        self.n_experts, self.k, self.noisy = n_experts, k, noisy
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(hidden[:-1], hidden[1:])):
            # the first layer reads the fingerprint: sparse-input path at inference
            lin = SparseInputLinear(a, b) if i == 0 else nn.Linear(a, b)
            layers += [lin, nn.GELU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.logit = nn.Linear(hidden[-1], n_experts)
        self.noise = nn.Linear(hidden[-1], n_experts) if noisy else None
        self.register_buffer("expert_bias", torch.zeros(n_experts))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.body:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        # Default (not tiny) logit weights: routing depends on the input from the first step, so
        # experts see different molecules and can specialise. With near-zero logits and noise of
        # std softplus(0) = 0.69, training routed at random, the gate never learned (entropy
        # stayed log 4) and inference sent every molecule to the same two experts.
        self.logit.reset_parameters()
        nn.init.zeros_(self.logit.bias)
        if self.noise is not None:
            nn.init.zeros_(self.noise.weight)
            nn.init.constant_(self.noise.bias, NOISE_BIAS_INIT)
        self.expert_bias.zero_()

    def forward(self, x: Tensor) -> GateOutput:
        z = self.body(x)
        logits = self.logit(z)
        probs = torch.softmax(logits.float(), dim=-1)
        select = probs
        if self.noise is not None and self.training:
            # noise only decides *which* experts are tried: weights and balance losses use the
            # clean softmax, so training and inference route alike (noisy probabilities in the
            # balance loss let the clean gate drift to one expert, seen as collapse in eval)
            noisy = logits + torch.randn_like(logits) * F.softplus(self.noise(z))
            select = torch.softmax(noisy.float(), dim=-1)
        topk_idx = torch.topk(select + self.expert_bias, self.k, dim=-1).indices
        chosen = probs.gather(1, topk_idx)
        topk_weight = chosen / chosen.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return GateOutput(logits, probs, topk_idx, topk_weight)

    @torch.no_grad()
    def update_bias(self, topk_idx: Tensor, rate: float = 1e-3) -> Tensor:
        """Move the selection bias toward equal expert load (auxiliary-loss-free balancing).

        Parameters
        ----------
        topk_idx
            (B, k) routing decisions of one batch.
        rate
            Step size; experts above the mean load lose ``rate``, those below gain it.

        Returns
        -------
        Tensor
            (E,) fraction of the batch's routing slots each expert received.
        """
        load = torch.bincount(topk_idx.reshape(-1), minlength=self.n_experts).float()
        load = load / load.sum().clamp_min(1.0)
        self.expert_bias += rate * torch.sign(load.mean() - load)
        return load

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(n_experts={self.n_experts}, k={self.k}, noisy={self.noisy})"


#: Row-count granularity of the experts' calls in CPU bf16 inference (see :func:`dispatch`).
PAD_ROWS = 64


def dispatch(x: Tensor, experts: nn.ModuleList, topk_idx: Tensor, topk_weight: Tensor) -> Tensor:
    r"""Gate-weighted sum of the chosen experts, running each expert only on its own rows.

    .. math:: y_b = \textstyle\sum_{j=1}^{k} w_{bj}\, f_{e_{bj}}(x_b)

    Parameters
    ----------
    x
        (B, D) input rows.
    experts
        The experts, each mapping (n, D) -> (n, D_out).
    topk_idx, topk_weight
        (B, k) chosen experts and their weights.

    Returns
    -------
    Tensor
        (B, D_out), in the dtype of ``x``.

    Notes
    -----
    bf16 inference on a CPU runs each expert on its rows padded to a multiple of
    :data:`PAD_ROWS`: oneDNN keeps a compiled bf16 kernel (with its own packed copy of the
    weights) for every matrix shape it sees, and the number of rows an expert gets changes with
    every batch, so unpadded the process grew by ~12 KB per molecule predicted (measured:
    0.6 GB -> 1.56 GB over 100k MOSES molecules, 1 thread, batches of 1024).
    """
    b, k = topk_idx.shape
    flat_idx = topk_idx.reshape(-1)
    flat_w = topk_weight.reshape(-1).to(x.dtype)
    if b == 0:
        return experts[0](x)
    if b == 1:  # latency path: no sorting or scatter for a single molecule
        out = None
        for j, e in enumerate(flat_idx.tolist()):
            y = experts[e](x) * flat_w[j]
            out = y if out is None else out + y
        return out
    rows = torch.arange(b, device=x.device).repeat_interleave(k)
    pad = x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled()
    order = torch.argsort(flat_idx, stable=True)
    counts = torch.bincount(flat_idx, minlength=len(experts)).tolist()
    out: Tensor | None = None
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        sel = order[start:start + n]
        start += n
        r = rows.index_select(0, sel)
        xe = x.index_select(0, r)
        if pad and n % PAD_ROWS:  # repeat row 0 up to a multiple of PAD_ROWS; copies dropped below
            xe = torch.cat([xe, xe[:1].expand(-n % PAD_ROWS, -1)])
        y = experts[e](xe)[:n] * flat_w.index_select(0, sel).unsqueeze(1)
        if out is None:
            out = x.new_zeros(b, y.shape[1])
        out.index_add_(0, r, y)
    assert out is not None  # k >= 1 and b >= 1 guarantee at least one expert ran
    return out
