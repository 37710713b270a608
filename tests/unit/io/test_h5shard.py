"""HDF5 shards: write -> read -> equal, random access, split + merge, interrupted writes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import orjson
import pytest

from neimsctl.chem.featurize_run import run_settings
from neimsctl.chem.rowbuild import Item, RowBuilder, RowOptions
from neimsctl.errors import FormatError
from neimsctl.io.featblock import concat_blocks, take_rows
from neimsctl.io.featsource import list_features, merge_shards
from neimsctl.io.h5shard import SCHEMA, ShardReader, ShardWriter

SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "C1CCCCC1", "CCN(CC)CC", "Clc1ccc(Cl)cc1", "CCCCCCCCCC",
          "O=C1CCCCC1", "c1ccc2ccccc2c1", "CC(C)(C)O", "CCOC(=O)C", "N#Cc1ccccc1", "CCS", "CCBr"]


def make_block(mode: str, start: int = 0, n: int = len(SMILES)) -> dict[str, np.ndarray]:
    items = []
    for i in range(start, start + n):
        rec = {"id": f"r{i}", "name": f"mol {i}", "smiles": SMILES[i % len(SMILES)],
               "comments": {"ionization_energy": "70 eV" if i % 3 else "unspecified"},
               "mz": [15.0, 29.0 + i % 5, 45.5] if i % 4 else [],
               "intensity": [100.0, 999.0, 0.5] if i % 4 else []}
        items.append(Item(i, "t.jsonl", i + 1, "jsonl", orjson.dumps(rec)))
    block, rejects = RowBuilder(RowOptions(mode=mode, min_mw=0, inchikey=False)).build(items)
    assert not rejects
    return block


def assert_blocks_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


def write(path: Path, mode: str, blocks: list[dict[str, np.ndarray]], **attrs: object) -> Path:
    settings, digest = run_settings(RowOptions(mode=mode))
    with ShardWriter(path, mode, settings, digest, attrs) as w:
        for b in blocks:
            w.append(b)
    return path


@pytest.mark.parametrize("mode", ["student", "teacher"])
def test_write_read_round_trip(tmp_path: Path, mode: str) -> None:
    blocks = [make_block(mode, 0, 9), make_block(mode, 9, 30)]
    path = write(tmp_path / "a.h5", mode, blocks, shard=None, argv="x")
    whole = concat_blocks(blocks, mode)
    with ShardReader(path) as r:
        assert (r.mode, len(r), r.attrs["schema"], r.attrs["argv"]) == (mode, 39, SCHEMA, "x")
        assert "shard" not in r.attrs
        assert r.settings == json.loads(json.dumps(run_settings(RowOptions(mode=mode))[0]))
        assert_blocks_equal(r.rows(0, 39), whole)
        idx = [38, 0, 5, 5, 17]
        assert_blocks_equal(r.take(idx), take_rows(whole, idx, mode))
        assert r.take([3], columns=["mw"])["mw"].tolist() == [whole["mw"][3]]
        assert r.column("id").tolist() == [f"r{i}" for i in range(39)]
        with pytest.raises(IndexError):
            r.take([39])
    f = __import__("h5py").File(path, "r")
    assert f["ecfp"].chunks == (64, 512) and f["ecfp"].compression == "gzip"
    assert f["spectrum"].dtype == np.float16 and f["has_spectrum"].dtype == bool
    if mode == "teacher":
        assert f["atom_ptr"].shape == (40,) and f["atom_ptr"][-1] == f["atom_x"].shape[0]


def test_spectrum_and_metadata_values(tmp_path: Path) -> None:
    path = write(tmp_path / "s.h5", "student", [make_block("student", 0, 4)])
    with ShardReader(path) as r:
        b = r.rows(0, 4)
    assert b["has_spectrum"].tolist() == [False, True, True, True]
    assert not b["spectrum"][0].any() and b["spectrum"][1].max() == 1.0
    assert b["spectrum"][1][15] == pytest.approx(100 / 999, rel=1e-3) and b["spectrum"][1][46] == 0
    assert np.isnan(b["ionization_energy"][0]) and b["ionization_energy"][1] == 70.0
    assert b["mw"].tolist() == [46, 78, 60, 84]


def test_interrupted_write_leaves_no_final_file(tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    settings, digest = run_settings(RowOptions())
    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(out, "student", settings, digest) as w:
            w.append(make_block("student"))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_split_and_merge_equals_whole(tmp_path: Path) -> None:
    whole = make_block("teacher", 0, 40)
    parts = [tmp_path / f"p{k}.h5" for k in (1, 2, 3)]
    for k, p in enumerate(parts):
        sel = np.flatnonzero(whole["ordinal"] % 3 == k)
        write(p, "teacher", [take_rows(whole, sel, "teacher")], shard=f"{k + 1}/3")
    out = tmp_path / "m.h5"
    assert merge_shards(list(reversed(parts)), out, size=5) == 40
    with ShardReader(out) as r:
        assert_blocks_equal(r.rows(0, 40), whole)
    infos = list_features(parts)
    assert [i.rows for i in infos] == [14, 13, 13] and infos[0].shard == "1/3"


def test_merge_concatenates_non_shard_sets_and_refuses_mismatch(tmp_path: Path) -> None:
    a = write(tmp_path / "a.h5", "student", [make_block("student", 0, 5)])
    b = write(tmp_path / "b.h5", "student", [make_block("student", 5, 5)])
    assert merge_shards([b, a], tmp_path / "ba.h5") == 10
    with ShardReader(tmp_path / "ba.h5") as r:
        assert r.column("ordinal").tolist() == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]
    t = write(tmp_path / "t.h5", "teacher", [make_block("teacher", 0, 3)])
    with pytest.raises(FormatError, match="refusing"):
        merge_shards([a, t], tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()


def test_merge_warns_of_an_incomplete_shard_set_and_survives_a_foreign_tag(tmp_path: Path) -> None:
    whole = make_block("student", 0, 12)
    parts = []
    for k in range(3):
        sel = np.flatnonzero(whole["ordinal"] % 3 == k)
        parts.append(write(tmp_path / f"p{k + 1}.h5", "student", [take_rows(whole, sel, "student")],
                           shard=f"{k + 1}/3"))
    said: list[str] = []
    assert merge_shards([parts[2], parts[0]], tmp_path / "gap.h5", warn=said.append) == 8
    assert len(said) == 1 and "2/3 missing" in said[0] and "concatenated" in said[0]
    said.clear()
    assert merge_shards([parts[0], *parts], tmp_path / "twice.h5", warn=said.append) == 16
    assert len(said) == 1 and "1/3 given more than once" in said[0]
    said.clear()
    assert merge_shards(parts, tmp_path / "set.h5", warn=said.append) == 12 and said == []
    # a shard attribute no featurize writes was a ValueError traceback; now: not a set
    odd = write(tmp_path / "odd.h5", "student", [make_block("student", 0, 3)], shard="a/3")
    assert merge_shards([odd, parts[1]], tmp_path / "odd_m.h5", warn=said.append) == 7
    assert said == []


def test_reader_rejects_foreign_hdf5(tmp_path: Path) -> None:
    import h5py

    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.attrs["schema"] = "other"
    with pytest.raises(FormatError, match="not a neimsctl.h5shard/1"):
        ShardReader(tmp_path / "f.h5")


@pytest.mark.parametrize("mode", ["student", "teacher"])
def test_buffered_writes_cross_flush_and_chunk_boundaries(tmp_path: Path, mode: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of odd sizes around a (small) flush size: rows, CSR offsets and n_rows exact."""
    from neimsctl.io.h5shard import write as shard_write

    monkeypatch.setattr(shard_write, "FLUSH_ROWS", 128)
    sizes = [70, 1, 63, 100, 5, 64]
    blocks, start = [], 0
    for n in sizes:
        blocks.append(make_block(mode, start, n))
        start += n
    settings, digest = run_settings(RowOptions(mode=mode))
    with ShardWriter(tmp_path / "b.h5", mode, settings, digest) as w:
        for k, b in enumerate(blocks):
            w.append(b)
            assert w.n_rows == sum(sizes[:k + 1])
    with ShardReader(tmp_path / "b.h5") as r:
        assert len(r) == start
        assert_blocks_equal(r.rows(0, start), concat_blocks(blocks, mode))
        assert r.file["ecfp"].compression == "gzip"


