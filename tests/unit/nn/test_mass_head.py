"""The shared MW-anchored (NEIMS v1 bidirectional) head and the models that use it."""

from __future__ import annotations

import pytest
import torch

from neimsctl.models.student import StudentConfig, StudentModel
from neimsctl.nn.mass_head import MassAnchoredHead, activate, mask_above_mw, reverse_by_mw


def test_reverse_unit_k_is_the_neutral_loss_k_minus_shift() -> None:
    raw = torch.zeros(2, 30)
    raw[:, 5] = 1.0    # unit 5 = loss of 0 (the molecular ion itself) with shift 5
    raw[:, 20] = 2.0   # unit 20 = M - 15 (methyl loss)
    out = reverse_by_mw(raw, torch.tensor([12, 25]), shift=5)
    assert out[0].nonzero().flatten().tolist() == [12]          # M - 15 < 0 falls off
    assert out[1].nonzero().flatten().tolist() == [10, 25]
    assert out[1, 10] == 2.0 and out[1, 25] == 1.0


def test_head_puts_nothing_above_mw_plus_shift_for_every_activation() -> None:
    torch.manual_seed(0)
    mw = torch.tensor([40, 77, 200])
    for act in ("relu", "softplus"):
        head = MassAnchoredHead(16, 300, shift=5, activation=act, bias_init=-3.0)
        out = head(torch.randn(3, 16), mw)
        assert out.shape == (3, 300)
        for b, m in enumerate(mw.tolist()):
            assert torch.all(out[b, m + 6:] == 0)
            assert torch.all(out[b, : m + 6] > 0) if act == "softplus" else True
        assert torch.all(out >= 0)


def test_gate_mixes_forward_and_reverse_bin_by_bin() -> None:
    head = MassAnchoredHead(4, 20, shift=0, activation="none")
    h, mw = torch.randn(2, 4), torch.tensor([10, 15])
    fwd, rev, gate = head.parts(h, mw)
    assert torch.allclose(head(h, mw), gate * fwd + (1 - gate) * rev)
    assert torch.allclose(fwd, mask_above_mw(head.forward_head(h), mw, 0))
    with pytest.raises(ValueError, match="activation"):
        activate(h, "tanh")


def test_mass_aware_student_needs_mw_and_respects_it() -> None:
    cfg = StudentConfig(input_dim=32, gate_hidden=(16,), expert_bottleneck=4, expert_depth=1,
                        head_hidden=(24,), hidden_dim=8, n_bins=120, mass_aware=True)
    model = StudentModel(cfg).eval()
    x = torch.rand(3, 32)
    with pytest.raises(ValueError, match="mw"):
        model(x)
    mw = torch.tensor([50, 60, 100])
    spec = model.predict_spectrum(x, mw)
    for b, m in enumerate(mw.tolist()):
        assert torch.all(spec[b, m + 6:] == 0)
    assert torch.allclose(spec.amax(1), torch.ones(3))
