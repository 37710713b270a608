"""config_from_dict / config_to_dict: the one dict round trip of the student, teacher and v1 configs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from neimsctl.errors import ConfigError
from neimsctl.models.checks import config_from_dict, config_to_dict
from neimsctl.models.neims_v1 import NeimsV1Config
from neimsctl.models.student import StudentConfig
from neimsctl.models.teacher_config import TeacherConfig


@dataclass(frozen=True)
class Toy:
    widths: tuple[int, ...] = (8, 4)
    rate: float = 0.1


def test_lists_become_tuples_and_back() -> None:
    cfg = config_from_dict(Toy, {"widths": [3, 2, 1]}, "toy", tuples=("widths",))
    assert cfg == Toy(widths=(3, 2, 1))
    assert config_to_dict(cfg) == {"widths": [3, 2, 1], "rate": 0.1}
    assert config_from_dict(Toy, None, "toy") == Toy()


def test_unknown_keys_and_non_lists_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^toy: unknown key\(s\) a, b; known keys: rate, widths$"):
        config_from_dict(Toy, {"b": 1, "a": 2}, "toy")
    with pytest.raises(ConfigError, match=r"^toy\.widths: expected a list of integers, got 5$"):
        config_from_dict(Toy, {"widths": 5}, "toy", tuples=("widths",))


@pytest.mark.parametrize(("cls", "where", "change"), [
    (StudentConfig, "student", {"head_hidden": [64, 32]}),
    (TeacherConfig, "teacher", {"ecfp_hidden": [64], "head_hidden": [32, 16]}),
    (NeimsV1Config, "neims-v1", {"hidden_dim": 64, "n_blocks": 1}),
])
def test_every_model_config_round_trips_through_it(cls: type, where: str, change: dict) -> None:
    cfg = cls.from_dict(change)
    plain = cfg.to_dict()
    assert plain == config_to_dict(cfg) and not any(isinstance(v, tuple) for v in plain.values())
    assert cls.from_dict(plain) == cfg
    with pytest.raises(ConfigError, match=rf"^{where}: unknown key\(s\) bogus; known keys: "):
        cls.from_dict({"bogus": 1})
