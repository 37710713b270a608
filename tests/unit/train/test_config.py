"""Config loading: every shipped YAML parses; unknown keys are errors; override precedence."""

from __future__ import annotations

import re
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
    with pytest.raises(ConfigError, match=r"^--set train\.epochs=three: expected int"):
        load_config(None, ["train.epochs=three"], env={})
    with pytest.raises(ConfigError, match=r"^--set train\.precision=fp8: 'fp8' is not one of"):
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


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", r"must be an integer in \[1, 2147483647\], got 0"),
    ("train.epochs=-1", r"must be an integer in \[1, 2147483647\], got -1"),
    ("train.batch_size=0", r"must be an integer in \[1, 2147483647\]"),
    ("train.batch_size=-3", r"must be an integer in \[1, 2147483647\]"),
    ("train.grad_accum=0", r"must be an integer in \[1, 2147483647\]"),
    ("train.log_every=0", r"must be an integer in \[1, 2147483647\]"),
    ("train.seed=-1", r"must be an integer in \[0, 4294967295\], got -1"),
    ("train.threads=-1", "must be an integer >= 1"),
    ("train.threads=0", "must be an integer >= 1"),
    ("train.num_workers=-2", "must be an integer >= 0"),
    ("train.keep_every=-1", r"must be an integer in \[0, 2147483647\]"),
    ("train.steps_per_epoch=0", r"must be an integer in \[1, 2147483647\]"),
    ("train.clip_norm=-1", "must be a number >= 0, got -1.0"),
    ("optim.lr=0", "must be a number > 0, got 0.0"),
    ("optim.lr=-1", "must be a number > 0"),
    ("optim.lr=nan", "must be a number > 0, got nan"),
    ("optim.lr=.inf", "must be a number > 0, got inf"),
    ("optim.weight_decay=-0.1", "must be a number >= 0"),
    ("optim.betas=[2,0.9]", r"must be numbers in \[0, 1\)"),
    ("optim.betas=[0.9]", r"must be 2 numbers in \[0, 1\)"),
    ("optim.eps=-1", "must be a number >= 0"),
    ("optim.momentum=1", r"must be a number in \[0, 1\)"),
    ("data.isotope_prob=2", r"must be a number in \[0, 1\], got 2.0"),
    ("data.mask_ratio=0", r"must be a number in \(0, 1\]"),
    ("data.smoothing_sigma=-1", "must be a number >= 0"),
    ("data.transfer_fraction=1.5", r"must be a number in \(0, 1\]"),
    ("data.max_records=0", r"must be an integer in \[1, 2147483647\]"),
    ("data.split_seed=-1", "must be an integer in"),
    ("data.split_seed=" + "9" * 70, "must be an integer in"),
    ("data.split=[0.5,0.5,0.5]", "must be 3 shares in"),
    ("data.split=[0.9,0.1]", "must be 3 shares in"),
    ("data.fold=1/1", "must be k/K with K >= 2"),
    ("data.fold=x", "must be k/K with K >= 2"),
    ("schedule.t0=0", r"must be an integer in \[1, 2147483647\]"),
    ("schedule.pct_start=1.5", r"must be a number in \[0, 1\]"),
    ("schedule.max_lr=0", "must be a number > 0"),
    ("schedule.total_steps=0", r"must be an integer in \[1, 2147483647\]"),
    # counts beyond any budget were tracebacks in itertools/torch after the data were read
    ("train.batch_size=1e20", r"must be an integer in \[1, 2147483647\], got 10+$"),
    ("train.grad_accum=1e20", r"must be an integer in \[1, 2147483647\]"),
    ("train.epochs=2147483648", r"must be an integer in \[1, 2147483647\]"),
    ("data.max_records=1e30", r"must be an integer in \[1, 2147483647\]"),
])
def test_values_out_of_range_name_the_override_key_and_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^--set {re.escape(override)}: {message}") as err:
        load_config(None, [override], env={})
    assert err.value.key == override.split("=")[0]


@pytest.mark.parametrize("key", ["train.threads", "train.num_workers"])
def test_threads_and_loader_workers_are_at_most_4_per_core(key: str) -> None:
    """``train.num_workers=1e20`` forked loader workers until the machine stalled and
    ``train.threads=100000`` was a MemoryError traceback: at most 4 per core, as ``--jobs``."""
    from neimsctl.io.parallel import max_jobs

    for value in (str(max_jobs() + 1), "1e20"):
        with pytest.raises(ConfigError, match=rf"^--set {key}={value}: must be an integer <= "
                                              rf"{max_jobs()} \(4 per core of this machine\)"):
            load_config(None, [f"{key}={value}"], env={})
    assert getattr(load_config(None, [f"{key}={max_jobs()}"], env={}).train,
                   key.split(".")[1]) == max_jobs()


