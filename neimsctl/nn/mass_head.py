"""Molecular-weight-anchored output: NEIMS v1's bidirectional spectrum head, shared by every model.

An EI spectrum has two kinds of structure: fragments at fixed m/z (forward: ``C6H5+`` is m/z 77
whatever the molecule) and neutral losses counted down from the molecular ion (reverse: ``M - 15``
for a methyl, ``M - 18`` for water). NEIMS v1 (Wei et al. 2019, ACS Cent. Sci. 5, 700) predicts
both and mixes them bin by bin with a sigmoid gate; the reverse half is read backwards from the
nominal mass, so one output unit stands for one neutral loss across molecules of any weight.

- :func:`mask_above_mw` zeroes bins above ``mw + shift`` (no fragment is heavier than the ion);
- :func:`reverse_by_mw` maps reverse unit ``k`` to m/z ``mw + shift - k``;
- :class:`MassAnchoredHead` is the whole head: three ``Linear(in, n_bins)`` (forward, reverse,
  gate) and ``g * act(fwd) + (1 - g) * act(rev)``, the activation applied before the mask and the
  mix so that a softplus head still puts exactly zero above ``mw + shift`` (NEIMS v1 itself mixes
  raw values and applies a ReLU last: :class:`neimsctl.models.neims_v1.NeimsV1` keeps that order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("relu", "softplus", "none")


def reverse_by_mw(raw: Tensor, mw: Tensor, shift: int) -> Tensor:
    """Read ``raw`` backwards from each molecule's weight: ``out[b, j] = raw[b, mw[b] + shift - j]``.

    Positions whose source index falls outside ``0 .. n_bins - 1`` are zero, so nothing lands above
    ``mw + shift``.

    Shapes
    ------
    raw: ``(B, n_bins)``; mw: ``(B,)`` integer; returns ``(B, n_bins)``.
    """
    n_bins = raw.shape[1]
    src = mw.to(raw.device).long().view(-1, 1) + shift - torch.arange(n_bins, device=raw.device).view(1, -1)
    valid = (src >= 0) & (src < n_bins)
    return torch.gather(raw, 1, src.clamp(0, n_bins - 1)) * valid.to(raw.dtype)


def mask_above_mw(raw: Tensor, mw: Tensor, shift: int) -> Tensor:
    """Zero every bin above ``mw + shift`` (``raw``: ``(B, n_bins)``, ``mw``: ``(B,)``)."""
    idx = torch.arange(raw.shape[1], device=raw.device).view(1, -1)
    return raw * (idx <= mw.to(raw.device).long().view(-1, 1) + shift).to(raw.dtype)


def activate(z: Tensor, activation: str) -> Tensor:
    """``relu``, ``softplus`` or ``none`` (identity)."""
    if activation == "relu":
        return F.relu(z)
    if activation == "softplus":
        return F.softplus(z)
    if activation == "none":
        return z
    raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


class MassAnchoredHead(nn.Module):
    """Gated mix of a forward and an MW-anchored reverse prediction (NEIMS v1's output layer).

    Parameters
    ----------
    in_dim
        Width of the features the head reads.
    n_bins
        Output bins (m/z 0 .. n_bins - 1).
    shift
        Bins above the nominal mass still allowed a peak (5 in NEIMS v1: isotopes, M+1, M+2).
    activation
        Applied to the forward and reverse units before masking and mixing: ``relu``,
        ``softplus`` or ``none``.
    bias_init
        Initial bias of the forward and reverse units (the gate's starts at 0, i.e. 0.5).

    Shapes
    ------
    h: ``(B, in_dim)``, mw: ``(B,)`` long -> ``(B, n_bins)``

    Examples
    --------
    >>> head = MassAnchoredHead(8, 20, shift=2)
    >>> out = head(torch.randn(3, 8), torch.tensor([5, 10, 30]))
    >>> bool((out[0, 8:] == 0).all())   # nothing above mw + shift = 7
    True
    """

    def __init__(self, in_dim: int, n_bins: int, *, shift: int = 5, activation: str = "relu",
                 bias_init: float = 0.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
        self.n_bins, self.shift, self.activation, self.bias_init = n_bins, shift, activation, bias_init
        self.forward_head = nn.Linear(in_dim, n_bins)
        self.reverse_head = nn.Linear(in_dim, n_bins)
        self.gate_head = nn.Linear(in_dim, n_bins)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.forward_head, self.reverse_head, self.gate_head):
            lin.reset_parameters()
        with torch.no_grad():
            self.forward_head.bias.fill_(self.bias_init)
            self.reverse_head.bias.fill_(self.bias_init)
            self.gate_head.bias.zero_()

    def parts(self, h: Tensor, mw: Tensor, extra: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(forward, reverse, gate)``, each ``(B, n_bins)``: activated, masked / MW-anchored.
        ``extra`` ``(B, n_bins)`` is added to the forward units before their activation."""
        f = self.forward_head(h)
        if extra is not None:
            f = f + extra
        fwd = mask_above_mw(activate(f, self.activation), mw, self.shift)
        rev = reverse_by_mw(activate(self.reverse_head(h), self.activation), mw, self.shift)
        return fwd, rev, torch.sigmoid(self.gate_head(h))

    def forward(self, h: Tensor, mw: Tensor, extra: Tensor | None = None) -> Tensor:
        fwd, rev, gate = self.parts(h, mw, extra)
        return gate * fwd + (1.0 - gate) * rev

    def extra_repr(self) -> str:
        return f"n_bins={self.n_bins}, shift={self.shift}, activation={self.activation}"
