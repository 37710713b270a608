"""DropEdge: randomly remove whole bonds (both directions) while training or under MC dropout."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torch_geometric.utils import dropout_edge

__all__ = ["DropEdge"]


class DropEdge(nn.Module):
    r"""Drop each undirected edge with probability ``p`` (Rong et al., "DropEdge: Towards Deep
    Graph Convolutional Networks on Node Classification", https://arxiv.org/abs/1907.10903).

    .. math::
        \mathcal{E}' = \{(i, j) \in \mathcal{E} : m_{\{i,j\}} = 1\},\qquad
        m_{\{i,j\}} \sim \mathrm{Bernoulli}(1 - p)

    One mask is drawn per *bond* (``torch_geometric.utils.dropout_edge`` with
    ``force_undirected=True``), so a bond is either kept in both directions or dropped in both.
    The kept directions are rebuilt from the ``i < j`` copy, and ``edge_attr`` follows it: bond
    features must be direction-independent (they are for molecules: type, conjugation, ring).

    The layer is active only while the module is in training mode. ``TeacherModel.mc_dropout``
    switches it (together with every ``nn.Dropout``) back on at inference, so MC-dropout samples
    also sample graphs. It uses the global torch RNG, like ``nn.Dropout``.

    Parameters
    ----------
    p
        Probability of dropping a bond, in ``[0, 1)``.

    Shapes
    ------
    - edge_index: ``(2, E)`` with both directions of every bond present
    - edge_attr: ``(E, D)`` or ``None``
    - output: ``(2, E')``, ``(E', D)`` with ``E'`` even and ``<= E``
    """

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropEdge p must be in [0, 1), got {p}; use p=0 to disable it")
        self.p = float(p)

    def reset_parameters(self) -> None:
        """Nothing to initialise: DropEdge has no parameters."""

    def forward(self, edge_index: Tensor, edge_attr: Optional[Tensor] = None
                ) -> tuple[Tensor, Optional[Tensor]]:
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        if edge_attr is not None and edge_attr.size(0) != edge_index.size(1):
            raise ValueError(f"edge_attr has {edge_attr.size(0)} rows but edge_index has "
                             f"{edge_index.size(1)} edges")
        if not self.training or self.p == 0.0 or edge_index.size(1) == 0:
            return edge_index, edge_attr
        new_index, kept = dropout_edge(edge_index, p=self.p, force_undirected=True, training=True)
        kept = kept.reshape(-1)  # dropout_edge squeezes a single kept edge to a 0-d tensor
        return new_index, (edge_attr[kept] if edge_attr is not None else None)

    def extra_repr(self) -> str:
        return f"p={self.p}"
