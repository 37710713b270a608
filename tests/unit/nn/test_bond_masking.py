"""Bond masking: ~15% of bonds, both directions, learned token, loss/accuracy, reproducible."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

from neimsctl.nn.bond_masking import BondMaskingHead, bond_masking_loss, mask_bonds


def random_molecule(n_atoms: int, n_bonds: int, g: torch.Generator) -> Data:
    pairs = torch.combinations(torch.arange(n_atoms), 2)
    pairs = pairs[torch.randperm(len(pairs), generator=g)[:n_bonds]].T
    attr = torch.zeros(n_bonds, 6)
    attr[torch.arange(n_bonds), torch.randint(0, 4, (n_bonds,), generator=g)] = 1.0
    attr[:, 4:] = torch.randint(0, 2, (n_bonds, 2), generator=g).float()
    return Data(x=torch.randn(n_atoms, 48, generator=g),
                edge_index=torch.cat([pairs, pairs.flip(0)], dim=1), edge_attr=attr.repeat(2, 1))


def batch_of(n: int = 40, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch.from_data_list([random_molecule(20, 22, g) for _ in range(n)])


def test_masks_15_percent_of_bonds_in_both_directions():
    b = batch_of()
    before = b.edge_attr.clone()
    masked, info = mask_bonds(b, 0.15, torch.Generator().manual_seed(1))
    n_bonds = b.edge_index.size(1) // 2
    assert info.src.numel() == round(0.15 * n_bonds) == int(info.edge_mask.sum()) // 2
    assert torch.equal(b.edge_attr, before)                      # input batch untouched
    assert (masked.edge_attr[info.edge_mask] == -1).all()
    assert torch.equal(masked.edge_attr[~info.edge_mask], before[~info.edge_mask])
    hidden = {(int(u), int(v)) for (u, v), m in zip(b.edge_index.T, info.edge_mask) if m}
    assert all((v, u) in hidden for u, v in hidden)              # both directions
    lookup = {(int(u), int(v)): f for (u, v), f in zip(b.edge_index.T, before)}
    for u, v, t in zip(info.src, info.dst, info.target):
        assert torch.equal(lookup[(int(u), int(v))], t)


def test_reproducible_with_a_generator_and_at_least_one_bond():
    b = batch_of(3)
    m1 = mask_bonds(b, 0.15, torch.Generator().manual_seed(7))[1]
    m2 = mask_bonds(b, 0.15, torch.Generator().manual_seed(7))[1]
    assert torch.equal(m1.edge_mask, m2.edge_mask)
    tiny = batch_of(1)
    assert mask_bonds(tiny, 0.001)[1].src.numel() == 1
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        mask_bonds(b, 0.0)
    one_way = Data(x=torch.randn(3, 48), edge_index=torch.tensor([[0, 1], [1, 2]]), edge_attr=torch.ones(2, 6))
    with pytest.raises(ValueError, match="both"):
        mask_bonds(one_way, 0.5)


def test_loss_accuracy_and_untyped_bonds():
    target = torch.tensor([[1, 0, 0, 0, 1, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0.]])
    logits = torch.tensor([[5.0, 0, 0, 0], [5.0, 0, 0, 0], [0, 0, 9.0, 0]])
    res = bond_masking_loss(logits, torch.zeros(3, 2), target)
    assert res.n_typed == 2 and res.correct == 1 and res.accuracy.item() == pytest.approx(0.5)
    assert res.flag_loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert torch.isfinite(res.loss)


def test_head_learns_with_its_token():
    torch.manual_seed(0)
    b = batch_of(8)
    head = BondMaskingHead(channels=48, hidden=32)
    assert repr(head) == "BondMaskingHead(48, types=4, flags=2)"
    assert sum(p.numel() for p in head.parameters()) == 96 * 32 + 32 + 32 * 6 + 6 + 6
    masked, info = head.mask(b, 0.15, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        res = head.loss(masked.x, info)
        opt.zero_grad()
        res.loss.backward()
        opt.step()
        losses.append(res.loss.item())
        assert 0.0 <= res.accuracy.item() <= 1.0
    assert losses[-1] < 0.8 * losses[0]
    with pytest.raises(ValueError, match="hidden width"):
        head(torch.randn(4, 47), info.src, info.dst)
