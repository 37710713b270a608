"""Lazy shard datasets: lazy == in-memory, multi-shard indexing, DataLoader workers, flags."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import h5py
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
    """An open h5py file cannot be pickled: a dataset reading through open handles still
    pickles (a spawned worker's copy), and the copy opens its own handle when it reads."""
    ds = TeacherDataset([shards["t1"], shards["t2"]])
    want = ds.get_batch([1, 80])
    assert all(r.handle.is_open for r in ds._readers)
    copy = pickle.loads(pickle.dumps(ds))
    assert not any(r.handle.is_open for r in copy._readers)
    got = copy.get_batch([1, 80])
    for k in TEACHER_KEYS:
        assert torch.equal(getattr(got, k), getattr(want, k)), k
    assert copy._readers[0].handle.is_open and ds._readers[0].handle.is_open


def _read_in_worker(batch):
    """collate_fn run in the DataLoader worker: the batch and who read it."""
    info = torch.utils.data.get_worker_info()
    handle = info.dataset._readers[0].handle
    return batch, os.getpid(), handle._pid, handle.is_open


@pytest.mark.parametrize("cls,key", [(StudentDataset, "s1"), (TeacherDataset, "t1")])
def test_forked_workers_open_their_own_handle(shards, cls, key):
    """The parent reads first (its handle is open when the workers fork); each forked worker
    reopens the shard itself, reads the same rows, and the parent's handle stays usable."""
    ds = cls(shards[key])
    parent_handle = ds._readers[0].handle
    ds.get_batch([0, 1])
    assert parent_handle.is_open and parent_handle._pid == os.getpid()
    sampler = ShardBatchSampler(len(ds), 16, shuffle=True, seed=5)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=sampler, num_workers=2,
                                         collate_fn=_read_in_worker,
                                         multiprocessing_context="fork")
    got = list(loader)
    assert len(got) == len(sampler)
    for (batch, pid, handle_pid, is_open), idx in zip(got, sampler):
        assert pid != os.getpid() and handle_pid == pid and is_open
        want = ds.get_batch(idx)
        if cls is StudentDataset:
            _same_student(batch, want)
        else:
            for k in TEACHER_KEYS:
                assert torch.equal(getattr(batch, k), getattr(want, k)), k
    assert len({pid for _, pid, _, _ in got}) == 2
    assert parent_handle.is_open and parent_handle._pid == os.getpid()


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
    with pytest.raises(FormatError, match="mode is 'teacher', expected 'student'") as e:
        StudentDataset([shards["s1"], shards["t1"]])
    assert e.value.file == str(shards["t1"])
    with pytest.raises(InputError, match="missing.h5"):
        StudentDataset(tmp_path / "missing.h5")
    with pytest.raises(IndexError):
        StudentDataset(shards["s1"]).get_batch([70])


def test_schema_check_names_the_file_and_what_is_missing(shards, tmp_path):
    """The datasets refuse, through the reader's one schema check, a file of another schema
    and a shard without a dataset they read (here the student's ``counts``)."""
    wrong = Path(__file__).resolve().parents[3] / "formats/conformance/failed/h5shard-wrong-schema.h5"
    with pytest.raises(FormatError, match="not a neimsctl.h5shard/1 file") as e:
        StudentDataset(wrong)
    assert e.value.file == str(wrong)
    old = tmp_path / "old.h5"
    shutil.copy(shards["s1"], old)
    with h5py.File(old, "r+") as f:
        del f["counts"]
    with pytest.raises(FormatError, match=r"missing datasets \['counts'\]") as e:
        StudentDataset(old)
    assert e.value.file == str(old)
    with pytest.raises(FormatError, match=r"missing datasets \['formula'\]"):
        with h5py.File(old, "r+") as f:
            del f["formula"]
            f.create_dataset("counts", data=np.zeros((70, 2048), np.uint8))
        StudentDataset(old, augment=Augment(isotope_fraction=0.5))


def test_batch_sampler_epochs():
    s = ShardBatchSampler(10, 4, seed=1)
    e0 = list(s)
    assert [len(b) for b in e0] == [4, 4, 2] and sorted(sum(e0, [])) == list(range(10))
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0
    assert len(ShardBatchSampler(10, 4, drop_last=True)) == 2
