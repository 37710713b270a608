"""softlabel: MC mean/variance against a hand computation, and a resumable, aligned shard."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neimsctl.data.dataset import TeacherDataset
from neimsctl.data.membench import build_sample_shard
from neimsctl.errors import CheckpointError, FormatError
from neimsctl.io.softlabel_shard import SoftLabelReader, partial_path
from neimsctl.train import softlabel as sl
from neimsctl.models.checkpoint import save_checkpoint
from neimsctl.data.shards import shard_settings
from neimsctl.train.finetune import build_teacher

TINY = {"name": "teacher", "hidden": 16, "num_layers": 2, "attention_hidden": 8,
        "pool_gate_hidden": 8, "ecfp_hidden": [32], "ecfp_out": 16, "head_hidden": [32, 16],
        "dropout": 0.2}


class ScriptedTeacher(torch.nn.Module):
    """Returns fixed (pred, hidden) samples in turn: MC dropout with known masks."""

    def __init__(self, preds: list[torch.Tensor], hiddens: list[torch.Tensor]) -> None:
        super().__init__()
        self.preds, self.hiddens, self.calls, self.stochastic = preds, hiddens, 0, []

    @contextlib.contextmanager
    def mc_dropout(self, enabled: bool = True):
        self.stochastic.append(enabled)
        yield self

    def to_linear(self, pred: torch.Tensor) -> torch.Tensor:
        return pred.clamp_min(0).square()          # sqrt output space

    def forward(self, batch, return_hidden: bool = False):
        k = self.calls
        self.calls += 1
        return self.preds[k], self.hiddens[k]


def test_mean_and_variance_match_a_hand_computation() -> None:
    # 3 MC samples of 2 molecules x 4 bins in sqrt space; base peaks differ per sample
    preds = [torch.tensor([[1.0, 0.5, 0.0, 0.2], [0.3, 0.6, 0.0, 0.0]]),
             torch.tensor([[2.0, 0.0, 1.0, 0.4], [0.3, 0.3, 0.3, 0.0]]),
             torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.6, 0.6, 0.6]])]
    hiddens = [torch.full((2, 3), float(v)) for v in (1.0, 2.0, 6.0)]
    model = ScriptedTeacher(preds, hiddens)
    mean, var, hidden = sl.mc_soft_labels(model, None, n_samples=3)
    assert model.calls == 3 and model.stochastic == [True]
    # by hand: linear = pred^2, each divided by its max; molecule 0:
    s = np.array([[1, .25, 0, .04], [1, 0, .25, .04], [1, 1, 0, 0]], float)   # /1, /4, /1
    m = s.mean(0)                                  # [1, .41667, .08333, .02667], max 1
    v = s.var(0, ddof=1)
    np.testing.assert_allclose(mean[0].numpy(), m, rtol=1e-6)
    np.testing.assert_allclose(var[0].numpy(), v, rtol=1e-5, atol=1e-7)
    # molecule 1: samples [.25,1,0,0], [1,1,1,0], [0,1,1,1]; mean max 1 -> no rescale
    s1 = np.array([[.25, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1]], float)
    np.testing.assert_allclose(mean[1].numpy(), s1.mean(0), rtol=1e-6)
    np.testing.assert_allclose(var[1].numpy(), s1.var(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(hidden.numpy(), np.full((2, 3), 3.0))


def test_rescaling_when_the_mean_has_no_unit_peak() -> None:
    preds = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    mean, var, _ = sl.mc_soft_labels(ScriptedTeacher(preds, [torch.zeros(1, 2)] * 2), None, 2)
    # samples [1,0], [0,1]: mean [.5,.5] -> x2 = [1,1]; var [.5,.5] -> x4 = [2,2]
    np.testing.assert_allclose(mean.numpy(), [[1.0, 1.0]])
    np.testing.assert_allclose(var.numpy(), [[2.0, 2.0]])


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sample_shard(tmp_path_factory.mktemp("sl") / "teacher.h5", mode="teacher",
                              limit=40)


@pytest.fixture(scope="module")
def teacher(shard: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_teacher(TINY)
    return save_checkpoint(tmp_path_factory.mktemp("slt") / "t.pt", model=model,
                           config={"model": model.config.to_dict() | {"name": "teacher"}},
                           featurizer_hash=shard_settings([shard], ("teacher",), stage="softlabel").settings_hash)


def test_agrees_with_the_teachers_own_mc_predict(shard: Path, teacher: Path) -> None:
    model, _ = sl.load_teacher(teacher)
    batch = TeacherDataset(shard).get_batch(np.arange(6))
    torch.manual_seed(3)
    mean_a, var_a = model.mc_predict(batch, n_samples=5)
    torch.manual_seed(3)
    mean_b, var_b, hid = sl.mc_soft_labels(model, batch, 5)
    torch.testing.assert_close(mean_a, mean_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var_a, var_b, rtol=1e-4, atol=1e-7)
    assert hid.shape == (6, 16) and float(var_b.max()) > 0


def test_run_writes_an_aligned_shard_and_resume_gives_the_same_file(
        shard: Path, teacher: Path, tmp_path: Path) -> None:
    settings = sl.SoftLabelSettings(samples=4, batch_size=16, seed=1)
    full = sl.run_softlabel(teacher, [shard], tmp_path / "a.h5", settings=settings, device="cpu")
    n = len(TeacherDataset(shard, require_spectrum=False))
    assert full.read == n and full.written == n and full.balanced
    with SoftLabelReader(tmp_path / "a.h5") as r:
        assert r.ids.tolist() == TeacherDataset(shard, require_spectrum=False).ids.tolist()
        a = r.take(np.arange(n))
        assert r.attrs["featurizer_hash"] == shard_settings([shard], ("teacher",), stage="softlabel").settings_hash
        assert r.settings["samples"] == 4 and len(r.settings["teacher_sha256"]) == 64
    assert a["mean"].shape == (n, 501) and a["hidden"].shape == (n, 16)
    np.testing.assert_allclose(a["mean"].max(1), 1.0, atol=1e-3)
    assert (a["var"] >= 0).all()

    # an interrupted run: stop in the second batch, then resume
    real = sl.mc_soft_labels
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    sl.mc_soft_labels = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            sl.run_softlabel(teacher, [shard], tmp_path / "b.h5", settings=settings, device="cpu")
    finally:
        sl.mc_soft_labels = real
    assert not (tmp_path / "b.h5").exists() and partial_path(tmp_path / "b.h5").exists()
    with pytest.raises(FormatError, match="other settings"):
        sl.run_softlabel(teacher, [shard], tmp_path / "b.h5", device="cpu", resume=True,
                         settings=sl.SoftLabelSettings(samples=5, batch_size=16, seed=1))
    # another input of as many rows (other ids): its labels must not be spliced onto these
    import shutil

    import h5py

    other = tmp_path / "other.h5"
    shutil.copy(shard, other)
    with h5py.File(other, "a") as f:
        f["id"][...] = np.array([b"other-" + i for i in f["id"][:]], dtype=object)
    with pytest.raises(FormatError, match=r"other settings \(input_ids_sha256\)"):
        sl.run_softlabel(teacher, [other], tmp_path / "b.h5", device="cpu", resume=True,
                         settings=settings)
    again = sl.run_softlabel(teacher, [shard], tmp_path / "b.h5", settings=settings,
                             device="cpu", resume=True)
    assert again.read == n and again.written == n
    with SoftLabelReader(tmp_path / "b.h5") as r:
        b = r.take(np.arange(n))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_teacher_trained_on_other_features_is_refused(shard: Path, tmp_path: Path) -> None:
    model = build_teacher(TINY)
    bad = save_checkpoint(tmp_path / "bad.pt", model=model, featurizer_hash="0" * 16,
                          config={"model": TINY})
    with pytest.raises(CheckpointError, match="featurizer mismatch"):
        sl.run_softlabel(bad, [shard], tmp_path / "x.h5", device="cpu")


def test_duplicate_ids_are_rejected_and_reported(shard: Path, teacher: Path, tmp_path: Path) -> None:
    import io

    import orjson

    import shutil

    copy = tmp_path / "copy.h5"
    shutil.copy(shard, copy)
    sink = io.BytesIO()
    tally = sl.run_softlabel(teacher, [shard, copy], tmp_path / "d.h5", device="cpu", rejects=sink,
                             settings=sl.SoftLabelSettings(samples=2, batch_size=32))
    n = len(TeacherDataset(shard, require_spectrum=False))
    assert (tally.read, tally.written, tally.rejected) == (2 * n, n, n)
    recs = [orjson.loads(x) for x in sink.getvalue().splitlines()]
    assert len(recs) == n and {r["reason"] for r in recs} == {"duplicate_id"}
    # each reject names the shard and row it came from (file, line and record were null)
    assert {r["file"] for r in recs} == {str(copy)}
    assert sorted(r["record"] for r in recs) == sorted(f"row {k}" for k in range(n))
    with SoftLabelReader(tmp_path / "d.h5") as r:
        assert r.n_rows == n and len(set(r.ids.tolist())) == n


def test_resume_reports_the_rejects_of_the_interrupted_part(shard: Path, teacher: Path,
                                                             tmp_path: Path) -> None:
    """The rejects report and counts of a resumed run equal an uninterrupted run's, the rows
    rejected before the interruption (a repeated id, a NaN output) included."""
    import io
    import shutil

    copy = tmp_path / "copy.h5"
    shutil.copy(shard, copy)
    settings = sl.SoftLabelSettings(samples=2, batch_size=32)
    real = sl.mc_soft_labels

    def patched(stop_at: int | None, nan: bool):
        calls = {"n": 0}

        def run(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == stop_at:
                raise KeyboardInterrupt
            mean, var, hid = real(*args, **kwargs)
            if nan and calls["n"] == 1:
                mean[3] = float("nan")                 # row 3 of the first batch: a NaN output
            return mean, var, hid
        return run

    def run(out: Path, stop_at: int | None, resume: bool = False) -> tuple[object, bytes]:
        sink = io.BytesIO()
        sl.mc_soft_labels = patched(stop_at, nan=not resume)   # a resume recomputes no row of batch 1
        try:
            t = sl.run_softlabel(teacher, [shard, copy], out, device="cpu", rejects=sink,
                                 settings=settings, resume=resume)
        finally:
            sl.mc_soft_labels = real
        return t, sink.getvalue()

    ref, ref_rejects = run(tmp_path / "ref.h5", None)
    n = len(TeacherDataset(shard, require_spectrum=False))
    assert (ref.read, ref.written, ref.rejected) == (2 * n, n - 1, n + 1)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "out.h5", 3)                    # two batches (64 rows) done
    again, rejects = run(tmp_path / "out.h5", None, resume=True)
    assert (again.read, again.written, again.rejected) == (ref.read, ref.written, ref.rejected)
    assert dict(again.reasons) == dict(ref.reasons) == {"nonfinite_prediction": 1, "duplicate_id": n}
    assert rejects == ref_rejects


def test_a_second_run_of_the_same_output_is_refused_and_touches_nothing(
        shard: Path, teacher: Path, tmp_path: Path) -> None:
    from neimsctl.errors import OutputBusy
    from neimsctl.io.streams import lock_partial

    out = tmp_path / "s.h5"
    partial_path(out).write_bytes(b"another run's rows")
    fd = lock_partial(partial_path(out))          # as the other run holds it
    try:
        for resume in (False, True):
            with pytest.raises(OutputBusy, match="another run is writing this output"):
                sl.run_softlabel(teacher, [shard], out, device="cpu", resume=resume,
                                 settings=sl.SoftLabelSettings(samples=2, batch_size=16))
            assert partial_path(out).read_bytes() == b"another run's rows"
    finally:
        import os
        os.close(fd)
    t = sl.run_softlabel(teacher, [shard], out, device="cpu",
                         settings=sl.SoftLabelSettings(samples=2, batch_size=16))
    assert t.written == len(TeacherDataset(shard, require_spectrum=False)) and out.exists()


def test_ensemble_pools_every_teachers_samples_and_keeps_the_first_hidden() -> None:
    a = ScriptedTeacher([torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.5]])],
                        [torch.full((1, 2), 1.0), torch.full((1, 2), 3.0)])
    b = ScriptedTeacher([torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 1.0]])],
                        [torch.full((1, 2), 50.0)] * 2)
    mean, var, hidden = sl.mc_soft_labels([a, b], None, n_samples=2)
    assert a.calls == 2 and b.calls == 2 and a.stochastic == b.stochastic == [True]
    s = np.array([[1, 0], [1, .25], [0, 1], [.25, 1]], float)  # linear = pred^2, max 1 each
    np.testing.assert_allclose(mean.numpy()[0], s.mean(0) / s.mean(0).max(), rtol=1e-6)
    np.testing.assert_allclose(var.numpy()[0], s.var(0, ddof=1) / s.mean(0).max() ** 2, rtol=1e-5)
    np.testing.assert_allclose(hidden.numpy(), [[2.0, 2.0]])  # teacher a's samples only


def test_run_with_two_teachers_records_both_and_differs_from_one(
        shard: Path, teacher: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_teacher(TINY)
    other = save_checkpoint(tmp_path / "t2.pt", model=model,
                            config={"model": model.config.to_dict() | {"name": "teacher"}},
                            featurizer_hash=shard_settings([shard], ("teacher",), stage="softlabel").settings_hash)
    settings = sl.SoftLabelSettings(samples=3, batch_size=16, seed=1)
    sl.run_softlabel(teacher, [shard], tmp_path / "one.h5", settings=settings, device="cpu")
    t = sl.run_softlabel([teacher, other], [shard], tmp_path / "two.h5", settings=settings,
                         device="cpu")
    assert t.balanced and t.rejected == 0
    with SoftLabelReader(tmp_path / "one.h5") as r1, SoftLabelReader(tmp_path / "two.h5") as r2:
        assert len(r2.settings["teacher_sha256"]) == 2
        one, two = r1.take(np.arange(len(r1))), r2.take(np.arange(len(r2)))
    assert not np.allclose(one["mean"], two["mean"])
    np.testing.assert_allclose(two["mean"].max(1), 1.0, atol=1e-3)
    wide = build_teacher(TINY | {"head_hidden": [32, 24]})  # hidden width: only the first's counts
    ok = save_checkpoint(tmp_path / "t3.pt", model=wide,
                         config={"model": wide.config.to_dict() | {"name": "teacher"}},
                         featurizer_hash=shard_settings([shard], ("teacher",), stage="softlabel").settings_hash)
    assert sl.run_softlabel([teacher, ok], [shard], tmp_path / "w.h5", settings=settings,
                            device="cpu").balanced
    narrow = build_teacher(TINY | {"n_bins": 400})
    bad = save_checkpoint(tmp_path / "t4.pt", model=narrow,
                          config={"model": narrow.config.to_dict() | {"name": "teacher"}},
                          featurizer_hash=shard_settings([shard], ("teacher",), stage="softlabel").settings_hash)
    with pytest.raises(Exception, match="number of bins"):
        sl.run_softlabel([teacher, bad], [shard], tmp_path / "bad.h5", settings=settings,
                         device="cpu")


def _tiny_student(path: Path, seed: int = 2) -> tuple[Path, torch.nn.Module]:
    from neimsctl.models.student import StudentConfig, StudentModel

    cfg = StudentConfig(gate_hidden=(16,), expert_depth=1, expert_bottleneck=8, head_hidden=(32,),
                        hidden_dim=16)
    torch.manual_seed(seed)
    model = StudentModel(cfg).eval()
    return save_checkpoint(path, model=model, config={"model": {"name": "student", **cfg.to_dict()}},
                           featurizer_hash="0" * 16), model


def test_a_student_member_reads_the_teacher_batch_as_the_student_vector(
        shard: Path, tmp_path: Path) -> None:
    from neimsctl.data.dataset import StudentDataset

    path, student = _tiny_student(tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match="a student checkpoint where a GNN teacher"):
        sl.load_teacher(path)
    member, _ = sl.load_teacher(path, allow_student=True)
    sshard = build_sample_shard(tmp_path / "student.h5", mode="student", limit=40)
    tb = TeacherDataset(shard).get_batch(np.arange(5))
    sds = StudentDataset(sshard)
    sb = sds.get_batch(np.arange(5))
    assert list(tb.id) == list(sb["id"])
    with torch.no_grad():
        want = student(sb["x"], torch.from_numpy(sds.mw[:5].astype(np.int64))).pred
        got = member(tb)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with member.mc_dropout():  # dropout on, gate noise off, modes restored afterwards
        assert any(m.training for m in member.modules() if isinstance(m, torch.nn.Dropout))
        assert not member.student.gate.training
    assert not any(m.training for m in member.modules())


def test_run_with_a_teacher_and_a_student(shard: Path, teacher: Path, tmp_path: Path) -> None:
    path, _ = _tiny_student(tmp_path / "s.pt")
    settings = sl.SoftLabelSettings(samples=2, batch_size=16)
    t = sl.run_softlabel([teacher, path], [shard], tmp_path / "ts.h5", settings=settings,
                         device="cpu")
    assert t.balanced and t.rejected == 0
    with SoftLabelReader(tmp_path / "ts.h5") as r:
        got = r.take(np.arange(len(r)))
    assert got["hidden"].shape[1] == 16 and np.isfinite(got["mean"]).all()
    with SoftLabelReader(tmp_path / "ts.h5") as r:
        members = json.loads(r.attrs["members"])
    assert [m["arch"] for m in members] == ["teacher", "student"]
    assert members[1]["path"] == str(path) and members[1]["model"]["hidden_dim"] == 16
    # the first teacher's model config is JSON like `members` (it was a Python repr: "{'name': ...")
    with SoftLabelReader(tmp_path / "ts.h5") as r:
        assert json.loads(r.attrs["teacher_model"]) == members[0]["model"]
    with pytest.raises(CheckpointError, match="GNN teacher is needed"):  # the first must be a GNN
        sl.run_softlabel([path, teacher], [shard], tmp_path / "st.h5", settings=settings,
                         device="cpu")


def test_out_of_fold_rows_take_only_their_eligible_members_samples() -> None:
    """Two scripted members; row 0 may use member 0 only, row 1 member 1 only, row 2 both."""
    a = ScriptedTeacher([torch.tensor([[1.0, 0.0]] * 3), torch.tensor([[1.0, 0.5]] * 3)],
                        [torch.zeros(3, 2)] * 2)
    b = ScriptedTeacher([torch.tensor([[0.0, 1.0]] * 3), torch.tensor([[0.5, 1.0]] * 3)],
                        [torch.ones(3, 2)] * 2)
    eligible = np.array([[True, False, True], [False, True, True]])
    mean, var, hidden = sl.mc_soft_labels([a, b], None, 2, eligible)
    # linear = pred^2 per sample, max-normalised: a -> [1,0], [1,.25]; b -> [0,1], [.25,1]
    np.testing.assert_allclose(mean[0].numpy(), [1.0, 0.125])
    np.testing.assert_allclose(mean[1].numpy(), [0.125, 1.0])
    pooled = np.array([[1, 0], [1, .25], [0, 1], [.25, 1]])
    np.testing.assert_allclose(mean[2].numpy(), pooled.mean(0) / pooled.mean(0).max(), rtol=1e-6)
    np.testing.assert_allclose(var[0].numpy(), [0.0, np.var([0, .25], ddof=1)], atol=1e-7)
    np.testing.assert_allclose(hidden.numpy(), np.zeros((3, 2)))   # the first member's
    # a member no row of the batch may use is not run at all
    c = ScriptedTeacher([torch.ones(3, 2)] * 2, [torch.zeros(3, 2)] * 2)
    a.calls = 0
    sl.mc_soft_labels([a, c], None, 2, np.array([[True] * 3, [False] * 3]))
    assert c.calls == 0


def test_eligible_members_follow_the_folds(shard: Path) -> None:
    from neimsctl.data.split import assign_blocks, fold_codes

    ds = TeacherDataset(shard, require_spectrum=False)
    pos = np.arange(len(ds))
    split = (0.5, 0.25, 0.25)
    folds = [((1, 2), split, 42), ((2, 2), split, 42), (None, split, 42)]
    e = sl.eligible_members(ds, pos, folds)
    part = assign_blocks(ds.blocks, fractions=split)
    fold = fold_codes(ds.blocks, 2)
    train = part == 0
    assert train.any() and (~train).any() and len(set(fold[train])) == 2
    np.testing.assert_array_equal(e[0], ~train | (fold == 0))   # fold-1 member: its fold + held out
    np.testing.assert_array_equal(e[1], ~train | (fold == 1))
    np.testing.assert_array_equal(e[2], ~train)                 # trained on every train row
    assert (e[:2, train].sum(axis=0) == 1).all()                # one fold member per train row
    assert sl.eligible_members(ds, pos, [(None, split, 42)]) is None