@pytest.mark.parametrize("name", ["cosine", "cosine_warm_restarts"])
def test_a_cosine_floor_above_the_learning_rate_is_refused(name: str) -> None:
    """A cosine schedule goes from optim.lr down to eta_min: eta_min=1e308 was an overflow
    traceback in the optimizer after the first epoch, eta_min=0.01 a rate growing 10x."""
    for value, shown in (("1e308", r"1e\+308"), ("0.01", "0.01")):
        with pytest.raises(ConfigError, match=rf"^--set schedule.eta_min={value}: must be at most "
                                              rf"optim.lr \(0.001\), the rate the {name} "
                                              rf"schedule decays from, got {shown}$"):
            load_config(None, [f"schedule.name={name}", "optim.lr=1e-3",
                               f"schedule.eta_min={value}"], env={})
    load_config(None, [f"schedule.name={name}", "optim.lr=1e-3", "schedule.eta_min=1e-3"], env={})
    load_config(None, ["schedule.name=onecycle", "optim.lr=1e-3", "schedule.eta_min=1"], env={})


def test_defaults_and_shipped_values_are_in_range(tmp_path: Path) -> None:
    load_config(None, ["train.threads=null", "train.clip_norm=0", "optim.eps=0",
                       "data.isotope_prob=1", "train.seed=4294967295"], env={})


def test_a_bad_value_names_where_it_came_from(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\n  log_every: 0\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(f))}: train\.log_every: must be an "
                                          "integer in \\[1, 2147483647\\], got 0$"):
        load_config(f, env={})
    f.write_text("train:\n  epochs: 3\n")        # the file is fine: the override is not
    with pytest.raises(ConfigError, match=r"^--set train\.epochs=abc: expected int, got 'abc'$"):
        load_config(f, ["train.epochs=abc"], env={})
    with pytest.raises(ConfigError, match=r"^--set train=5: expected a mapping"):
        load_config(f, ["train=5"], env={})
    with pytest.raises(ConfigError, match=r"^environment NEIMSCTL_CFG__TRAIN__EPOCHS=0: "
                                          r"train\.epochs: must be an integer in \[1, "):
        load_config(f, env={"NEIMSCTL_CFG__TRAIN__EPOCHS": "0"})
    # the last one to set a key is named: the override beats the environment
    with pytest.raises(ConfigError, match=r"^--set train\.epochs=-2: "):
        load_config(f, ["train.epochs=-2"], env={"NEIMSCTL_CFG__TRAIN__EPOCHS": "0"})
    assert load_config(f, ["train.epochs=2"], env={"NEIMSCTL_CFG__TRAIN__EPOCHS": "0"}).train.epochs == 2


def test_a_non_utf8_or_empty_config_is_one_clear_error(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)) * 12)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(binary))}: not a YAML config: not "
                                          "UTF-8 text"):
        load_config(binary, env={})
    for text in ("", "\n\n", "# only a comment\n", "---\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(empty))}: the config is empty"):
            load_config(empty, env={})


def test_a_key_given_twice_is_refused_not_silently_replaced(tmp_path: Path) -> None:
    # a second "train:" section replaced the whole first one (best_metric, batch_size, ...)
    f = tmp_path / "dup.yaml"
    f.write_text("train:\n  epochs: 3\n  best_metric: val_score\ndata:\n  isotope_prob: 0\n"
                 "train:\n  epochs: 1\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(f))}: invalid YAML: key 'train' "
                                          r"given twice \(lines 1 and 6;"):
        load_config(f, env={})
    f.write_text("train: {epochs: 2, epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"key 'epochs' given twice \(line 1;"):
        load_config(f, env={})
    # a YAML merge key's values may still be overridden by the mapping's own keys
    f.write_text("train:\n  <<: {epochs: 1, seed: 7}\n  epochs: 2\n")
    cfg = load_config(f, env={})
    assert (cfg.train.epochs, cfg.train.seed) == (2, 7)


def test_an_empty_or_scalar_section_with_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\ndata:\n  isotope_prob: 0\n")     # "train:" with nothing under it
    assert load_config(f, ["train.epochs=2"], env={}).train.epochs == 2
    assert load_config(f, env={"NEIMSCTL_CFG__TRAIN__EPOCHS": "3"}).train.epochs == 3
    f.write_text("train: 5\n")        # the file's fault, not the override's ("--set: train is not a section")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(f))}: train: expected a mapping"):
        load_config(f, ["train.epochs=2"], env={})
    with pytest.raises(ConfigError, match=r"^environment NEIMSCTL_CFG__TRAIN=3: train: expected a "
                                          "mapping"):
        load_config(None, ["train.epochs=2"], env={"NEIMSCTL_CFG__TRAIN": "3"})


def test_optim_lr_sets_the_peak_of_the_shipped_one_cycle_schedules() -> None:
    """The distill profiles fixed schedule.max_lr to optim.lr's value, so --set optim.lr=...
    (and a sweep over it) changed nothing: every learning rate trained the same run."""
    for path in CONFIGS:
        cfg = load_config(path, env={})
        if cfg.schedule.name == "onecycle":
            assert cfg.schedule.max_lr is None, path
