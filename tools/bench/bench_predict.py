#!/usr/bin/env python3
"""Benchmark ``neimsctl predict`` and the ``SpectrumPredictor`` API (issue 6, "Performance").

Two steps::

    # 1. a student trained for a few minutes on real spectra (plain MSE in sqrt space; for
    #    benchmarking precision only, not a shippable model)
    python tools/bench/bench_predict.py train --msp ../shared/data/massbank_ei.msp \\
        --seconds 240 -o /tmp/bench-student.pt
    # 2. the measurements, as one JSON object on stdout
    python tools/bench/bench_predict.py run --model /tmp/bench-student.pt \\
        --smiles ../shared/data/pretrain/moses_train_100k.smi --n 100000

``run`` measures, for each precision (fp32, bf16, int8): API latency p50/p90 at batch 1 with
1 thread (featurization included), model-only throughput at batch 1024 with 2 threads, and
cosine vs fp32 on held-out real molecules (``--msp``); then the CLI: ``neimsctl --help`` time,
``predict`` of one molecule end to end, and batched throughput SMILES in -> MSP out on ``--n``
MOSES SMILES (with peak RSS), next to the raw RDKit fingerprint cost measured in the same run,
and the model's size on disk.

``ratio`` (issue 20) measures ``predict`` against the chemistry it cannot avoid, side by side in
one run, so that the figure compares machines::

    python tools/bench/bench_predict.py ratio --n 100000 --reps 3 [--tree OTHER_TREE ...]

For each repetition, in turn: the bare RDKit work per molecule in ``--jobs`` forked processes
(``MolFromSmiles`` + Morgan 4096 bits + Morgan counts 2048 + ``MolToInchiKey``: the issue's
definition), then ``neimsctl predict -q --jobs N`` of the same molecules to MSP (with
InChIKeys) for each source tree (this one, then every ``--tree``; the order alternates between
repetitions), with the shipped model and each ``--model`` (e.g. a student that reads fragment
masses: what they cost). Each is a fresh command timed by its wall clock, start-up included. Printed: the
medians as molecules/s and ``ratio = predict / bare``, and the same ratio by CPU time (user +
system of the command and its workers: less sensitive to other users' load than wall time on a
shared machine, but blind to time lost waiting, e.g. a main process starting up alone). ``--own`` adds a second bare reference,
the RDKit work ``predict``'s own output needs (atom-pair counts instead of Morgan counts, plus
canonical SMILES and formula): the ceiling of the ratio with no overhead at all. ``--latency``
adds the API's single-molecule latency (p50/p90, 1 thread, featurization included) per tree.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MSP = ROOT.parent / "shared" / "data" / "massbank_ei.msp"
MOSES = ROOT.parent / "shared" / "data" / "pretrain" / "moses_train_100k.smi"


def _blocks_from_msp(msp: Path) -> dict[str, np.ndarray]:
    """Student features + spectra of every structure-bearing record of an MSP file."""
    from neimsctl.io.inputs import iter_items
    from neimsctl.predict.run import featurized

    with tempfile.NamedTemporaryFile(suffix=".jsonl") as tmp:
        subprocess.run(["neimsctl", "msp2jsonl", "-q", str(msp), "-o", tmp.name], check=False)
        blocks = [b for b, _, _ in featurized(iter_items([tmp.name]), "student")]
    keys = ("ecfp", "counts", "mw", "spectrum", "has_spectrum", "smiles", "inchikey")
    out = {k: np.concatenate([b[k] for b in blocks]) for k in keys}
    keep = out["has_spectrum"]
    return {k: v[keep] for k, v in out.items()}


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(0).permutation(n)
    cut = int(0.9 * n)
    return order[:cut], order[cut:]


def train(args: argparse.Namespace) -> None:
    import torch

    from neimsctl.chem.featurize_run import run_settings
    from neimsctl.chem.features import student_vectors
    from neimsctl.chem.rowbuild import RowOptions
    from neimsctl.models.student import StudentConfig, StudentModel
    from neimsctl.models.checkpoint import save_checkpoint

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = _blocks_from_msp(args.msp)
    tr, _ = _split(len(data["ecfp"]))
    cfg = StudentConfig()
    model = StudentModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(0)
    t0, step = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.seconds:
        idx = rng.choice(tr, size=min(args.batch_size, len(tr)), replace=False)
        x = torch.from_numpy(student_vectors(data["ecfp"][idx], data["counts"][idx]))
        y = model.from_linear(torch.from_numpy(data["spectrum"][idx].astype(np.float32)))
        loss = torch.nn.functional.mse_loss(model(x).pred, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 20 == 0:
            print(f"step {step} loss {loss.item():.5f} {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    save_checkpoint(args.output, model=model, step=step,
                    config={"model": {"name": "student", **cfg.to_dict()}},
                    featurizer_hash=run_settings(RowOptions(mode="student"))[1],
                    extra={"note": f"bench_predict.py train: {step} steps, {args.seconds}s"})
    print(f"saved {args.output} after {step} steps", file=sys.stderr)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _precisions(args: argparse.Namespace, smiles: list[str], held: dict[str, np.ndarray]) -> dict:
    import torch

    from neimsctl.api import SpectrumPredictor
    from neimsctl.predict.model import predict_block

    out, ref = {}, None
    block = {"ordinal": np.arange(len(held["ecfp"])), "ecfp": held["ecfp"], "counts": held["counts"],
             "mw": held["mw"]}
    cyc = np.arange(1024) % len(held["ecfp"])
    xbig = {"ordinal": np.arange(1024), "ecfp": held["ecfp"][cyc], "counts": held["counts"][cyc],
            "mw": held["mw"][cyc]}
    for prec in ("fp32", "bf16", "int8"):
        torch.set_num_threads(1)
        p = SpectrumPredictor({"precision": prec}, checkpoint=args.model)
        for s in smiles[:20]:
            p.predict_from_smiles(s)
        lat = []
        for s in smiles[:args.latency_n]:
            t = time.perf_counter()
            p.predict_from_smiles(s)
            lat.append(time.perf_counter() - t)
        torch.set_num_threads(2)
        predict_block(p.loaded, xbig)
        t = time.perf_counter()
        for _ in range(args.reps):
            predict_block(p.loaded, xbig)
        thr = 1024 * args.reps / (time.perf_counter() - t)
        spec, _, _ = predict_block(p.loaded, block)
        if ref is None:
            ref = spec
        true = held["spectrum"].astype(np.float32)
        out[prec] = {"latency_ms_p50": round(float(np.percentile(lat, 50)) * 1e3, 3),
                     "latency_ms_p90": round(float(np.percentile(lat, 90)) * 1e3, 3),
                     "model_mol_per_s_b1024_2threads": round(thr, 1),
                     "cosine_vs_fp32_mean": round(float(_cos(spec, ref).mean()), 5),
                     "cosine_vs_fp32_min": round(float(_cos(spec, ref).min()), 5),
                     "cosine_vs_measured_mean": round(float(_cos(spec, true).mean()), 4),
                     "cosine_sqrt_vs_measured_mean": round(float(_cos(np.sqrt(spec), np.sqrt(true)).mean()), 4)}
        print(prec, out[prec], file=sys.stderr)
    return out


def _timed(cmd: list[str], stdin: Path | bytes | None = None) -> tuple[float, int, int]:
    """Wall seconds, exit code and peak RSS (MiB, the command plus its worker processes)."""
    import psutil

    fh = open(stdin, "rb") if isinstance(stdin, Path) else subprocess.PIPE  # noqa: SIM115
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=fh, stdout=subprocess.DEVNULL)
    if isinstance(stdin, bytes):
        proc.stdin.write(stdin)
        proc.stdin.close()
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - t
    if fh is not subprocess.PIPE:
        fh.close()
    return wall, proc.returncode, peak >> 20


def _rdkit_fp_rate(smiles: list[str]) -> float:
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=4096)
    t = time.perf_counter()
    for s in smiles:
        m = Chem.MolFromSmiles(s)
        if m is not None:
            gen.GetFingerprintAsNumPy(m)
    return len(smiles) / (time.perf_counter() - t)


def run(args: argparse.Namespace) -> None:
    smiles = [ln.split()[0] for ln in args.smiles.read_text().splitlines()[:args.n] if ln.strip()]
    res: dict = {"machine": f"{os.cpu_count()} cpus, shared (numbers are indicative)",
                 "model_bytes": args.model.stat().st_size}
    held = _blocks_from_msp(args.msp)
    _, te = _split(len(held["ecfp"]))
    res["precision"] = _precisions(args, smiles, {k: v[te] for k, v in held.items()})
    res["help_s"] = round(min(_timed(["neimsctl", "--help"])[0] for _ in range(3)), 3)
    one = b"CC(=O)Oc1ccccc1C(=O)O aspirin\n"
    res["predict_one_s"] = round(min(_timed(["neimsctl", "predict", "-q", "-m", str(args.model),
                                             "--threads", "1"], one)[0] for _ in range(2)), 3)
    with tempfile.NamedTemporaryFile("w", suffix=".smi", delete=False) as fh:
        fh.write("\n".join(smiles) + "\n")
    for prec in args.throughput_precisions.split(","):
        for extra in ([], ["--no-inchikey"]):
            tag = prec + ("_no_inchikey" if extra else "")
            # no --threads: each of the --jobs workers gets cores / jobs torch threads
            wall, rc, rss = _timed(["neimsctl", "predict", "-q", "-m", str(args.model),
                                    "--jobs", str(args.jobs), "--precision", prec, *extra, fh.name])
            res[f"cli_msp_mol_per_s_{tag}"] = round(len(smiles) / wall, 1)
            res[f"cli_peak_rss_mib_{tag}"] = rss
            print(tag, wall, rc, rss, file=sys.stderr)
    os.unlink(fh.name)
    res["n_smiles"] = len(smiles)
    res["rdkit_morgan_fp_mol_per_s_1thread"] = round(_rdkit_fp_rate(smiles[:20000]), 1)
    print(json.dumps(res, indent=1))


#: The bare work per molecule in N forked processes (chunks of 1,024 molecules dealt round robin,
#: like predict's workers), timed from the first fork to the last exit; prints molecules, seconds.
BARE = r"""
import os, sys, time
from rdkit import Chem, RDLogger
from rdkit.Chem import rdFingerprintGenerator, rdMolDescriptors
RDLogger.DisableLog("rdApp.*")
path, n, jobs, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with open(path) as fh:
    smiles = [ln.split()[0] for ln in fh.read().splitlines()[:n] if ln.strip()]
