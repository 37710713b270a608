"""Bond-masking pretraining: checkpoint layout, objective, validation, exact resume, configs."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import pytest
import torch

from neimsctl.data.smiles_stream import featurize_batch
from neimsctl.errors import ConfigError, InputError
from neimsctl.models.teacher import TeacherConfig, TeacherModel
from neimsctl.nn.bond_masking import BondMaskingHead
from neimsctl.models.checkpoint import load_checkpoint
from neimsctl.train.config import load_config
from neimsctl.train.pretrain import (BondMaskingModel, BondMaskingObjective, make_validator,
                                     pretrain_optimizer, run_pretrain, teacher_featurizer_hash)

REPO = Path(__file__).resolve().parents[3]
CFG = REPO / "configs" / "pretrain" / "teacher-cpu-small.yaml"
TINY = ["model.hidden=16", "model.num_layers=1", "model.ecfp_hidden=[32]", "model.ecfp_out=16",
        "model.head_hidden=[32,16]", "train.batch_size=16", "train.num_workers=0",
        "data.max_val_records=40", "train.threads=1", "train.log_every=2"]
# real MOSES molecules (first lines of ../shared/data/pretrain/moses_train.smi.zst)
MOSES = ["CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1", "CC(C)(C)C(=O)C(Oc1ccc(Cl)cc1)n1ccnc1",
         "Cc1c(Cl)cccc1Nc1ncccc1C(=O)OCC(O)CO", "Cn1cnc2c1c(=O)n(CC(O)CO)c(=O)n2C",
         "CC1Oc2ccc(Cl)cc2N(CC(O)CO)C1=O", "CCOC(=O)c1cncn1C1CCCc2ccccc21",
         "COc1ccc(-c2cc(=O)c3c(O)c(OC)c(OC)cc3o2)cc1O", "O=C(Nc1ccccc1)c1ccccc1O"]


def _smiles_file(tmp_path: Path, n: int = 240) -> Path:
    """``n`` distinct valid molecules: real MOSES ones behind alkyl chains of growing length."""
    from rdkit import Chem

    path = tmp_path / "mols.smi"
    cands = (f"{'C' * k}{s}" for k in itertools.count() for s in MOSES)
    mols = itertools.islice((m for m in cands if Chem.MolFromSmiles(m) is not None), n)
    path.write_text("".join(f"{m}\n" for m in mols))
    return path


def _model(hidden: int = 16) -> BondMaskingModel:
    teacher = TeacherModel(TeacherConfig(hidden=hidden, num_layers=2, ecfp_hidden=(32,),
                                         ecfp_out=16, head_hidden=(32, 16)))
    return BondMaskingModel(teacher, BondMaskingHead(hidden, hidden))


def _batch(n: int = 8):
    class It:
        def __init__(self, s: str) -> None:
            self.smiles = s
    return featurize_batch([It(s) for s in MOSES[:n]])[0]


def test_state_dict_is_the_teachers_and_the_head_travels_in_the_loss_state():
    model = _model()
    assert set(model.state_dict()) == set(model.teacher.state_dict())
    obj = BondMaskingObjective(model.head)
    assert set(obj.state_dict()["bond_head"]) == set(model.head.state_dict())
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"teacher", "head"}
    assert {n.split(".")[1] for n, p in model.named_parameters()
            if p.requires_grad and n.startswith("teacher.")} == {"atom_encoder", "layers"}
    other = _model()
    other.load_state_dict(model.state_dict())
    BondMaskingObjective(other.head).load_state_dict(obj.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.head.state_dict().values(),
                                                 other.head.state_dict().values()))


def test_one_step_lowers_the_loss_on_a_fixed_mask():
    torch.manual_seed(0)
    model, batch = _model(32), _batch()
    model.teacher.drop_edge.p = 0.0
    cfg = load_config(CFG, ["optim.lr=0.01"])
    opt = pretrain_optimizer(cfg, model)
    assert opt.defaults.get("fused") is True  # fused AdamW on CPU

    def loss() -> torch.Tensor:
        return model(batch, generator=torch.Generator().manual_seed(1)).loss

    model.train()
    before = loss()
    before.backward()
    opt.step()
    assert float(loss().detach()) < float(before.detach())


def test_validation_is_deterministic_and_in_range():
    model = _model().eval()
    validate = make_validator([_batch(4), _batch(8)], seed=5)
    with torch.no_grad():
        a, b = validate(model), validate(model)
    assert a == b and 0.0 <= a["val_bond_acc"] <= 1.0
    assert a["val_loss"] == pytest.approx(a["val_bond_ce"] + a["val_flag_bce"])


def test_pretrain_and_finetune_profiles_have_the_same_model():
    for name in ("teacher-cpu-small.yaml", "teacher-paper.yaml"):
        pre = load_config(REPO / "configs" / "pretrain" / name)
        fine = load_config(REPO / "configs" / "finetune" / name)
        assert pre.model == fine.model, f"{name}: finetune --init needs equal model sizes"
        assert pre.train.best_metric == "val_bond_acc"


def test_bad_loss_section_is_a_config_error(tmp_path):
    cfg = load_config(CFG, TINY + ["loss.name=teacher_spectrum"])
    with pytest.raises(ConfigError, match="bond_masking"):
        run_pretrain(cfg, [_smiles_file(tmp_path)], tmp_path / "run")


def test_garbage_input_is_refused_clearly(tmp_path):
    bad = tmp_path / "bad.smi"
    bad.write_text("".join(f"nonsense{i}\n" for i in range(200)))
    cfg = load_config(CFG, TINY)
    with pytest.raises(InputError, match="no valid molecule"):
        run_pretrain(cfg, [bad], tmp_path / "run")


def _run(tmp_path: Path, name: str, epochs: int, resume: bool = False) -> dict:
    cfg = load_config(CFG, TINY + [f"train.epochs={epochs}", "train.steps_per_epoch=3",
                                   "schedule.t0=3"])
    result, tally = run_pretrain(cfg, [_smiles_file(tmp_path)], tmp_path / name,
                                 resume=resume or None, log=open(tmp_path / f"{name}.log", "a"))
    assert tally.rejected == 0 and not result.interrupted
    return load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")


def test_run_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight = _run(tmp_path, "a", 2)
    assert straight["featurizer_hash"] == teacher_featurizer_hash()
    assert set(straight["loss_state"]["bond_head"]) >= {"mask_token"}
    TeacherModel(TeacherConfig.from_dict(straight["config"]["model"])).load_state_dict(
        straight["model"])  # strict: the plain teacher state
    _run(tmp_path, "b", 1)
    resumed = _run(tmp_path, "b", 2, resume=True)
    assert resumed["step"] == straight["step"] == 6
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], resumed["model"][key]), key
    assert [h["val"] for h in straight["history"]] == [h["val"] for h in resumed["history"]]
    assert (tmp_path / "a" / "report.md").is_file()


def test_resume_on_other_smiles_is_refused_and_the_same_bytes_resume_exactly(tmp_path):
    """--resume trained on whatever input it was given (another file's molecules, silently):
    the checkpoints keep the input's SHA-256, and a resume on another input is refused before
    a molecule is read, naming both, the run untouched; the same bytes under another name
    resume, to the weights of an uninterrupted run; a checkpoint written before runs recorded
    their input resumes on any."""
    import shutil

    from neimsctl.models.checkpoint import save_checkpoint

    def run(name: str, epochs: int, src: Path, resume: bool = False) -> dict:
        cfg = load_config(CFG, TINY + [f"train.epochs={epochs}", "train.steps_per_epoch=3",
                                       "schedule.t0=3"])
        run_pretrain(cfg, [src], tmp_path / name, resume=resume or None,
                     log=open(tmp_path / f"{name}.log", "a"))
        return load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")

    src = _smiles_file(tmp_path)
    straight = run("a", 2, src)
    first = run("b", 1, src)
    assert [(i["name"], i["size"]) for i in first["extra"]["inputs"]] == [(str(src), src.stat().st_size)]
    other = tmp_path / "other.smi"
    other.write_text("".join(reversed(src.read_text().splitlines(keepends=True))))
    files = {p: p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    with pytest.raises(InputError) as exc:
        run("b", 2, other, resume=True)
    msg = str(exc.value)
    assert msg.startswith(f"cannot resume: {tmp_path / 'b/checkpoints/last.pt'} was trained on "
                          f"{src} (sha256 {first['extra']['inputs'][0]['sha256'][:12]}, ")
    assert f", not on {other} (sha256 " in msg and "\n" not in msg
    assert {p: p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()} == files
    (tmp_path / "moved").mkdir()
    copy = shutil.copy(src, tmp_path / "moved" / "renamed.smi")
    resumed = run("b", 2, Path(copy), resume=True)
    assert resumed["step"] == straight["step"] == 6
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    old = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    del old["extra"]["inputs"]                     # as checkpoints of earlier versions are
    save_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt", old)
    assert run("a", 3, other, resume=True)["step"] == 9


def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """SIGINT in the middle of a stream epoch, then --resume: the same weights as a run never
    stopped. The stream's DataLoader drew its base seed from the global torch RNG when each
    epoch's loader was made; the resumed run made it again after restoring the RNG, so every
    bond mask after the interruption differed (weights 0.002-0.01 apart)."""
    def run(name: str, resume: bool = False, stop_at: int | None = None) -> dict:
        cfg = load_config(CFG, TINY + ["train.epochs=2", "train.steps_per_epoch=4", "schedule.t0=4"])
        result, _ = run_pretrain(cfg, [_smiles_file(tmp_path)], tmp_path / name,
                                 resume=resume or None, log=open(tmp_path / f"{name}.log", "a"))
        assert result.interrupted == (stop_at is not None)
        return load_checkpoint(tmp_path / name / "checkpoints" /
                               ("interrupted.pt" if stop_at else "last.pt"))

    straight = run("a")
    calls = itertools.count(1)
    real = BondMaskingObjective.__call__

    def stopping(self, model, batch):           # Ctrl-C during the 6th step (epoch 2, batch 2)
        if next(calls) == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, model, batch)
    monkeypatch.setattr(BondMaskingObjective, "__call__", stopping)
    stopped = run("b", stop_at=6)
    assert (stopped["epoch"], stopped["batch"], stopped["step"]) == (1, 2, 6)
    monkeypatch.setattr(BondMaskingObjective, "__call__", real)
    resumed = run("b", resume=True)
    assert resumed["step"] == straight["step"] == 8
    for key in straight["model"]:
        assert torch.equal(straight["model"][key], resumed["model"][key]), key
    assert [h["val"] for h in straight["history"]] == [h["val"] for h in resumed["history"]]


def test_a_rejects_report_cut_short_is_mended_on_resume(tmp_path):
    """rejects.jsonl whose last line a full disk (or a kill) cut short made every --resume a
    traceback (JSONDecodeError). The cut line is dropped and its SMILES reported again: every
    bad line once, the report valid JSONL."""
    import orjson

    src = _smiles_file(tmp_path)
    src.write_text(src.read_text() + "".join(f"Xx{i} bad{i}\n" for i in range(30)))
    cfg = load_config(CFG, TINY + ["train.epochs=1", "train.steps_per_epoch=2"])
    run = tmp_path / "run"
    run.mkdir()
    first = orjson.dumps({"file": str(src), "line": 241, "record": "Xx0", "id": None,
                          "reason": "unparsable_structure", "detail": "x"})
    (run / "rejects.jsonl").write_bytes(first + b"\n" + first[:30])      # the second line cut
    result, tally = run_pretrain(cfg, [src], run, resume=True, log=open(tmp_path / "log", "a"))
    lines = [orjson.loads(x) for x in (run / "rejects.jsonl").read_bytes().splitlines()]
    assert result.epochs_done == 1 and tally.rejected > 0
    got = [r["line"] for r in lines]       # (the first pass reads what the steps need)
    assert got[0] == 241 and len(got) == len(set(got)) > 1 and set(got) <= set(range(241, 271))