@pytest.mark.parametrize("mode", ["student", "teacher"])
def test_resumable_writer_survives_a_crash_and_equals_one_run(tmp_path: Path, mode: str) -> None:
    from neimsctl.io.h5shard import ResumableShardWriter

    settings, digest = run_settings(RowOptions(mode=mode))
    blocks = [make_block(mode, 14 * k) for k in range(5)]
    w = ResumableShardWriter(tmp_path / "out.h5", mode, settings, digest, {"shard": "1/1"})
    for k, b in enumerate(blocks[:3]):
        w.append(b)
        if k < 2:
            w.commit({"next_ordinal": 14 * (k + 1)})
    # killed mid-segment: an unfinished temporary file, block 2 never committed
    w.abort()  # (this process lives on: let go of the open segment)
    (tmp_path / "out.h5.partial" / ".seg-000002.h5.part-999").write_bytes(b"half")
    assert not (tmp_path / "out.h5").exists()

    fresh = ResumableShardWriter(tmp_path / "other.h5", mode, settings, digest, resume=True)
    assert fresh.resume_state is None  # nothing to resume: starts afresh
    with pytest.raises(FormatError, match="another run"):
        ResumableShardWriter(tmp_path / "out.h5", "v1", *run_settings(RowOptions(mode="v1")),
                             resume=True)
    r = ResumableShardWriter(tmp_path / "out.h5", mode, settings, digest, {"shard": "1/1"},
                             resume=True)
    assert r.resume_state == {"next_ordinal": 28, "n_rows": 28} and r.n_rows == 28
    with r:
        for b in blocks[2:]:
            r.append(b)
    assert not (tmp_path / "out.h5.partial").exists()
    ref = write(tmp_path / "ref.h5", mode, blocks)
    with ShardReader(tmp_path / "out.h5") as a, ShardReader(ref) as b:
        assert len(a) == len(b) == 70 and a.attrs["shard"] == "1/1"
        assert "resume_state" not in a.attrs
        assert_blocks_equal(a.rows(0, 70), b.rows(0, 70))


