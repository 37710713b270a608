"""BottleneckResidualBlock, the one zero-initialised residual block: identity at init, the formula,
trainable, and the state-dict keys that student checkpoints (the shipped model) rely on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neimsctl.nn.residual import BottleneckResidualBlock


def test_identity_at_init_and_readable() -> None:
    torch.manual_seed(0)
    blk = BottleneckResidualBlock(12, 3)
    x = torch.randn(4, 12)
    assert torch.equal(blk(x), x)
    assert sum(p.numel() for p in blk.parameters()) == 2 * 12 + 12 * 3 + 3 + 3 * 12 + 12
    assert repr(blk) == "BottleneckResidualBlock(12, bottleneck=3)"
    with pytest.raises(ValueError, match="positive"):
        BottleneckResidualBlock(12, 0)


def test_state_dict_keys_are_pinned() -> None:
    assert list(BottleneckResidualBlock(8, 2).state_dict()) == [
        "norm.weight", "norm.bias", "down.weight", "down.bias", "up.weight", "up.bias"]


def test_forward_is_x_plus_up_dropout_gelu_down_norm_x() -> None:
    torch.manual_seed(1)
    blk = BottleneckResidualBlock(10, 4, dropout=0.5).eval()
    torch.nn.init.normal_(blk.up.weight, std=0.3)
    x = torch.randn(5, 10)
    want = x + blk.up(F.gelu(blk.down(blk.norm(x))))
    assert torch.allclose(blk(x), want, atol=1e-6)
    blk.train()
    assert not torch.allclose(blk(x), want)            # dropout acts in training only


def test_trains_away_from_the_identity() -> None:
    torch.manual_seed(2)
    blk = BottleneckResidualBlock(12, 3)
    x, target = torch.randn(8, 12), torch.randn(8, 12)
    opt = torch.optim.SGD(blk.parameters(), lr=0.1)
    losses = []
    for _ in range(5):
        loss = (blk(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
