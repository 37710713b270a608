"""MLP and ResidualBlock: shapes, repr, parameter counts, identity at init, helpful errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neimsctl.nn.mlp import MLP, ResidualBlock, make_activation


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


def test_residual_block_is_identity_at_init_and_trains():
    blk = ResidualBlock(12, 3, dropout=0.0)
    x = torch.randn(4, 12)
    assert torch.equal(blk(x), x)
    assert sum(p.numel() for p in blk.parameters()) == 2 * 12 + 12 * 3 + 3 + 3 * 12 + 12
    assert repr(blk) == "ResidualBlock(12, bottleneck=3)"
    opt = torch.optim.SGD(blk.parameters(), lr=0.1)
    target = torch.randn(4, 12)
    losses = []
    for _ in range(3):
        loss = (blk(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="width 12"):
        blk(torch.randn(2, 11))
