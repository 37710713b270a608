"""Tests for neimsctl.nn.moe: bottleneck blocks, the top-k gate and sparse dispatch."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from _student_fixtures import _one_thread  # noqa: F401  (autouse: one torch thread)

from neimsctl.nn.moe import Expert, TopKGate, dispatch
from neimsctl.nn.residual import BottleneckResidualBlock

D = 24


def _gate(noisy: bool = True, k: int = 2, n: int = 4) -> TopKGate:
    torch.manual_seed(0)
    g = TopKGate((D, 16, 8), n, k, noisy=noisy)
    nn.init.normal_(g.logit.weight, std=0.5)  # spread the logits so routing is not a tie
    return g


def _experts(n: int = 4) -> nn.ModuleList:
    torch.manual_seed(1)
    ex = nn.ModuleList(Expert(D, 5, 2) for _ in range(n))
    for e in ex:
        for blk in e:
            nn.init.normal_(blk.up.weight, std=0.1)  # non-identity experts
    return ex


def test_block_is_identity_at_init_and_has_a_readable_repr() -> None:
    blk = BottleneckResidualBlock(D, 5)
    x = torch.randn(3, D)
    assert torch.equal(blk(x), x)
    assert repr(blk) == "BottleneckResidualBlock(24, bottleneck=5)"
    with pytest.raises(ValueError, match="positive"):
        BottleneckResidualBlock(D, 0)
    with pytest.raises(ValueError, match="depth"):
        Expert(D, 5, 0)


def test_gate_routes_each_sample_to_exactly_two_experts_with_weights_summing_to_one() -> None:
    g = _gate().eval()
    out = g(torch.randn(64, D))
    assert out.topk_idx.shape == (64, 2) and out.topk_weight.shape == (64, 2)
    assert out.probs.shape == (64, 4) and out.logits.shape == (64, 4)
    assert (out.topk_idx[:, 0] != out.topk_idx[:, 1]).all()          # two distinct experts
    assert ((out.topk_idx >= 0) & (out.topk_idx < 4)).all()
    assert torch.allclose(out.topk_weight.sum(1), torch.ones(64))
    assert (out.topk_weight > 0).all()
    assert (out.topk_weight[:, 0] >= out.topk_weight[:, 1]).all()    # descending weight
    # weights are the chosen softmax probabilities, renormalised
    chosen = out.probs.gather(1, out.topk_idx)
    assert torch.allclose(out.topk_weight, chosen / chosen.sum(1, keepdim=True))
    # and the two chosen are the two most probable experts
    assert torch.equal(out.topk_idx.sort(1).values, out.probs.topk(2).indices.sort(1).values)


def test_gate_noise_only_in_training() -> None:
    g = _gate(noisy=True)
    nn.init.constant_(g.noise.bias, 1.0)
    x = torch.randn(16, D)
    g.eval()
    assert torch.equal(g(x).logits, g(x).logits)
    g.train()
    torch.manual_seed(3)
    draws = [g(x) for _ in range(8)]
    # the noise changes which experts are chosen ...
    assert len({tuple(d.topk_idx.flatten().tolist()) for d in draws}) > 1
    # ... but not the clean probabilities the weights and the balance losses use
    assert all(torch.equal(d.probs, draws[0].probs) for d in draws)
    assert torch.allclose(g.eval()(x).probs, draws[0].probs)
    for d in draws:
        assert torch.allclose(d.probs.sum(1), torch.ones(16))
        assert torch.allclose(d.topk_weight, d.probs.gather(1, d.topk_idx) /
                              d.probs.gather(1, d.topk_idx).sum(1, keepdim=True))
    with pytest.raises(ValueError, match="top-k"):
        TopKGate((D,), 2, k=3)


def test_bias_changes_selection_not_weights_and_moves_toward_balance() -> None:
    g = _gate(noisy=False).eval()
    x = torch.randn(256, D)
    before = g(x)
    load = g.update_bias(before.topk_idx, rate=0.01)
    assert torch.isclose(load.sum(), torch.tensor(1.0))
    # over-loaded experts got a lower bias, under-loaded ones a higher bias
    assert torch.equal(torch.sign(g.expert_bias), torch.sign(load.mean() - load))
    g.expert_bias.copy_(torch.tensor([10.0, 10.0, 0.0, 0.0]))        # force experts 0 and 1
    out = g(x)
    assert torch.equal(out.topk_idx.sort(1).values, torch.tensor([[0, 1]]).expand(256, 2))
    chosen = before.probs[:, :2]
    assert torch.allclose(out.topk_weight.sort(1).values,
                          (chosen / chosen.sum(1, keepdim=True)).sort(1).values)


def _dense(x: torch.Tensor, experts: nn.ModuleList, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    all_out = torch.stack([e(x) for e in experts], dim=1)              # (B, E, D)
    picked = all_out.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[1]))
    return (picked * w.unsqueeze(-1)).sum(1)


@pytest.mark.parametrize("batch", [1, 2, 37])
def test_sparse_dispatch_equals_dense_reference(batch: int) -> None:
    experts = _experts().eval()
    g = _gate().eval()
    x = torch.randn(batch, D)
    out = g(x)
    got = dispatch(x, experts, out.topk_idx, out.topk_weight)
    assert got.shape == (batch, D)
    assert torch.allclose(got, _dense(x, experts, out.topk_idx, out.topk_weight), atol=1e-6)


def test_dispatch_handles_unused_experts_empty_batch_and_backprop() -> None:
    experts = _experts()
    x = torch.randn(10, D, requires_grad=True)
    idx = torch.tensor([[0, 2]] * 10)                                  # experts 1 and 3 unused
    w = torch.full((10, 2), 0.5, requires_grad=True)
    y = dispatch(x, experts, idx, w)
    assert torch.allclose(y, _dense(x, experts, idx, w), atol=1e-6)
    y.sum().backward()
    assert w.grad is not None and x.grad is not None
    assert experts[0][0].down.weight.grad is not None
    assert experts[1][0].down.weight.grad is None                       # never ran
    empty = dispatch(torch.zeros(0, D), experts, torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2))
    assert empty.shape == (0, D)