def test_a_second_writer_of_the_same_output_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    import os

    from neimsctl.errors import OutputBusy
    from neimsctl.io.h5shard import ResumableShardWriter

    settings, digest = run_settings(RowOptions(mode="student"))
    out = tmp_path / "out.h5"
    w = ResumableShardWriter(out, "student", settings, digest)
    w.append(make_block("student"))
    w.commit({"next_ordinal": 14})

    def listing() -> dict[str, int]:
        return {p.name: p.stat().st_size for p in (tmp_path / "out.h5.partial").iterdir()}

    before = listing()
    for resume in (False, True):   # a fresh run would have emptied the directory
        with pytest.raises(OutputBusy, match="another run is writing this output"):
            ResumableShardWriter(out, "student", settings, digest, resume=resume)
        assert listing() == before
    with w:
        w.append(make_block("student", 14))
    with ShardReader(out) as r:
        assert len(r) == 28
    again = ResumableShardWriter(out, "student", settings, digest)   # the lock went with it
    again.abort()
    assert len(os.listdir(tmp_path / "out.h5.partial")) == 0


@pytest.mark.parametrize("mode", ["student", "teacher"])
def test_resumable_segments_join_by_chunk_copy_and_equal_one_run(tmp_path: Path, mode: str,
                                                                  monkeypatch) -> None:
    """Segments own their whole chunks and carry the tail to the next one (also across a
    resume); the join copies their chunks as stored and equals a one-shot write."""
    import h5py

    from neimsctl.io import h5shard
    from neimsctl.io.h5shard import ROW_CHUNK, ResumableShardWriter

    settings, digest = run_settings(RowOptions(mode=mode))
    sizes = [50, 150, 70, 64, 3, 90]
    starts = np.cumsum([0, *sizes])
    blocks = [make_block(mode, int(s), n) for s, n in zip(starts, sizes)]
    w = ResumableShardWriter(tmp_path / "out.h5", mode, settings, digest)
    for k, b in enumerate(blocks[:4]):
        w.append(b)
        w.commit({"next_ordinal": int(starts[k + 1])})
    owned = []
    for seg in sorted((tmp_path / "out.h5.partial").glob("seg-*.h5")):
        with h5py.File(seg, "r") as f:
            owned.append(int(f.attrs["aligned_rows"]))
            assert f["ecfp"].compression == "gzip"
    # 50 -> 0 owned (50 carried); 50+150 -> 192 (8); 8+70 -> 64 (14); 14+64 -> 64 (14)
    assert owned == [0, 192, 64, 64] and all(o % ROW_CHUNK == 0 for o in owned)
    w.abort()  # killed after the 4th commit: its 14-row tail lives in the last segment only

    copied = []
    real = h5shard.ShardWriter.append_shard_rows

    def spy(self, src, n):  # type: ignore[no-untyped-def]
        copied.append((self.n_rows, n))
        return real(self, src, n)

    monkeypatch.setattr(h5shard.ShardWriter, "append_shard_rows", spy)
    r = ResumableShardWriter(tmp_path / "out.h5", mode, settings, digest, resume=True)
    assert r.resume_state == {"next_ordinal": 334, "n_rows": 334} and r.n_rows == 334
    with r:
        for b in blocks[4:]:
            r.append(b)
    # every copy starts on a chunk; the last one is the open segment: the 14 carried + 93 new
    assert copied == [(0, 0), (0, 192), (192, 64), (256, 64), (320, 107)]
    ref = write(tmp_path / "ref.h5", mode, blocks)
    total = int(starts[-1])
    with ShardReader(tmp_path / "out.h5") as a, ShardReader(ref) as b:
        assert len(a) == len(b) == total
        assert_blocks_equal(a.rows(0, total), b.rows(0, total))
        assert a.file["ecfp"].compression == "gzip" and "resume_state" not in a.attrs
        rows = [5, 200, 383, 0, 255, 256, total - 1]
        assert_blocks_equal(a.take(rows), b.take(rows))


