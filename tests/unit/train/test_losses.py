"""Tests for neimsctl.train.losses and neimsctl.train.gradnorm (distillation objective)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from _student_fixtures import _one_thread  # noqa: F401  (autouse: one torch thread)

from neimsctl.errors import ConfigError
from neimsctl.models.student import StudentConfig, StudentModel
from neimsctl.train.gradnorm import GradNorm
from neimsctl.train.losses import (DistillLoss, DistillLossConfig, confidence_weights, feature_loss,
                                   gate_entropy, hard_loss, load_balance_loss, soft_loss,
                                   spectral_cosine_loss, tempered, temperature_schedule,
                                   tempered_variance)

TINY = StudentConfig(input_dim=32, gate_hidden=(16,), expert_depth=2, expert_bottleneck=4,
                     head_hidden=(24,), hidden_dim=12, n_bins=30, dropout=0.0)


def _spectra(b: int = 6, n: int = 30, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(b, n, generator=g) * (torch.rand(b, n, generator=g) < 0.4)
    y[:, 5] = 1.0
    return y / y.amax(1, keepdim=True)


# -- temperature --------------------------------------------------------------------------------
def test_temperature_schedule_endpoints_and_monotone() -> None:
    assert temperature_schedule(0, 150) == 4.0
    assert temperature_schedule(149, 150) == 1.0
    assert temperature_schedule(10_000, 150) == 1.0 and temperature_schedule(-3, 150) == 4.0
    assert math.isclose(temperature_schedule(74.5, 150), 2.5)          # cosine midpoint
    ts = [temperature_schedule(e / 4, 150) for e in range(4 * 150)]
    assert all(a >= b for a, b in zip(ts, ts[1:]))
    assert temperature_schedule(0, 1) == 1.0
    assert temperature_schedule(0, 10, t0=2.0, t1=0.5) == 2.0


def test_tempering_fixes_endpoints_and_flattens_with_temperature() -> None:
    i = torch.tensor([0.0, 0.01, 0.1, 1.0])
    for t in (1.0, 2.0, 4.0):
        phi = tempered(i, t)
        assert phi[0].abs() < 1e-6 and torch.isclose(phi[-1], torch.tensor(1.0))
        assert (phi.diff() > 0).all()
    assert (tempered(i, 4.0)[1:3] > tempered(i, 1.0)[1:3]).all()       # small peaks weigh more
    assert torch.allclose(tempered(i, 1.0, power=0.5, eps=1e-9), i.sqrt(), atol=1e-3)


# -- hard / soft / feature ----------------------------------------------------------------------
def test_hard_loss_is_mse_in_output_space_with_optional_mask() -> None:
    y = _spectra()
    assert hard_loss(y.sqrt(), y, "sqrt") < 1e-12
    assert hard_loss(y, y, "linear") < 1e-12
    assert torch.isclose(hard_loss(torch.zeros_like(y), y, "sqrt"), y.mean())
    mask = torch.tensor([True, False, True, True, True, True])
    pred = y.sqrt().clone()
    pred[1] += 1.0                                                   # error only in a masked-out row
    assert hard_loss(pred, y, "sqrt", mask=mask) < 1e-12
    assert hard_loss(pred, y, "sqrt", mask=torch.zeros(6, dtype=torch.bool)) == 0


@pytest.mark.parametrize("space", ["sqrt", "linear"])
@pytest.mark.parametrize("temperature", [1.0, 2.5, 4.0])
def test_soft_loss_is_zero_when_student_equals_teacher(space: str, temperature: float) -> None:
    t = _spectra()
    pred = t.sqrt() if space == "sqrt" else t
    var = torch.rand_like(t) * 0.01
    assert soft_loss(pred, t, var, temperature=temperature, space=space) < 1e-10
    assert soft_loss(pred * 0.5, t, var, temperature=temperature, space=space) > 1e-3


def test_confidence_weighting_down_weights_high_variance_bins() -> None:
    var = torch.full((1, 30), 1e-4)
    var[0, 7] = 0.05                                                  # the teacher is unsure here
    w = confidence_weights(var)
    assert w[0, 7] < 0.2 * w[0, 3] and (w > 0).all() and (w <= 1).all()
    assert torch.all(confidence_weights(var, "exp")[0, 7] < confidence_weights(var, "exp")[0, 3])
    t = torch.zeros(1, 30)
    t[0, [3, 7, 12]] = torch.tensor([0.5, 0.5, 1.0])                  # same intensity at 3 and 7
    var = torch.where(t > 0, var, torch.zeros_like(var))             # empty bins: all samples agree
    err_sure, err_unsure = t.sqrt().clone(), t.sqrt().clone()
    err_sure[0, 3] += 0.3
    err_unsure[0, 7] += 0.3
    for temperature in (1.0, 4.0):
        for mode in ("relative", "exp"):
            sure = soft_loss(err_sure, t, var, temperature=temperature, confidence=mode)
            unsure = soft_loss(err_unsure, t, var, temperature=temperature, confidence=mode)
            assert unsure < 0.3 * sure
    flat = [soft_loss(e, t, var, temperature=1.0, confidence="none") for e in (err_sure, err_unsure)]
    assert torch.isclose(flat[0], flat[1])


def test_confidence_is_judged_relative_to_intensity() -> None:
    """The same MC-dropout spread is noise on a faint peak but negligible on a base peak."""
    mean = torch.tensor([[0.8, 0.02, 0.0]])
    var = torch.tensor([[0.0025, 0.0025, 0.0]])
    s2 = tempered_variance(mean, var, temperature=1.0)
    assert s2[0, 1] > 10 * s2[0, 0] and s2[0, 2] == 0
    w = confidence_weights(s2)
    assert w[0, 1] < w[0, 0] < w[0, 2] == 1.0


def test_feature_loss_modes() -> None:
    h = torch.randn(5, 12)
    for mode in ("normalized_mse", "mse", "cosine"):
        assert feature_loss(h, h, mode) < 1e-6
        assert feature_loss(h, torch.randn(5, 12), mode) > 0.1
    assert feature_loss(h, 3 * h + 1, "normalized_mse") < 1e-6          # scale-free
    with pytest.raises(ValueError, match="feature_proj"):
        feature_loss(h, torch.randn(5, 13))


def test_spectral_cosine_loss() -> None:
    y = _spectra()
    assert spectral_cosine_loss(y, 2 * y) < 1e-6
    assert spectral_cosine_loss(y, y, mz_power=1.0, intensity_power=0.5) < 1e-6
    a, b = torch.zeros(1, 30), torch.zeros(1, 30)
    a[0, 3], b[0, 4] = 1.0, 1.0
    assert torch.isclose(spectral_cosine_loss(a, b), torch.tensor(1.0))


# -- gate terms ---------------------------------------------------------------------------------
def test_load_balance_loss_is_one_for_uniform_routing_and_larger_when_collapsed() -> None:
    b = 64
    uniform_p = torch.full((b, 4), 0.25)
    uniform_idx = torch.tensor([[0, 1], [2, 3]]).repeat(b // 2, 1)
    assert torch.isclose(load_balance_loss(uniform_p, uniform_idx), torch.tensor(1.0))
    collapsed_p = torch.tensor([[0.5, 0.5, 0.0, 0.0]]).expand(b, 4)
    collapsed_idx = torch.tensor([[0, 1]]).expand(b, 2)
    assert torch.isclose(load_balance_loss(collapsed_p, collapsed_idx), torch.tensor(2.0))
    top1_p = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(b, 4)       # everything on one expert
    assert torch.isclose(load_balance_loss(top1_p, torch.zeros(b, 1, dtype=torch.long)), torch.tensor(4.0))


def test_gate_entropy_range() -> None:
    assert torch.isclose(gate_entropy(torch.full((3, 4), 0.25)), torch.tensor(math.log(4)))
    assert gate_entropy(torch.tensor([[1.0, 0, 0, 0]])) < 1e-6


# -- GradNorm -----------------------------------------------------------------------------------
def _two_task_setup(seed: int = 0):
    torch.manual_seed(seed)
    shared = torch.nn.Linear(8, 8)
    x = torch.randn(32, 8)

    def losses():
        h = shared(x)
        # task 0 has a 10x larger gradient than tasks 1 and 2
        return [10 * h.square().mean(), h.abs().mean(), (h - 1).square().mean() * 0.5]

    return shared, losses


def test_gradnorm_keeps_weights_fixed_during_warmup_then_adapts_them() -> None:
    shared, losses = _two_task_setup()
    gn = GradNorm((0.3, 0.5, 0.2), warmup_epochs=2, init_steps=1)
    for epoch in range(2):
        gn.set_epoch(epoch)
        for _ in range(3):
            assert not gn.update(losses(), [shared.weight])
            assert torch.equal(gn.weights, torch.tensor([0.3, 0.5, 0.2]))
    gn.set_epoch(2)
    for _ in range(10):
        assert gn.update(losses(), [shared.weight])
        w = gn.weights
        assert (w > 0).all() and torch.isclose(w.sum(), torch.tensor(1.0))
    assert not torch.allclose(gn.weights, torch.tensor([0.3, 0.5, 0.2]))
    assert gn.weights[0] < 0.3                                       # the task with big gradients loses weight


def test_gradnorm_weights_stay_positive_under_extreme_imbalance_and_skip_absent_tasks() -> None:
    shared, losses = _two_task_setup(1)
    gn = GradNorm((0.3, 0.5, 0.2), warmup_epochs=0, lr=0.5, init_steps=1)
    for _ in range(50):
        ls = losses()
        gn.update([ls[0] * 1e4, ls[1], None], [shared.weight])
    w = gn.weights
    assert (w > 0).all() and w[2] == pytest.approx(0.2)              # absent task untouched
    assert float(w[0] + w[1]) == pytest.approx(0.8, abs=1e-5)
    with torch.no_grad():                                            # validation: no update
        assert not gn.update(losses(), [shared.weight])


def test_gradnorm_state_round_trip_with_weights_only_load() -> None:
    shared, losses = _two_task_setup()
    gn = GradNorm(warmup_epochs=0, init_steps=1)
    for _ in range(3):
        gn.update(losses(), [shared.weight])
    buf = io.BytesIO()
    torch.save(gn.state_dict(), buf)
    buf.seek(0)
    other = GradNorm(warmup_epochs=0, init_steps=1)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other.weights, gn.weights)
    gn.update(losses(), [shared.weight])
    other.update(losses(), [shared.weight])
    assert torch.allclose(other.weights, gn.weights)


# -- DistillLoss --------------------------------------------------------------------------------
def _batch(b: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 32, generator=g)
    y = _spectra(b, seed=seed)
    teacher = (y + 0.05 * torch.rand(b, 30, generator=g)).clamp(0, 1)
    var = 0.01 * torch.rand(b, 30, generator=g)
    hidden = torch.randn(b, 12, generator=g)
    return x, y, teacher, var, hidden


def test_distill_loss_components_and_one_step_lowers_it() -> None:
    torch.manual_seed(0)
    m = StudentModel(TINY)
    loss = DistillLoss(DistillLossConfig(epochs=20), space="sqrt", student_dim=12, teacher_dim=12)
    loss.set_epoch(0)
    x, y, teacher, var, hidden = _batch()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    res = loss(m(x), y, teacher, var, hidden, shared=m.shared_parameters())
    assert set(res) == {"total", "hard", "soft", "feature", "load", "entropy", "w_hard", "w_soft",
                        "w_feature", "temperature"}
    parts = DistillLoss.log_parts(res)
    assert parts["temperature"] == 4.0 and parts["w_soft"] == pytest.approx(0.5)
    expect = (0.3 * parts["hard"] + 0.5 * parts["soft"] + 0.2 * parts["feature"]
              + 0.01 * parts["load"] + 0.01 * parts["entropy"])
    assert float(res["total"].detach()) == pytest.approx(expect, rel=1e-5)
    before = float(res["total"].detach())
    opt.zero_grad()
    res["total"].backward()
    opt.step()
    after = float(loss(m(x), y, teacher, var, hidden)["total"].detach())
    assert after < before


def test_distill_loss_without_teacher_is_hard_loss_plus_gate_terms() -> None:
    m = StudentModel(TINY)
    loss = DistillLoss(DistillLossConfig(load_weight=0.0, entropy_weight=0.0))
    x, y, *_ = _batch()
    res = loss(m(x), y)
    assert float(res["soft"]) == 0 and float(res["feature"]) == 0
    assert float(res["total"].detach()) == pytest.approx(float(res["hard"].detach()), rel=1e-6)   # weight 0.3+0.5+0.2
    with pytest.raises(ValueError, match="target spectrum or teacher"):
        loss(m(x), None)


def test_plain_cosine_adds_the_unweighted_linear_cosine_term() -> None:
    from neimsctl.models.student import spectrum_from_space

    m = StudentModel(TINY).eval()
    x, y, *_ = _batch()
    out = m(x)
    base = DistillLoss(DistillLossConfig(load_weight=0.0, entropy_weight=0.0))(out, y)
    plain = DistillLoss(DistillLossConfig(load_weight=0.0, entropy_weight=0.0, plain_cosine=0.7))
    res = plain(out, y, y)           # the teacher mean = the library spectrum: same term in both
    cos = spectral_cosine_loss(spectrum_from_space(out.pred.float(), "sqrt"), y)
    assert float(res["hard"]) == pytest.approx(float(base["hard"]) + 0.7 * float(cos), rel=1e-5)
    assert float(res["soft"]) > 0.7 * float(cos) - 1e-6


def test_distill_loss_gradnorm_after_warmup_and_state_round_trip() -> None:
    torch.manual_seed(1)
    m = StudentModel(TINY)
    loss = DistillLoss(DistillLossConfig(warmup_epochs=1, epochs=4), student_dim=12, teacher_dim=12)
    x, y, teacher, var, hidden = _batch()
    for epoch in range(3):
        loss.set_epoch(epoch)
        for _ in range(3):
            res = loss(m(x), y, teacher, var, hidden, shared=m.shared_parameters())
            res["total"].backward()
        w = torch.stack([res["w_hard"], res["w_soft"], res["w_feature"]])
        if epoch == 0:
            assert torch.allclose(w, torch.tensor([0.3, 0.5, 0.2]))
    assert not torch.allclose(w, torch.tensor([0.3, 0.5, 0.2]))
    assert (w > 0).all() and torch.isclose(w.sum(), torch.tensor(1.0))
    buf = io.BytesIO()
    torch.save(loss.state_dict(), buf)
    buf.seek(0)
    other = DistillLoss(DistillLossConfig(warmup_epochs=1, epochs=4), student_dim=12, teacher_dim=12)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other.gradnorm.weights, loss.gradnorm.weights)
    assert other.temperature == loss.temperature == temperature_schedule(2, 4)


def test_a_zero_weight_switches_a_term_off_and_gradnorm_leaves_it_at_zero() -> None:
    torch.manual_seed(2)
    m = StudentModel(TINY)
    loss = DistillLoss(DistillLossConfig(warmup_epochs=0, epochs=4, gamma=0.0),
                       student_dim=12, teacher_dim=12)
    x, y, teacher, var, hidden = _batch()
    for epoch in range(2):
        loss.set_epoch(epoch)
        res = loss(m(x), y, teacher, var, hidden, shared=m.shared_parameters())
        res["total"].backward()
    assert float(res["feature"]) == 0 and float(res["w_feature"]) == 0
    assert float(res["w_hard"]) > 0 and float(res["w_soft"]) > 0
    assert float(res["w_hard"] + res["w_soft"]) == pytest.approx(0.3 + 0.5, rel=1e-5)  # alpha + beta
    with pytest.raises(ValueError, match="non-negative"):
        GradNorm((0.5, -0.1))


def test_distill_loss_config_is_strict() -> None:
    assert DistillLossConfig.from_dict({"beta": 0.4}).beta == 0.4
    with pytest.raises(ConfigError, match="loss.betta"):
        DistillLossConfig.from_dict({"betta": 0.4})
    with pytest.raises(ValueError, match="output space"):
        DistillLoss(space="log")


@pytest.mark.parametrize("field, value, message", [
    ("alpha", -3.0, r"^loss.alpha: must be a number >= 0, got -3.0$"),
    ("plain_cosine", float("inf"), r"^loss.plain_cosine: must be a number >= 0, got inf$"),
    ("t0", 0.0, r"^loss.t0: must be a number > 0, got 0.0$"),
    ("epochs", 0, r"^loss.epochs: must be an integer >= 1, got 0$"),
    ("cosine_intensity_power", 11.0, r"^loss.cosine_intensity_power: must be a number in \[0, 10\]"),
])
def test_distill_loss_config_refuses_values_out_of_range(field, value, message) -> None:
    """A negative weight reached GradNorm as a traceback (ValueError); now a ConfigError naming
    the key, raised when the config is built."""
    with pytest.raises(ConfigError, match=message):
        DistillLossConfig(**{field: value})
    with pytest.raises(ConfigError, match="not all 0"):
        DistillLossConfig(alpha=0.0, beta=0.0, gamma=0.0)
