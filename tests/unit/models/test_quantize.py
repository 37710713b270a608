"""Inference precisions: which layers int8 quantizes, and how ``auto`` resolves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neimsctl.errors import ConfigError
from neimsctl.models.quantize import apply_precision, cpu_has_bf16, resolve_precision
from neimsctl.models.student import StudentConfig, StudentModel

TINY = StudentConfig(gate_hidden=(16,), expert_depth=2, expert_bottleneck=8, head_hidden=(32,),
                     hidden_dim=16, input_dim=64, n_bins=20)
CPU = torch.device("cpu")


def test_int8_skips_the_expert_down_projections():
    torch.manual_seed(0)
    model = StudentModel(TINY)
    ref = StudentModel(TINY)
    ref.load_state_dict(model.state_dict())
    q = apply_precision(model, "int8")
    kinds = {n: type(m).__name__ for n, m in q.named_modules() if "Linear" in type(m).__name__}
    assert kinds["experts.0.0.down"] == "Linear" and kinds["experts.3.1.down"] == "Linear"
    assert "quantized" in type(q.get_submodule("experts.0.0.up")).__module__
    assert "quantized" in type(q.get_submodule("out")).__module__
    assert type(ref.out) is nn.Linear
    x = torch.rand(5, 64)
    a, b = ref.predict_spectrum(x), q.predict_spectrum(x)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.95


def test_bf16_and_fp32():
    model = StudentModel(TINY)
    assert apply_precision(model, "bf16").out.weight.dtype == torch.bfloat16
    assert apply_precision(model, "fp32").out.weight.dtype == torch.float32
    with pytest.raises(ConfigError):
        apply_precision(model, "auto")


def test_resolve_auto_rule():
    # one rule for every caller and batch size: the CLI and the API resolve alike
    assert resolve_precision("auto", arch="student", device=CPU) == \
        ("bf16" if cpu_has_bf16() else "fp32")
    assert resolve_precision("auto", arch="student", device=CPU, card={"precision": "int8"}) == "int8"
    assert resolve_precision("auto", arch="teacher", device=CPU) == "fp32"
    assert resolve_precision("auto", arch="student", device=CPU, card={"precision": "bf16"}) == "bf16"
    assert resolve_precision("auto", arch="student", device=torch.device("cuda")) == "fp32"
    assert resolve_precision("bf16", arch="student", device=CPU) == "bf16"
    with pytest.raises(ConfigError, match="CPU only"):
        resolve_precision("int8", arch="student", device=torch.device("cuda"))
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("fp16", arch="student", device=CPU)


def test_bf16_dispatch_pads_expert_rows_and_predicts_the_same():
    from neimsctl.nn import moe

    torch.manual_seed(0)
    model = apply_precision(StudentModel(TINY).eval(), "bf16")
    x = (torch.rand(70, 64) < 0.2).float()
    seen = []
    hooks = [e.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
             for e in model.experts]
    with torch.inference_mode():
        batch = model.predict_spectrum(x)
        padded = list(seen)
        one_by_one = torch.cat([model.predict_spectrum(x[i:i + 1]) for i in range(5)])
    for h in hooks:
        h.remove()
    # 70 molecules x top-2 = 140 routing slots over the experts, each call padded up to 64s
    assert padded and all(n % moe.PAD_ROWS == 0 for n in padded) and sum(padded) >= 140
    torch.testing.assert_close(batch[:5], one_by_one, rtol=2e-2, atol=2e-2)
