"""Bond-gated GINE conv and block: shapes, symmetric gates in (0, 1), equivariance, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neimsctl.nn.bond_attention import BondBreakingAttention, BondGatedGINEConv, GINEBlock


def graph(n_nodes: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A ring plus one chord; both directions, per-bond features shared by both."""
    g = torch.Generator().manual_seed(seed)
    bonds = [(i, (i + 1) % n_nodes) for i in range(n_nodes)] + [(0, n_nodes // 2)]
    pairs = torch.tensor(bonds).T
    ei = torch.cat([pairs, pairs.flip(0)], dim=1)
    attr = torch.rand(len(bonds), 6, generator=g).repeat(2, 1)
    return torch.randn(n_nodes, 16, generator=g), ei, attr


def conv(channels: int = 16) -> BondGatedGINEConv:
    update = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))
    return BondGatedGINEConv(update, edge_dim=6, attention=BondBreakingAttention(channels, 8))


def test_conv_shapes_params_repr():
    x, ei, attr = graph()
    c = conv()
    out, gate = c(x, ei, attr, return_attention_weights=True)
    assert out.shape == (6, 16) and gate.shape == (ei.size(1), 1)
    assert ((gate > 0) & (gate < 1)).all()
    n_nn = 2 * (16 * 16 + 16)
    n_att = 3 * 16 * 8 + 8 + 8 + 1
    assert sum(p.numel() for p in c.parameters()) == n_nn + (6 * 16 + 16) + n_att + 1  # + eps
    assert "BondGatedGINEConv(nn=Sequential" in repr(c) and "edge_dim=6" in repr(c)
    assert "BondBreakingAttention(16, hidden=8)" in repr(c)


def test_gate_is_a_property_of_the_bond():
    x, ei, attr = graph()
    _, gate = conv()(x, ei, attr, return_attention_weights=True)
    n = ei.size(1) // 2
    assert torch.allclose(gate[:n], gate[n:], atol=1e-6)       # (i, j) and (j, i) share a gate


def test_gate_scales_messages():
    """With the gate forced to 0, the conv sees no neighbours: out = nn((1 + eps) x)."""
    x, ei, attr = graph()
    c = conv()
    with torch.no_grad():
        c.attention.lin2.weight.zero_()
        c.attention.lin2.bias.fill_(-1e4)
    assert torch.allclose(c(x, ei, attr), c.nn((1 + c.eps) * x), atol=1e-6)


def test_block_is_permutation_equivariant():
    torch.manual_seed(0)
    x, ei, attr = graph(7)
    blk = GINEBlock(16, 6, attention_hidden=8, dropout=0.5).eval()
    batch = torch.zeros(7, dtype=torch.long)
    perm = torch.randperm(7)
    inv = torch.argsort(perm)                 # new index of old node i is inv[i]
    out = blk(x, ei, attr, batch)
    out_p = blk(x[perm], inv[ei], attr, batch)
    assert torch.allclose(out[perm], out_p, atol=1e-5)


def test_block_pairnorm_is_per_molecule():
    """A molecule's output does not change when another molecule joins the batch."""
    torch.manual_seed(0)
    blk = GINEBlock(16, 6).eval()
    x1, ei1, a1 = graph(6, seed=1)
    x2, ei2, a2 = graph(5, seed=2)
    alone = blk(x1, ei1, a1, torch.zeros(6, dtype=torch.long))
    both = blk(torch.cat([x1, x2]), torch.cat([ei1, ei2 + 6], dim=1), torch.cat([a1, a2]),
               torch.tensor([0] * 6 + [1] * 5))
    assert torch.allclose(alone, both[:6], atol=1e-5)


def test_errors_name_the_fix():
    x, ei, attr = graph()
    with pytest.raises(ValueError, match="one row per edge"):
        conv()(x, ei, attr[:3])
    with pytest.raises(ValueError, match="project atom features"):
        conv()(torch.randn(6, 48), ei, attr)
    with pytest.raises(ValueError, match="edge_dim > 0"):
        BondGatedGINEConv(nn.Linear(4, 4), edge_dim=0)
