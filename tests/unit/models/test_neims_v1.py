"""NEIMS v1 baseline: shapes, MW-anchored reverse head, gate, loss, config."""

from __future__ import annotations

import pytest
import torch

from neimsctl.errors import ConfigError
from neimsctl.models import registry
from neimsctl.models.neims_v1 import NeimsV1, NeimsV1Config, mask_above_mw, reverse_by_mw
from neimsctl.train.losses_v1 import NeimsV1Loss, mz_weights, neims_v1_loss

SMALL = dict(input_dim=32, hidden_dim=16, n_blocks=2, dropout=0.0)


def small(**kw) -> NeimsV1:
    torch.manual_seed(0)
    return NeimsV1(NeimsV1Config(**{**SMALL, **kw}))


def test_shapes_and_published_size():
    m = small().eval()
    out = m(torch.rand(3, 32), torch.tensor([60, 200, 450]))
    assert out.shape == (3, 501) and (out >= 0).all()
    full = NeimsV1()
    h, f, b = 2000, 4096, 501
    block = (2 * h) + (h * 1000 + 1000) + (2 * 1000) + (1000 * h + h)  # BN, Linear, BN, Linear
    expected = (f * h + h) + 7 * block + 2 * h + 3 * (h * b + b)
    assert sum(p.numel() for p in full.parameters()) == expected  # 39,268,503


def test_wrong_input_width_names_the_fix():
    with pytest.raises(ValueError, match="input_dim"):
        small()(torch.rand(2, 31), torch.tensor([100, 100]))


def test_reverse_by_mw_indexes_from_the_molecular_weight():
    raw = torch.arange(10, dtype=torch.float32).repeat(2, 1) + 1  # raw[k] = k + 1
    out = reverse_by_mw(raw, torch.tensor([4, 6]), shift=1)
    # out[b, j] = raw[mw + 1 - j] where 0 <= mw + 1 - j < 10
    assert out[0].tolist() == [6, 5, 4, 3, 2, 1, 0, 0, 0, 0]
    assert out[1].tolist() == [8, 7, 6, 5, 4, 3, 2, 1, 0, 0]
    assert mask_above_mw(raw, torch.tensor([4, 6]), 1)[0].tolist() == [1, 2, 3, 4, 5, 6, 0, 0, 0, 0]


def test_reverse_only_output_is_anchored_at_the_molecular_weight():
    m = small(prediction="reverse", max_above_mw=0).eval()
    with torch.no_grad():  # reverse head emits a constant bump at "neutral loss" 15 plus noise elsewhere
        m.reverse_head.bias.zero_()
        m.reverse_head.bias[15] = 50.0
        m.reverse_head.bias[:3] = 5.0
    x = torch.rand(1, 32).repeat(2, 1)
    parts = m.forward_parts(x, torch.tensor([100, 160]))
    rev = parts.reverse
    assert parts.forward is None and parts.gate is None
    assert rev[0, 101:].abs().sum() == 0 and rev[1, 161:].abs().sum() == 0  # nothing above MW
    assert int(parts.pred[0].argmax()) == 85 and int(parts.pred[1].argmax()) == 145  # peaks move with MW
    assert torch.allclose(rev[0, 85], rev[1, 145])
    # with the published shift of 5, peaks may sit up to MW + 5
    m5 = small(prediction="reverse")
    with torch.no_grad():
        m5.reverse_head.bias.fill_(10.0)
    r5 = m5.eval().forward_parts(x[:1], torch.tensor([100])).reverse
    assert r5[0, 106:].abs().sum() == 0 and (r5[0, :106] != 0).all()


def test_forward_head_is_masked_above_mw_plus_5():
    m = small(prediction="forward").eval()
    with torch.no_grad():
        m.forward_head.bias.fill_(3.0)
    pred = m(torch.rand(1, 32), torch.tensor([100]))
    assert pred[0, 106:].sum() == 0 and (pred[0, :106] > 0).any()


