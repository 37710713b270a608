#!/usr/bin/env python3
"""A tracked, resumable sweep of training recipes, judged on the validation split (issue 18).

    python tools/sweep.py run SPEC.yaml OUT_DIR        # train what is missing, then tabulate
    python tools/sweep.py table SPEC.yaml OUT_DIR      # tabulate what is there (no training)

The spec (YAML, read with ``yaml.safe_load``; ``config`` relative to the spec's directory,
``shards`` and file arguments relative to the directory the sweep is run from)::

    command: distill                     # distill | finetune
    shards: [student.h5]                 # the training shards
    config: configs/distill/student-compact.yaml
    args: [--soft-labels, soft.h5]       # further fixed arguments of the command
    set: {train.threads: 1}              # fixed --set overrides
    grid:                                # every combination (the full product) ...
      model.expert_width: [256, 512]
      optim.lr: [5.0e-4, 1.0e-3]
      args: [[--no-kd], [--soft-labels, soft.h5]]   # 'args': a recipe's own arguments
    random:                              # ... and/or trials drawn from ranges (seeded)
      trials: 4
      seed: 0
      space: {model.dropout: {uniform: [0.0, 0.3]}, optim.lr: {log_uniform: [3.0e-4, 3.0e-3]}}
    seeds: [42, 1, 2]                    # every recipe once per train.seed
    ensembles: [2, 3]                    # also judge each recipe's first n seeds averaged
    parallel: 2                          # trainings at a time (give each train.threads: 1)
    metric: val_recall_at_10             # the column the table is sorted by (any val_ metric)

SIGINT / SIGTERM stop the sweep: its running trainings are sent the same signal (they save
``interrupted.pt``), the sweep waits for them and exits 130 / 143; the next ``run`` resumes them.

Each trial (one recipe, one seed) trains into ``OUT_DIR/trials/<id>`` (``id`` = a hash of its
overrides, so the same recipe always lands in the same place) with its log beside it; a trial
whose ``report.md`` exists is done and skipped; one that was interrupted (Ctrl-C, a killed
session) is continued with ``--resume`` from its own checkpoint. The table is rebuilt from the
trial directories every time: ``results.csv``, ``results.md`` (recipes sorted by the metric:
the mean over the seeds that are done, min/max, each seed's best epoch; an interrupted trial's
best epoch so far is left out, ``results.csv`` lists it with its state) and ``results.png``
(metric per recipe, each finished seed a dot). An ensemble row averages the spectra of the recipe's first n seeds with
``neimsctl predict --model A --model B ...`` (sqrt and linear) and judges them with ``neimsctl
eval`` on the validation compounds exactly as ``tools/bench/compare_models.py --part val`` does.
Nothing here reads the test split.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_state import run_state  # noqa: E402  (tools/run_state.py)

VAL_KEYS = ("val_recall_at_1", "val_recall_at_5", "val_recall_at_10", "val_recall_at_1_mass5",
            "val_recall_at_10_mass5", "val_mean_cosine")


def load_spec(path: Path) -> dict[str, Any]:
    """The spec, checked: one clear message (``SystemExit``) for anything malformed."""
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"sweep: {path}: {exc}") from None

    def bad(what: str) -> SystemExit:
        return SystemExit(f"sweep: {path}: {what}")
    if not isinstance(spec, dict):
        raise bad("the spec must be a mapping (command:, shards:, config:, ...)")
    if spec.get("command") not in ("distill", "finetune"):
        raise bad("command must be distill or finetune")
    if not isinstance(spec.get("shards"), list) or not spec["shards"] or not spec.get("config"):
        raise bad("shards (a list) and config are required")
    for key, kind in (("args", list), ("set", dict), ("grid", dict), ("random", dict),
                      ("seeds", list), ("ensembles", list)):
        if spec.get(key) is not None and not isinstance(spec[key], kind):
            raise bad(f"{key} must be a {kind.__name__}")
    if "seeds" in spec and not spec["seeds"]:
        raise bad("seeds must list at least one train.seed")
    for key, values in (spec.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise bad(f"grid.{key} must be a non-empty list of values")
    for key, dist in ((spec.get("random") or {}).get("space") or {}).items():
        if not isinstance(dist, dict):
            raise bad(f"random.space.{key}: give {{choice: [...]}}, {{uniform: [lo, hi]}} or "
                      "{log_uniform: [lo, hi]}")
    base = path.resolve().parent
    spec["shards"] = [str(Path(s).resolve()) for s in spec["shards"]]
    spec["config"] = str((base / spec["config"]).resolve())
    spec["args"] = [str(Path(a).resolve()) if Path(a).exists() else str(a)
                    for a in spec.get("args") or []]
    spec.setdefault("seeds", [42])
    spec.setdefault("parallel", 1)
    spec.setdefault("metric", "val_recall_at_10")
    from neimsctl.evaluate.validation import VAL_METRICS    # what finetune and distill log
    if spec["metric"] not in VAL_METRICS:
        raise bad(f"metric {spec['metric']!r} is not a validation metric; use one of "
                  f"{', '.join(VAL_METRICS)}")
    for f in (spec["config"], *spec["shards"]):
        if not Path(f).is_file():
            raise bad(f"{f}: no such file")
    return spec


def recipes(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The grid's combinations, then the random trials (a seeded draw: the same every run)."""
    grid = spec.get("grid") or {}
    keys = sorted(grid)
    out = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    rnd = spec.get("random") or {}
    rng = random.Random(int(rnd.get("seed", 0)))
    for _ in range(int(rnd.get("trials", 0))):
        one = {}
        for key, dist in sorted((rnd.get("space") or {}).items()):
            if "choice" in dist:
                one[key] = rng.choice(dist["choice"])
            elif "uniform" in dist:
                lo, hi = dist["uniform"]
                one[key] = round(rng.uniform(lo, hi), 4)
            elif "log_uniform" in dist:
                lo, hi = dist["log_uniform"]
                one[key] = float(f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.3g}")
            else:
                raise SystemExit(f"random.space.{key}: give choice, uniform or log_uniform")
        out.append(one)
    return out or [{}]


