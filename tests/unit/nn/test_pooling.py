"""GraphPooling: (B, 3C), matches mean/max by hand, invariant to atom order."""

from __future__ import annotations

import pytest
import torch

from neimsctl.nn.pooling import GraphPooling


def test_shapes_params_and_parts():
    torch.manual_seed(0)
    pool = GraphPooling(8, gate_hidden=4)
    x = torch.randn(7, 8)
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    out = pool(x, batch)
    assert out.shape == (3, 24) and pool.out_channels == 24
    assert sum(p.numel() for p in pool.parameters()) == 8 * 4 + 4 + 4 + 1
    assert torch.allclose(out[1, :8], x[3:5].mean(0))
    assert torch.allclose(out[2, 8:16], x[5:7].max(0).values)
    att = out[0, 16:]    # a convex combination of the molecule's atoms
    assert torch.all(att <= x[:3].max(0).values + 1e-6) and torch.all(att >= x[:3].min(0).values - 1e-6)
    assert repr(pool) == "GraphPooling(8, out=24)"
    assert pool(x).shape == (1, 24)


def test_atom_order_does_not_matter():
    torch.manual_seed(1)
    pool = GraphPooling(8)
    x = torch.randn(9, 8)
    batch = torch.tensor([0] * 4 + [1] * 5)
    perm = torch.randperm(9)
    assert torch.allclose(pool(x, batch), pool(x[perm], batch[perm], 2), atol=1e-6)


def test_wrong_width_is_an_error():
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        GraphPooling(8)(torch.randn(3, 7))
