"""The zero-initialised pre-norm bottleneck residual block (the student's experts are stacks of it).

State-dict keys of a block: ``norm.*``, ``down.*``, ``up.*`` (checkpoints of the student rely on
them).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BottleneckResidualBlock"]


class BottleneckResidualBlock(nn.Module):
    r"""Pre-norm residual block that passes through a narrow bottleneck.

    .. math::
        \mathbf{x}' = \mathbf{x} + W_2\, \mathrm{Dropout}(\mathrm{GELU}(W_1\, \mathrm{LN}(\mathbf{x})))

    ``W_2`` starts at zero, so a freshly built block is the identity (a common trick that keeps
    deep residual stacks stable; He et al., "Deep Residual Learning",
    https://arxiv.org/abs/1512.03385). With ``bottleneck`` much smaller than ``dim`` (the
    student's experts: 6144 -> 100 -> 6144) it is cheap at full width.

    Parameters
    ----------
    dim
        Width of the residual stream.
    bottleneck
        Width of the inner layer.
    dropout
        Dropout probability after the activation.

    Shapes
    ------
    x: (B, dim) -> (B, dim)
    """

    def __init__(self, dim: int, bottleneck: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim < 1 or bottleneck < 1:
            raise ValueError(f"dim and bottleneck must be positive, got {dim} and {bottleneck}")
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default init for the norm and the first layer; zeros for the last (identity at start)."""
        self.norm.reset_parameters()
        self.down.reset_parameters()
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        # In-place add on the fresh linear output: one allocation less per block (autograd-safe).
        return self.up(self.dropout(F.gelu(self.down(self.norm(x))))).add_(x)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.down.in_features}, bottleneck={self.down.out_features})"
