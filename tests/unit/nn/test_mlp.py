"""MLP: shapes, repr, parameter counts, helpful errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neimsctl.nn.mlp import MLP, make_activation


def test_mlp_shapes_params_and_repr():
    m = MLP(16, [8, 4], 3, dropout=0.1)
    assert m(torch.randn(5, 16)).shape == (5, 3)
    assert m(torch.randn(2, 7, 16)).shape == (2, 7, 3)
    assert sum(p.numel() for p in m.parameters()) == 16 * 8 + 8 + 8 * 4 + 4 + 4 * 3 + 3
    assert repr(m) == "MLP(16, [8, 4], 3)"
    assert sum(isinstance(x, nn.Dropout) for x in m.modules()) == 2  # none after the output layer


def test_mlp_final_activation_and_layer_norm():
    m = MLP(6, [5], 4, layer_norm=True, final_activation=True)
    assert (m(torch.randn(10, 6)) >= 0).all()
    assert sum(isinstance(x, nn.LayerNorm) for x in m.modules()) == 2
    assert MLP(6, [], 4)(torch.randn(3, 6)).shape == (3, 4)


def test_mlp_errors_name_the_fix():
    with pytest.raises(ValueError, match="expects 16 input features, got 15"):
        MLP(16, [8], 3)(torch.randn(2, 15))
    with pytest.raises(ValueError, match="positive"):
        MLP(16, [0], 3)
    with pytest.raises(ValueError, match="dropout"):
        MLP(16, [8], 3, dropout=1.0)
    with pytest.raises(ValueError, match="choose one of"):
        make_activation("tanhh")