def test_chunk_copy_falls_back_to_values_off_the_chunk_grid(tmp_path: Path) -> None:
    settings, digest = run_settings(RowOptions(mode="student"))
    src = write(tmp_path / "src.h5", "student", [make_block("student", 0, 70)])
    with ShardWriter(tmp_path / "dst.h5", "student", settings, digest) as w:
        w.append(make_block("student", 100, 5))  # buffered, 5 rows: off the grid
        with ShardReader(src) as r:
            w.append_shard_rows(r, 70)
    ref = write(tmp_path / "ref.h5", "student", [make_block("student", 100, 5),
                                                  make_block("student", 0, 70)])
    with ShardReader(tmp_path / "dst.h5") as a, ShardReader(ref) as b:
        assert_blocks_equal(a.rows(0, 75), b.rows(0, 75))


@pytest.mark.parametrize("lib", ["default", "zlib"])
def test_chunks_deflated_here_read_back_through_hdf5s_gzip_filter(
        tmp_path: Path, lib: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wide columns are deflated by the writer (ISA-L, or zlib without it) and stored as raw
    chunks: HDF5's own filter inflates them, the last chunk's padding is never seen, and the
    file equals one whose chunks HDF5 compressed itself."""
    import zlib

    import h5py

    from neimsctl.io.h5shard import codec

    if lib == "zlib":
        monkeypatch.setattr(codec, "DEFLATE", zlib)
    blocks = [make_block("student", 0, 64), make_block("student", 64, 37)]  # 101 rows
    path = write(tmp_path / "d.h5", "student", blocks)
    whole = concat_blocks(blocks, "student")
    with h5py.File(path, "r") as f:
        ds = f["counts"]
        assert (ds.shape, ds.chunks, ds.compression) == ((101, 2048), (64, 2048), "gzip")
        assert np.array_equal(ds[:], whole["counts"]) and np.array_equal(ds[100], whole["counts"][100])
        mask, raw = ds.id.read_direct_chunk((64, 0))
        assert mask == 0 and len(raw) < 64 * 2048
        chunk = np.frombuffer(zlib.decompress(raw), np.uint8).reshape(64, 2048)
        assert np.array_equal(chunk[:37], whole["counts"][64:]) and not chunk[37:].any()
        # the same rows written through h5py (HDF5 compressing) read back identically
        g = h5py.File(tmp_path / "ref.h5", "w")
        ref = g.create_dataset("counts", data=whole["counts"], chunks=(64, 2048), compression="gzip",
                               compression_opts=1)
        assert np.array_equal(ref[:], ds[:])
        g.close()


def test_resumable_output_without_a_commit_is_the_open_segment_renamed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run shorter than one commit interval: nothing is copied, and the file is exactly
    a one-shot write with the final attributes (no resume state)."""
    from neimsctl.io import h5shard
    from neimsctl.io.h5shard import ResumableShardWriter

    monkeypatch.setattr(h5shard.ShardWriter, "append_shard_rows",
                        lambda *a: pytest.fail("copied rows"))
    settings, digest = run_settings(RowOptions(mode="student"))
    blocks = [make_block("student", 0, 70), make_block("student", 70, 9)]
    with ResumableShardWriter(tmp_path / "out.h5", "student", settings, digest,
                              {"shard": "2/3"}) as w:
        for b in blocks:
            w.append(b)
        assert w.n_rows == 79
    assert not (tmp_path / "out.h5.partial").exists()
    ref = write(tmp_path / "ref.h5", "student", blocks, shard="2/3")
    with ShardReader(tmp_path / "out.h5") as a, ShardReader(ref) as b:
        assert dict(a.attrs) == dict(b.attrs)
        assert_blocks_equal(a.rows(0, 79), b.rows(0, 79))


@pytest.mark.parametrize("stop_at", ["join", "rename", "cleanup"])
def test_a_run_stopped_while_finishing_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       stop_at: str) -> None:
    """Stopped inside close(): while the last segment is joined (it carries no resume state),
    after the output was renamed into place, or while the segments are removed. A resume
    equals one run; it never takes up what is left of a partial output being removed (it
    joined the surviving segments over the finished output: rows lost, counted as written)."""
    import shutil

    from neimsctl.io.h5shard import ResumableShardWriter
    from neimsctl.io.h5shard import resume as resume_mod

    settings, digest = run_settings(RowOptions(mode="student"))
    sizes = [70, 90, 30]
    starts = np.cumsum([0, *sizes])
    blocks = [make_block("student", int(s), n) for s, n in zip(starts, sizes)]
    out, part = tmp_path / "out.h5", tmp_path / "out.h5.partial"
    w = ResumableShardWriter(out, "student", settings, digest)
    for k, b in enumerate(blocks[:2]):
        w.append(b)
        w.commit({"next_ordinal": int(starts[k + 1])})
    w.append(blocks[2])

    class Stop(BaseException):
        pass

    def stop(*a, **k):  # type: ignore[no-untyped-def]
        raise Stop

    real_replace, real_rmtree = os.replace, shutil.rmtree
    if stop_at == "join":
        monkeypatch.setattr(ResumableShardWriter, "_join", stop)
    elif stop_at == "rename":
        monkeypatch.setattr(resume_mod.os, "replace",
                            lambda a, b: stop() if Path(a).parent != Path(b).parent
                            else real_replace(a, b))
    else:
        def half(path, *a, **k):  # type: ignore[no-untyped-def]
            (Path(path) / "seg-000000.h5").unlink()          # got this far, then stopped
            raise Stop
        monkeypatch.setattr(resume_mod.shutil, "rmtree", half)
    with pytest.raises(Stop):
        w.close()
    w.abort()
    monkeypatch.setattr(resume_mod.os, "replace", real_replace)
    monkeypatch.setattr(resume_mod.shutil, "rmtree", real_rmtree)
    monkeypatch.undo()
    assert out.exists() == (stop_at == "cleanup") and part.exists() == (stop_at != "cleanup")

    r = ResumableShardWriter(out, "student", settings, digest, resume=True)
    if stop_at == "cleanup":
        assert r.resume_state is None           # nothing to resume: starts afresh
        r.abort()
        with ShardReader(out) as a:
            assert len(a) == int(starts[-1])      # the finished output stays
        return
    assert r.resume_state == {"next_ordinal": 160, "n_rows": 160}
    with r:
        r.append(blocks[2])
    ref = write(tmp_path / "ref.h5", "student", blocks)
    with ShardReader(out) as a, ShardReader(ref) as b:
        assert len(a) == len(b) == 190
        assert_blocks_equal(a.rows(0, 190), b.rows(0, 190))
    assert sorted(q.name for q in tmp_path.iterdir() if "partial" in q.name) == []


