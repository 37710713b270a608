#!/usr/bin/env python3
"""Benchmark student featurization against the bare RDKit cost of the same fingerprints.

Measured in one run, on the same molecules:

- ``raw``: a bare loop ``MolFromSmiles`` + ECFP4 bits (``GetFingerprintAsNumPy``) + atom-pair
  counts 2048 (``GetCountFingerprintAsNumPy``): the floor any featurizer pays. Like with like:
  for JSONL records (which carry RDKit-canonical SMILES and InChIKey from msp2jsonl, reused by
  featurize) that is all; for plain SMILES input, where featurize must canonicalize the SMILES
  and (unless ``--no-inchikey``) compute the InChIKey for the compound split, the bare loop
  also calls ``MolToSmiles`` and ``MolToInchiKey``;
- ``rows-only``: the pipeline with ``--jobs 1`` but rows discarded (no HDF5 writing);
- ``featurize --jobs 1`` and ``--jobs 2`` through the library pipeline
  (``neimsctl.chem.featurize_run``: parsing, fingerprints, metadata, spectrum binning, HDF5
  writing with gzip), timed in-process so interpreter start-up is excluded;
- random access: median µs to read a batch of 32 random rows from the written shard.

Inputs: ../shared/data/massbank_ei.msp (JSONL records via ``neimsctl msp2jsonl`` when it works,
else a minimal MSP reader below), the first N SMILES of pretrain/moses_train_100k.smi, and
(``--library N``, 0 to skip) JSONL records of library size whose structures never repeat: the
DEV records in turn, each given the next MOSES molecule as its structure
(``bench_msp2jsonl.scale_file``, then ``msp2jsonl``). On the DEV records 20 % of the records
repeat a structure that featurize has already seen (its cache), and the whole job is ~1 s.

    python tools/bench/bench_featurize.py [--smiles 100000] [--library 30000] [--repeat 3]

Each case runs raw, --jobs 1 and --jobs 2 alternately ``--repeat`` times and reports medians.
The last column is the bare loop's own speed-up from a second (forked) process over the same
molecules: the ceiling of ``--jobs 2`` on this machine, before any reading, transfer or writing.
Per-core efficiency (``j1/raw``) is given from CPU time (user + sys of this process and its
reaped workers; meaningful on a loaded machine) and from wall time; the ``--jobs 2`` speed-up
needs an idle second core, so the load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = Path(os.environ.get("NEIMSCTL_SHARED_DATA", ROOT.parent / "shared" / "data"))

from neimsctl.chem.featurize_run import FEATURIZE_FORMATS, open_sink, run_featurize, run_settings  # noqa: E402
from neimsctl.io.inputs import iter_items  # noqa: E402
from neimsctl.chem.rowbuild import RowOptions  # noqa: E402
from neimsctl.io.h5shard import ShardReader  # noqa: E402
from neimsctl.io.rejects import Tally  # noqa: E402

from bench_msp2jsonl import scale_file, two_processes_wall  # noqa: E402


def msp_to_jsonl(msp: Path, out: Path) -> str:
    """JSONL records of ``msp``: via msp2jsonl if available, else a minimal reader."""
    try:
        with open(out, "wb") as fh:
            subprocess.run(["neimsctl", "msp2jsonl", str(msp)], stdout=fh, stderr=subprocess.DEVNULL,
                           check=False, timeout=600)
        if out.stat().st_size > 0:
            return "neimsctl msp2jsonl"
    except (OSError, subprocess.SubprocessError):
        pass
    with open(out, "wb") as fh:
        for block in msp.read_text(encoding="utf-8").split("\n\n"):
            rec: dict = {"mz": [], "intensity": []}
            for line in block.splitlines():
                if ":" in line and not line[:1].isdigit():
                    k, v = line.split(":", 1)
                    rec[k.strip().lower()] = v.strip()
                elif line.strip():
                    mz, it = line.split()[:2]
                    rec["mz"].append(float(mz))
                    rec["intensity"].append(float(it))
            if "smiles" in rec:
                rec["mw"] = int(rec["mw"])
                fh.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
    return "minimal reader (msp2jsonl unavailable)"


def smiles_of(path: Path) -> list[str]:
    out = []
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                rec = orjson.loads(line) if line.startswith(b"{") else None
                out.append(rec["smiles"] if rec else line.split()[0].decode())
    return out


def finish(tmp: Path) -> None:
    """End of a benchmark run: the load average (was the machine quiet?), the work dir removed."""
    print(f"# load average at end {os.getloadavg()}")
    shutil.rmtree(tmp)


def cpu_now() -> float:
    """CPU seconds (user + sys) of this process and of its reaped children."""
    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def raw_rate(smiles: list[str], canon: bool, inchikey: bool) -> tuple[float, float]:
    """(mol/s wall, mol/s CPU) of the bare RDKit loop: parse + the same two fingerprints
    (+ canonical SMILES and InChIKey when featurize computes them for this input)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator as G

    RDLogger.DisableLog("rdApp.*")
    ecfp = G.GetMorganGenerator(radius=2, fpSize=4096)
    pairs = G.GetAtomPairGenerator(fpSize=2048)
    c0, t0 = cpu_now(), time.perf_counter()
    for s in smiles:
        m = Chem.MolFromSmiles(s)
        if m is not None:
            ecfp.GetFingerprintAsNumPy(m)
            pairs.GetCountFingerprintAsNumPy(m)
            if canon:
                Chem.MolToSmiles(m)
            if inchikey:
                Chem.MolToInchiKey(m)
    return len(smiles) / (time.perf_counter() - t0), len(smiles) / (cpu_now() - c0)