bits = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=4096)
counts = (rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048) if kind == "issue"
          else rdFingerprintGenerator.GetAtomPairGenerator(fpSize=2048))
def work(part):
    for s in part:
        m = Chem.MolFromSmiles(s)
        if m is None:
            continue
        bits.GetFingerprintAsNumPy(m)
        counts.GetCountFingerprintAsNumPy(m)
        Chem.MolToInchiKey(m)
        if kind == "own":
            Chem.MolToSmiles(m)
            rdMolDescriptors.CalcMolFormula(m, True, True)
t = time.perf_counter()
kids = []
for k in range(jobs):
    pid = os.fork()
    if pid == 0:
        work([s for i, s in enumerate(smiles) if (i // 1024) % jobs == k])
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
print(len(smiles), time.perf_counter() - t)
"""

LATENCY = r"""
import sys, time
import numpy as np
import torch
torch.set_num_threads(1)
from neimsctl.api import SpectrumPredictor
smiles = [ln.split()[0] for ln in open(sys.argv[1]).read().splitlines()[:int(sys.argv[2]) + 20]]
p = SpectrumPredictor()
for s in smiles[:20]:
    p.predict_from_smiles(s)
lat = []
for s in smiles[20:]:
    t = time.perf_counter()
    p.predict_from_smiles(s)
    lat.append(time.perf_counter() - t)
print(np.percentile(lat, 50) * 1e3, np.percentile(lat, 90) * 1e3)
"""


def _wall(cmd: list[str], env: dict[str, str] | None = None,
          cwd: Path | None = None) -> tuple[float, str, float]:
    """Wall seconds, stdout and CPU seconds (user + system of the command and every process it
    waited for, e.g. its workers) of a command (which must succeed)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd[:8])}\n{p.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, p.stdout, cpu


def ratio(args: argparse.Namespace) -> None:
    import statistics

    base = [(ROOT, f"{ROOT.name} (this tree)"), *[(t.resolve(), t.resolve().name) for t in args.tree]]
    models = [None, *args.model]           # None: the shipped default
    variants = [(tree, f"{name}" + (f" --model {m.name}" if m else ""), ["-m", str(m)] if m else [])
                for tree, name in base for m in models]
    names = [v[1] for v in variants]
    with open(args.smiles) as fh:
        lines = [ln for ln in fh.read().splitlines() if ln.strip()][:args.n]
    work = Path(tempfile.mkdtemp(prefix="bench-ratio-"))
    src = work / "molecules.smi"
    src.write_text("\n".join(lines) + "\n")
    n = len(lines)
    bares = ["issue", *(["own"] if args.own else [])]
    walls: dict[str, list[float]] = {f"bare_{b}": [] for b in bares}
    walls.update({f"predict {name}": [] for name in names})
    cpus: dict[str, list[float]] = {k: [] for k in walls}
    loads = [os.getloadavg()[0]]
    for rep in range(args.reps):
        order = variants if rep % 2 == 0 else variants[::-1]
        for b in bares:
            secs, out, cpu = _wall([sys.executable, "-c", BARE, str(src), str(n), str(args.jobs), b])
            walls[f"bare_{b}"].append(secs)
            cpus[f"bare_{b}"].append(cpu)
            print(f"rep {rep} bare ({b}): {secs:.2f} s wall ({out.split()[1][:5]} s in the forked "
                  f"processes), {cpu:.1f} CPU s, load {os.getloadavg()[0]:.2f}", file=sys.stderr,
                  flush=True)
        for tree, name, model in order:
            env = {**os.environ, "PYTHONPATH": str(tree)}
            secs, _, cpu = _wall([sys.executable, "-c", "from neimsctl.cli.main import main; main()",
                                  "predict", "-q", *model, "--jobs", str(args.jobs), str(src),
                                  "-o", str(work / "out.msp")], env, cwd=tree)  # as --latency
            walls[f"predict {name}"].append(secs)
            cpus[f"predict {name}"].append(cpu)
            print(f"rep {rep} predict {name}: {secs:.2f} s, {cpu:.1f} CPU s, load "
                  f"{os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
        loads.append(os.getloadavg()[0])
    res: dict = {"n_molecules": n, "jobs": args.jobs, "reps": args.reps,
                 "load_1min_each_rep": [round(x, 2) for x in loads], "walls_s": walls}
    res["cpu_s"] = cpus
    rate = {k: n / statistics.median(v) for k, v in walls.items()}
    cpu_ms = {k: 1e3 * statistics.median(v) / n for k, v in cpus.items()}
    res["mol_per_s_median"] = {k: round(v, 1) for k, v in rate.items()}
    res["cpu_ms_per_mol_median"] = {k: round(v, 4) for k, v in cpu_ms.items()}
    for b in bares:
        res[f"ratio_vs_bare_{b}"] = {name: round(rate[f"predict {name}"] / rate[f"bare_{b}"], 3)
                                     for name in names}
        res[f"cpu_ratio_vs_bare_{b}"] = {name: round(cpu_ms[f"bare_{b}"] / cpu_ms[f"predict {name}"], 3)
                                         for name in names}
    print(f"{n:,} molecules, --jobs {args.jobs}, {args.reps} repetitions (medians); load "
          f"{', '.join(f'{x:.2f}' for x in loads)}", file=sys.stderr)
    for b in bares:
        print(f"bare ({b}): {rate[f'bare_{b}']:,.0f} mol/s, {cpu_ms[f'bare_{b}']:.3f} CPU ms/mol",
              file=sys.stderr)
    for name in names:
        line = (f"predict {name}: {rate[f'predict {name}']:,.0f} mol/s, "
                f"{cpu_ms[f'predict {name}']:.3f} CPU ms/mol")
        line += "".join(f"; ratio = predict / bare ({b}) = {res[f'ratio_vs_bare_{b}'][name]:.3f}"
                        f" (by CPU time {res[f'cpu_ratio_vs_bare_{b}'][name]:.3f})" for b in bares)
        print(line, file=sys.stderr)
    if args.latency:
        res["api_latency_ms_p50_p90"] = {}
        for tree, name, model in variants:
            if model:
                continue                   # the API's latency: the shipped default only
            # run from the tree itself: ``python -c`` puts the working directory first on
            # sys.path, before PYTHONPATH (run from this checkout, every tree measured this one)
            _, out, _ = _wall([sys.executable, "-c", LATENCY, str(src), str(args.latency)],
                              {**os.environ, "PYTHONPATH": str(tree)}, cwd=tree)
            p50, p90 = map(float, out.split())
            res["api_latency_ms_p50_p90"][name] = [round(p50, 3), round(p90, 3)]
            print(f"API latency {name}: p50 {p50:.2f} ms, p90 {p90:.2f} ms", file=sys.stderr)
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    print(json.dumps(res, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a benchmark student for a few minutes")
    t.add_argument("--msp", type=Path, default=MSP)
    t.add_argument("--seconds", type=float, default=240)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("-o", "--output", type=Path, required=True)
    r = sub.add_parser("run", help="measure")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--msp", type=Path, default=MSP, help="held-out real spectra for cosines")
    r.add_argument("--smiles", type=Path, default=MOSES)
    r.add_argument("--n", type=int, default=100_000)
    r.add_argument("--latency-n", type=int, default=200)
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--throughput-precisions", default="auto,int8,fp32")
    q = sub.add_parser("ratio", help="predict --jobs N against the bare RDKit work, side by side")
    q.add_argument("--smiles", type=Path, default=MOSES)
    q.add_argument("--n", type=int, default=100_000)
    q.add_argument("--reps", type=int, default=3)
    q.add_argument("--jobs", type=int, default=2)
    q.add_argument("--model", type=Path, action="append", default=[],
                   help="also time predict --model MODEL (each tree), beside the shipped default")
    q.add_argument("--tree", type=Path, action="append", default=[],
                   help="another source tree to time the same way (e.g. a worktree of the "
                        "previous commit); repeatable")
    q.add_argument("--own", action="store_true",
                   help="also time the RDKit work predict's output needs (the ratio's ceiling)")
    q.add_argument("--latency", type=int, default=0, metavar="N",
                   help="also the API's single-molecule latency over N molecules per tree")
    args = ap.parse_args()
    {"train": train, "run": run, "ratio": ratio}[args.cmd](args)


if __name__ == "__main__":
    main()
