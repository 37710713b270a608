"""The shard reader: the one schema check, the layout the writer follows, and ``take`` (chunks
inflated here) against ``rows`` and HDF5's own reading, on rows of the real DEV data."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from neimsctl.data.membench import build_sample_shard
from neimsctl.errors import FormatError
from neimsctl.io.featblock import STR_COLUMNS, take_rows
from neimsctl.io.h5shard import ShardReader, check_shard, codec
from neimsctl.io.h5shard.layout import stored_datasets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_h5shard import make_block, write  # noqa: E402

FORMATS = Path(__file__).resolve().parents[3] / "formats" / "conformance"
MODES = ("student", "teacher", "v1")
DEV_ROWS = 1500  # 24 row chunks; the teacher's atom table spans ~20 of its 1024-row chunks


@pytest.fixture(scope="module")
def dev(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Shards of the first DEV records in each mode, written by the featurize code path."""
    d = tmp_path_factory.mktemp("dev")
    return {m: build_sample_shard(d / f"{m}.h5", mode=m, msp=shared_data / "massbank_ei.msp",
                                  limit=DEV_ROWS) for m in MODES}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Equal blocks, string columns compared as lists of str."""
    assert set(a) == set(b)
    for k in a:
        if k in STR_COLUMNS:
            assert list(a[k]) == list(b[k]), k
        else:
            assert a[k].dtype == b[k].dtype, k
            assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


@pytest.mark.parametrize("mode", MODES)
def test_take_equals_rows_on_dev_rows(dev: dict[str, Path], mode: str) -> None:
    """Any rows in any order, with repeats, every column: ``take`` (chunks inflated here, the
    atom and edge tables included) gives what a sequential read of the whole shard gives."""
    with ShardReader(dev[mode]) as r:
        n = len(r)
        assert n > 1400
        whole = r.rows(0, n)
        rng = np.random.default_rng(3)
        for idx in (rng.integers(0, n, 300), np.arange(n)[::-1], [n - 1, 0, 0, 63, 64, n - 1], []):
            assert_same(r.take(idx), take_rows(whole, np.asarray(idx, np.int64), mode))
        cols = ("ecfp", "counts", "spectrum", "mw") + (("atom_x", "edge_attr") if mode == "teacher" else ())
        got = r.take(idx := rng.integers(0, n, 128), cols)
        want = take_rows(whole, idx, mode)
        assert set(got) == set(cols) | ({"n_atoms", "n_edges"} if mode == "teacher" else set())
        assert_same(got, {k: want[k] for k in got})


@pytest.mark.parametrize("mode", MODES)
def test_take_equals_hdf5s_own_reading_and_loaded_columns(dev: dict[str, Path], mode: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    idx = np.random.default_rng(4).integers(0, DEV_ROWS - 20, 200)
    with ShardReader(dev[mode]) as r:
        assert codec.chunk_reader(r.file["spectrum"]) is not None
        inflated = r.take(idx)
        r.load(list(stored_datasets(mode)))
        assert_same(r.take(idx), inflated)                              # served from memory
    asked: list[str] = []
    monkeypatch.setattr(codec, "chunk_reader", lambda ds: asked.append(ds.name) or None)
    with ShardReader(dev[mode]) as r:                                    # every chunk via h5py
        assert_same(r.take(idx), inflated)
    assert "/spectrum" in asked and "/ecfp" in asked


def test_check_shard_refuses_with_the_file_named(tmp_path: Path) -> None:
    """Wrong schema, another mode, an unknown mode, datasets missing: a FormatError naming the
    file, and the refused file is closed again (it can be opened for writing at once)."""
    wrong = FORMATS / "failed" / "h5shard-wrong-schema.h5"
    with pytest.raises(FormatError, match="not a neimsctl.h5shard/1 file") as e:
        ShardReader(wrong)
    assert e.value.file == str(wrong)
    good = FORMATS / "passed" / "h5shard-teacher.h5"
    with ShardReader(good, mode="teacher", require=("atom_x", "counts")) as r:
        assert r.mode == "teacher" and len(r) == 5
    path = tmp_path / "t.h5"
    shutil.copy(good, path)
    with pytest.raises(FormatError, match="shard mode is 'teacher', expected 'student'") as e:
        ShardReader(path, mode="student")
    assert e.value.file == str(path)
    with pytest.raises(FormatError, match=r"missing datasets \['morgan_counts'\]"):
        ShardReader(path, require=("counts", "morgan_counts"))
    with h5py.File(path, "r+") as f:  # not left open by the refusals above
        f.attrs["mode"] = "graph"
        with pytest.raises(FormatError, match="unknown shard mode 'graph'"):
            check_shard(f, path)


@pytest.mark.parametrize("mode", MODES)
def test_the_writer_creates_the_layout(tmp_path: Path, mode: str) -> None:
    """``layout.stored_datasets`` is what a written shard holds: names in creation order,
    dtypes, one row's shape, chunking, gzip level 1."""
    path = write(tmp_path / "w.h5", mode, [make_block(mode, 0, 20)])
    layout = stored_datasets(mode)
    with h5py.File(path, "r") as f:
        assert list(f) == list(layout)
        for name, s in layout.items():
            ds = f[name]
            assert (ds.chunks, ds.compression, ds.compression_opts) == (
                (s.chunk, *s.shape), "gzip", 1), name
            assert ds.shape[1:] == s.shape and ds.dtype == s.dtype, name
            if s.kind == "ptr":
                assert ds.shape[0] == 21
            elif s.kind != "ragged":
                assert ds.shape[0] == 20