def raw_two_speedup(smiles: list[str], canon: bool, inchikey: bool) -> float:
    """What a second process can give here: wall of the bare loop over all ``smiles`` in this
    process over the wall of the same loop with the SMILES split between two forked processes
    (no pool, no transfer of results: the machine's ceiling for ``--jobs 2``)."""
    t = time.perf_counter()
    raw_rate(smiles, canon, inchikey)
    return (time.perf_counter() - t) / two_processes_wall(raw_rate, smiles, canon, inchikey)


class NullSink:
    """Discards rows: isolates featurization from HDF5 writing."""

    def append(self, block: dict) -> None:
        pass


def pipeline_rate(src: Path, out: Path | None, jobs: int,
                  inchikey: bool) -> tuple[float, float, int]:
    """(records/s wall, records/s CPU, rows written) through the pipeline into an HDF5 shard
    at ``out`` (None: rows discarded). CPU includes the workers (reaped when the pool ends)."""
    opts = RowOptions(mode="student", inchikey=inchikey)
    settings, digest = run_settings(opts)
    tally = Tally()
    c0, t0 = cpu_now(), time.perf_counter()
    if out is None:
        run_featurize(iter_items([src], formats=FEATURIZE_FORMATS), NullSink(), tally, opts=opts, jobs=jobs)
    else:
        with open_sink(out, "h5", "student", settings, digest, resumable=True) as sink:  # as the CLI
            run_featurize(iter_items([src], formats=FEATURIZE_FORMATS), sink, tally, opts=opts, jobs=jobs,
                          commit=lambda n: sink.commit({"next_ordinal": n}))
    return tally.read / (time.perf_counter() - t0), tally.read / (cpu_now() - c0), tally.written


