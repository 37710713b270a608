"""Config loading: every shipped YAML parses; unknown keys are errors; override precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from neimsctl.errors import ConfigError
from neimsctl.train.config import (Config, apply_overrides, dataclass_from_dict, load_config,
                                   resolve, resolve_precision, save_config)

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*/*.yaml"))
EXPECTED = {"pretrain/teacher-paper", "pretrain/teacher-cpu-small", "finetune/teacher-paper",
            "finetune/teacher-cpu-small", "distill/student-paper", "distill/student-cpu-small"}


def test_shipped_configs_present() -> None:
    names = {f"{p.parent.name}/{p.stem}" for p in CONFIGS}
    assert EXPECTED <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_parses(path: Path) -> None:
    cfg = load_config(path, env={})
    assert cfg.stage == path.parent.name
    assert isinstance(cfg.model, dict) and isinstance(cfg.model["name"], str)
    assert isinstance(cfg.loss, dict)
    # NEIMS v1 keeps its published optimizer (Adam); every other profile uses AdamW.
    expected_optim = "adam" if cfg.model["name"] == "neims-v1" else "adamw"
    assert cfg.train.clip_norm == 1.0 and cfg.optim.name == expected_optim
    assert isinstance(cfg.optim.lr, float)  # "1.0e-4" style values are floats
    if path.stem.endswith("paper"):
        assert cfg.train.batch_size == 32
        assert cfg.optim.lr == (5e-4 if cfg.stage == "distill" else 1e-4)
        assert cfg.train.epochs == {"pretrain": 50, "finetune": 100, "distill": 150}[cfg.stage]
        assert cfg.schedule.name == {"pretrain": "cosine_warm_restarts", "finetune": "cosine",
                                     "distill": "onecycle"}[cfg.stage]


def test_unknown_keys_name_path_and_valid_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n  epoks: 4\n")
    with pytest.raises(ConfigError, match=r"train\.epoks: unknown key; valid keys: epochs"):
        load_config(bad, env={})
    bad.write_text("trian:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"trian: unknown key; valid keys: model, loss"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match=r"optim\.bogus"):
        load_config(None, ["optim.bogus=1"], env={})


def test_bad_types_and_choices() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int"):
        load_config(None, ["train.epochs=three"], env={})
    with pytest.raises(ConfigError, match=r"train\.precision: 'fp8' is not one of"):
        load_config(None, ["train.precision=fp8"], env={})
    with pytest.raises(ConfigError, match="not key.sub=value"):
        load_config(None, ["train.epochs"], env={})
    with pytest.raises(ConfigError, match="model.name"):
        load_config(None, ["model.name=3"], env={})


def test_precedence_file_env_override(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\n  batch_size: 8\n  seed: 1\noptim:\n  lr: 1e-3\n"
                 "model:\n  name: toy\n  hidden: 4\n")
    env = {"NEIMSCTL_CFG__TRAIN__BATCH_SIZE": "16", "NEIMSCTL_CFG__TRAIN__SEED": "2",
           "NEIMSCTL_SHARED_DATA": "/elsewhere"}
    cfg = load_config(f, ["train.seed=3", "model.hidden=1e2", "model.layers=2"], env=env)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.seed) == (3, 16, 3)
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.model == {"name": "toy", "hidden": 100.0, "layers": 2}  # model keys are free-form
    assert load_config(f, env={}).train.batch_size == 8


def test_overrides_mapping_and_nested_errors() -> None:
    tree = apply_overrides({}, {"train.epochs": 2, "loss.alpha": 0.3})
    assert tree == {"train": {"epochs": 2}, "loss": {"alpha": 0.3}}
    with pytest.raises(ConfigError, match="train.epochs is not a section"):
        apply_overrides(tree, ["train.epochs.x=1"])


def test_dataclass_from_dict_reusable_for_model_configs() -> None:
    from dataclasses import dataclass

    @dataclass
    class ModelCfg:
        hidden: int = 256
        head: list[int] | None = None

    assert dataclass_from_dict(ModelCfg, {"hidden": "128", "head": [1, 2]}) == ModelCfg(128, [1, 2])
    with pytest.raises(ConfigError, match=r"model\.hiden: unknown key; valid keys: hidden, head"):
        dataclass_from_dict(ModelCfg, {"hiden": 1}, "model")


def test_resolve_and_save_round_trip(tmp_path: Path) -> None:
    cfg = resolve(load_config(CONFIGS[0], env={}))
    assert cfg.train.device in ("cpu", "cuda") and cfg.train.precision != "auto"
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(out, env={}) == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_precision_rules() -> None:
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu", cpu_bf16=True) == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        resolve_precision("fp16", "cpu")


def test_cuda_requested_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve(load_config(None, ["train.device=cuda"], env={}))