def test_resume_refuses_missing_segments(tmp_path: Path) -> None:
    from neimsctl.io.h5shard import ResumableShardWriter

    settings, digest = run_settings(RowOptions(mode="student"))
    out = tmp_path / "out.h5"
    w = ResumableShardWriter(out, "student", settings, digest)
    for k in range(3):
        w.append(make_block("student", 70 * k, 70))
        w.commit({"next_ordinal": 70 * (k + 1)})
    w.abort()
    (tmp_path / "out.h5.partial" / "seg-000000.h5").unlink()
    with pytest.raises(FormatError, match="segments are missing .*run again without --resume"):
        ResumableShardWriter(out, "student", settings, digest, resume=True)
    assert not out.exists()


def test_a_full_disk_is_found_before_hdf5_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HDF5 must never find the disk full (a string column's failed write freed its buffers
    twice; closing a file whose writes failed crashed the process): the writer checks the
    room before each write and fails as an output error, its temporary file removed."""
    from types import SimpleNamespace

    from neimsctl.errors import OutputError
    from neimsctl.io.h5shard import ResumableShardWriter
    from neimsctl.io import streams

    free = {"bytes": 1 << 40}
    monkeypatch.setattr(streams.os, "statvfs", lambda path: SimpleNamespace(
        f_bfree=free["bytes"] // 4096, f_bavail=free["bytes"] // 4096, f_frsize=4096))
    settings, digest = run_settings(RowOptions(mode="teacher"))
    out = tmp_path / "out.h5"
    w = ResumableShardWriter(out, "teacher", settings, digest)
    w.append(make_block("teacher", 0, 70))
    w.commit({"next_ordinal": 70})
    free["bytes"] = streams.ROOM_BYTES + 1000                  # the disk fills up
    with pytest.raises(OutputError, match=rf"^{re.escape(str(out))}: cannot write: No space left"):
        with w:
            w.append(make_block("teacher", 70, 2000))            # a flush of 1,024 rows
    part = tmp_path / "out.h5.partial"
    assert sorted(q.name for q in part.iterdir()) == ["seg-000000.h5"]   # kept for --resume
    assert not out.exists()
    with pytest.raises(OutputError, match="ref.h5: cannot write: No space left"):
        write(tmp_path / "ref.h5", "teacher", [make_block("teacher", 0, 70)])
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out.h5.partial"]


def test_a_shard_that_cannot_be_created_names_the_output(tmp_path: Path) -> None:
    """shards merge -o nodir/m.h5 (or onto a read-only file system) printed HDF5's message
    naming the temporary nodir/.m.h5.part-PID, flags and o_flags."""
    from neimsctl.errors import OutputError

    out = tmp_path / "nodir" / "m.h5"
    with pytest.raises(OutputError) as info:
        write(out, "student", [make_block("student")])
    assert str(info.value) == f"{out}: cannot write: No such file or directory (no directory {out.parent})"


def _chunk_rows(r: ShardReader, name: str, row: int) -> np.ndarray:
    from neimsctl.io.h5shard.codec import chunk_reader

    read = chunk_reader(r.file[name])
    assert read is not None
    return read(row - row % 64)


def test_take_inflates_chunks_itself_and_reads_what_hdf5_wrote(tmp_path: Path) -> None:
    """take() reads wide gzip chunks as stored and inflates them: chunks that HDF5 deflated
    (level 4, as older neimsctl wrote), a chunk stored with the deflate filter skipped
    (filter mask 1), and a partial last chunk all read back exactly."""
    import h5py

    blocks = [make_block("student", 0, 100)]
    path = write(tmp_path / "t.h5", "student", blocks)
    whole = blocks[0]
    with h5py.File(path, "r+") as f:
        del f["counts"]
        f.create_dataset("counts", data=whole["counts"], maxshape=(None, 2048), chunks=(64, 2048),
                         compression="gzip", compression_opts=4)
        f["ecfp"].id.write_direct_chunk((0, 0), np.ascontiguousarray(whole["ecfp"][:64]).tobytes(),
                                        filter_mask=1)
        del f["spectrum"]  # chunks that are not whole rows (as h5repack can make): via h5py
        f.create_dataset("spectrum", data=whole["spectrum"], maxshape=(None, 501), chunks=(16, 100),
                         compression="gzip", compression_opts=1)
    idx = [99, 3, 64, 3, 0, 63]
    with ShardReader(path) as r:
        got = r.take(idx, ["counts", "ecfp", "spectrum", "smiles"])
        for k in ("counts", "ecfp", "spectrum", "smiles"):
            assert np.array_equal(got[k], whole[k][idx]), k
        assert got["smiles"].dtype == object and isinstance(got["smiles"][0], str)
        assert np.array_equal(r.rows(10, 90)["spectrum"], whole["spectrum"][10:90])
    with h5py.File(path, "r+") as f:  # a chunk never written reads as HDF5's fill value
        f["counts"].resize(192, axis=0)
    with ShardReader(path) as r:
        assert not r.file["counts"].id.get_chunk_info_by_coord((128, 0)).size
        assert not _chunk_rows(r, "counts", 130).any()


@pytest.mark.parametrize("mode", ["student", "teacher"])
def test_rows_read_by_chunk_across_boundaries(tmp_path: Path, mode: str) -> None:
    """rows(start, stop) inflates whole chunks and cuts them: any window equals the block's."""
    blocks = [make_block(mode, 0, 150)]
    path = write(tmp_path / "w.h5", mode, blocks)
    whole = blocks[0]
    with ShardReader(path) as r:
        for start, stop in [(0, 150), (0, 64), (63, 65), (64, 128), (5, 149), (130, 150),
                            (149, 150), (70, 70), (140, 999)]:
            assert_blocks_equal(r.rows(start, stop),
                                take_rows(whole, np.arange(start, min(stop, 150)), mode))


