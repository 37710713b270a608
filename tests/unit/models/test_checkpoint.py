"""Checkpoints: round trip, atomic writes, pickle payloads refused, featurizer mismatch."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from neimsctl.errors import CheckpointError
from neimsctl.models import checkpoint as ck


def _objects():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def test_round_trip_restores_states_and_rng(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, opt, sched = _objects()
    path = ck.save_checkpoint(tmp_path / "last.pt", model=model, optimizer=opt, scheduler=sched,
                              epoch=2, step=7, config={"train": {"seed": 1}},
                              featurizer_hash="abc", best_metric=np.float32(0.5),
                              history=[{"epoch": 1, "loss": 0.3}], extra={"where": tmp_path})
    expect = (random.random(), np.random.rand(), torch.rand(3))
    ckpt = ck.load_checkpoint(path, featurizer_hash="abc")
    assert ckpt["format"] == ck.FORMAT and (ckpt["epoch"], ckpt["step"]) == (2, 7)
    assert ckpt["versions"]["torch"] == str(torch.__version__) and ckpt["best_metric"] == 0.5
    assert ckpt["extra"]["where"] == str(tmp_path)
    model2, opt2, sched2 = _objects()
    ck.restore(ckpt, model=model2, optimizer=opt2, scheduler=sched2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert sched2.state_dict() == sched.state_dict()
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expect[0] and got[1] == expect[1] and torch.equal(got[2], expect[2])


def test_crash_while_writing_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    model, opt, _ = _objects()
    path = ck.save_checkpoint(tmp_path / "last.pt", model=model, epoch=1)
    before = path.read_bytes()

    def crashing_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")  # save_checkpoint hands torch an open file
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of torch.save

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, model=model, epoch=2)
    assert path.read_bytes() == before  # previous checkpoint intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp left behind
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path / "new.pt", model=model, epoch=2)
    assert not (tmp_path / "new.pt").exists()


class _Payload:
    """Unpickling this would create ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_pickle_payload_refused_and_not_run(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    model, _, _ = _objects()
    ckpt = ck.build_checkpoint(model=model)
    ckpt["extra"] = {"x": _Payload(marker)}
    bad = tmp_path / "evil.pt"
    if container == "torch-zip":
        torch.save(ckpt, bad)
    else:
        # a legacy (non-zip) pickle; protocol 2 as torch writes, no tensors before the payload
        bad.write_bytes(pickle.dumps({"format": ck.FORMAT, "extra": ckpt["extra"]}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refused: .*(posix|os)\.mkdir"):
        ck.load_checkpoint(bad)
    assert not marker.exists()


def test_featurizer_mismatch_is_clear(tmp_path: Path) -> None:
    model, _, _ = _objects()
    path = ck.save_checkpoint(tmp_path / "t.pt", model=model, featurizer_hash="aaaa1111")
    with pytest.raises(CheckpointError, match="featurizer mismatch.*aaaa1111.*bbbb2222"):
        ck.load_checkpoint(path, featurizer_hash="bbbb2222")
    assert ck.load_checkpoint(path)["featurizer_hash"] == "aaaa1111"


def test_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="not a neimsctl.ckpt/1 checkpoint"):
        ck.load_checkpoint(tmp_path / "w.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        ck.load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ck.load_checkpoint(tmp_path / "missing.pt")


def test_unstorable_value_refused_at_save(tmp_path: Path) -> None:
    model, _, _ = _objects()
    with pytest.raises(CheckpointError, match=r"checkpoint\.extra\.fn: function"):
        ck.save_checkpoint(tmp_path / "x.pt", model=model, extra={"fn": _objects})
    assert not (tmp_path / "x.pt").exists()


def test_restore_into_wrong_model_is_checkpoint_error(tmp_path: Path) -> None:
    model, _, _ = _objects()
    ckpt = ck.load_checkpoint(ck.save_checkpoint(tmp_path / "m.pt", model=model))
    with pytest.raises(CheckpointError, match="does not fit") as err:
        ck.restore(ckpt, model=torch.nn.Linear(2, 2), rng=False)
    assert "Missing key(s) in state_dict" in str(err.value) or "size mismatch" in str(err.value)


def test_weights_that_do_not_fit_are_named_in_predict(tmp_path: Path) -> None:
    """A checkpoint whose tensors do not fit its config's model: the message names them
    (torch's first line, 'Error(s) in loading state_dict for X:', names none)."""
    from neimsctl.models.student import StudentConfig, StudentModel
    from neimsctl.predict.model import load_model

    cfg = StudentConfig(gate_hidden=(16,), expert_depth=1, expert_bottleneck=8, head_hidden=(32,),
                        hidden_dim=16)
    state = StudentModel(cfg).state_dict()
    first = next(iter(state))
    state[first] = torch.zeros(3, 3)
    state["bogus.weight"] = torch.zeros(1)
    path = tmp_path / "misfit.pt"
    torch.save({"format": ck.FORMAT, "model": state,
                "config": {"model": {"name": "student", **cfg.to_dict()}}}, path)
    with pytest.raises(CheckpointError, match=r"misfit.pt: weights do not fit .*bogus\.weight") as err:
        load_model(path, device="cpu")
    assert first in str(err.value) and "Error(s) in loading" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("model"), "no 'model' field"),
    (lambda c: c.update(config="student"), "field 'config' is a str"),
    (lambda c: c.update(config={"model": ["student"]}), "config.model is a list"),
    (lambda c: c.update(featurizer_hash=5), "field 'featurizer_hash' is a int"),
    (lambda c: c.update(epoch=True), "field 'epoch' is a bool"),
    (lambda c: c.update(model={}), "no weights in 'model'"),
    (lambda c: c["model"].update({"0.weight": "w"}), "model entry '0.weight' is a str"),
    (lambda c: c["model"]["2.bias"].fill_(float("nan")), "weight '2.bias' holds 2 non-finite"),
    (lambda c: c["model"]["0.weight"].__setitem__((0, 0), float("inf")),
     "weight '0.weight' holds 1 non-finite"),
])
def test_damaged_checkpoints_are_refused_naming_the_field(tmp_path: Path, change, message) -> None:
    model, _, _ = _objects()
    path = tmp_path / "c.pt"
    ck.save_checkpoint(path, model=model, config={"model": {"name": "x"}}, epoch=1)
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=message) as info:
        ck.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_a_text_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("hello\n")
    with pytest.raises(CheckpointError, match="not a checkpoint file"):
        ck.load_checkpoint(path)


