"""Fuzz the checkpoint loader: any file, any damaged checkpoint -> a checkpoint or CheckpointError.

Never another exception (KeyError, AttributeError, ...), never a model with non-finite weights.
Bounded and reproducible (``derandomize``), like the rest of ``tests/fuzz``.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neimsctl.errors import CheckpointError
from neimsctl.models import checkpoint as ck

pytestmark = pytest.mark.fuzz
CI = settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
                   st.just(torch.tensor([float("nan")])), st.just(torch.zeros(2, 2)))


def _valid() -> dict:
    model = torch.nn.Linear(3, 2)
    return ck.build_checkpoint(model=model, config={"model": {"name": "student"}}, epoch=1)


def _load(obj_or_bytes) -> dict | None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pt"
        if isinstance(obj_or_bytes, bytes):
            path.write_bytes(obj_or_bytes)
        else:
            torch.save(obj_or_bytes, path)
        try:
            return ck.load_checkpoint(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)
            return None


@CI
@given(st.binary(max_size=256))
def test_any_bytes_are_a_checkpoint_error(data):
    assert _load(data) is None or data[:1] in (b"\x80", b"P")


@CI
@given(st.lists(st.tuples(st.sampled_from(["model", "config", "featurizer_hash", "epoch",
                                           "history", "optimizer", "format", "extra"]),
                          VALUES), max_size=4),
       st.sampled_from(["set", "drop_weight", "nan_weight", "weight_to_value"]))
def test_damaged_checkpoints_load_or_are_refused(changes, how):
    ckpt = _valid()
    for key, value in changes:
        ckpt[key] = value
    weights = ckpt.get("model")
    if isinstance(weights, dict) and weights and how != "set":
        name = next(iter(weights))
        if how == "drop_weight":
            del weights[name]
        elif how == "nan_weight" and isinstance(weights[name], torch.Tensor):
            weights[name] = weights[name].clone().fill_(math.nan)
        elif how == "weight_to_value":
            weights[name] = "w"
    got = _load(ckpt)
    if got is not None:           # accepted: then it is whole and finite
        assert isinstance(got["model"], dict) and got["model"]
        assert all(isinstance(v, torch.Tensor) for v in got["model"].values())
        assert all(torch.isfinite(v).all() for v in got["model"].values() if v.is_floating_point())
