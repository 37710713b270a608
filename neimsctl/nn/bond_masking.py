"""Self-supervised bond masking (pretraining): hide 15% of bonds, predict their features.

Bond-feature layout (``formats/features.v1.md``, ``neimsctl.chem.graph``): slots 0..3 are the
one-hot bond type (single, double, triple, aromatic; all zero for other types such as dative),
slot 4 is "conjugated", slot 5 is "in ring". The head predicts the type with a 4-way
cross-entropy (bonds of another type are ignored) and the two flags with binary cross-entropy.

Masking replaces the features of a chosen bond, in **both** directions, with a learned token
(:attr:`BondMaskingHead.mask_token`, initialised to -1 in every slot, a value real features
never take), so the encoder can tell a masked bond from any real one, including the all-zero
"other type" bonds. See Hu et al., "Strategies for Pre-training Graph Neural Networks"
(https://arxiv.org/abs/1905.12265), attribute masking.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neimsctl.nn.mlp import MLP

__all__ = ["BOND_TYPE_SLOTS", "BOND_FLAG_SLOTS", "MaskedBonds", "BondMaskingLoss",
           "BondMaskingHead", "mask_bonds", "bond_masking_loss"]

BOND_TYPE_SLOTS: tuple[int, ...] = (0, 1, 2, 3)   # single, double, triple, aromatic
BOND_FLAG_SLOTS: tuple[int, ...] = (4, 5)         # conjugated, in ring


class MaskedBonds(NamedTuple):
    """Which bonds :func:`mask_bonds` hid, and what they were.

    Attributes
    ----------
    edge_mask : Tensor
        bool ``(E,)``: directed edges whose features were replaced (both directions of a bond).
    src, dst : Tensor
        long ``(M,)``: endpoints of each masked bond (one row per bond, not per direction).
    target : Tensor
        ``(M, D)``: the original bond features of the masked bonds.
    """

    edge_mask: Tensor
    src: Tensor
    dst: Tensor
    target: Tensor


class BondMaskingLoss(NamedTuple):
    """Loss terms and accuracy of one batch; ``correct``/``n_typed`` allow exact averaging."""

    loss: Tensor
    type_loss: Tensor
    flag_loss: Tensor
    accuracy: Tensor
    correct: int
    n_typed: int


def mask_bonds(batch: Any, rate: float = 0.15, generator: Optional[torch.Generator] = None,
               token: Optional[Tensor] = None) -> tuple[Any, MaskedBonds]:
    """Replace the features of ``round(rate * n_bonds)`` (at least 1) random bonds.

    Parameters
    ----------
    batch
        A PyG ``Data``/``Batch`` with ``edge_index`` (2, E) holding both directions of every bond
        and ``edge_attr`` (E, D). It is not modified: a shallow copy with new ``edge_attr`` is
        returned.
    rate
        Share of bonds to mask, in ``(0, 1]``.
    generator
        CPU generator for reproducible choices (default: the global RNG).
    token
        ``(D,)`` replacement features (differentiable); ``None`` uses ``-1`` in every slot.

    Returns
    -------
    (masked_batch, MaskedBonds)

    Raises
    ------
    ValueError
        For a rate outside ``(0, 1]`` or an edge without its reverse direction.
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"mask rate must be in (0, 1], got {rate}")
    ei, attr = batch.edge_index, batch.edge_attr
    n_nodes = int(batch.num_nodes)
    lo, hi = torch.minimum(ei[0], ei[1]), torch.maximum(ei[0], ei[1])
    bond_ids, bond_of_edge = torch.unique(lo * n_nodes + hi, return_inverse=True)
    n_bonds, n_edges = bond_ids.numel(), ei.size(1)
    if n_edges != 2 * n_bonds:
        raise ValueError(f"{n_edges} directed edges for {n_bonds} bonds: edge_index must hold both "
                         "directions of every bond exactly once (as the teacher featurizer writes)")
    n_mask = max(1, round(rate * n_bonds)) if n_bonds else 0
    chosen = torch.randperm(n_bonds, generator=generator)[:n_mask].to(ei.device)
    picked = torch.zeros(n_bonds, dtype=torch.bool, device=ei.device)
    picked[chosen] = True
    edge_mask = picked[bond_of_edge]
    first = torch.full((n_bonds,), n_edges, dtype=torch.long, device=ei.device)
    first = first.scatter_reduce(0, bond_of_edge, torch.arange(n_edges, device=ei.device), "amin")
    rep = first[chosen]
    fill = token if token is not None else attr.new_full((attr.size(1),), -1.0)
    if fill.shape != (attr.size(1),):
        raise ValueError(f"mask token has shape {tuple(fill.shape)}, expected ({attr.size(1)},)")
    new_attr = torch.where(edge_mask[:, None], fill.to(attr.dtype).expand_as(attr), attr)
    out = copy.copy(batch)
    out.edge_attr = new_attr
    return out, MaskedBonds(edge_mask, ei[0, rep], ei[1, rep], attr[rep])


