#!/usr/bin/env python3
"""Benchmark ``neimsctl msp2jsonl`` side by side with matchms and with bare RDKit (one run).

    python tools/bench/bench_msp2jsonl.py [--msp ../shared/data/massbank_ei.msp] [--reps 3]
        [--matchms-python /path/to/venv/bin/python] [--copies 37] [--skip-300k]
        [--scale 100000] [--skip-scale]

(a) records/s of ``msp2jsonl --no-structure`` (the command, start-up included, and the library
    loop in-process) vs ``matchms.importing.load_from_msp`` on the same file;
(b) records/s of the full command (RDKit canonical SMILES + InChIKey + formula + MW) with
    ``--jobs 1`` and ``--jobs 2`` vs the bare RDKit loop MolFromSmiles + MolToSmiles +
    MolToInchiKey over the same SMILES, measured in the same run;
(c) peak RSS of ``--no-structure`` on a file of the input concatenated ``--copies`` times
    (~300k records) vs on one copy;
(d) what bounds the ``--jobs 2`` speed-up: the bare RDKit loop of (b) split over two forked
    processes (no start-up, no hand-over: this machine's own ceiling), and ``--jobs 1`` vs
    ``--jobs 2`` on a library-size file of ``--scale`` records: the input's records in turn,
    each with its SMILES replaced by the next molecule of pretrain/moses_train_100k.smi (and
    its InChIKey/InChI/formula/MW lines dropped), so every record is a new structure.
Medians of ``--reps`` repetitions; in (b) bare / --jobs 1 / --jobs 2 alternate. Per-core
efficiency is given from CPU time (user + sys, children included: the meaningful figure on a
loaded machine) and from wall time, both with start-up included (the command is run as
``python -m neimsctl.cli.main``, not through a pyenv shim) and for the library loop in-process
(start-up excluded). The --jobs 2 speed-up needs an idle second core: the load average is
printed at start and end. matchms is not a project dependency: give a Python that has
it (``--matchms-python``), e.g. a venv with ``pip install matchms``.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MSP = ROOT.parent / "shared" / "data" / "massbank_ei.msp"
MATCHMS = ("import sys, time\nfrom matchms.importing import load_from_msp\n"
           "t = time.perf_counter(); n = sum(1 for _ in load_from_msp(sys.argv[1]))\n"
           "print('RESULT', n, time.perf_counter() - t)\n")
RSS = ("import resource, subprocess, sys\n"
       "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


CPU: dict[str, list[float]] = {}


def wall(cmd: list[str], tag: str = "") -> float:
    """Wall seconds of a command; its CPU seconds (user + sys, children incl.) go to CPU[tag]."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault(tag, []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return elapsed


def median_of(reps: int, fn) -> float:  # type: ignore[no-untyped-def]
    return statistics.median(fn() for _ in range(reps))


def library_parse_only(msp: Path) -> float:
    """Seconds for read + convert (no structure) + JSON of the whole file, in-process."""
    from neimsctl.chem.convert import ConvertOptions, convert_msp
    from neimsctl.io.rejects import Tally

    t = time.perf_counter()
    convert_msp([msp], io.BytesIO(), Tally(), ConvertOptions(structure=False))
    return time.perf_counter() - t


