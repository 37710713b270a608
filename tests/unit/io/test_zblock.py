"""zblock streams: round trip, concatenation, truncation and bad magic are FormatErrors."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_h5shard import assert_blocks_equal, make_block  # noqa: E402

from neimsctl.chem.featurize_run import run_settings  # noqa: E402
from neimsctl.chem.rowbuild import RowOptions  # noqa: E402
from neimsctl.errors import FormatError  # noqa: E402
from neimsctl.io.featblock import concat_blocks  # noqa: E402
from neimsctl.io.zblock import ZBlockReader, ZBlockWriter  # noqa: E402


def stream(mode: str, blocks: list[dict[str, np.ndarray]], close: bool = True) -> bytes:
    settings, digest = run_settings(RowOptions(mode=mode))
    buf = io.BytesIO()
    w = ZBlockWriter(buf, mode, settings, digest, {"neimsctl_version": "t", "argv": None})
    for b in blocks:
        w.write(b)
    if close:
        w.close()
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["student", "teacher"])
def test_round_trip(mode: str) -> None:
    blocks = [make_block(mode, 0, 6), make_block(mode, 6, 11)]
    r = ZBlockReader(io.BytesIO(stream(mode, blocks)), "t.zst")
    assert r.header["schema"] == "neimsctl.zblock/1" and r.mode == mode
    assert r.header["neimsctl_version"] == "t" and "argv" not in r.header
    assert r.settings_hash == run_settings(RowOptions(mode=mode))[1]
    got = list(r)
    assert len(got) == 2
    assert_blocks_equal(concat_blocks(got, mode), concat_blocks(blocks, mode))


def test_concatenated_streams_read_as_one() -> None:
    a, b = make_block("student", 0, 3), make_block("student", 3, 4)
    data = stream("student", [a]) + stream("student", [b])
    got = list(ZBlockReader(io.BytesIO(data)))
    assert [len(g["id"]) for g in got] == [3, 4]


@pytest.mark.parametrize("cut", [5, 30, -40, -10])
def test_truncated_stream_is_a_format_error(cut: int) -> None:
    data = stream("student", [make_block("student", 0, 5)])
    with pytest.raises(FormatError, match="truncated|empty|cut short|no end"):
        list(ZBlockReader(io.BytesIO(data[:cut])))


def test_missing_end_frame_is_truncated() -> None:
    data = stream("student", [make_block("student", 0, 5)], close=False)
    r = ZBlockReader(io.BytesIO(data))
    with pytest.raises(FormatError, match="no end frame after 5 rows"):
        list(r)


def test_wrong_magic_and_version() -> None:
    data = bytearray(stream("student", [make_block("student", 0, 2)]))
    with pytest.raises(FormatError, match="bad magic"):
        ZBlockReader(io.BytesIO(b"XXXX" + bytes(data[4:])))
    data[4] = 9
    with pytest.raises(FormatError, match="version 9"):
        ZBlockReader(io.BytesIO(bytes(data)))
    # a file shorter than a frame header is a bad magic, not a "truncated stream", unless it
    # starts as a zblock stream does
    with pytest.raises(FormatError, match=r"bad magic b'hell' \(expected b'NZBK'\)"):
        ZBlockReader(io.BytesIO(b"hello\n"))
    with pytest.raises(FormatError, match="truncated stream: frame header cut short"):
        ZBlockReader(io.BytesIO(b"NZ"))


CONF = Path(__file__).resolve().parents[3] / "formats" / "conformance"


@pytest.mark.parametrize("mode", ["student", "teacher"])
def test_conformance_passed_streams_match_shards(mode: str) -> None:
    from neimsctl.io.h5shard import ShardReader

    with open(CONF / "passed" / f"zblock-{mode}.zst", "rb") as fh:
        r = ZBlockReader(fh)
        got = concat_blocks(list(r), mode)
    with ShardReader(CONF / "passed" / f"h5shard-{mode}.h5") as s:
        assert s.settings_hash == r.settings_hash and "created" not in s.attrs
        whole = s.rows(0, len(s))
    assert got["name"].tolist() == ["aspirin", "naphthalene", "tetrachloromethane", "acetone-d3",
                                    "betaine"]
    got.pop("n_atoms", None), got.pop("n_edges", None)
    for k in whole:
        if k in got:
            assert np.array_equal(got[k], whole[k], equal_nan=whole[k].dtype.kind == "f"), k


@pytest.mark.parametrize("name,message", [("zblock-truncated.zst", "truncated"),
                                          ("zblock-no-end.zst", "no end frame"),
                                          ("zblock-bad-magic.zst", "bad magic")])
def test_conformance_failed_streams(name: str, message: str) -> None:
    with open(CONF / "failed" / name, "rb") as fh, pytest.raises(FormatError, match=message):
        list(ZBlockReader(fh))


def test_conformance_failed_shard() -> None:
    from neimsctl.io.h5shard import ShardReader

    with pytest.raises(FormatError, match="not a neimsctl.h5shard/1"):
        ShardReader(CONF / "failed" / "h5shard-wrong-schema.h5")
