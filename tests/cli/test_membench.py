"""membench: estimate verdicts, benchmark RSS > 0, compare shows lazy < in-memory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import neimsctl.cli.membench  # noqa: F401  (registers the command)
from neimsctl.cli import main as cli_main
from neimsctl.data import membench as mb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "data"))
from _shards import sample_shard  # noqa: E402

runner = CliRunner()


def invoke(*args: str):
    res = runner.invoke(cli_main.app, ["membench", *args])
    assert res.exit_code == 0, res.output
    return res


def test_estimate_table_and_verdicts():
    out = invoke("--mode", "estimate", "--ram-gb", "32", "--dataset-size", "300000",
                 "--model", "student").stdout
    assert "verdict" in out and "# constants:" in out and "params_student" in out
    rows = {(line.split("\t")[1], line.split("\t")[2]): line.split("\t")[-1]
            for line in out.splitlines() if line.startswith("student\t")}
    assert rows[("lazy", "32")] == "fits"
    # numbers a tab-separated reader takes as numbers (was "1,014.6"), sizes in bytes as integers
    table = [ln.split("\t") for ln in out.splitlines() if ln.startswith("student\t")]
    assert all(float(c) >= 0 for row in table for c in row[3:10]), table
    res = json.loads(invoke("--mode", "estimate", "--ram-gb", "1e9", "--dataset-size", "300000",
                            "--model", "student", "--json").stdout)
    assert all(isinstance(r[k], int) for r in res["settings"]
               for k in ("runtime", "data", "model_state", "activations", "batches", "total"))
    res = mb.estimate(ram_gb=2.6, dataset_size=300_000, models=["student"], batch_sizes=[32],
                      runtime_bytes=250 * 2**20)               # fixed runtime: verdicts independent of pytest
    verdict = {r["dataset"]: r["verdict"] for r in res["settings"]}
    assert verdict == {"lazy": "fits", "in-memory": "tight", "in-memory-f32": "does-not-fit"}, res
    lazy, mem = (next(r for r in res["settings"] if r["dataset"] == d) for d in ("lazy", "in-memory"))
    assert lazy["data"] < 50 * 2**20 < mem["data"]                 # 300k rows: MBs vs ~1 GB
    assert 40e6 < lazy["params"] < 60e6


def test_estimate_reads_graph_stats_from_shards(tmp_path):
    shard = sample_shard(tmp_path / "t.h5", "teacher", limit=40)
    res = json.loads(invoke("--mode", "estimate", "--model", "teacher", "--batch-size", "32",
                            "--shards", str(shard), "--json").stdout)
    assert str(shard) in res["constants"]["graph_stats_from"]
    assert 5 < res["constants"]["mean_atoms"] < 40
    # a student shard holds no graphs: the constants are used, and said to be (it claimed
    # "graph_stats_from: s.h5"); beside a teacher shard its rows do not dilute the mean
    student = sample_shard(tmp_path / "s.h5", "student", limit=40)
    res = json.loads(invoke("--mode", "estimate", "--model", "teacher", "--batch-size", "32",
                            "--shards", str(student), "--json").stdout)["constants"]
    assert res["graph_stats_from"] == "constants (no teacher shard among --shards)"
    assert res["mean_atoms"] == mb.MEAN_ATOMS and res["id_bytes"] > 0
    both = json.loads(invoke("--mode", "estimate", "--model", "teacher", "--batch-size", "32",
                             "--shards", str(shard), "--shards", str(student), "--json").stdout)
    assert both["constants"]["graph_stats_from"] == str(shard)
    assert both["constants"]["mean_atoms"] == pytest.approx(
        json.loads(invoke("--mode", "estimate", "--model", "teacher", "--batch-size", "32",
                          "--shards", str(shard), "--json").stdout)["constants"]["mean_atoms"])


def test_benchmark_measures_rss(tmp_path):
    shard = sample_shard(tmp_path / "s.h5", "student")
    res = json.loads(invoke("--mode", "benchmark", "--shards", str(shard), "--samples", "200",
                            "--json").stdout)[0]
    assert res["rows"] == 200 and res["rss_start"] > 0 and res["rss_peak"] >= res["rss_built"] > 0
    assert res["batch_us"] > 0 and res["mode"] == "lazy"


def test_benchmark_rejects_a_shard_of_the_other_mode(tmp_path):
    shard = sample_shard(tmp_path / "s.h5", "student", limit=20)
    res = runner.invoke(cli_main.app, ["membench", "--mode", "benchmark", "--model", "teacher",
                                       "--shards", str(shard)])
    assert res.exit_code == 2 and "--model student" in res.output


def test_compare_lazy_below_in_memory():
    res = json.loads(invoke("--mode", "compare", "--samples", "3000", "--json").stdout)
    lazy, mem = res
    assert (lazy["mode"], mem["mode"]) == ("lazy", "in-memory") and lazy["rows"] == mem["rows"] == 3000
    assert lazy["dataset_delta"] < mem["dataset_delta"]
    assert mem["dataset_delta"] > 5 * 2**20                         # 3000 x 3.5 kB loaded


@pytest.mark.parametrize("mode", ["student", "teacher", "v1"])
def test_row_sizes_come_from_the_shard_layout(tmp_path, mode):
    """The estimate's stored bytes per row are those of a real shard's datasets, every numeric
    one (the teacher's ``counts`` and every mode's ``ordinal`` included), and per atom / edge."""
    import h5py

    from neimsctl.io.h5shard.layout import entry_bytes, row_bytes

    shard = sample_shard(tmp_path / f"{mode}.h5", mode, limit=30)
    per_row: dict[str, int] = {}
    per_entry: dict[str, int] = {}
    with h5py.File(shard, "r") as f:
        n = int(f.attrs["n_rows"])
        for name, ds in f.items():
            if ds.dtype.kind in "OS":
                continue
            size = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
            if ds.shape[0] in (n, n + 1):
                per_row[name] = size
            else:
                key = "n_atoms" if name == "atom_x" else "n_edges"
                per_entry[key] = per_entry.get(key, 0) + size
    assert row_bytes(mode) == per_row and entry_bytes(mode) == per_entry
    assert per_row["counts"] == 2048 and per_row["ordinal"] == 8
    if mode == "teacher":
        assert per_entry == {"n_atoms": 48 * 2, "n_edges": 2 * 4 + 6 * 2}
    sizes = mb.dataset_bytes(mode, 1000, atoms=10.0, edges=20.0, id_bytes=16)
    strings = 1000 * (16 + 27 + 60)
    row = sum(per_row.values()) + 10.0 * per_entry.get("n_atoms", 0) + 20.0 * per_entry.get("n_edges", 0)
    assert sizes["in-memory"] - sizes["lazy"] - strings == pytest.approx(1000 * row)



@pytest.mark.parametrize("mode", ["benchmark", "compare"])
def test_a_benchmark_shard_larger_than_the_disk_is_refused_before_writing(mode, tmp_path,
                                                                          monkeypatch):
    """--samples 1e9 began writing an 830 GB shard into the temporary directory (until the disk
    was full), 1e12 was a numpy MemoryError traceback: one line naming the directory, the size
    needed and the room there, exit 1, nothing left behind."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    res = runner.invoke(cli_main.app, ["membench", "--mode", mode, "--samples", str(10**12)])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"neimsctl membench: {tmp_path}: cannot write a "
                                 "1,000,000,000,000-row student benchmark shard: it needs ~"), \
        res.stderr
    assert "GB free; use fewer --samples, or measure your own --shards" in res.stderr
    assert list(tmp_path.iterdir()) == []
