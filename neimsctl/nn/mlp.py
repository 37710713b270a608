"""Plain-torch MLP and activation helpers shared by the teacher and the student.

The residual block of the student's experts is :mod:`neimsctl.nn.residual`.

Pure ``torch`` on purpose: the student (and ``predict`` with the student) must not pay the
``import torch_geometric`` start-up cost, so these helpers do not use ``torch_geometric.nn.MLP``.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

__all__ = ["MLP", "make_activation"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module by name (``relu``, ``gelu``, ``silu``, ``elu``).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known ones.
    """
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class MLP(nn.Module):
    r"""A stack of ``Linear -> [LayerNorm] -> activation -> Dropout`` layers.

    .. math::
        \mathbf{h}_{k+1} = \mathrm{Dropout}(\sigma(\mathrm{Norm}(\mathbf{W}_k \mathbf{h}_k + \mathbf{b}_k)))

    The last layer is a plain ``Linear`` unless ``final_activation`` is set, in which case it is
    followed by the same norm/activation/dropout as the hidden layers.

    Parameters
    ----------
    in_dim, out_dim
        Input and output widths.
    hidden
        Widths of the hidden layers, in order (may be empty: then a single ``Linear``).
    dropout
        Dropout probability after each hidden activation (the modules are ``nn.Dropout``, so
        MC dropout finds them).
    activation
        Activation name, see :func:`make_activation`.
    layer_norm
        Put a ``LayerNorm`` between each hidden ``Linear`` and its activation.
    final_activation
        Treat the output layer like a hidden layer (norm, activation, dropout).

    Shapes
    ------
    - input: ``(*, in_dim)``
    - output: ``(*, out_dim)``

    Examples
    --------
    >>> MLP(4096, [2048, 1024], 512, dropout=0.1)(torch.zeros(2, 4096)).shape
    torch.Size([2, 512])
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, *, dropout: float = 0.0,
                 activation: str = "relu", layer_norm: bool = False,
                 final_activation: bool = False) -> None:
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        if any(int(d) <= 0 for d in dims):
            raise ValueError(f"MLP widths must be positive integers, got {dims}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim, self.out_dim, self.hidden = int(in_dim), int(out_dim), tuple(int(h) for h in hidden)
        layers: list[nn.Module] = []
        n = len(dims) - 1
        for k in range(n):
            layers.append(nn.Linear(dims[k], dims[k + 1]))
            if k < n - 1 or final_activation:
                if layer_norm:
                    layers.append(nn.LayerNorm(dims[k + 1]))
                layers.append(make_activation(activation))
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every ``Linear`` (Kaiming-uniform, torch's default) and ``LayerNorm``."""
        for m in self.layers:
            if isinstance(m, (nn.Linear, nn.LayerNorm)):
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if x.size(-1) != self.in_dim:
            raise ValueError(f"MLP expects {self.in_dim} input features, got {x.size(-1)}: "
                             "check the feature width of the input against the model config")
        return self.layers(x)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_dim}, {list(self.hidden)}, {self.out_dim})"
