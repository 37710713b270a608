#!/usr/bin/env python3
"""Benchmark ``neimsctl index`` / ``neimsctl search`` side by side with ms-entropy and matchms (issue 17).

One run measures, on one library (predicted spectra + the DEV MassBank spectra) and one query set
(every 8th DEV spectrum whose peaks lie in m/z 0..500, ``--queries`` of them):

1. ``neimsctl index``: wall time and peak RSS (``/usr/bin/time``);
2. ``neimsctl search`` per score, without and with ``--mass-filter 5``: wall time of the whole
   command (start-up counted), queries/s, peak RSS; ``--repeat`` runs, medians quoted; and the
   cosine search alone in this process (``engine``: index open and queries read before the clock
   starts, as the external tools' figures are taken);
3. exactness: on the first ``--exact-entries`` entries of the index, the engine's top-10 against an
   independent dense fp64 brute force, for every score and reverse mode (max |score difference|,
   queries whose top-10 ids differ beyond exact ties);
4. side by side (in the separate virtualenv ``--benchenv``, never a project dependency):
   ms-entropy FlashEntropySearch (index build + open search and 5 Da identity search, the same
   library and queries) and matchms CosineGreedy (m/z^1 I^0.5, on a ``--matchms-entries`` subset,
   extrapolated linearly to the whole library);
5. ``--paired N``: N alternated pairs, our whole ``search`` command (start-up counted) then one
   pass of ms-entropy's search in a process that built its index once and waits (its loop only),
   for ``--mass-filter 5`` / identity search and unfiltered / open search; the ratio of
   queries/s is taken pair by pair, so drift of the machine's speed between phases cancels;
6. Recall@1 of all of them on the issue-5 test protocol when ``--split-dir`` holds the files of
   tools/bench/search_scores.sh (library = predicted test compounds + training spectra).

usage: tools/bench/bench_search.py --library moses100k.msp [--dev massbank_ei.msp] --work DIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any
from pathlib import Path

import numpy as np


def timed(cmd: list[str]) -> tuple[float, int, int]:
    """(wall s, peak RSS MB, exit code) of a command, via /usr/bin/time."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "RSS %M", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = int(re.findall(r"RSS (\d+)", p.stderr)[-1]) // 1024
    if p.returncode not in (0, 1):
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    return wall, rss, p.returncode


def write_queries(dev: Path, out: Path, n: int) -> None:
    text = dev.read_bytes().replace(b"\r\n", b"\n").split(b"\n\n")
    keep = []
    for i, rec in enumerate(text):
        if i % 8 or not rec.strip():
            continue
        peaks = re.findall(rb"^(\d+(?:\.\d+)?)[ \t]", rec, re.M)
        if peaks and max(float(p) for p in peaks) < 500.5:
            keep.append(rec.strip())
        if len(keep) == n:
            break
    out.write_bytes(b"\n\n".join(keep) + b"\n")


# --- independent fp64 brute force (dense, the formulas of man neimsctl-search) ---

def _weigh(d: np.ndarray, name: str) -> np.ndarray:
    mz = np.arange(d.shape[1], dtype=np.float64)
    if name == "cosine":
        w = np.sqrt(d) * mz
    elif name == "composite":
        w = d ** 0.6 * mz ** 3
    else:
        p = d / d.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
        w = p ** np.where(ent < 3, 0.25 + 0.25 * ent, 1.0)[:, None]
        return w / w.sum(1, keepdims=True)
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def brute(q: np.ndarray, lib: np.ndarray, name: str, reverse: bool) -> np.ndarray:
    """Scores of one query (dense, fp64) against every library row."""
    common = (lib > 0) & (q > 0)[None, :]
    if name == "entropy":
        a = np.broadcast_to(q, lib.shape)
        if reverse:
            a = a / np.maximum((common * q).sum(1, keepdims=True), 1e-300)
        xl = lambda x: np.where(x > 0, x * np.log(np.where(x > 0, x, 1)), 0.0)  # noqa: E731
        return np.where(common, xl(a + lib) - xl(a) - xl(lib), 0).sum(1) / np.log(4)
    num = lib @ q
    den = np.sqrt((common * q * q).sum(1)) if reverse else np.ones(len(lib))
    cos = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    if name == "cosine":
        return cos
    n = common.sum(1)
    fr = np.zeros(len(lib))
    for i in np.flatnonzero(n >= 2):
        cols = np.flatnonzero(common[i])
        r = np.log(lib[i, cols]) - np.log(q[cols])
        fr[i] = np.exp(-np.abs(np.diff(r))).sum() / (len(cols) - 1)
    if reverse:
        return np.where(n > 0, 999 * (cos ** 2 + fr) / 2, 0.0)
    nu = (q > 0).sum()
    return 999 * (nu * cos ** 2 + n * fr) / (nu + n)