def test_full_disk_is_an_output_error_naming_the_checkpoint(tmp_path: Path) -> None:
    from neimsctl.errors import OutputError

    model, _, _ = _objects()
    with pytest.raises(OutputError, match="^/dev/full: cannot write: No space left on device"):
        ck.save_checkpoint("/dev/full", model=model)  # not torch's 'unexpected pos' RuntimeError
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="cannot create the directory"):
        ck.save_checkpoint(tmp_path / "file" / "last.pt", model=model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_bytes_changed_inside_the_weights_are_refused(tmp_path: Path) -> None:
    """torch.load does not check the zip members' CRC-32: a checkpoint whose weight bytes were
    changed (a bad copy or disk) loaded silently; load_checkpoint refuses it, naming the part."""
    import struct
    import zipfile

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    path = ck.save_checkpoint(tmp_path / "m.pt", model=model, config={"model": {"name": "x"}})
    assert ck.load_checkpoint(path)["format"] == ck.FORMAT
    with zipfile.ZipFile(path) as zf:
        big = max(zf.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[big.header_offset + 26:big.header_offset + 30])
    start = big.header_offset + 30 + name_len + extra_len
    data[start + 100:start + 164] = bytes(64)         # 16 weights zeroed, the archive intact
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{big.filename} does not match its checksum"):
        ck.load_checkpoint(path)
