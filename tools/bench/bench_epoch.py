#!/usr/bin/env python3
"""Training epoch and ``predict --jobs 2``: two source trees side by side in one run (issue 15).

Each measurement runs in a fresh process whose ``PYTHONPATH`` is one tree (the venv's installed
``neimsctl`` is shadowed), the trees alternate (A B A B ...), and the medians are quoted with the
ratio after/before, so machine noise hits both sides alike. Steps, on the DEV spectra:

1. ``msp2jsonl`` + ``featurize`` the DEV MSP into a teacher and a student shard (once, with the ``--after`` tree;
   the shard format is the same in both trees);
2. ``loader``: one epoch of the training DataLoader over each shard (``make_loader`` with the
   configs' batch size and workers), rows/s, no model;
3. ``finetune``: ``neimsctl finetune`` of the small GNN teacher for one epoch (train + val);
4. ``distill``: ``neimsctl distill --no-kd`` of the compact student for one epoch;
5. ``predict``: ``neimsctl predict --jobs 2 -q`` of ``--smiles`` to MSP (with InChIKeys).

usage: tools/bench/bench_epoch.py --before ../old-tree --msp massbank_ei.msp --smiles moses_train_100k.smi --work W
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

LOADER = r"""
import sys, time
from neimsctl.data.dataset import StudentDataset, TeacherDataset, make_loader
path, mode, batch, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ds = (TeacherDataset if mode == "teacher" else StudentDataset)(path)
t0 = time.perf_counter()
rows = 0
for b in make_loader(ds, batch, shuffle=True, num_workers=workers):
    y = b["y"] if isinstance(b, dict) else b.y
    rows += len(y)
print(rows, time.perf_counter() - t0)
"""


def run(tree: Path, args: list[str], cwd: Path, ok: tuple[int, ...] = (0,)) -> float:
    """Wall seconds of ``neimsctl ARGS`` (or ``python -c``) with ``tree`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, *args] if args[0] == "-c" else \
        [sys.executable, "-c", "from neimsctl.cli.main import main; main()", *args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode not in ok:
        sys.exit(f"failed ({tree}): {' '.join(args[:6])}\n{p.stderr[-2000:]}")
    if args[0] == "-c":
        rows, secs = p.stdout.split()[-2:]
        return float(secs)
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="source tree A (e.g. a git worktree)")
    ap.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[2], help="source tree B")
    ap.add_argument("--msp", type=Path, required=True, help="DEV spectra (massbank_ei.msp)")
    ap.add_argument("--smiles", type=Path, required=True, help="molecules for predict (moses_train_100k.smi)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", default="loader,finetune,distill,predict")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    before, after = a.before.resolve(), a.after.resolve()
    shard = {m: a.work / f"dev_{m}.h5" for m in ("teacher", "student")}
    records = a.work / "dev.jsonl"
    if not records.exists():
        run(after, ["msp2jsonl", "-q", str(a.msp.resolve()), "-o", str(records)], a.work, ok=(0, 1))
    for mode, path in shard.items():
        if not path.exists():
            run(after, ["featurize", "--mode", mode, "-j", "2", "-q", str(records), "-o", str(path)], a.work, ok=(0, 1))
    ft_cfg, ds_cfg = "configs/finetune/teacher-cpu-small.yaml", "configs/distill/student-compact.yaml"
    steps = {
        "loader teacher (rows/s)": lambda t: ["-c", LOADER, str(shard["teacher"]), "teacher", "128", "0"],
        "loader student (rows/s)": lambda t: ["-c", LOADER, str(shard["student"]), "student", "256", "1"],
        "finetune 1 epoch (s)": lambda t: ["finetune", str(shard["teacher"]), "-c", str(t / ft_cfg), "-q",
                                           "--set", "train.epochs=1", "-o", str(a.work / f"ft_{t.name}")],
        "distill --no-kd 1 epoch (s)": lambda t: ["distill", str(shard["student"]), "--no-kd", "-c", str(t / ds_cfg),
                                                  "-q", "--set", "train.epochs=1", "-o", str(a.work / f"ds_{t.name}")],
        "predict --jobs 2 (mol/s)": lambda t: ["predict", "--jobs", "2", "-q", str(a.smiles.resolve()),
                                               "-o", str(a.work / f"pred_{t.name}.msp")],
    }
    wanted = a.steps.split(",")
    steps = {k: v for k, v in steps.items() if k.split()[0] in wanted}
    n_rows = {"loader teacher (rows/s)": None, "loader student (rows/s)": None}
    n_smiles = sum(1 for line in a.smiles.open() if line.strip())
    res: dict[str, dict[str, list[float]]] = {k: {"before": [], "after": []} for k in steps}
    for rep in range(a.repeat):
        for name, make in steps.items():
            for side, tree in (("before", before), ("after", after)) if rep % 2 == 0 else \
                    (("after", after), ("before", before)):
                for d in (a.work / f"ft_{tree.name}", a.work / f"ds_{tree.name}"):
                    subprocess.run(["rm", "-rf", str(d)])
                secs = run(tree, make(tree), a.work)
                res[name][side].append(secs)
                print(f"rep {rep} {name:30s} {side:6s} {secs:8.2f} s", file=sys.stderr, flush=True)
    import h5py
    for key, mode in (("loader teacher (rows/s)", "teacher"), ("loader student (rows/s)", "student")):
        with h5py.File(shard[mode], "r") as f:
            n_rows[key] = int(f["has_spectrum"][:].sum()) if "has_spectrum" in f else None
    print(f"| step | before {before.name} (median) | after {after.name} (median) | speed-up |")
    print("|---|---|---|---|")
    out = {}
    for name, r in res.items():
        mb, ma = statistics.median(r["before"]), statistics.median(r["after"])
        if name.startswith("loader") and n_rows.get(name):
            vb, va = n_rows[name] / mb, n_rows[name] / ma
        elif name.startswith("predict"):
            vb, va = n_smiles / mb, n_smiles / ma
        else:
            vb, va = mb, ma
        ratio = mb / ma          # > 1: the after tree is faster
        print(f"| {name} | {vb:,.1f} ({', '.join(f'{x:.1f}' for x in r['before'])} s) | "
              f"{va:,.1f} ({', '.join(f'{x:.1f}' for x in r['after'])} s) | {ratio:.2f} |")
        out[name] = {"before_s": r["before"], "after_s": r["after"], "before": vb, "after": va}
    (a.work / "bench_epoch.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