def trial_id(overrides: dict[str, Any], spec: dict[str, Any] | None = None) -> str:
    """A trial's directory name: a hash of everything that makes it (the command, config,
    shards, fixed arguments and overrides, and its own overrides), so a changed spec trains
    anew instead of reporting old results."""
    what = {"overrides": overrides}
    if spec is not None:
        what.update({k: spec.get(k) for k in ("command", "config", "shards", "args", "set")})
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]


def value_text(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def trial_state(d: Path) -> str:
    """``done``, ``partial`` or ``new``: :func:`run_state.run_state`."""
    return run_state(d)


def command(spec: dict[str, Any], overrides: dict[str, Any], d: Path) -> list[str]:
    cmd = ["neimsctl", spec["command"], *spec["shards"], "-c", spec["config"], *spec["args"]]
    for k, v in {**(spec.get("set") or {}), **overrides}.items():
        if k == "args":          # a recipe's own command-line arguments (e.g. KD on or off)
            cmd += [str(Path(a).resolve()) if Path(a).exists() else str(a) for a in v]
        else:
            cmd += ["--set", f"{k}={value_text(v)}"]
    cmd += ["-o", str(d)]
    if trial_state(d) == "partial":
        cmd.append("--resume")
    return cmd


def train_all(spec: dict[str, Any], out: Path) -> int:
    """Run every trial that is not done, ``parallel`` at a time; a failed trial is reported
    and the others go on. Returns the number of trials that failed."""
    todo = []
    for r in recipes(spec):
        for seed in spec["seeds"]:
            ov = {**r, "train.seed": seed}
            d = out / "trials" / trial_id(ov, spec)
            d.mkdir(parents=True, exist_ok=True)
            (d.parent / f"{d.name}.json").write_text(json.dumps(
                {"recipe": r, "seed": seed, "overrides": ov}, indent=1))
            if trial_state(d) != "done":
                todo.append((ov, d))
    print(f"sweep: {len(todo)} trials to train", file=sys.stderr, flush=True)
    running: list[tuple[subprocess.Popen, Path, float, Any]] = []
    failed = 0
    try:
        failed = _run(spec, todo, running)
    except _Stop as stop:          # SIGINT / SIGTERM: the trainings checkpoint, then we stop
        for proc, d, _, _ in running:
            proc.send_signal(stop.signum)
            print(f"sweep: {d.name}: interrupted, resumes on the next run", file=sys.stderr)
        for proc, *_ in running:
            proc.wait()
        raise SystemExit(128 + stop.signum) from None
    return failed


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, _frame: Any) -> None:
    raise _Stop(signum)


