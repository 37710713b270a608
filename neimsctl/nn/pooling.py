"""Graph readout: concatenated mean, max and attention pooling of node states."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
import torch
from torch_geometric.nn.aggr import AttentionalAggregation, MaxAggregation, MeanAggregation

__all__ = ["GraphPooling"]


class GraphPooling(nn.Module):
    r"""Readout ``[mean || max || attention]`` over each molecule's atoms (width ``3 C``).

    .. math::
        \mathbf{g} = \Big[\tfrac{1}{|V|}\sum_{i} \mathbf{x}_i \;\Big\|\; \max_i \mathbf{x}_i
        \;\Big\|\; \sum_i \mathrm{softmax}_i\big(h_{\mathrm{gate}}(\mathbf{x}_i)\big)\,\mathbf{x}_i\Big]

    The attention part is ``torch_geometric.nn.aggr.AttentionalAggregation`` (Li et al.,
    "Gated Graph Sequence Neural Networks", https://arxiv.org/abs/1511.05493) with gate network
    ``Linear(C, gate_hidden) -> ReLU -> Linear(gate_hidden, 1)``; the softmax runs over the atoms
    of one molecule.

    Parameters
    ----------
    channels
        Node width ``C``.
    gate_hidden
        Hidden width of the attention gate network.

    Shapes
    ------
    - x: ``(N, C)``, batch: ``(N,)`` (``None``: one molecule)
    - output: ``(B, 3 C)``
    """

    def __init__(self, channels: int, gate_hidden: int = 128) -> None:
        super().__init__()
        if channels <= 0 or gate_hidden <= 0:
            raise ValueError(f"channels and gate_hidden must be positive, got {channels}, {gate_hidden}")
        self.channels, self.gate_hidden = channels, gate_hidden
        self.mean = MeanAggregation()
        self.max = MaxAggregation()
        self.attention = AttentionalAggregation(
            gate_nn=nn.Sequential(nn.Linear(channels, gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, 1)))
        self.reset_parameters()

    @property
    def out_channels(self) -> int:
        """Width of the pooled vector, ``3 * channels``."""
        return 3 * self.channels

    def reset_parameters(self) -> None:
        self.attention.reset_parameters()

    def forward(self, x: Tensor, batch: Optional[Tensor] = None, num_graphs: Optional[int] = None) -> Tensor:
        if x.dim() != 2 or x.size(-1) != self.channels:
            raise ValueError(f"GraphPooling expects node states (N, {self.channels}), got {tuple(x.shape)}")
        if batch is None:
            batch = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        kw = dict(index=batch, dim_size=num_graphs)
        return torch.cat([self.mean(x, **kw), self.max(x, **kw), self.attention(x, **kw)], dim=-1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, out={self.out_channels})"