def random_read_us(path: Path, columns: tuple[str, ...] | None, batches: int = 200,
                   batch: int = 32) -> float:
    """Median µs to read ``batch`` random rows (``columns``; None = all, strings included)."""
    rng = np.random.default_rng(0)
    with ShardReader(path) as r:
        r.take([0])
        times = []
        for _ in range(batches):
            idx = rng.choice(len(r), size=batch, replace=False)
            t0 = time.perf_counter()
            r.take(idx, columns)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smiles", type=int, default=100_000, help="MOSES SMILES to use")
    ap.add_argument("--repeat", type=int, default=3, help="alternating repeats; median is reported")
    ap.add_argument("--library", type=int, default=30_000,
                    help="records of new structures with DEV peaks (0: skip that case)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-featurize-"))
    jsonl = tmp / "massbank.jsonl"
    how = msp_to_jsonl(DATA / "massbank_ei.msp", jsonl)
    library = tmp / "library.jsonl"
    if args.library:
        scale_file(DATA / "massbank_ei.msp", DATA / "pretrain" / "moses_train_100k.smi",
                   args.library, tmp / "library.msp")
        msp_to_jsonl(tmp / "library.msp", library)
        (tmp / "library.msp").unlink()
    smi = tmp / "moses.smi"
    with open(DATA / "pretrain" / "moses_train_100k.smi", "rb") as fi, open(smi, "wb") as fo:
        for i, line in enumerate(fi):
            if i >= args.smiles:
                break
            fo.write(line)
    print(f"# {os.cpu_count()} CPUs, load average at start {os.getloadavg()}; records via {how}")
    print(f"# command: {' '.join(sys.argv)}; medians of {args.repeat} alternating repeats")
    print("| input | n | raw mol/s wall | raw mol/s CPU | rows-only CPU | j1 wall | j1 CPU "
          "| j1/raw CPU | j1/raw wall | j2 wall | j2/j1 wall | j2/j1 CPU per rec "
          "| raw in 2 processes / raw |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    med = statistics.median
    cases = [("massbank_ei (JSONL records)", jsonl, True, False),
             *([("library-size JSONL records, new structures", library, True, False)]
               if args.library else []),
             ("moses SMILES +InChIKey", smi, True, True),
             ("moses SMILES --no-inchikey", smi, False, True)]
    for label, src, ik, is_smi in cases:
        smiles = smiles_of(src)
        r: dict[str, list[float]] = {k: [] for k in ("rw", "rc", "r2", "j0c", "j1w", "j1c", "j2w",
                                                     "j2c")}
        n = 0
        for _ in range(args.repeat):
            rw, rc = raw_rate(smiles, canon=is_smi, inchikey=is_smi and ik)
            r["rw"].append(rw)
            r["rc"].append(rc)
            r["r2"].append(raw_two_speedup(smiles, canon=is_smi, inchikey=is_smi and ik))
            r["j0c"].append(pipeline_rate(src, None, 1, ik)[1])
            w1, c1, n = pipeline_rate(src, tmp / "j1.h5", 1, ik)
            w2, c2, _ = pipeline_rate(src, tmp / "j2.h5", 2, ik)
            r["j1w"].append(w1)
            r["j1c"].append(c1)
            r["j2w"].append(w2)
            r["j2c"].append(c2)
        m = {k: med(v) for k, v in r.items()}
        print(f"| {label} | {len(smiles)} | {m['rw']:.0f} | {m['rc']:.0f} | {m['j0c']:.0f} "
              f"| {m['j1w']:.0f} | {m['j1c']:.0f} | {m['j1c'] / m['rc']:.2f} | {m['j1w'] / m['rw']:.2f} "
              f"| {m['j2w']:.0f} | {m['j2w'] / m['j1w']:.2f} | {m['j1c'] / m['j2c']:.2f} "
              f"| {m['r2']:.2f} |", flush=True)
        if src == jsonl:
            train = random_read_us(tmp / "j1.h5", ("ecfp", "counts", "spectrum"))
            every = random_read_us(tmp / "j1.h5", None)
            print(f"# random read of 32 rows from the {n}-row shard, median µs/batch: "
                  f"{train:.0f} (ecfp+counts+spectrum), {every:.0f} (all columns)")
    finish(tmp)


if __name__ == "__main__":
    main()