def bond_masking_loss(type_logits: Tensor, flag_logits: Tensor, target: Tensor, *,
                      type_slots: Sequence[int] = BOND_TYPE_SLOTS,
                      flag_slots: Sequence[int] = BOND_FLAG_SLOTS,
                      flag_weight: float = 1.0) -> BondMaskingLoss:
    r"""Cross-entropy on the bond type plus weighted binary cross-entropy on the flags.

    .. math::
        L = \mathrm{CE}(\mathbf{z}^{type}, t) + w\,\mathrm{BCE}(\mathbf{z}^{flag}, \mathbf{f})

    Bonds whose type slots are all zero (types outside the vocabulary) are left out of the
    type term and the accuracy. ``accuracy`` is the bond-type accuracy on the masked bonds.

    Shapes
    ------
    type_logits ``(M, len(type_slots))``, flag_logits ``(M, len(flag_slots))``, target ``(M, D)``
    """
    types = target[:, list(type_slots)]
    typed = types.sum(dim=1) > 0
    cls = torch.where(typed, types.argmax(dim=1), torch.full_like(typed, -100, dtype=torch.long))
    n_typed = int(typed.sum())
    zero = type_logits.sum() * 0.0
    type_loss = F.cross_entropy(type_logits.float(), cls, ignore_index=-100) if n_typed else zero
    if flag_logits.numel():
        flag_loss = F.binary_cross_entropy_with_logits(flag_logits.float(),
                                                       target[:, list(flag_slots)].float())
    else:
        flag_loss = zero
    correct = int((type_logits.argmax(dim=1)[typed] == cls[typed]).sum()) if n_typed else 0
    accuracy = torch.tensor(correct / max(n_typed, 1), device=type_logits.device)
    return BondMaskingLoss(type_loss + flag_weight * flag_loss, type_loss, flag_loss, accuracy,
                           correct, n_typed)


class BondMaskingHead(nn.Module):
    r"""Predict a masked bond's type and flags from its two endpoint node states.

    .. math::
        [\mathbf{z}^{type} \,\|\, \mathbf{z}^{flag}] =
        \mathrm{MLP}\big([\mathbf{h}_u + \mathbf{h}_v \,\|\, \mathbf{h}_u \odot \mathbf{h}_v]\big)

    (symmetric in ``u, v``). Also owns the learned :attr:`mask_token` used by :meth:`mask`.

    Parameters
    ----------
    channels
        Width of the encoder's node states.
    hidden
        Hidden width of the MLP.
    bond_dim
        Raw bond-feature width (size of the mask token).
    type_slots, flag_slots
        Bond-feature slots of the one-hot type and of the binary flags.
    dropout
        Dropout inside the MLP.

    Shapes
    ------
    - node_states: ``(N, channels)``, src/dst: ``(M,)``
    - output: ``(M, len(type_slots))``, ``(M, len(flag_slots))``
    """

    def __init__(self, channels: int = 256, hidden: int = 256, *, bond_dim: int = 6,
                 type_slots: Sequence[int] = BOND_TYPE_SLOTS,
                 flag_slots: Sequence[int] = BOND_FLAG_SLOTS, dropout: float = 0.0) -> None:
        super().__init__()
        slots = [*type_slots, *flag_slots]
        if len(type_slots) < 2 or len(set(slots)) != len(slots) or max(slots) >= bond_dim:
            raise ValueError(f"type_slots {tuple(type_slots)} / flag_slots {tuple(flag_slots)} must be "
                             f"distinct slots < bond_dim={bond_dim}, with at least 2 type slots")
        self.channels, self.bond_dim = channels, bond_dim
        self.type_slots, self.flag_slots = tuple(type_slots), tuple(flag_slots)
        self.mlp = MLP(2 * channels, [hidden], len(slots), dropout=dropout)
        self.mask_token = nn.Parameter(torch.empty(bond_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.mlp.reset_parameters()
        nn.init.constant_(self.mask_token, -1.0)

    def mask(self, batch: Any, rate: float = 0.15,
             generator: Optional[torch.Generator] = None) -> tuple[Any, MaskedBonds]:
        """:func:`mask_bonds` with this head's learned token."""
        return mask_bonds(batch, rate, generator, token=self.mask_token)

    def forward(self, node_states: Tensor, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
        if node_states.size(-1) != self.channels:
            raise ValueError(f"node states have width {node_states.size(-1)}, head expects "
                             f"{self.channels}: build the head with the encoder's hidden width")
        hu, hv = node_states[src], node_states[dst]
        z = self.mlp(torch.cat([hu + hv, hu * hv], dim=-1))
        n = len(self.type_slots)
        return z[:, :n], z[:, n:]

    def loss(self, node_states: Tensor, masked: MaskedBonds, flag_weight: float = 1.0) -> BondMaskingLoss:
        """Logits for the masked bonds, then :func:`bond_masking_loss`."""
        type_logits, flag_logits = self(node_states, masked.src, masked.dst)
        return bond_masking_loss(type_logits, flag_logits, masked.target, type_slots=self.type_slots,
                                 flag_slots=self.flag_slots, flag_weight=flag_weight)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, types={len(self.type_slots)}, "
                f"flags={len(self.flag_slots)})")
