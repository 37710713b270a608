"""membench's benchmark shard: replicated rows, and a signal honoured while it is written."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from neimsctl import interrupts
from neimsctl.data.membench import build_sample_shard, replicate_shard
from neimsctl.io.h5shard import ShardReader


def test_replicated_rows_repeat_the_source(tmp_path: Path) -> None:
    base = build_sample_shard(tmp_path / "base.h5", mode="student", limit=7)
    out = replicate_shard(base, tmp_path / "big.h5", 200, block=16)
    with ShardReader(base) as a, ShardReader(out) as b:
        assert len(b) == 200
        rows = np.arange(200) % len(a)
        assert np.array_equal(b.take(np.arange(200), ["spectrum"])["spectrum"],
                              a.take(rows, ["spectrum"])["spectrum"])
        ids = b.column("id")
        assert ids[0] == a.column("id")[0] and ids[len(a)] == f"{a.column('id')[0]}~1"


def test_a_signal_stops_the_copy_and_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM while a large benchmark shard was written: the KeyboardInterrupt was raised
    inside h5py's callbacks and swallowed, the copy ran on for minutes (28.8 GB written in
    /tmp after a `timeout 90`). The copy now checks between blocks and removes its file."""
    base = build_sample_shard(tmp_path / "base.h5", mode="student", limit=5)
    interrupts.install(signal.SIGINT)
    try:
        interrupts._PENDING = signal.SIGTERM          # as if the handler's raise was swallowed
        with pytest.raises(KeyboardInterrupt):
            replicate_shard(base, tmp_path / "big.h5", 1000, block=10)
    finally:
        interrupts.install(signal.SIGINT)             # clears the mark
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.h5"]