def test_a_worker_forked_while_a_shard_is_written_does_not_lock_it(tmp_path: Path) -> None:
    """A process forked while a shard is open (a worker pool re-created after a worker died)
    inherits its file descriptor; with an HDF5 file lock held through it, the finished shard
    could not be opened again while that process lived ("unable to lock file", errno 11: a
    `featurize -j 2` run of more than 16,384 records failed and lost its progress)."""
    import os
    import signal
    import time

    import h5py

    settings, digest = run_settings(RowOptions(mode="student", min_mw=0, inchikey=False))
    path = tmp_path / "s.h5"
    w = ShardWriter(path, "student", settings, digest)
    w.append(make_block("student"))
    pid = os.fork()
    if pid == 0:                                # the "worker": holds the inherited descriptor
        time.sleep(30)
        os._exit(0)
    try:
        w.close()
        with h5py.File(path, "r") as f:         # default locking, as the join opens segments
            assert f.attrs["n_rows"] == len(SMILES)
        assert len(ShardReader(path)) == len(SMILES)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_damaged_tables_are_named_not_tracebacks(tmp_path: Path) -> None:
    """Tables that contradict the shard's layout (a column cut short or of another width, offsets
    that do not grow, edges naming atoms a molecule lacks) are one FormatError naming the file;
    they failed with an IndexError or ValueError deep in a model before (softlabel, finetune),
    or were read in part without a word (index read 5 rows of a 20-row shard)."""
    from _h5damage import damaged_copy

    from neimsctl.data.dataset import TeacherDataset

    good = write(tmp_path / "good.h5", "teacher", [make_block("teacher")])

    def damaged(name: str, harm) -> Path:
        return damaged_copy(good, tmp_path / f"{name}.h5", harm)

    def short_spectrum(f):
        del f["spectrum"]
        f["spectrum"] = np.zeros((5, 501), np.float16)

    def wide_atoms(f):
        a = f["atom_x"][:]
        del f["atom_x"]
        f["atom_x"] = np.concatenate([a, a[:, :4]], 1)

    def lying_rows(f):
        f.attrs["n_rows"] = np.int64(10**12)

    for name, harm, what in (("short", short_spectrum, "dataset 'spectrum' has shape (5, 501)"),
                             ("wide", wide_atoms, "dataset 'atom_x' has rows of shape"),
                             ("lie", lying_rows, "dataset 'id' has shape")):
        with pytest.raises(FormatError, match=re.escape(what)) as err:
            ShardReader(damaged(name, harm))
        assert err.value.file == str(tmp_path / f"{name}.h5")

    def backwards(f):
        p = f["atom_ptr"][:]
        p[5] = 10**9
        f["atom_ptr"][:] = p

    with pytest.raises(FormatError, match="offsets 'atom_ptr' do not start at 0 and grow"):
        TeacherDataset(damaged("ptr", backwards), require_spectrum=False).get_batch(np.arange(4))

    def far_edges(f):
        e = f["edge_index"][:]
        e[0] = [100000, -5]
        f["edge_index"][:] = e

    bad = damaged("edges", far_edges)
    with pytest.raises(FormatError, match="the edges of record 'r0' name atoms") as err:
        TeacherDataset(bad, require_spectrum=False).get_batch(np.arange(4))
    assert err.value.file == str(bad)
    assert TeacherDataset(good, require_spectrum=False).get_batch(np.arange(4)) is not None