def bare_rdkit(smiles: list[str]) -> tuple[float, float]:
    """(CPU s, wall s) of the bare loop MolFromSmiles + MolToSmiles + MolToInchiKey."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    c, t = time.process_time(), time.perf_counter()
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        Chem.MolToSmiles(mol)
        Chem.MolToInchiKey(mol)
    return time.process_time() - c, time.perf_counter() - t


def two_processes_wall(loop: Callable[..., object], smiles: list[str], *args: object) -> float:
    """Wall s of ``loop(smiles, *args)`` with the SMILES split between two forked processes
    (no pool, no hand-over of results: what a second core can give this machine's RDKit)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    t = time.perf_counter()
    procs = [ctx.Process(target=loop, args=(smiles[i::2], *args)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.perf_counter() - t


def scale_file(msp: Path, moses: Path, n: int, out: Path) -> int:
    """Write ``n`` records: ``msp``'s records with SMILES in turn, each given a new structure."""
    import re

    blocks = [b for b in re.split(rb"\r?\n\s*\n", msp.read_bytes()) if re.search(rb"(?im)^smiles:", b)]
    drop = re.compile(rb"(?i)^\s*(inchikey|inchi|formula|mw|exactmass)\s*:")
    smiles_line = re.compile(rb"(?i)^\s*smiles\s*:")
    written = 0
    with open(moses, "rb") as src, open(out, "wb") as fo:
        for i, line in enumerate(src):
            if written >= n or not line.split():
                break
            new = b"SMILES: " + line.split()[0]
            lines = blocks[i % len(blocks)].splitlines()
            fo.write(b"\n".join(new if smiles_line.match(ln) else ln for ln in lines
                                 if not drop.match(ln)) + b"\n\n")
            written += 1
    return written


def library_full(msp: Path) -> tuple[float, float]:
    """(CPU s, wall s) of the full conversion in-process (start-up excluded)."""
    from neimsctl.chem import structure
    from neimsctl.chem.convert import ConvertOptions, convert_msp
    from neimsctl.io.rejects import Tally

    structure.describe_smiles.cache_clear()  # as in a fresh process: no structure seen yet
    structure.describe_inchi.cache_clear()
    c, t = time.process_time(), time.perf_counter()
    convert_msp([msp], io.BytesIO(), Tally(), ConvertOptions())
    return time.process_time() - c, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--msp", type=Path, default=DEFAULT_MSP)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--matchms-python", default=None, help="a python with matchms installed")
    ap.add_argument("--copies", type=int, default=37)
    ap.add_argument("--skip-300k", action="store_true")
    ap.add_argument("--scale", type=int, default=100_000, help="records of the (d) file")
    ap.add_argument("--skip-scale", action="store_true")
    args = ap.parse_args()
    load0 = os.getloadavg()
    exe_cmd = [sys.executable, "-m", "neimsctl.cli.main"]
    from neimsctl.io.msp import read_msp

    with open(args.msp, "rb") as fh:
        recs = list(read_msp(fh, str(args.msp)))
    n, smiles = len(recs), [r.fields["smiles"] for r in recs if r.fields.get("smiles")]
    rows: list[tuple[str, str]] = []
    cmd = [*exe_cmd, "msp2jsonl", "-q", str(args.msp)]

    t_cmd = median_of(args.reps, lambda: wall([*cmd, "--no-structure"]))
    t_lib = median_of(args.reps, lambda: library_parse_only(args.msp))
    rows += [("(a) msp2jsonl --no-structure, command incl. start-up", f"{n / t_cmd:,.0f} rec/s"),
             ("(a) msp2jsonl --no-structure, library loop in-process", f"{n / t_lib:,.0f} rec/s")]
    if args.matchms_python:
        def mm() -> float:
            out = subprocess.run([args.matchms_python, "-c", MATCHMS, str(args.msp)],
                                 capture_output=True, text=True, check=True).stdout
            return float([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1].split()[2])
        t_mm = median_of(args.reps, mm)
        rows += [("(a) matchms.importing.load_from_msp (in-process loop)", f"{n / t_mm:,.0f} rec/s"),
                 ("(a) ratio command / matchms; library / matchms",
                  f"{t_mm / t_cmd:.1f}x; {t_mm / t_lib:.1f}x")]
    else:
        rows.append(("(a) matchms", "not measured (no --matchms-python)"))

    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "lib": [], "j1": [], "j2": [],
                                                  "bare2": []}
    for _ in range(args.reps):  # alternate, so load changes hit every variant alike
        runs["bare"].append(bare_rdkit(smiles))
        runs["bare2"].append((0.0, two_processes_wall(bare_rdkit, smiles)))
        runs["lib"].append(library_full(args.msp))
        for j in (1, 2):
            w = wall([*cmd, "--jobs", str(j)], f"j{j}")
            runs[f"j{j}"].append((CPU[f"j{j}"][-1], w))
    med = {k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v))
           for k, v in runs.items()}
    (bc, bw), (lc, lw), (c1, w1), (c2, w2) = med["bare"], med["lib"], med["j1"], med["j2"]
    m = len(smiles)
    rows += [("(b) bare RDKit MolFromSmiles+MolToSmiles+MolToInchiKey, in-process",
              f"{m / bc:,.0f} mol/s per CPU-s; {m / bw:,.0f} mol/s wall"),
             ("(b) full conversion, library in-process (start-up excluded)",
              f"{n / lc:,.0f} rec/s per CPU-s = {bc / lc:.0%} of bare (CPU); {bw / lw:.0%} (wall)"),
             ("(b) msp2jsonl --jobs 1, command incl. start-up",
              f"{n / c1:,.0f} rec/s per CPU-s = {bc / c1:.0%} of bare (CPU); "
              f"{n / w1:,.0f} rec/s wall = {bw / w1:.0%} (wall)"),
             ("(b) msp2jsonl --jobs 2, command incl. start-up",
              f"{n / w2:,.0f} rec/s wall = {w1 / w2:.2f}x --jobs 1; CPU {c2:.2f} s vs {c1:.2f} s")]
    rows.append(("(d) bare RDKit loop of (b) in two forked processes (no start-up)",
                 f"{bw / med['bare2'][1]:.2f}x one process"))

    if not args.skip_scale:
        with tempfile.TemporaryDirectory() as tmp:
            big = Path(tmp) / "scale.msp"
            k = scale_file(args.msp, args.msp.parent / "pretrain" / "moses_train_100k.smi",
                           args.scale, big)
            big_cmd = [*exe_cmd, "msp2jsonl", "-q", str(big)]
            sj: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.reps):
                for j in (1, 2):
                    sj[j].append(wall([*big_cmd, "--jobs", str(j)], f"s{j}"))
            s1, s2 = statistics.median(sj[1]), statistics.median(sj[2])
            rows += [(f"(d) msp2jsonl --jobs 1 / --jobs 2, {k:,} records of new structures",
                      f"{k / s1:,.0f} / {k / s2:,.0f} rec/s wall = {s1 / s2:.2f}x")]

    if not args.skip_300k:
        with tempfile.TemporaryDirectory() as tmp:
            big = Path(tmp) / "big.msp"
            data = args.msp.read_bytes().rstrip(b"\n") + b"\n\n"
            with open(big, "wb") as fh:
                for _ in range(args.copies):
                    fh.write(data)

            def rss(path: Path) -> int:
                out = subprocess.run([sys.executable, "-c", RSS, *exe_cmd, "msp2jsonl", "-q",
                                      "--no-structure", str(path)], capture_output=True, text=True)
                return int(out.stdout.strip())
            r1 = median_of(args.reps, lambda: rss(args.msp))
            rb = median_of(args.reps, lambda: rss(big))
            rows += [(f"(c) peak RSS --no-structure, 1 copy ({n} records)", f"{r1 / 1024:.1f} MiB"),
                     (f"(c) peak RSS --no-structure, {args.copies} copies ({n * args.copies} records)",
                      f"{rb / 1024:.1f} MiB ({rb / r1 - 1:+.1%})")]

    print(f"command: {' '.join(sys.argv)}   (medians of {args.reps}; input {args.msp}, {n} records)")
    print(f"load average at start {load0}, at end {os.getloadavg()} ({os.cpu_count()} CPUs)\n")
    print("| measure | result |\n|---|---|")
    for what, result in rows:
        print(f"| {what} | {result} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
