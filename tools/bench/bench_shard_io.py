#!/usr/bin/env python3
"""Benchmark HDF5 shard writing and random reading, deflate by ISA-L vs zlib vs HDF5 itself.

The student rows of the DEV records (../shared/data/massbank_ei.msp via ``msp2jsonl``) and,
with ``--library N``, of N library-size records of new structures (``bench_msp2jsonl.scale_file``)
are featurized once into memory; then, in one run, alternately ``--repeat`` times:

- write (µs per row, wall): a plain :class:`ShardWriter` and the resumable writer that
  ``featurize -o FILE.h5`` uses (resume points every 16,384 and every 4,096 rows), with the
  wide columns' chunks deflated by ISA-L (``isal``, the default when installed) or by the
  standard library's ``zlib`` (the fallback; the same speed as HDF5's own gzip filter);
- read (µs per random batch of 32 rows of ``ecfp`` + ``counts`` + ``spectrum``, median of 200):
  chunks inflated by ISA-L or zlib in :class:`ShardReader`, or through h5py (HDF5's filter).

    python tools/bench/bench_shard_io.py [--library 30000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = Path(os.environ.get("NEIMSCTL_SHARED_DATA", ROOT.parent / "shared" / "data"))

from bench_featurize import finish, msp_to_jsonl  # noqa: E402
from bench_msp2jsonl import scale_file  # noqa: E402

from neimsctl.chem.featurize_run import FEATURIZE_FORMATS, run_featurize, run_settings  # noqa: E402
from neimsctl.io.inputs import iter_items  # noqa: E402
from neimsctl.chem.rowbuild import RowOptions  # noqa: E402
from neimsctl.io import h5shard  # noqa: E402
from neimsctl.io.h5shard import codec  # noqa: E402
from neimsctl.io.rejects import Tally  # noqa: E402


class ListSink:
    def __init__(self) -> None:
        self.blocks: list[dict[str, np.ndarray]] = []

    def append(self, block: dict[str, np.ndarray]) -> None:
        self.blocks.append(block)


def blocks_of(src: Path) -> list[dict[str, np.ndarray]]:
    sink = ListSink()
    run_featurize(iter_items([src], formats=FEATURIZE_FORMATS), sink, Tally(), opts=RowOptions(mode="student"), jobs=1)
    return sink.blocks


def write_us(blocks: list[dict[str, np.ndarray]], out: Path, commit_every: int | None) -> float:
    """µs per row to write ``blocks`` (``commit_every``: resumable, a resume point that often)."""
    settings, digest = run_settings(RowOptions(mode="student"))
    n = sum(len(b["ordinal"]) for b in blocks)
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    if commit_every is None:
        with h5shard.ShardWriter(out, "student", settings, digest) as w:
            for b in blocks:
                w.append(b)
    else:
        with h5shard.ResumableShardWriter(out, "student", settings, digest) as rw:
            done = since = 0
            for b in blocks:
                rw.append(b)
                done += len(b["ordinal"])
                since += len(b["ordinal"])
                if since >= commit_every:
                    rw.commit({"next_ordinal": done})
                    since = 0
    return (time.perf_counter() - t0) / n * 1e6


def read_us(path: Path, batches: int = 200) -> float:
    rng = np.random.default_rng(0)
    with h5shard.ShardReader(path) as r:
        r.take([0], ("ecfp", "counts", "spectrum"))
        times = []
        for _ in range(batches):
            idx = rng.choice(len(r), size=32, replace=False)
            t0 = time.perf_counter()
            r.take(idx, ("ecfp", "counts", "spectrum"))
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", type=int, default=30_000,
                    help="library-size records of new structures (0: DEV records only)")
    ap.add_argument("--repeat", type=int, default=3, help="alternating repeats; medians reported")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-shard-io-"))
    cases = [("DEV JSONL records", tmp / "dev.jsonl")]
    msp_to_jsonl(DATA / "massbank_ei.msp", cases[0][1])
    if args.library:
        scale_file(DATA / "massbank_ei.msp", DATA / "pretrain" / "moses_train_100k.smi",
                   args.library, tmp / "library.msp")
        cases.append((f"{args.library:,} library-size records", tmp / "library.jsonl"))
        msp_to_jsonl(tmp / "library.msp", cases[1][1])
    isal = codec.DEFLATE
    libs = {"ISA-L": isal, "zlib": zlib} if isal is not zlib else {"zlib": zlib}
    print(f"# {os.cpu_count()} CPUs, load average at start {os.getloadavg()}")
    print(f"# command: {' '.join(sys.argv)}; medians of {args.repeat} alternating repeats")
    print("| rows | deflate | plain writer µs/row | resumable, every 16,384 | resumable, every 4,096 "
          "| random 32-row batch µs |")
    print("|---|---|---|---|---|---|")
    real_reader = codec.chunk_reader
    for label, src in cases:
        blocks = blocks_of(src)
        n = sum(len(b["ordinal"]) for b in blocks)
        res: dict[str, list[list[float]]] = {k: [] for k in [*libs, "HDF5"]}
        for _ in range(args.repeat):
            for name, lib in libs.items():
                codec.DEFLATE = lib
                res[name].append([write_us(blocks, tmp / "p.h5", None),
                                  write_us(blocks, tmp / "r16.h5", 16_384),
                                  write_us(blocks, tmp / "r4.h5", 4_096),
                                  read_us(tmp / "p.h5")])
            codec.DEFLATE = isal
            codec.chunk_reader = lambda ds: None  # every chunk through h5py
            try:
                res["HDF5"].append([float("nan")] * 3 + [read_us(tmp / "p.h5")])
            finally:
                codec.chunk_reader = real_reader
        for name, runs in res.items():
            m = [statistics.median(col) for col in zip(*runs)]
            cells = " | ".join("–" if np.isnan(v) else f"{v:.1f}" for v in m[:3])
            what = "h5py (HDF5's gzip filter) for reading" if name == "HDF5" else name
            print(f"| {label} ({n:,}) | {what} | {cells} | {m[3]:.0f} |", flush=True)
    finish(tmp)


if __name__ == "__main__":
    main()