def exactness(index: Path, queries: Path, n_entries: int, n_queries: int) -> list[dict]:
    from neimsctl.evaluate.matching import Score, iter_chunks, search_blocks
    from neimsctl.io.rejects import Tally
    from neimsctl.io.spectral_index import open_index
    from neimsctl.search.run import read_queries

    with open_index(index) as ix:
        step = max(1, ix.n // n_entries)
        rows = np.arange(0, ix.n, step)[:n_entries]
        from neimsctl.io.peak_block import PeakBlock

        lib = PeakBlock.concat([ix.block(int(r), int(r) + 1) for r in rows])
    qb = next(read_queries([queries], Tally(), batch=n_queries))
    dense_lib = lib.to_dense().astype(np.float64)
    dense_q = qb.block.to_dense().astype(np.float64)
    out = []
    for name in ("cosine", "composite", "entropy"):
        for reverse in (False, True):
            t0 = time.perf_counter()
            res = search_blocks(qb.block, iter_chunks(lib, 4096), Score(name, reverse=reverse), 10)
            t_engine = time.perf_counter() - t0
            wl, wq = _weigh(dense_lib, name), _weigh(dense_q, name)
            worst, differ = 0.0, 0
            for i in range(len(wq)):
                s = brute(wq[i], wl, name, reverse)
                s = np.where(s > 0, s, -np.inf)
                order = np.lexsort((np.arange(len(s)), -s))[:10]
                ok = res.index[i] >= 0
                ref_s = s[order][: ok.sum()]
                worst = max(worst, float(np.max(np.abs(res.scores[i][ok] - ref_s), initial=0.0)))
                if np.isfinite(s[order]).sum() != ok.sum():
                    differ += 1
                    continue
                # ids equal, up to the order of entries whose fp64 scores tie within 1e-9
                got = res.index[i][ok]
                ref = order[: ok.sum()]
                if not all(g == r or abs(s[g] - s[r]) < 1e-9 for g, r in zip(got, ref)):
                    differ += 1
            out.append({"score": name, "reverse": reverse, "entries": len(rows), "queries": len(wq),
                        "max_abs_diff": worst, "queries_with_other_ids": differ,
                        "engine_s": round(t_engine, 2)})
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
            if name == "cosine" and not reverse:
                stored = _stored_search(lib, qb)
                same = np.array_equal(stored.index, res.index) and \
                    np.allclose(stored.scores, res.scores, rtol=0, atol=1e-12, equal_nan=True)
                out.append({"score": "cosine, stored weights (index format 2)", "reverse": False,
                            "same_as_peak_lists": bool(same), "entries": len(rows), "queries": len(wq)})
                print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


def _stored_search(lib, qb):
    """The cosine top-10 through an in-memory index's stored weights (every entry one mass, so
    the index keeps the entries' order)."""
    from neimsctl.evaluate.matching import Score
    from neimsctl.io.spectral_index import IndexWriter, SpectralIndex
    from neimsctl.search.run import SearchOptions, search_library

    n = len(lib)
    w = IndexWriter("exact", in_memory=True, run_peaks=1 << 62)
    src = w.add_source("lib", "predicted")
    w.add(lib, mw=[0] * n, predicted=[True] * n, source=[src] * n, inchikey=[""] * n, ids=[""] * n,
          names=[""] * n, smiles=[""] * n, formula=[""] * n)
    w.close()
    ix = SpectralIndex("exact", h5file=w.file)
    assert ix.dense_block is not None
    return search_library(ix, qb, SearchOptions(Score(), top=10))


def engine_qps(index: Path, queries: Path, mass_filter: float | None, repeat: int) -> dict:
    """Queries/s of the search alone, in this process (index open, queries read, then timed: the
    same footing as the external tools' figures, which time their search calls only)."""
    from neimsctl.evaluate.matching import Score
    from neimsctl.io.rejects import Tally
    from neimsctl.io.spectral_index import open_index
    from neimsctl.search.run import SearchOptions, read_queries, search_batch

    with open_index(index) as ix:
        batches = list(read_queries([queries], Tally()))
        opts = SearchOptions(Score(), top=10, mass_filter=mass_filter)
        walls = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for b in batches:
                search_batch([ix], b, opts)
            walls.append(time.perf_counter() - t0)
    nq = sum(len(b.records) for b in batches)
    wall = statistics.median(walls)
    return {"mass_filter": mass_filter, "queries": nq, "walls": [round(w, 3) for w in walls],
            "qps": round(nq / wall, 1)}


def export_npz(index: Path, queries: Path, out: Path) -> None:
    """Library + queries as peak lists (for the benchmark-only environment)."""
    from neimsctl.io.rejects import Tally
    from neimsctl.io.spectral_index import open_index
    from neimsctl.search.run import read_queries

    with open_index(index) as ix:
        b = ix.block(0, ix.n)
        keys = np.array([k[:14] for k in ix.inchikeys])
        mw = ix.mw.copy()
    qb = next(read_queries([queries], Tally(), batch=10 ** 9))
    qkeys = np.array([r.inchikey[:14].encode() for r in qb.records])
    np.savez(out, ptr=b.ptr, mz=b.mz, it=b.intensity, mw=mw, keys=keys, qptr=qb.block.ptr, qmz=qb.block.mz,
             qit=qb.block.intensity, qmw=np.nan_to_num(qb.mw, nan=-1), qkeys=qkeys)


def external(npz: Path, matchms_entries: int, matchms_queries: int) -> dict:
    """Runs inside the benchmark virtualenv: ms-entropy and matchms on the exported data."""
    with np.load(npz) as f:
        d = {k: f[k] for k in f.files}      # each NpzFile[key] reads the array again from disk
    peaks = lambda p, m, i, k: np.stack([m[p[k]:p[k + 1]].astype(np.float32),  # noqa: E731
                                         i[p[k]:p[k + 1]].astype(np.float32)], axis=1)
    n, nq = len(d["ptr"]) - 1, len(d["qptr"]) - 1
    out: dict = {"library": n, "queries": nq}
    t0 = time.perf_counter()
    fes, order, qs = _msentropy(d)          # the queries' cleaning counted with the index, as before
    out["msentropy_index_s"] = time.perf_counter() - t0
    for label, fn in (("open", lambda k: fes.open_search(peaks=qs[k], ms2_tolerance_in_da=0.4)),
                      ("mass5", lambda k: fes.identity_search(precursor_mz=float(d["qmw"][k]), peaks=qs[k],
                                                              ms1_tolerance_in_da=5, ms2_tolerance_in_da=0.4))):
        t0 = time.perf_counter()
        top1 = []
        for k in range(nq):
            s = fn(k)
            top1.append(order[int(np.argmax(s))] if s.max() > 0 else -1)
        out[f"msentropy_{label}_qps"] = nq / (time.perf_counter() - t0)
        top1 = np.array(top1)
        out[f"msentropy_{label}_recall1"] = float(np.mean([t >= 0 and d["keys"][t] == qk for t, qk in zip(top1, d["qkeys"])]))
    from matchms import Spectrum, calculate_scores
    from matchms.similarity import CosineGreedy

    sub = np.arange(min(matchms_entries, n))
    refs = [Spectrum(mz=peaks(d["ptr"], d["mz"], d["it"], k)[:, 0].astype(float),
                     intensities=peaks(d["ptr"], d["mz"], d["it"], k)[:, 1].astype(float)) for k in sub]
    qsub = range(min(matchms_queries, nq))
    qspec = [Spectrum(mz=peaks(d["qptr"], d["qmz"], d["qit"], k)[:, 0].astype(float),
                      intensities=peaks(d["qptr"], d["qmz"], d["qit"], k)[:, 1].astype(float)) for k in qsub]
    t0 = time.perf_counter()
    scores = calculate_scores(refs, qspec, CosineGreedy(tolerance=0.4, mz_power=1.0, intensity_power=0.5))
    dt = time.perf_counter() - t0
    out.update(matchms_entries=len(sub), matchms_queries=len(qspec), matchms_s=dt,
               matchms_qps_subset=len(qspec) / dt, matchms_qps_extrapolated=len(qspec) / dt * len(sub) / n)
    arr = scores.to_array()
    arr = arr["CosineGreedy_score"] if arr.dtype.names else arr
    if len(sub) == n:     # the whole library: Recall@1 comparable with the others
        top = np.argmax(arr, axis=0)
        out["matchms_recall1_on_queries_scored"] = float(np.mean(
            [arr[t, j] > 0 and d["keys"][t] == d["qkeys"][j] for j, t in enumerate(top)]))
    return out


def _msentropy(d: dict) -> tuple[Any, np.ndarray, list]:
    """ms-entropy's index of the exported library and its cleaned queries."""
    from ms_entropy import FlashEntropySearch

    peaks = lambda p, m, i, k: np.stack([m[p[k]:p[k + 1]].astype(np.float32),  # noqa: E731
                                         i[p[k]:p[k + 1]].astype(np.float32)], axis=1)
    n, nq = len(d["ptr"]) - 1, len(d["qptr"]) - 1
    fes = FlashEntropySearch(max_ms2_tolerance_in_da=0.5)
    lib = [{"precursor_mz": float(d["mw"][k]), "peaks": peaks(d["ptr"], d["mz"], d["it"], k), "row": k}
           for k in range(n)]
    lib = fes.build_index(lib, precursor_ions_removal_da=None, noise_threshold=0.001,
                          min_ms2_difference_in_da=1.0, max_indexed_mz=500.5)
    qs = [fes.clean_spectrum_for_search(float(d["qmw"][k]), peaks(d["qptr"], d["qmz"], d["qit"], k),
                                        precursor_ions_removal_da=None, noise_threshold=0.001,
                                        min_ms2_difference_in_da=1.0) for k in range(nq)]
    return fes, np.array([s["row"] for s in lib]), qs


def serve_external(npz: Path) -> None:
    """Runs inside the benchmark virtualenv for ``--paired``: builds ms-entropy's index once, then
    for each line ``open`` or ``mass5`` on stdin times one pass over every query and prints
    ``{"qps": ..., "recall1": ...}`` (the search loop only: its start-up and index are not counted)."""
    with np.load(npz) as f:
        d = {k: f[k] for k in f.files}
    t0 = time.perf_counter()
    fes, order, qs = _msentropy(d)
    print(json.dumps({"ready": True, "index_s": time.perf_counter() - t0}), flush=True)
    for line in sys.stdin:
        mode = line.strip()
        t0 = time.perf_counter()
        top1 = []
        for k, q in enumerate(qs):
            if mode == "open":
                sc = fes.open_search(peaks=q, ms2_tolerance_in_da=0.4)
            else:
                sc = fes.identity_search(precursor_mz=float(d["qmw"][k]), peaks=q, ms1_tolerance_in_da=5,
                                         ms2_tolerance_in_da=0.4)
            top1.append(order[int(np.argmax(sc))] if sc.max() > 0 else -1)
        qps = len(qs) / (time.perf_counter() - t0)
        rec = float(np.mean([t >= 0 and d["keys"][t] == qk for t, qk in zip(top1, d["qkeys"])]))
        print(json.dumps({"qps": qps, "recall1": rec}), flush=True)


def paired(benchenv: str, index: Path, queries: Path, nq: int, npz: Path, pairs: int,
           modes: tuple[str, ...] = ("mass5", "open")) -> dict:
    """``pairs`` alternated runs: our whole command, then one ms-entropy pass in its waiting
    process, for each filter; the ratio of queries/s taken pair by pair (machine drift between
    the two tools' phases of one run moved the ratio by half here)."""
    # our package's sources compiled once, as `pip install` leaves them (an editable install under
    # PYTHONDONTWRITEBYTECODE=1 compiles them on every run: ~6 % of a mass-filtered search here)
    import compileall

    import neimsctl

    compileall.compile_dir(str(Path(neimsctl.__file__).parent), quiet=1)
    srv = subprocess.Popen([benchenv, __file__, "--serve-external", str(npz)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    assert srv.stdin is not None and srv.stdout is not None
    ready = json.loads(srv.stdout.readline())
    out: dict = {"msentropy_index_s": round(ready["index_s"], 1), "pairs": pairs}
    for mf, mode in ((5, "mass5"), (None, "open")):
        if mode not in modes:
            continue
        ours, theirs, ratios = [], [], []
        for _ in range(pairs):
            wall, _, rc = timed(["neimsctl", "search", str(queries), "-l", str(index), "-q", "-o", "/dev/null",
                                 *(["--mass-filter", str(mf)] if mf else [])])
            srv.stdin.write(mode + "\n")
            srv.stdin.flush()
            got = json.loads(srv.stdout.readline())
            ours.append(nq / wall)
            theirs.append(got["qps"])
            ratios.append(ours[-1] / got["qps"])
        row = {"neimsctl_qps_median": round(statistics.median(ours), 1),
               "msentropy_qps_median": round(statistics.median(theirs), 2),
               "ratio_median": round(statistics.median(ratios), 2), "ratio_min": round(min(ratios), 2),
               "ratio_max": round(max(ratios), 2), "msentropy_recall1": got["recall1"],
               "ratios": [round(r, 2) for r in ratios]}
        out["mass5" if mf else "open"] = row
        print(json.dumps({mode: row}), file=sys.stderr, flush=True)
    srv.stdin.close()
    srv.wait()
    return out


def replicate(index: Path, out: Path, times: int) -> None:
    """An index holding every entry of ``index`` ``times`` times (ids ``copyK:id``): a library of
    the target size from real predicted spectra, for timing search at scale."""
    from neimsctl.io.spectral_index import IndexWriter, open_index

    with open_index(index) as ix:
        w = IndexWriter(out)
        src = w.add_source(f"{index.name} x{times}", "mixed")
        for k in range(times):
            for start in range(0, ix.n, 65536):
                stop = min(start + 65536, ix.n)
                e = ix.entries(np.arange(start, stop))
                w.add(ix.block(start, stop), mw=ix.mw[start:stop], predicted=ix.predicted[start:stop],
                      source=[src] * (stop - start), inchikey=e["inchikey"],
                      ids=[f"copy{k}:{i}" for i in e["id"]], names=e["name"], smiles=e["smiles"],
                      formula=e["formula"])
        w.close()
        w.file.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", type=Path, help="predicted library (MSP/JSONL)")
    ap.add_argument("--dev", type=Path, default=Path("../shared/data/massbank_ei.msp"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/search/bench"))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--query-file", type=Path, help="use these queries (MSP/JSONL) instead of DEV spectra")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slow-queries", type=int, default=200,
                    help="queries for the composite and entropy scores (the first N of the set)")
    ap.add_argument("--slow-repeat", type=int, default=1)
    ap.add_argument("--scores", default="cosine,composite,entropy")
    ap.add_argument("--exact-entries", type=int, default=20000)
    ap.add_argument("--exact-queries", type=int, default=100)
    ap.add_argument("--benchenv", default="/tmp/benchenv/bin/python")
    ap.add_argument("--matchms-entries", type=int, default=10000)
    ap.add_argument("--matchms-queries", type=int, default=100)
    ap.add_argument("--skip", default="", help="comma-separated: index,search,engine,exact,external")
    ap.add_argument("--replicate", type=int, default=1,
                    help="search an index holding the library N times (timing at scale)")
    ap.add_argument("--paired", type=int, default=0, metavar="N",
                    help="N alternated pairs: our whole command / one ms-entropy pass in a waiting process")
    ap.add_argument("--paired-modes", default="mass5,open",
                    help="mass5 (--mass-filter 5 / identity search) and/or open (no filter / open search)")
    ap.add_argument("--external", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--serve-external", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_external:
        serve_external(a.serve_external)
        return
    if a.external:
        print(json.dumps(external(a.external, a.matchms_entries, a.matchms_queries)))
        return
    skip = set(a.skip.split(","))
    a.work.mkdir(parents=True, exist_ok=True)
    res: dict = {"load_before": os.getloadavg()}
    index, queries = a.work / "lib.h5", a.work / "queries.msp"
    if a.query_file:
        queries = a.query_file
        a.queries = sum(1 for _ in open(queries, "rb")) if str(queries).endswith(".jsonl") else a.queries
    else:
        write_queries(a.dev, queries, a.queries)
    if "index" not in skip or not index.exists():
        wall, rss, rc = timed(["neimsctl", "index", str(a.library), str(a.dev), "-o", str(index), "-q"])
        res["index"] = {"wall_s": round(wall, 1), "peak_rss_mb": rss, "exit": rc}
        print(json.dumps(res["index"]), file=sys.stderr, flush=True)
    if a.replicate > 1:
        big = a.work / f"lib_x{a.replicate}.h5"
        if not big.exists():
            replicate(index, big, a.replicate)
        res["replicated"] = {"times": a.replicate, "file_mb": big.stat().st_size >> 20}
        index = big
    res["search"] = []
    if "search" not in skip:
        slow_q = a.work / "queries_slow.msp"
        recs = Path(queries).read_bytes().replace(b"\r\n", b"\n").split(b"\n\n")
        slow_q.write_bytes(b"\n\n".join(r.strip() for r in recs[:a.slow_queries]) + b"\n")
        for score in a.scores.split(","):
            slow = score != "cosine"
            qfile, nq, rep = (slow_q, min(a.slow_queries, a.queries), a.slow_repeat) if slow else \
                (queries, a.queries, a.repeat)
            for mf in (None, 5):
                runs = [timed(["neimsctl", "search", str(qfile), "-l", str(index), "-s", score, "-q",
                               "-o", str(a.work / "hits.tsv"), *(["--mass-filter", str(mf)] if mf else [])])
                        for _ in range(rep)]
                wall = statistics.median(r[0] for r in runs)
                row = {"score": score, "mass_filter": mf, "queries": nq, "wall_s_median": round(wall, 2),
                       "walls": [round(r[0], 2) for r in runs], "qps": round(nq / wall, 1),
                       "peak_rss_mb": max(r[1] for r in runs), "load": os.getloadavg()[0]}
                res["search"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    if "engine" not in skip:
        res["engine"] = [engine_qps(index, queries, mf, a.repeat) for mf in (None, 5.0)]
        for row in res["engine"]:
            print(json.dumps(row), file=sys.stderr, flush=True)
    if "exact" not in skip:
        res["exact"] = exactness(index, queries, a.exact_entries, a.exact_queries)
    if a.paired and Path(a.benchenv).exists():
        npz = a.work / "export.npz"
        export_npz(index, queries, npz)
        res["paired"] = paired(a.benchenv, index, queries, a.queries, npz, a.paired,
                               tuple(a.paired_modes.split(",")))
    if "external" not in skip and Path(a.benchenv).exists():
        npz = a.work / "export.npz"
        export_npz(index, queries, npz)
        p = subprocess.run([a.benchenv, __file__, "--external", str(npz), "--matchms-entries",
                            str(a.matchms_entries), "--matchms-queries", str(a.matchms_queries)],
                           capture_output=True, text=True)
        if p.returncode:
            sys.exit(p.stderr)
        res["external"] = json.loads(p.stdout.strip().splitlines()[-1])
    res["load_after"] = os.getloadavg()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
