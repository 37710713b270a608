"""finetune library: loss, shard checks, --init loading, and a tiny run that never reads test rows.

Shards are real: the bundled MassBank sample featurized in teacher mode by the project's writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from neimsctl.data.dataset import TeacherDataset
from neimsctl.data.membench import build_sample_shard
from neimsctl.errors import CheckpointError, ConfigError
from neimsctl.models.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from neimsctl.train.config import dataclass_from_dict, load_config
from neimsctl.evaluate.validation import dataset_split
from neimsctl.data.shards import shard_settings
from neimsctl.train.finetune import (TeacherLossConfig, TeacherSpectrumLoss, build_teacher,
                                     load_init, run_finetune)

TINY = {"name": "teacher", "hidden": 16, "num_layers": 2, "attention_hidden": 8,
        "pool_gate_hidden": 8, "ecfp_hidden": [32], "ecfp_out": 16, "head_hidden": [32, 16],
        "dropout": 0.1}
TINY_SETS = [f"model.{k}={orjson.dumps(v).decode()}" for k, v in TINY.items() if k != "name"]


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sample_shard(tmp_path_factory.mktemp("ft") / "teacher.h5", mode="teacher")


@pytest.fixture(scope="module")
def batch(shard: Path):
    return TeacherDataset(shard).get_batch(np.arange(8))


def tiny_config(repo_root: Path, *extra: str):
    return load_config(repo_root / "configs/finetune/teacher-cpu-small.yaml",
                       [*TINY_SETS, "train.epochs=1", "train.batch_size=64", "train.num_workers=0",
                        "train.threads=1", *extra], env={})


def test_loss_config_is_strict() -> None:
    with pytest.raises(ConfigError, match="loss.weight"):
        dataclass_from_dict(TeacherLossConfig, {"weight": 1.0}, "loss")
    with pytest.raises(ConfigError, match="lambda_bond"):
        TeacherLossConfig(lambda_bond=0.5)
    with pytest.raises(ConfigError, match="not both 0"):
        TeacherLossConfig(mse=0.0, cosine=0.0)
    with pytest.raises(ConfigError, match=r"^loss.mse: must be a number >= 0, got nan$"):
        TeacherLossConfig(mse=float("nan"))
    with pytest.raises(ConfigError, match=r"^loss.cosine_mz_power: must be a number in \[0, 10\]"):
        TeacherLossConfig(cosine_mz_power=-1.0)


def test_loss_is_mse_in_sqrt_space_plus_optional_cosine(batch) -> None:
    torch.manual_seed(0)
    model = build_teacher(TINY).eval()
    loss, parts = TeacherSpectrumLoss(TeacherLossConfig())(model, batch)
    with torch.no_grad():
        expected = (model(batch) - batch.y.sqrt()).square().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"mse"}
    both, parts2 = TeacherSpectrumLoss(TeacherLossConfig(cosine=0.5))(model, batch)
    assert set(parts2) == {"mse", "cos_loss"} and 0.0 < parts2["cos_loss"] <= 1.0
    assert both.item() == pytest.approx(loss.item() + 0.5 * parts2["cos_loss"], rel=1e-5)


def test_loss_step_lowers_loss(batch) -> None:
    torch.manual_seed(0)
    model = build_teacher({**TINY, "dropout": 0.0, "drop_edge": 0.0})
    fn = TeacherSpectrumLoss(TeacherLossConfig(cosine=1.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = fn(model, batch)[0].item()
    for _ in range(5):
        opt.zero_grad()
        fn(model, batch)[0].backward()
        opt.step()
    assert fn(model, batch)[0].item() < before


def _ckpt(path: Path, model: torch.nn.Module, fhash: str | None, prefix: str = "") -> Path:
    ck = build_checkpoint(model=model, config={"model": TINY}, featurizer_hash=fhash)
    ck["model"] = {prefix + k: v for k, v in ck["model"].items()}
    return save_checkpoint(path, ck)


def test_load_init_copies_weights_and_strips_a_prefix(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = build_teacher(TINY)
    path = _ckpt(tmp_path / "pre.pt", src, "abc", prefix="encoder.")
    dst = build_teacher(TINY)
    info = load_init(dst, path, featurizer_hash="abc", log=open(tmp_path / "log", "w"))
    assert info["loaded"] == info["total"]
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_load_init_errors_are_clear(tmp_path: Path) -> None:
    src = build_teacher(TINY)
    path = _ckpt(tmp_path / "pre.pt", src, "abc")
    with pytest.raises(CheckpointError, match="featurizer mismatch.*abc.*def"):
        load_init(build_teacher(TINY), path, featurizer_hash="def")
    with pytest.raises(CheckpointError, match="architecture mismatch.*hidden"):
        load_init(build_teacher({**TINY, "hidden": 24}), path, featurizer_hash="abc")
    ecfp_only = tmp_path / "ecfp.pt"
    _ckpt(ecfp_only, src, "abc")
    ck = load_checkpoint(ecfp_only)
    ck["model"] = {k: v for k, v in ck["model"].items() if k.startswith("ecfp_mlp")}
    save_checkpoint(ecfp_only, ck)
    with pytest.raises(CheckpointError, match="no teacher GNN weights"):
        load_init(build_teacher(TINY), ecfp_only, featurizer_hash="abc")


def test_run_finetune_trains_validates_and_never_reads_test_rows(
        shard: Path, tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[np.ndarray] = []
    orig = TeacherDataset._data_list

    def spy(self, idx):
        seen.append(self.rows[np.asarray(idx)])
        return orig(self, idx)

    monkeypatch.setattr(TeacherDataset, "_data_list", spy)
    cfg = tiny_config(repo_root, "loss.cosine=0.5")
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        res = run_finetune(cfg, [shard], tmp_path / "run", log=fh)
    assert not res.interrupted and res.epochs_done == 1
    val = res.history[0]["val"]
    assert {"val_mean_cosine", "val_recall_at_10", "val_recall_at_10_mass5", "val_score"} <= set(val)
    assert 0.0 <= val["val_recall_at_10"] <= val["val_recall_at_20"] <= 1.0
    ck = load_checkpoint(tmp_path / "run/checkpoints/best.pt")
    assert ck["featurizer_hash"] == shard_settings([shard], ("teacher",), stage="finetune").settings_hash
    assert ck["config"]["loss"]["cosine"] == 0.5
    ds = TeacherDataset(shard)
    test_rows = ds.rows[dataset_split(ds).test]
    assert len(test_rows) > 0
    assert not np.isin(np.concatenate(seen), test_rows).any()


def test_run_finetune_rejects_unknown_best_metric(shard: Path, tmp_path: Path,
                                                 repo_root: Path) -> None:
    cfg = tiny_config(repo_root, "train.best_metric=val_recall@10")
    with pytest.raises(ConfigError, match="best_metric"):
        run_finetune(cfg, [shard], tmp_path / "run")


def test_resume_on_other_shards_is_refused_before_they_are_read_and_the_same_bytes_resume_exactly(
        shard: Path, tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--resume trained on whatever shards it was given (another library's spectra, silently):
    the checkpoints keep the shards' SHA-256, in order, and a resume on other shards, or on the
    run's shard and one more, is refused before a shard is opened, naming both, the run
    untouched; the same bytes under another name resume, to the weights of an uninterrupted
    run; a checkpoint written before runs recorded their inputs resumes on any."""
    import shutil

    from neimsctl.errors import InputError
    from neimsctl.train import finetune as ft_mod

    def run(name: str, epochs: int, shards: list[Path], resume: bool = False) -> dict:
        cfg = tiny_config(repo_root, f"train.epochs={epochs}", "schedule.name=none")
        with open(tmp_path / f"{name}.log", "a") as log:
            run_finetune(cfg, shards, tmp_path / name, resume=resume or None, log=log)
        return load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")

    straight = run("a", 2, [shard])
    first = run("b", 1, [shard])
    assert [(i["name"], i["size"]) for i in first["extra"]["inputs"]] == [(str(shard), shard.stat().st_size)]
    other = build_sample_shard(tmp_path / "other.h5", mode="teacher", limit=150)
    files = {p: p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    with monkeypatch.context() as m:
        m.setattr(ft_mod, "shard_settings", lambda *a, **k: pytest.fail("a shard was read"))
        with pytest.raises(InputError) as exc:
            run("b", 2, [other], resume=True)
        msg = str(exc.value)
        assert msg.startswith(f"cannot resume: {tmp_path / 'b/checkpoints/last.pt'} was trained on "
                              f"{shard} (sha256 {first['extra']['inputs'][0]['sha256'][:12]}, ")
        assert f", not on {other} (sha256 " in msg and "\n" not in msg
        with pytest.raises(InputError, match=r"\(the run's files and more: the data added would "
                                             r"change what the epochs train on, so the run would "
                                             r"not go on where it stopped\); give the run's input"):
            run("b", 2, [shard, other], resume=True)
    assert {p: p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()} == files
    (tmp_path / "moved").mkdir()
    copy = Path(shutil.copy(shard, tmp_path / "moved" / "renamed.h5"))
    resumed = run("b", 2, [copy], resume=True)
    assert resumed["step"] == straight["step"] and resumed["epoch"] == 2
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    assert resumed["extra"]["inputs"][0]["name"] == str(copy)      # the name as last given
    old = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    del old["extra"]["inputs"]                     # as checkpoints of earlier versions are
    save_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt", old)
    assert run("a", 3, [other], resume=True)["epoch"] == 3
