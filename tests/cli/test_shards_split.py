"""neimsctl shards split: the held-out parts of the training split, as records or SMILES."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest

from neimsctl.data.dataset import StudentDataset
from neimsctl.evaluate.validation import dataset_split

pytestmark = pytest.mark.cli


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory, sample_msp: Path) -> Path:
    d = tmp_path_factory.mktemp("split")
    proc = subprocess.run(f"neimsctl msp2jsonl -q {sample_msp} | neimsctl featurize -q --mode student "
                          f"-o {d / 's.h5'}", shell=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return d / "s.h5"


def split(shard: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["neimsctl", "shards", "split", str(shard), *args], capture_output=True,
                          timeout=120)


def test_parts_are_disjoint_cover_everything_and_match_training(shard: Path, repo_root: Path) -> None:
    ids = {}
    for part in ("train", "val", "test"):
        proc = split(shard, "--part", part)
        assert proc.returncode == 0, proc.stderr
        recs = [orjson.loads(x) for x in proc.stdout.splitlines()]
        ids[part] = [r["id"] for r in recs]
        assert f"{part}: {len(recs)} spectra".encode() in proc.stderr
    assert sum(map(len, ids.values())) == 300
    assert not set(ids["test"]) & set(ids["train"]) and not set(ids["val"]) & set(ids["train"])
    # exactly the rows the training commands hold out
    ds = StudentDataset([shard])
    parts = dataset_split(ds, seed=42, fractions=(0.8, 0.1, 0.1))
    assert sorted(ids["test"]) == sorted(i.decode() for i in ds.ids[parts.test])
    # the records are valid neimsctl.record/1 with the spectrum at base peak 999
    schema = json.loads((repo_root / "formats/jsonl-record.v1.schema.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    proc = split(shard, "--part", "test")
    for line in proc.stdout.splitlines():
        rec = orjson.loads(line)
        jsonschema.validate(rec, schema)
        assert max(rec["intensity"]) == pytest.approx(999.0)
        # rounded to 3 decimals as written, not float32 noise such as 297.0660095214844
        assert all(round(x, 3) == x for x in rec["intensity"]), rec["intensity"][:5]


def test_smi_has_one_line_per_compound_and_feeds_predict(shard: Path, tmp_path: Path) -> None:
    proc = split(shard, "--part", "test", "--format", "smi", "-o", str(tmp_path / "t.smi"))
    assert proc.returncode == 0 and proc.stdout == b"", proc.stderr
    lines = (tmp_path / "t.smi").read_text().splitlines()
    recs = [orjson.loads(x) for x in split(shard, "--part", "test").stdout.splitlines()]
    assert len(lines) == len({r["inchikey"][:14] for r in recs}) <= len(recs)
    assert all(len(x.split()) == 2 for x in lines)
    assert np.all([x.split()[1] in {r["id"] for r in recs} for x in lines])


def test_bad_part_is_a_usage_error(shard: Path) -> None:
    proc = split(shard, "--part", "holdout")
    assert proc.returncode == 2 and b"--part" in proc.stderr


def test_the_split_of_a_run_trained_on_other_shares_or_seed(shard: Path, tmp_path: Path) -> None:
    """A model trained with data.split=[0.5,0.25,0.25] and split_seed=7: 'shards split --part
    test' could only give the 8:1:1 test part (no way to name the shares), which holds
    compounds that model trained on, evaluated as if held out without a word. --split and
    --seed name them, --checkpoint takes them from the run; both give the run's own parts."""
    run = tmp_path / "run"
    p = subprocess.run(
        ["neimsctl", "distill", str(shard), "--no-kd", "-q", "--device", "cpu", "-o", str(run),
         *[f"--set={kv}" for kv in (
             "model.gate_hidden=[16]", "model.expert_depth=1", "model.expert_bottleneck=4",
             "model.head_hidden=[32]", "model.hidden_dim=16", "train.batch_size=64",
             "train.num_workers=0", "train.threads=1", "train.epochs=1",
             "data.split=[0.5,0.25,0.25]", "data.split_seed=7")]],
        capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    ds = StudentDataset([shard])
    parts = dataset_split(ds, seed=7, fractions=(0.5, 0.25, 0.25))
    want = {part: sorted(i.decode() for i in ds.ids[getattr(parts, part)])
            for part in ("train", "test")}
    ck = run / "checkpoints/best.pt"
    for args in (["--checkpoint", str(ck)], ["--split", "0.5,0.25,0.25", "--seed", "7"]):
        for part in ("train", "test"):
            proc = split(shard, "--part", part, *args)
            assert proc.returncode == 0, proc.stderr
            assert sorted(orjson.loads(x)["id"] for x in proc.stdout.splitlines()) == want[part]
    proc = split(shard, "--checkpoint", str(ck))
    assert proc.stderr.decode().startswith(f"neimsctl shards split: the split of {ck}: "
                                           "0.5,0.25,0.25, seed 7\n")
    # the default 8:1:1 test part is not that model's: it shares compounds with its training
    default = {orjson.loads(x)["id"] for x in split(shard).stdout.splitlines()}
    assert default & set(want["train"])
    for args, text in ((["--split", "0.5,0.25"], b"--split must be 3 shares in [0, 1]"),
                       (["--checkpoint", str(ck), "--seed", "7"], b"leave out --split and --seed"),
                       (["--checkpoint", str(tmp_path / "no.pt")], b"no such file")):
        proc = split(shard, *args)
        assert proc.returncode == 2 and text in proc.stderr and proc.stdout == b"", proc.stderr
