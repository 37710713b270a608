#!/usr/bin/env python3
"""Memory benchmark of the lazy shard datasets (issue 3, "Performance: Memory").

Featurizes the DEV data (../shared/data/massbank_ei.msp) once into a student (or teacher) shard,
replicates its rows into shards of each requested size (default 13,000 and 300,000 rows), then
for each size runs ``neimsctl.data.membench.benchmark`` in a fresh Python process:

- dataset RSS: RSS after building the lazy dataset minus RSS after the imports (goal <= 100 MB
  at 300k rows);
- epoch peak: peak RSS over one full shuffled epoch in batches of 32, minus the same baseline
  (goal: flat in dataset size, 13k vs 300k within 10%);
- random access: median microseconds to read a random batch of 32 rows.

    python tools/bench/bench_memory.py                       # 13k and 300k rows (lead's run)
    python tools/bench/bench_memory.py --sizes 2000,13000 --epoch-rows 2000   # quick sanity run

``--epoch-rows N`` caps the rows iterated per size (the full epoch of 300k rows takes minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from neimsctl.data.membench import build_sample_shard, replicate_shard  # noqa: E402

DEV = Path(os.environ.get("NEIMSCTL_SHARED_DATA", ROOT.parent / "shared" / "data")) / "massbank_ei.msp"


def child(shard: Path, n: int, iter_rows: int, model: str, batch: int) -> dict:
    """membench.benchmark in a fresh process: dataset over ``n`` rows, iterate ``iter_rows``."""
    spec = {"shards": [str(shard)], "samples": n, "batch_size": batch, "model": model, "reads": 200,
            "iter_rows": iter_rows}
    proc = subprocess.run([sys.executable, "-m", "neimsctl.data.membench", json.dumps(spec)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="13000,300000", help="comma-separated shard sizes (rows)")
    ap.add_argument("--epoch-rows", type=int, default=0, help="cap rows iterated per size (0: all)")
    ap.add_argument("--model", default="student", choices=["student", "teacher"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--msp", type=Path, default=DEV, help="source MSP (SMILES inline)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the shards go (temporary)")
    ap.add_argument("--json", type=Path, default=None, help="also write results as JSON here")
    a = ap.parse_args()
    if not a.msp.is_file():
        sys.exit(f"bench_memory: {a.msp} not found (set NEIMSCTL_SHARED_DATA or --msp)")
    sizes = [int(s) for s in a.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        t = time.perf_counter()
        base = build_sample_shard(Path(tmp) / "base.h5", mode=a.model, msp=a.msp)
        print(f"# featurized {a.msp.name} -> {base.stat().st_size / 2**20:.1f} MiB shard "
              f"in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for n in sizes:
            t = time.perf_counter()
            shard = replicate_shard(base, Path(tmp) / f"rep{n}.h5", n)
            made = time.perf_counter() - t
            rows = min(n, a.epoch_rows) if a.epoch_rows else n
            r = child(shard, n, rows, a.model, a.batch_size)
            r.update(shard_rows=n, shard_mib=shard.stat().st_size / 2**20, replicate_s=made)
            results.append(r)
            shard.unlink()
    print("rows\titerated\tshard_MiB\trss_start_MiB\tdataset_MiB\tmetadata_MiB\tepoch_peak_MiB\t"
          "iter_only_MiB\tpeak_rss_MiB\titer_s\tbatch32_us")
    for r in results:
        print(f"{r['shard_rows']}\t{r['iterated']}\t{r['shard_mib']:.0f}\t{r['rss_start'] / 2**20:.1f}\t"
              f"{r['dataset_delta'] / 2**20:.1f}\t{r['metadata_bytes'] / 2**20:.1f}\t"
              f"{r['iter_delta'] / 2**20:.1f}\t{(r['rss_peak'] - r['rss_built']) / 2**20:.1f}\t"
              f"{r['rss_peak'] / 2**20:.1f}\t{r['iter_s']:.1f}\t{r['batch_us']:.0f}")
    if len(results) >= 2 and results[0]["iter_delta"] > 0:
        last, first = results[-1], results[0]
        print(f"# {last['shard_rows']} vs {first['shard_rows']} rows: peak RSS ratio "
              f"{last['rss_peak'] / first['rss_peak']:.3f}, peak-over-baseline ratio "
              f"{last['iter_delta'] / first['iter_delta']:.2f}")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
