r"""GINE message passing with bond-breaking attention, and the residual PairNorm block around it.

What "bond-breaking attention" means in this code
--------------------------------------------------
Every bond :math:`\{i, j\}` gets a gate :math:`a_{ij} \in (0, 1)` per layer, computed by a small
MLP from the two endpoint states and the bond's embedded features. The gate multiplies the GINE
message in both directions. It is **symmetric** (built from :math:`h_i + h_j` and
:math:`h_i \odot h_j`), so it is a property of the bond, not of a direction: it can be read as
how strongly the bond takes part in the spectrum-relevant chemistry, i.e. how likely it is to
break during EI fragmentation. Nothing supervises it directly; it is learned end to end from the
spectrum loss (or the bond-masking loss in pretraining), and ``return_attention_weights=True``
exposes it for inspection. It is a gate (independent sigmoid per bond), not a softmax over
neighbours: a bond's weight does not depend on how many other bonds an atom has.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch_geometric.nn import GINEConv, PairNorm

__all__ = ["BondBreakingAttention", "BondGatedGINEConv", "GINEBlock"]


class BondBreakingAttention(nn.Module):
    r"""Per-bond sigmoid gate from the two endpoint states and the bond embedding.

    .. math::
        a_{ij} = \sigma\Big(\mathbf{w}_2^\top\,\mathrm{ReLU}\big(\mathbf{W}_1
        [\,\mathbf{h}_i + \mathbf{h}_j \,\|\, \mathbf{h}_i \odot \mathbf{h}_j \,\|\,
        \mathbf{e}_{ij}\,] + \mathbf{b}_1\big) + b_2\Big) = a_{ji}

    Parameters
    ----------
    channels
        Width of node states and bond embeddings.
    hidden
        Width of the gate's hidden layer.

    Shapes
    ------
    - x_i, x_j, edge_emb: ``(E, channels)``
    - output: ``(E, 1)``, values in ``(0, 1)``
    """

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        if channels <= 0 or hidden <= 0:
            raise ValueError(f"channels and hidden must be positive, got {channels}, {hidden}")
        self.channels, self.hidden = channels, hidden
        self.lin1 = nn.Linear(3 * channels, hidden)
        self.lin2 = nn.Linear(hidden, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin1.reset_parameters()
        self.lin2.reset_parameters()

    def forward(self, x_i: Tensor, x_j: Tensor, edge_emb: Tensor) -> Tensor:
        z = torch.cat([x_i + x_j, x_i * x_j, edge_emb], dim=-1)
        return torch.sigmoid(self.lin2(torch.relu(self.lin1(z))))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, hidden={self.hidden})"


class BondGatedGINEConv(GINEConv):
    r"""``GINEConv`` (Hu et al., "Strategies for Pre-training Graph Neural Networks",
    https://arxiv.org/abs/1905.12265) whose messages are scaled by bond-breaking attention.

    .. math::
        \mathbf{x}'_i = h_\Theta\Big((1 + \epsilon)\,\mathbf{x}_i + \sum_{j \in \mathcal{N}(i)}
        a_{ij}\,\mathrm{ReLU}(\mathbf{x}_j + \mathbf{W}_e \mathbf{e}_{ji})\Big)

    with :math:`a_{ij}` from :class:`BondBreakingAttention`.

    Parameters
    ----------
    nn
        The update network :math:`h_\Theta` (its first layer must expose ``in_features``).
    edge_dim
        Raw bond-feature width (projected to the node width by ``self.lin``).
    attention
        The gate module; ``None`` builds a :class:`BondBreakingAttention` with 64 hidden units.
    train_eps
        Learn :math:`\epsilon` (as GIN recommends).

    Shapes
    ------
    - x: ``(N, C)``, edge_index: ``(2, E)``, edge_attr: ``(E, edge_dim)``
    - output: ``(N, C_out)``; with ``return_attention_weights``, also ``(E, 1)`` gates
    """

    def __init__(self, nn: torch.nn.Module, edge_dim: int, *,
                 attention: Optional[BondBreakingAttention] = None, train_eps: bool = True) -> None:
        if edge_dim is None or edge_dim <= 0:
            raise ValueError("BondGatedGINEConv needs the bond-feature width: pass edge_dim > 0")
        super().__init__(nn, train_eps=train_eps, edge_dim=edge_dim)
        channels = self.lin.out_channels
        self.attention = attention if attention is not None else BondBreakingAttention(channels)
        if self.attention.channels != channels:
            raise ValueError(f"attention width {self.attention.channels} != node width {channels}")

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "attention"):
            self.attention.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor,  # type: ignore[override]
                return_attention_weights: bool = False
                ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        if edge_attr is None or edge_attr.size(0) != edge_index.size(1):
            raise ValueError("BondGatedGINEConv needs edge_attr with one row per edge in edge_index")
        if x.size(-1) != self.lin.out_channels:
            raise ValueError(f"node width {x.size(-1)} != {self.lin.out_channels}: project atom "
                             "features to the hidden width before the first conv")
        edge_emb = self.lin(edge_attr)
        src, dst = edge_index
        gate = self.attention(x[dst], x[src], edge_emb)
        # propagate_type: (x: Tuple[Tensor, Tensor], edge_attr: Tensor, gate: Tensor)
        out = self.propagate(edge_index, x=(x, x), edge_attr=edge_emb, gate=gate)
        out = self.nn(out + (1 + self.eps) * x)
        return (out, gate) if return_attention_weights else out

    def message(self, x_j: Tensor, edge_attr: Tensor, gate: Tensor) -> Tensor:  # type: ignore[override]
        return gate * (x_j + edge_attr).relu()

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(nn={self.nn}, edge_dim={self.lin.in_channels}, "
                f"attention={self.attention})")


class GINEBlock(nn.Module):
    r"""One residual message-passing layer: ``x + Dropout(ReLU(PairNorm(conv(x))))``.

    .. math::
        \mathbf{x}^{(l+1)} = \mathbf{x}^{(l)} + \mathrm{Dropout}\big(\mathrm{ReLU}(
        \mathrm{PairNorm}(\mathrm{BondGatedGINEConv}(\mathbf{x}^{(l)})))\big)

    PairNorm (Zhao & Akoglu, https://arxiv.org/abs/1909.12223) is applied per molecule (with the
    ``batch`` vector), so a molecule's output does not depend on what else is in the batch. It
    centres each molecule's node states, which would erase the molecule mean; the residual
    connection carries it, so mean pooling after the stack stays informative.

    Parameters
    ----------
    channels
        Node width ``C``.
    edge_dim
        Raw bond-feature width.
    attention_hidden
        Hidden width of the bond-breaking gate.
    dropout
        Dropout on the block output (an ``nn.Dropout``, so MC dropout finds it).
    pair_norm
        Use PairNorm (``False``: identity, for ablations).

    Shapes
    ------
    - x: ``(N, C)``, edge_index: ``(2, E)``, edge_attr: ``(E, edge_dim)``, batch: ``(N,)``
    - output: ``(N, C)``
    """

    def __init__(self, channels: int, edge_dim: int, *, attention_hidden: int = 64,
                 dropout: float = 0.0, pair_norm: bool = True) -> None:
        super().__init__()
        update = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))
        self.conv = BondGatedGINEConv(update, edge_dim,
                                      attention=BondBreakingAttention(channels, attention_hidden))
        self.norm = PairNorm() if pair_norm else None
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                batch: Optional[Tensor] = None, return_attention_weights: bool = False
                ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        h, gate = self.conv(x, edge_index, edge_attr, return_attention_weights=True)
        if self.norm is not None:
            h = self.norm(h, batch)
        out = x + self.dropout(torch.relu(h))
        return (out, gate) if return_attention_weights else out
