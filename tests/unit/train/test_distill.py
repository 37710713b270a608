"""distill library: loss config, expert usage by class, exact resume with KD, the v1 path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from neimsctl.chem.compound_class import compound_classes
from neimsctl.data.dataset import StudentDataset
from neimsctl.data.membench import build_sample_shard
from neimsctl.errors import ConfigError, InputError
from neimsctl.train import trainer as trainer_mod
from neimsctl.models.checkpoint import load_checkpoint, save_checkpoint
from neimsctl.train.config import load_config
from neimsctl.train.distill import run_distill
from neimsctl.train.distill_loss import loss_config
from neimsctl.train.distill_report import collapse_flags, usage_table
from neimsctl.evaluate.validation import dataset_split
from neimsctl.data.shards import shard_settings
from neimsctl.train.finetune import build_teacher
from neimsctl.train.softlabel import SoftLabelSettings, run_softlabel

TINY_STUDENT = ["model.gate_hidden=[16]", "model.expert_depth=1", "model.expert_bottleneck=4",
                "model.head_hidden=[32]", "model.hidden_dim=16", "train.batch_size=64",
                "train.num_workers=0", "train.threads=1", "loss.warmup_epochs=1"]
TINY_TEACHER = {"name": "teacher", "hidden": 16, "num_layers": 2, "attention_hidden": 8,
                "pool_gate_hidden": 8, "ecfp_hidden": [32], "ecfp_out": 16,
                "head_hidden": [32, 24], "dropout": 0.2}


def test_loss_config_maps_the_spec_names_and_is_strict() -> None:
    c = loss_config({"name": "distill", "delta_load": 0.02, "temperature_start": 3.0}, epochs=7)
    assert (c.load_weight, c.t0, c.epochs, c.alpha) == (0.02, 3.0, 7, 0.3)
    with pytest.raises(ConfigError, match="loss.bogus"):
        loss_config({"bogus": 1}, epochs=1)
    with pytest.raises(ConfigError, match="same setting"):
        loss_config({"delta_load": 0.1, "load_weight": 0.1}, epochs=1)


def test_expert_usage_by_class_on_known_molecules() -> None:
    smiles = ["c1ccccc1C", "c1ccc(O)cc1", "CCCCCC", "c1ccncc1", "C[Si](C)(C)C"]
    classes = compound_classes(smiles)            # aromatic x2, aliphatic, heterocyclic, general
    routes = np.array([[0, 1], [0, 2], [1, 3], [2, 3], [3, 0]])
    u = usage_table(routes, classes, 4)
    assert u["n_by_class"] == {"aromatic": 2, "aliphatic": 1, "heterocyclic": 1, "general": 1}
    assert u["by_class"]["aromatic"] == [0.5, 0.25, 0.25, 0.0]
    assert u["by_class"]["aliphatic"] == [0.0, 0.5, 0.0, 0.5]
    assert u["by_class"]["general"] == [0.5, 0.0, 0.0, 0.5]
    assert u["overall"] == [0.3, 0.2, 0.2, 0.3]
    assert collapse_flags(u["overall"], 2) == []
    flags = collapse_flags([0.5, 0.46, 0.04, 0.0], 2)
    assert len(flags) == 4 and "0.0%" in flags[3] and "100%" in flags[0]


def tiny_teacher(path: Path, shard: Path) -> Path:
    """An untrained TINY_TEACHER checkpoint (seed 0) for the featurizer settings of ``shard``."""
    torch.manual_seed(0)
    model = build_teacher(TINY_TEACHER)
    return save_checkpoint(path, model=model, config={"model": model.config.to_dict()
                                                      | {"name": "teacher"}},
                           featurizer_hash=shard_settings([shard], ("teacher",), stage="distill").settings_hash)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("distill")
    s = build_sample_shard(d / "student.h5", mode="student", limit=150)
    t = build_sample_shard(d / "teacher.h5", mode="teacher", limit=150)
    ck = tiny_teacher(d / "t.pt", t)
    run_softlabel(ck, [t], d / "soft.h5", device="cpu",
                  settings=SoftLabelSettings(samples=3, part="train"))
    return {"student": s, "teacher": t, "soft": d / "soft.h5", "dir": d}


def cfg(repo_root: Path, *extra: str):
    return load_config(repo_root / "configs/distill/student-cpu-small.yaml",
                       [*TINY_STUDENT, *extra], env={})


def test_kd_resume_round_trip_gives_the_same_weights(data: dict, repo_root: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    c = cfg(repo_root, "train.epochs=2")
    full = run_distill(c, [data["student"]], data["dir"] / "full", soft_labels=data["soft"])
    assert full.epochs_done == 2 and not full.interrupted
    # "kill" after epoch 1: the trainer sees a signal at the end of the epoch and stops
    real = trainer_mod.Trainer._finish_epoch

    def stop_after_first(self, epoch, summary, acc):
        out = real(self, epoch, summary, acc)
        self._signals = 1
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "_finish_epoch", stop_after_first)
    half = run_distill(c, [data["student"]], data["dir"] / "half", soft_labels=data["soft"])
    assert half.interrupted and half.epochs_done == 1
    monkeypatch.setattr(trainer_mod.Trainer, "_finish_epoch", real)
    again = run_distill(c, [data["student"]], data["dir"] / "half", soft_labels=data["soft"],
                        resume=True)
    assert again.epochs_done == 2
    a = load_checkpoint(data["dir"] / "full/checkpoints/last.pt")
    b = load_checkpoint(data["dir"] / "half/checkpoints/last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # the config's expert_bias_rate moved the gate's selection bias (a buffer, resumed with it)
    assert a["model"]["gate.expert_bias"].abs().sum() > 0
    # GradNorm ran after the 1-epoch warm-up, and its state resumed too
    ga, gb = a["loss_state"]["_extra_state"]["gradnorm"], b["loss_state"]["_extra_state"]["gradnorm"]
    assert ga["updates"] > 0 and torch.equal(torch.as_tensor(ga["weights"]),
                                             torch.as_tensor(gb["weights"]))
    recs = [orjson.loads(x) for x in (data["dir"] / "half/train_log.jsonl").read_bytes().splitlines()]
    assert [r["epoch"] for r in recs if r["kind"] == "experts"] == [1, 2]
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == [1, 2]
    e = [r for r in recs if r["kind"] == "epoch"][-1]
    assert e["soft"] > 0 and e["feature"] > 0 and {"val_recall_at_10", "val_mean_cosine"} <= set(e["val"])
    report = (data["dir"] / "half/report.md").read_text()
    assert "## Expert usage" in report and "heterocyclic" in report


def test_resume_on_other_soft_labels_or_without_them_is_refused_before_a_shard_is_read(
        data: dict, repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """distill --resume went on with whatever it was given (other soft labels, or none: the
    later epochs on other targets, silently): the checkpoints keep the shards and the soft-label
    file by SHA-256, in their roles, and a resume on other ones is refused before a shard is
    read, naming both, the run untouched; the same bytes under other names resume, to the
    weights of an uninterrupted run."""
    import shutil

    from neimsctl.train import distill as distill_mod

    def run(name: str, soft: Path | None, resume: bool = False,
            shards: list[Path] | None = None) -> dict:
        with open(data["dir"] / f"{name}.log", "a") as log:
            run_distill(cfg(repo_root, "train.epochs=2"), shards or [data["student"]],
                        data["dir"] / name, soft_labels=soft, resume=resume or None, log=log)
        return load_checkpoint(data["dir"] / name / "checkpoints" / "last.pt")

    straight = run("in_full", data["soft"])
    real = trainer_mod.Trainer._finish_epoch

    def stop_after_first(self, epoch, summary, acc):     # "killed" at the end of epoch 1
        out = real(self, epoch, summary, acc)
        self._signals = 1
        return out

    with monkeypatch.context() as m:
        m.setattr(trainer_mod.Trainer, "_finish_epoch", stop_after_first)
        first = run("in_half", data["soft"])
    assert first["epoch"] == 1
    assert [(i["name"], i.get("role")) for i in first["extra"]["inputs"]] == [
        (str(data["student"]), None), (str(data["soft"]), "--soft-labels")]
    other = data["dir"] / "soft2.h5"
    run_softlabel(data["dir"] / "t.pt", [data["teacher"]], other, device="cpu",
                  settings=SoftLabelSettings(samples=2, part="train"))
    files = {p: p.read_bytes() for p in (data["dir"] / "in_half").rglob("*") if p.is_file()}
    with monkeypatch.context() as m:
        m.setattr(distill_mod, "shard_settings", lambda *a, **k: pytest.fail("a shard was read"))
        with pytest.raises(InputError) as exc:
            run("in_half", other, resume=True)
        msg = str(exc.value)
        assert msg.startswith(f"cannot resume: {data['dir'] / 'in_half/checkpoints/last.pt'} was "
                              f"trained on {data['student']} (sha256 ")
        assert f" + --soft-labels {data['soft']} (sha256 " in msg and "\n" not in msg
        assert f", not on {data['student']} (sha256 " in msg
        assert f" + --soft-labels {other} (sha256 " in msg
        with pytest.raises(InputError, match=r"\(only some of the run's files: the data left out"):
            run("in_half", None, resume=True)                    # --no-kd
        with pytest.raises(InputError, match=r"not on \S+student.h5 \(sha256 \w+, [\d,]+ bytes\)"
                                             r" \+ \S+student.h5 \(sha256"):
            run("in_half", data["soft"], resume=True, shards=[data["student"]] * 2)
    assert {p: p.read_bytes() for p in (data["dir"] / "in_half").rglob("*") if p.is_file()} == files
    (data["dir"] / "moved").mkdir()
    soft = Path(shutil.copy(data["soft"], data["dir"] / "moved" / "labels.h5"))
    student = Path(shutil.copy(data["student"], data["dir"] / "moved" / "s.h5"))
    resumed = run("in_half", soft, resume=True, shards=[student])
    assert resumed["step"] == straight["step"] and resumed["epoch"] == 2
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])


def test_training_never_reads_test_rows(data: dict, repo_root: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    ds = StudentDataset(data["student"])
    parts = dataset_split(ds)
    forbidden = set(ds.rows[parts.test].tolist())
    seen: set[int] = set()
    real = StudentDataset.get_batch

    def spy(self, indices):
        b = real(self, indices)
        seen.update(b["row"].tolist())
        return b

    monkeypatch.setattr(StudentDataset, "get_batch", spy)
    run_distill(cfg(repo_root, "train.epochs=1"), [data["student"]], data["dir"] / "nokd")
    assert seen and not (seen & forbidden)


def first_layer_width(ckpt: Path) -> int:
    state = load_checkpoint(ckpt)["model"]
    return next(v.shape[1] for v in state.values() if v.dim() == 2)


def test_neims_v1_path_and_missing_soft_labels(data: dict, repo_root: Path) -> None:
    c = load_config(repo_root / "configs/distill/neims-v1-cpu-small.yaml",
                    ["model.hidden_dim=32", "model.n_blocks=1", "train.epochs=1",
                     "train.num_workers=0", "train.threads=1"], env={})
    # on student shards: the 6144 student vector (documented deviation)
    r = run_distill(c, [data["student"]], data["dir"] / "v1")
    assert r.epochs_done == 1 and (data["dir"] / "v1/checkpoints/best.pt").is_file()
    assert load_checkpoint(data["dir"] / "v1/checkpoints/last.pt")["config"]["model"]["name"] == "neims-v1"
    assert first_layer_width(data["dir"] / "v1/checkpoints/last.pt") == 6144
    # on v1 shards: the published 4096 raw Morgan counts
    v1 = build_sample_shard(data["dir"] / "v1.h5", mode="v1", limit=150)
    run_distill(c, [v1], data["dir"] / "v1m")
    assert first_layer_width(data["dir"] / "v1m/checkpoints/last.pt") == 4096
    with pytest.raises(ConfigError, match="input_dim=4096"):
        run_distill(load_config(repo_root / "configs/distill/neims-v1-cpu-small.yaml",
                                ["model.input_dim=6144"], env={}), [v1], data["dir"] / "v1x")
    with pytest.raises(ConfigError, match="no-KD baseline"):
        run_distill(c, [data["student"]], data["dir"] / "v1b", soft_labels=data["soft"])
    # soft labels of only some rows: refused with the id that is missing
    other = build_sample_shard(data["dir"] / "other.h5", mode="student")
    with pytest.raises(InputError, match="no soft labels"):
        run_distill(cfg(repo_root, "train.epochs=1"), [other], data["dir"] / "x",
                    soft_labels=data["soft"])


TRANSFER_SMILES = ["CCCCCCCCO", "CC(=O)Oc1ccccc1C(=O)O", "CCN(CC)CC", "ClC(Cl)Cl", "O=C1CCCCC1",
                   "c1ccsc1", "CCOC(=O)C=C", "Nc1ccccc1Cl", "CC(C)CC(C)(C)C", "OCC(O)CO"]


@pytest.fixture(scope="module")
def transfer(data: dict, neimsctl_exe: str) -> dict[str, Path]:
    """A transfer set (molecules without spectra, one of them a library compound) and soft
    labels of the library and the transfer set in one file."""
    import subprocess

    import h5py

    d = data["dir"]
    out = {m: build_sample_shard(d / f"lib_{m}.h5", mode=m, limit=150, inchikey=True)
           for m in ("student", "teacher")}
    with h5py.File(out["student"], "r") as f:
        lib_smiles = f["smiles"][0].decode()
    (d / "tr.smi").write_text("".join(f"{s} tr:{i}\n" for i, s in
                                      enumerate([*TRANSFER_SMILES, lib_smiles])))
    for mode in ("student", "teacher"):
        out[f"tr_{mode}"] = d / f"tr_{mode}.h5"
        subprocess.run([neimsctl_exe, "featurize", "-q", "--mode", mode, "--no-provenance",
                        str(d / "tr.smi"), "-o", str(out[f"tr_{mode}"])], check=True)
    ck = tiny_teacher(d / "t_ik.pt", out["teacher"])
    run_softlabel(ck, [out["teacher"], out["tr_teacher"]], d / "soft_tr.h5", device="cpu",
                  settings=SoftLabelSettings(samples=3, part="all"))
    out["soft"] = d / "soft_tr.h5"
    return out


def test_transfer_rows_learn_only_the_soft_labels(data: dict, transfer: dict, repo_root: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from neimsctl.train.losses import DistillLoss

    lib = StudentDataset(transfer["student"])
    tr = StudentDataset(transfer["tr_student"], require_spectrum=False)
    in_lib = int(np.isin(tr.blocks, lib.blocks).sum())
    assert in_lib >= 1                               # the library compound planted in tr.smi
    masks: list[torch.Tensor] = []
    real = DistillLoss.forward

    def spy(self, out, target, *args, target_mask=None, **kwargs):
        if self.training:
            masks.append(torch.ones(len(target), dtype=torch.bool) if target_mask is None
                         else target_mask.clone())
        return real(self, out, target, *args, target_mask=target_mask, **kwargs)

    monkeypatch.setattr(DistillLoss, "forward", spy)
    c = cfg(repo_root, "train.epochs=1")
    c.data.transfer = [str(transfer["tr_student"])]
    log = io.StringIO()
    r = run_distill(c, [transfer["student"]], data["dir"] / "tr", soft_labels=transfer["soft"],
                    log=log)
    assert r.epochs_done == 1
    assert f"transfer set: {len(tr) - in_lib} of {len(tr)} rows ({in_lib} are library" in log.getvalue()
    seen = torch.cat(masks)
    n_train = len(dataset_split(lib).train)
    # one epoch: every train row once with its spectrum, every transfer row once without
    assert int(seen.sum()) == n_train and int((~seen).sum()) == len(tr) - in_lib
    # the transfer shards are inputs of the run too, in their role (a resume checks them)
    ins = load_checkpoint(data["dir"] / "tr/checkpoints/last.pt")["extra"]["inputs"]
    assert [(i["name"], i.get("role")) for i in ins] == [
        (str(transfer["student"]), None), (str(transfer["tr_student"]), "--transfer"),
        (str(transfer["soft"]), "--soft-labels")]
    with pytest.raises(ConfigError, match="need --soft-labels"):
        run_distill(c, [transfer["student"]], data["dir"] / "tr2")


def test_transfer_fraction_draws_a_seeded_share_per_epoch(data: dict, transfer: dict,
                                                          neimsctl_exe: str) -> None:
    from neimsctl.io.softlabel_shard import SoftLabelReader
    from neimsctl.train.distill_data import DistillData
    from neimsctl.train.distill_transfer import transfer_rows

    lib = StudentDataset(transfer["student"])
    tr = transfer_rows([transfer["tr_student"]], lib)
    soft = SoftLabelReader(transfer["soft"])
    rows = soft.row_of(lib.ids), soft.row_of(tr.ids)

    def draws(seed: int) -> list[list[int]]:
        dd = DistillData(lib, soft, rows[0], transfer=tr, transfer_soft_rows=rows[1],
                         transfer_fraction=0.5, seed=seed)
        assert len(dd) == len(lib) + round(0.5 * len(tr))
        out = []
        for epoch in range(4):
            dd.set_epoch(epoch)
            b = dd.__getitems__(list(range(len(lib), len(dd))))
            assert not b["has_y"].any() and b["t_mean"].shape == (len(dd) - len(lib), 501)
            out.append(sorted(b["row"].tolist()))
        return out

    a = draws(1)
    assert a == draws(1) and len({tuple(x) for x in a}) > 1
    # without InChIKeys the library compounds could not be left out: refused
    import subprocess

    noik = data["dir"] / "tr_noik.h5"
    subprocess.run([neimsctl_exe, "featurize", "-q", "--mode", "student", "--no-inchikey",
                    str(data["dir"] / "tr.smi"), "-o", str(noik)], check=True)
    with pytest.raises(InputError, match="no InChIKey"):
        transfer_rows([noik], lib)
    with pytest.raises(ConfigError, match="transfer_fraction"):
        DistillData(lib, soft, rows[0], transfer=tr, transfer_soft_rows=rows[1], transfer_fraction=0)


def test_a_student_that_reads_fragment_masses(data: dict, repo_root: Path) -> None:
    """fragments: true trains on the 7146-d input, predicts from its own blocks, labels beside a
    GNN teacher in softlabel, and refuses shards made before fragment masses (neimsctl 0.1)."""
    import h5py
    import shutil

    from neimsctl.chem.rowbuild import Item
    from neimsctl.errors import FormatError
    from neimsctl.predict.model import load_model, predict_block
    from neimsctl.predict.run import Featurizer

    c = cfg(repo_root, "train.epochs=1", "model.fragments=true", "model.fragment_channels=2")
    r = run_distill(c, [data["student"]], data["dir"] / "frag", soft_labels=data["soft"])
    ckpt = data["dir"] / "frag" / "checkpoints" / "best.pt"
    assert r.epochs_done == 1 and load_checkpoint(ckpt)["config"]["model"]["fragments"] is True
    lm = load_model(ckpt, device="cpu", precision="fp32")
    assert lm.reads_fragments and lm.model.config.input_dim == 7146
    items = [Item(i, "t", i + 1, "smi", s.encode()) for i, s in enumerate(["CCCCC(=O)c1ccccc1", "CCO"])]
    block, _ = Featurizer("student", fragments=True)(items)
    spectra, _, _ = predict_block(lm, block)
    assert spectra.shape == (2, 501) and np.allclose(spectra.max(axis=1), 1.0)
    no_frags, _ = Featurizer("student", fragments=False)(items)
    assert "frags" not in no_frags
    with pytest.raises(FormatError, match="fragment masses"):
        predict_block(lm, no_frags)
    # softlabel: a GNN teacher with the fragment student as a second member
    tally = run_softlabel([tiny_teacher(data["dir"] / "tf.pt", data["teacher"]), ckpt], [data["teacher"]],
                          data["dir"] / "soft_frag.h5", device="cpu", settings=SoftLabelSettings(samples=2))
    assert tally.written == 150
    # a shard of neimsctl 0.1 (no frags): refused by this student, read by one without fragments
    old = data["dir"] / "old.h5"
    shutil.copy(data["student"], old)
    with h5py.File(old, "a") as f:
        del f["frags"]
    with pytest.raises(FormatError, match=r"missing datasets \['frags'\].*featurize"):
        run_distill(c, [old], data["dir"] / "frag_old")
    assert StudentDataset([old]).get_batch([0, 1])["x"].shape == (2, 6144)
    v1 = build_sample_shard(data["dir"] / "v1_frag.h5", mode="v1", limit=20)
    with pytest.raises(ConfigError, match="v1 shards carry no fragment masses"):
        run_distill(c, [v1], data["dir"] / "frag_v1")


def test_models_trained_before_fragment_masses_still_label_and_initialise(data: dict) -> None:
    """A checkpoint that recorded the featurizer hash of neimsctl 0.1 (the settings without
    fragment masses, e.g. the shipped teacher) labels today's shards and initialises finetune;
    any other hash is still refused."""
    import json

    import h5py

    from neimsctl.chem.features import settings_hash
    from neimsctl.errors import CheckpointError
    from neimsctl.train.finetune import load_init

    with h5py.File(data["teacher"]) as f:
        settings = json.loads(f.attrs["featurizer"])
    del settings["frags"]
    torch.manual_seed(0)
    model = build_teacher(TINY_TEACHER)
    cfg_model = {"model": model.config.to_dict() | {"name": "teacher"}}
    old = save_checkpoint(data["dir"] / "old_teacher.pt", model=model, config=cfg_model,
                          featurizer_hash=settings_hash(settings))
    tally = run_softlabel(old, [data["teacher"]], data["dir"] / "soft_old.h5", device="cpu",
                          settings=SoftLabelSettings(samples=2))
    assert tally.written == 150
    accepts = shard_settings([data["teacher"]], ("teacher",), stage="finetune").accepts
    assert load_init(build_teacher(TINY_TEACHER), old, featurizer_hash=accepts)["loaded"] > 0
    other = save_checkpoint(data["dir"] / "other_teacher.pt", model=model, config=cfg_model,
                            featurizer_hash="0123456789abcdef")
    with pytest.raises(CheckpointError, match="featurizer mismatch"):
        run_softlabel(other, [data["teacher"]], data["dir"] / "soft_other.h5", device="cpu",
                      settings=SoftLabelSettings(samples=2))
    with pytest.raises(CheckpointError, match="featurizer mismatch"):
        load_init(build_teacher(TINY_TEACHER), other, featurizer_hash=accepts)