def _run(spec: dict[str, Any], todo: list, running: list) -> int:
    """Start and reap the trainings (:func:`train_all`); returns how many failed."""
    import signal

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    failed = 0
    while todo or running:
        while todo and len(running) < int(spec["parallel"]):
            ov, d = todo.pop(0)
            log = open(d.parent / f"{d.name}.log", "ab")
            cmd = command(spec, ov, d)
            print(f"sweep: start {d.name}: {' '.join(cmd[1:2] + [f'{k}={v}' for k, v in ov.items()])}",
                  file=sys.stderr, flush=True)
            # a session of its own: a Ctrl-C on the terminal reaches the sweep only, which
            # passes it on once (a second signal would cut the training's checkpointing short)
            running.append((subprocess.Popen(cmd, stdout=log, stderr=log,
                                             start_new_session=True), d, time.time(), log))
        time.sleep(2)
        for item in list(running):
            proc, d, t0, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; {d}.log)"
            failed += proc.returncode != 0
            print(f"sweep: {d.name} {status} after {time.time() - t0:.0f} s", file=sys.stderr,
                  flush=True)
    return failed


def best_epoch(d: Path, metric: str) -> dict[str, Any] | None:
    """The val metrics of the trial's best epoch (by ``metric``) from its train_log.jsonl."""
    log = d / "train_log.jsonl"
    if not log.is_file():
        return None
    best = None
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue          # a line cut by an interruption
        if rec.get("kind") != "epoch" or not rec.get("val"):
            continue
        if best is None or rec["val"].get(metric, -1) > best["val"].get(metric, -1):
            best = rec
    if best is None:
        return None
    return {"epoch": best["epoch"], "seconds": best.get("seconds"), **best["val"]}


def ensemble_rows(spec: dict[str, Any], out: Path, rows: list[dict[str, Any]]) -> list[dict]:
    """Each recipe's first n seeds averaged (``predict --model ... --average``), judged on val."""
    sizes = [int(n) for n in spec.get("ensembles") or [] if int(n) > 1]
    if not sizes:
        return []
    here = Path(__file__).resolve().parent
    val = out / "val"
    if not (val / "query.jsonl").is_file():
        subprocess.run([sys.executable, str(here / "bench" / "compare_models.py"),
                        spec["shards"][0], "--out", str(val), "--part", "val", "--no-speed"],
                       check=True, stdout=subprocess.DEVNULL)
    sys.path.insert(0, str(here / "bench"))
    from compare_models import evaluate  # noqa: E402  (tools/bench/compare_models.py)

    out_rows = []
    by_recipe: dict[str, list[dict]] = {}
    for r in rows:
        by_recipe.setdefault(r["recipe"], []).append(r)
    for recipe, trials in by_recipe.items():
        done = [t for t in trials if t["state"] == "done"]
        for n in sizes:
            if len(done) < n:
                continue
            members = done[:n]
            for average in ("sqrt", "linear"):
                name = f"ens_{trial_id({'members': [t['id'] for t in members]})}_{average}"
                pred = val / f"{name}.pred.jsonl"
                if not (val / f"{name}.eval.json").is_file():
                    models = [a for t in members
                              for a in ("--model", str(out / "trials" / t["id"] / "checkpoints" / "best.pt"))]
                    with open(val / "val.smi", "rb") as fin:
                        res = subprocess.run(["neimsctl", "predict", *models, "--average",
                                              average, "-O", "jsonl", "-q", "-o", str(pred)],
                                             stdin=fin, stderr=subprocess.PIPE)
                    if res.returncode != 0:
                        print(f"sweep: ensemble {name} of {recipe}: predict failed: "
                              f"{res.stderr.decode(errors='replace').strip()}", file=sys.stderr)
                        continue
                    ev = evaluate(val, name)
                else:
                    ev = json.loads((val / f"{name}.eval.json").read_text())
                out_rows.append({"recipe": recipe, "members": n, "average": average,
                                 **{f"val_{k}": ev[k] for k in ("recall@1", "recall@5",
                                                                "recall@10", "mean_cosine")}})
    return out_rows


