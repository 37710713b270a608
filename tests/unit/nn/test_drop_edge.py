"""DropEdge: no-op in eval, drops whole bonds (both directions, matching features) in training."""

from __future__ import annotations

import pytest
import torch

from neimsctl.nn.drop_edge import DropEdge


def undirected(n_nodes: int, n_bonds: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random simple graph: both directions of each bond, per-bond features shared by both."""
    g = torch.Generator().manual_seed(seed)
    pairs = torch.combinations(torch.arange(n_nodes), 2)
    pairs = pairs[torch.randperm(len(pairs), generator=g)[:n_bonds]]
    ei = torch.cat([pairs.T, pairs.T.flip(0)], dim=1)
    attr = torch.rand(n_bonds, 6, generator=g).repeat(2, 1)
    return ei, attr


def test_eval_is_identity():
    ei, attr = undirected(30, 60)
    de = DropEdge(0.2).eval()
    out_ei, out_attr = de(ei, attr)
    assert out_ei is ei and out_attr is attr


def test_training_drops_bonds_in_both_directions():
    torch.manual_seed(0)
    ei, attr = undirected(200, 2000)
    out_ei, out_attr = DropEdge(0.2).train()(ei, attr)
    assert out_ei.size(1) % 2 == 0 and out_attr.size(0) == out_ei.size(1)
    kept = out_ei.size(1) / ei.size(1)
    assert 0.74 < kept < 0.86                       # 1 - p = 0.8, 1000s of bonds
    feats = {(int(a), int(b)): tuple(f.tolist()) for (a, b), f in zip(out_ei.T, out_attr)}
    original = {(int(a), int(b)): tuple(f.tolist()) for (a, b), f in zip(ei.T, attr)}
    for (a, b), f in feats.items():
        assert feats[(b, a)] == f                   # the reverse direction is kept, same features
        assert original[(a, b)] == f                # and they are the bond's own features


def test_p_zero_and_no_edges_and_errors():
    ei, attr = undirected(5, 4)
    assert DropEdge(0.0).train()(ei, attr)[0] is ei
    empty = torch.empty(2, 0, dtype=torch.long)
    assert DropEdge(0.5).train()(empty, torch.empty(0, 6))[0].shape == (2, 0)
    with pytest.raises(ValueError, match="p=0 to disable"):
        DropEdge(1.0)
    with pytest.raises(ValueError, match="edge_attr has 3 rows"):
        DropEdge(0.2)(ei, attr[:3])
    assert repr(DropEdge(0.2)) == "DropEdge(p=0.2)"
