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
    assert resolve_precision("auto", arch="student", device=CPU) == "int8"
    assert resolve_precision("auto", arch="student", device=CPU, batch_size=1024) == "fp32"
    assert resolve_precision("auto", arch="teacher", device=CPU) == "fp32"
    assert resolve_precision("auto", arch="student", device=CPU, card={"precision": "bf16"}) == "bf16"
    assert resolve_precision("auto", arch="student", device=torch.device("cuda")) == "fp32"
    assert resolve_precision("bf16", arch="student", device=CPU) == "bf16"
    with pytest.raises(ConfigError, match="CPU only"):
        resolve_precision("int8", arch="student", device=torch.device("cuda"))
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("fp16", arch="student", device=CPU)
