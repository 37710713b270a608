"""Lazy shard datasets: lazy == in-memory, multi-shard indexing, DataLoader workers, flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _shards import sample_shard, smiles_shard
from neimsctl.data.augment import Augment
from neimsctl.data.dataset import (ShardBatchSampler, StudentDataset, TeacherDataset, collate_teacher,
                                   make_loader)
from neimsctl.errors import FormatError, InputError
from neimsctl.io.h5shard import ShardReader

TEACHER_KEYS = ("x", "edge_index", "edge_attr", "ecfp", "y", "mw", "batch", "row")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    return {"s1": sample_shard(d / "s1.h5", "student", limit=70),
            "s2": sample_shard(d / "s2.h5", "student", limit=45),
            "t1": sample_shard(d / "t1.h5", "teacher", limit=70),
            "t2": sample_shard(d / "t2.h5", "teacher", limit=45)}


def _same_student(a, b):
    for k in ("x", "y", "idx", "row", "aug13c"):
        assert torch.equal(a[k], b[k]), k
    assert a["id"] == b["id"]


def test_student_lazy_equals_in_memory(shards):
    lazy = StudentDataset([shards["s1"], shards["s2"]])
    mem = StudentDataset([shards["s1"], shards["s2"]], in_memory=True)
    assert len(lazy) == len(mem) == 115
    idx = np.random.default_rng(0).choice(len(lazy), 40)           # with repeats, both shards
    b = lazy.get_batch(idx)
    _same_student(b, mem.get_batch(idx))
    assert b["x"].shape == (40, 6144) and b["x"].dtype == torch.float32
    assert b["y"].shape == (40, 501) and float(b["y"].max(dim=1).values.min()) == 1.0
    assert torch.equal(b["idx"], torch.from_numpy(idx))
    item = lazy[int(idx[3])]
    assert torch.equal(item["x"], b["x"][3]) and item["id"] == b["id"][3]


def test_student_rows_match_the_shard_reader(shards):
    ds = StudentDataset([shards["s1"], shards["s2"]])
    with ShardReader(shards["s2"]) as rd:
        raw = rd.take([0, 44])
    b = ds.get_batch([70, 114])                                     # rows 0 and 44 of shard 2
    assert b["id"] == [str(i) for i in raw["id"]]
    bits = np.unpackbits(raw["ecfp"], axis=1).astype(np.float32)
    assert np.array_equal(b["x"][:, :4096].numpy(), bits)
    assert np.array_equal(b["x"][:, 4096:].numpy(), np.log1p(raw["counts"].astype(np.float32)))
    assert np.array_equal(b["y"].numpy(), raw["spectrum"].astype(np.float32))
    assert list(ds.ids[70:72]) == list(StudentDataset(shards["s2"]).ids[:2])


def test_teacher_lazy_equals_in_memory_and_contract_3(shards):
    lazy = TeacherDataset([shards["t1"], shards["t2"]])
    mem = TeacherDataset([shards["t1"], shards["t2"]], in_memory=True)
    idx = np.random.default_rng(1).choice(len(lazy), 32)
    a, b = lazy.get_batch(idx), mem.get_batch(idx)
    for k in TEACHER_KEYS:
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert a.x.shape[1] == 48 and a.edge_attr.shape[1] == 6 and a.edge_index.dtype == torch.long
    assert a.ecfp.shape == (32, 4096) and a.y.shape == (32, 501) and a.num_graphs == 32
    assert int(a.edge_index.max()) < a.x.shape[0]
    with ShardReader(shards["t2"]) as rd:
        raw = rd.row(10)
    g = lazy[80]                                                    # row 10 of shard 2
    assert np.array_equal(g.x.numpy(), raw["atom_x"].astype(np.float32))
    assert np.array_equal(g.edge_index.numpy(), raw["edge_index"].T)
    assert g.id == str(raw["id"][0]) and int(g.mw) == int(raw["mw"][0])


@pytest.mark.parametrize("cls,keys", [(StudentDataset, ("s1", "s2")), (TeacherDataset, ("t1", "t2"))])
def test_dataloader_workers_give_the_same_batches(shards, cls, keys):
    ds = cls([shards[k] for k in keys])
    ds.get_batch([0])                                               # parent holds open handles
    one = list(make_loader(ds, 16, shuffle=True, seed=3, num_workers=0))
    two = list(make_loader(ds, 16, shuffle=True, seed=3, num_workers=2))
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        if cls is StudentDataset:
            _same_student(a, b)
        else:
            for k in TEACHER_KEYS:
                assert torch.equal(getattr(a, k), getattr(b, k)), k
    rows = np.concatenate([np.asarray(b["row"] if cls is StudentDataset else b.row) for b in one])
    assert sorted(rows.tolist()) == list(range(len(ds)))


def test_plain_dataloader_uses_getitems(shards):
    ds = StudentDataset(shards["s1"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    _same_student({k: batch[k] for k in ("x", "y", "idx", "row", "aug13c")} | {"id": batch["id"]},
                  ds.get_batch(range(8)))
    tds = TeacherDataset(shards["t1"])
    tb = next(iter(torch.utils.data.DataLoader(tds, batch_size=4, collate_fn=collate_teacher)))
    assert torch.equal(tb.x, tds.get_batch([0, 1, 2, 3]).x)


def test_handles_stay_out_of_pickled_state(shards):
    ds = StudentDataset(shards["s1"])
    ds.get_batch([1, 2])
    assert ds._files and ds.__getstate__()["_files"] == {}


def test_require_spectrum_flag_and_subset(tmp_path):
    peaks = ([15.0, 29.0, 31.0], [100.0, 500.0, 999.0])
    p = smiles_shard(tmp_path / "m.h5", ["CCCCO", "c1ccccc1", "CC(=O)O", "CCCCN"], spectra={0: peaks, 2: peaks})
    assert len(StudentDataset(p)) == 2 and list(StudentDataset(p).ids) == [b"m0", b"m2"]
    everything = StudentDataset(p, require_spectrum=False)
    assert len(everything) == 4
    sub = everything.subset([3, 1])
    assert sub.get_batch([0, 1])["id"] == ["m3", "m1"]


def test_augmentation_is_applied_and_deterministic(shards):
    plain = StudentDataset(shards["s1"])
    aug = StudentDataset(shards["s1"], augment=Augment(isotope_fraction=0.5, seed=7))
    again = StudentDataset(shards["s1"], augment=Augment(isotope_fraction=0.5, seed=7))
    idx = list(range(40))
    a, b, p = aug.get_batch(idx), again.get_batch(idx), plain.get_batch(idx)
    assert torch.equal(a["y"], b["y"]) and torch.equal(a["aug13c"], b["aug13c"])
    assert 5 < int(a["aug13c"].sum()) < 35 and not torch.equal(a["y"], p["y"])
    assert torch.equal(a["x"], p["x"])                               # inputs untouched
    aug.set_epoch(1)
    assert not torch.equal(aug.get_batch(idx)["aug13c"], a["aug13c"])


def test_errors(shards, tmp_path):
    with pytest.raises(FormatError, match="mode"):
        StudentDataset(shards["t1"])
    with pytest.raises(InputError):
        StudentDataset(tmp_path / "missing.h5")
    with pytest.raises(IndexError):
        StudentDataset(shards["s1"]).get_batch([70])


def test_batch_sampler_epochs():
    s = ShardBatchSampler(10, 4, seed=1)
    e0 = list(s)
    assert [len(b) for b in e0] == [4, 4, 2] and sorted(sum(e0, [])) == list(range(10))
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0
    assert len(ShardBatchSampler(10, 4, drop_last=True)) == 2