def test_gate_mixes_forward_and_reverse():
    m = small().eval()
    x, mw = torch.rand(2, 32), torch.tensor([120, 300])
    with torch.no_grad():
        m.gate_head.weight.zero_()
        m.gate_head.bias.fill_(30.0)  # gate ~1: forward only
        p = m.forward_parts(x, mw)
        assert torch.allclose(p.pred, torch.relu(p.forward), atol=1e-5)
        m.gate_head.bias.fill_(-30.0)  # gate ~0: reverse only
        p = m.forward_parts(x, mw)
        assert torch.allclose(p.pred, torch.relu(p.reverse), atol=1e-5)
        m.gate_head.bias.zero_()  # gate 0.5: the average
        p = m.forward_parts(x, mw)
        assert torch.allclose(p.gate, torch.full_like(p.gate, 0.5))
        assert torch.allclose(p.pred, torch.relu(0.5 * p.forward + 0.5 * p.reverse), atol=1e-6)
    ungated = small(gate=False).eval().forward_parts(x, mw)
    assert ungated.gate is None
    assert torch.allclose(ungated.pred, torch.relu(ungated.forward + ungated.reverse))


def test_one_optimizer_step_lowers_the_loss():
    m = small()
    loss_fn = NeimsV1Loss(m.config)
    x, mw = torch.rand(16, 32), torch.randint(60, 300, (16,))
    y = torch.rand(16, 501) ** 8 * (torch.arange(501) <= mw[:, None])
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)

    def eval_loss() -> float:  # train mode (batch statistics); dropout is 0, so deterministic
        with torch.no_grad():
            return float(loss_fn(m(x, mw), y))

    before = eval_loss()
    opt.zero_grad()
    loss_fn(m(x, mw), y).backward()
    opt.step()
    assert eval_loss() < before


def test_loss_weights_and_hand_value():
    w = mz_weights(4)
    assert torch.allclose(w, torch.tensor([1, 2, 3, 4]) / 10.0)
    pred, target = torch.zeros(1, 4), torch.tensor([[0.0, 1.0, 0.0, 2.0]])
    assert float(neims_v1_loss(pred, target)) == pytest.approx((0.2 * 1 + 0.4 * 4) / 4)
    cfg = NeimsV1Config(n_bins=4, target_scale=4.0)
    lin = torch.tensor([[0.0, 2.0, 0.5, 0.0]])  # -> max-normalised [0, 1, .25, 0] * 4 -> sqrt [0, 2, 1, 0]
    loss = NeimsV1Loss(cfg)
    assert torch.allclose(loss.transform_target(lin), torch.tensor([[0.0, 2.0, 1.0, 0.0]]))
    assert float(loss(torch.tensor([[0.0, 2.0, 1.0, 0.0]]), lin)) == 0.0


def test_predict_spectrum_is_linear_max_normalised_and_keeps_mode():
    m = small()
    with torch.no_grad():
        m.forward_head.bias.fill_(2.0)
    m.train()
    spec = m.predict_spectrum(torch.rand(3, 32), torch.tensor([80, 90, 100]))
    assert m.training
    assert torch.allclose(spec.amax(dim=1), torch.ones(3)) and (spec >= 0).all()
    raw = m.eval()(torch.rand(1, 32), torch.tensor([80]))
    lin = m.predict_spectrum(torch.rand(1, 32), torch.tensor([80]))
    assert lin.shape == raw.shape


def test_config_from_dict_rejects_unknown_keys_and_bad_values():
    cfg = NeimsV1Config.from_dict({"hidden_dim": 64, "n_blocks": 1})
    assert (cfg.hidden_dim, cfg.input_dim, cfg.n_blocks) == (64, 4096, 1)
    assert NeimsV1Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="hiden_dim"):
        NeimsV1Config.from_dict({"hiden_dim": 64})
    with pytest.raises(ConfigError, match="prediction"):
        NeimsV1Config(prediction="sideways")


def test_registered_as_neims_v1():
    assert registry.get("neims-v1") is NeimsV1
    assert NeimsV1.config_class is NeimsV1Config