def tabulate(spec: dict[str, Any], out: Path) -> None:
    metric = spec["metric"]
    rows = []
    for r in recipes(spec):
        label = ", ".join(f"{k}={value_text(v)}" for k, v in r.items()) or "(base config)"
        for seed in spec["seeds"]:
            ov = {**r, "train.seed": seed}
            tid = trial_id(ov, spec)
            d = out / "trials" / tid
            best = best_epoch(d, metric) or {}
            rows.append({"recipe": label, "seed": seed, "id": tid, "state": trial_state(d),
                         "best_epoch": best.get("epoch"),
                         **{k: best.get(k) for k in dict.fromkeys((*VAL_KEYS, metric))}})
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["recipe"], []).append(r)

    def mean(vals: list) -> float:
        vals = [v for v in vals if v is not None]
        return statistics.fmean(vals) if vals else float("nan")

    def finished(rs: list[dict]) -> list[dict]:
        """The trials that are done: an interrupted one's best epoch so far is no result."""
        return [r for r in rs if r["state"] == "done" and r[metric] is not None]

    score = {g: mean([r[metric] for r in finished(rs)]) for g, rs in groups.items()}
    order = sorted(groups, key=lambda g: 0 if math.isnan(score[g]) else -score[g])
    lines = [f"| recipe | seeds done | {metric} mean | min | max | val R@1 | val R@1 ±5 Da "
             "| val cosine | best epochs |", "|---|---|---|---|---|---|---|---|---|"]
    for g in order:
        rs = groups[g]
        done = finished(rs)
        vals = [r[metric] for r in done]
        lines.append(
            f"| {g} | {sum(r['state'] == 'done' for r in rs)}/{len(rs)} | "
            f"{mean(vals):.4f} | {min(vals, default=float('nan')):.4f} | "
            f"{max(vals, default=float('nan')):.4f} | "
            f"{mean([r['val_recall_at_1'] for r in done]):.4f} | "
            f"{mean([r['val_recall_at_1_mass5'] for r in done]):.4f} | "
            f"{mean([r['val_mean_cosine'] for r in done]):.4f} | "
            f"{' '.join(str(r['best_epoch']) for r in done)} |")
    ens = ensemble_rows(spec, out, rows)
    if ens:
        lines += ["", "Ensembles of each recipe's first n seeds (`predict --model ... --average`, "
                  "val compounds, `compare_models.py --part val` protocol):", "",
                  "| recipe | members | average | val R@1 | val R@5 | val R@10 | val mean cosine |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {e['recipe']} | {e['members']} | {e['average']} | {e['val_recall@1']:.4f} | "
                  f"{e['val_recall@5']:.4f} | {e['val_recall@10']:.4f} | "
                  f"{e['val_mean_cosine']:.4f} |" for e in ens]
        (out / "ensembles.json").write_text(json.dumps(ens, indent=1))
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(groups, order, metric, out / "results.png")
    print("\n".join(lines))


def plot(groups: dict[str, list[dict]], order: list[str], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(order) + 1.5))
    for y, g in enumerate(reversed(order)):
        vals = [r[metric] for r in groups[g] if r["state"] == "done" and r[metric] is not None]
        ax.scatter(vals, [y] * len(vals), color="tab:blue", s=18)
        if vals:
            ax.plot([statistics.fmean(vals)] * 2, [y - 0.3, y + 0.3], color="tab:red")
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([g[:70] for g in reversed(order)], fontsize=7)
    ax.set_xlabel(f"{metric} (best epoch; dots: seeds, bar: mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("run", "table"))
    ap.add_argument("spec", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    spec = load_spec(args.spec)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = train_all(spec, args.out) if args.action == "run" else 0
    tabulate(spec, args.out)
    if failed:
        print(f"sweep: {failed} trial(s) failed (their logs are named above); the table holds "
              "the others", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
