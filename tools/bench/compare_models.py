#!/usr/bin/env python3
"""Issue-5 comparison table: every model judged on the same test compounds through the real CLI.

Issue 18 adds the measured-replicate reference (:func:`export_replicates`): on the compounds
with two or more measured spectra, one measured spectrum as the "prediction" of the others; a
second table judges every model on those same queries. ``NAME=A.pt+B.pt`` judges an ensemble
(several ``--model``); ``--part val`` runs the same protocol on the validation compounds.

For the compound-grouped test split (8:1:1, seed 42, the split training used) of a student-mode
shard this script writes, into ``--out``:

- ``query.jsonl``: every measured test spectrum; ``train.jsonl``: every training spectrum (the
  rest of the library); ``test.smi``: one SMILES per test compound;
- per model ``NAME.pred.jsonl`` from ``neimsctl predict --model CKPT -O jsonl --threads 1``
  and ``NAME.eval.json`` from ``neimsctl eval NAME.pred.jsonl query.jsonl -l train.jsonl
  --mass-filter 5`` (library matching exactly as SPEC.md defines it);
- the nearest-neighbour baseline (``tools/bench/nn_baseline.py``) through the same ``eval``;

then prints a Markdown table: mean cosine, Recall@1/5/10/20 with and without the +-5 Da filter,
parameters, model-only CPU ms per molecule (batch 1, 1 thread, median of ``--latency-calls``),
batched molecules/s (1 thread, batch 256, model only) and the CLI's end-to-end wall time.

    python tools/bench/compare_models.py /tmp/s2/student.h5 --out /tmp/cmp \\
        teacher=/tmp/s2/tma/checkpoints/best.pt student-kd=/tmp/s2/kd/checkpoints/best.pt \\
        student-nokd=/tmp/s2/nokd2/checkpoints/best.pt neims-v1=/tmp/s2/v1/checkpoints/best.pt

``--soft NAME=SOFT.h5`` adds a row for the MC means of a soft-label file (``neimsctl softlabel
--part all``), e.g. of a teacher ensemble, which no single checkpoint represents.

Run it once, after every model was selected on the validation split: it reads the test split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nn_baseline  # noqa: E402  (tools/bench/nn_baseline.py)

from neimsctl.data.split import split_indices  # noqa: E402
from neimsctl.data.split_export import read_split, write_split  # noqa: E402
from neimsctl.io.inchikey import connectivity_blocks  # noqa: E402


def export_split(shard: Path, out: Path, part: str = "test") -> tuple[int, dict, np.ndarray]:
    """query.jsonl, train.jsonl, nn.pred.jsonl (the NN baseline), PART.smi and the measured
    replicate files (:func:`export_replicates`).

    Returns the number of compounds of the part, the shard's rows and the first row of each
    compound (whose prediction stands for the compound)."""
    d = nn_baseline.read_shards([shard])
    blocks = connectivity_blocks(d["inchikey"], as_bytes=True)
    parts = split_indices(blocks, ids=[str(i).encode() for i in d["id"]], seed=42)
    query = getattr(parts, part)
    _, first = np.unique(blocks[query], return_index=True)
    firsts = query[np.sort(first)]
    pred, _, _ = nn_baseline.nearest_neighbour_predict(d["ecfp"][firsts], d["ecfp"][parts.train],
                                                       d["spectrum"][parts.train])
    nn_baseline.export(out, d, firsts, pred, query, parts.train)
    (out / "pred.jsonl").replace(out / "nn.pred.jsonl")
    export_replicates(out, d, blocks, firsts, query)
    with open(out / f"{part}.smi", "wb") as fh:  # = `neimsctl shards split --part PART -O smi`
        return write_split(read_split([shard], part), fh, "smi"), d, firsts


def export_replicates(out: Path, d: dict, blocks: np.ndarray, firsts: np.ndarray,
                      query: np.ndarray) -> int:
    """The measured-replicate reference: what a model that predicts like another measurement
    reaches.

    For every compound of the part with two or more measured spectra, its first spectrum (the
    row whose compound the models predict) is its "prediction" and the others are the queries
    (``query_rep.jsonl``); a compound with one spectrum keeps it as its library entry (it is
    no query here), so every library entry of the part is a measured spectrum
    (``replicate.pred.jsonl``). The library's training spectra are the same as for the models,
    and every model is judged on ``query_rep.jsonl`` too (the same queries). Returns the
    number of queries.
    """
    counts = dict(zip(*np.unique(blocks[query], return_counts=True)))
    first_rows = set(firsts.tolist())
    rep = np.asarray([r for r in query if counts[blocks[r]] > 1 and r not in first_rows],
                     dtype=np.int64)
    (out / "replicate.pred.jsonl").write_bytes(
        nn_baseline._lines(d, firsts, d["spectrum"][firsts], "neimsctl.prediction/1"))
    (out / "query_rep.jsonl").write_bytes(
        nn_baseline._lines(d, rep, d["spectrum"][rep], "neimsctl.record/1"))
    return len(rep)


def export_soft(out: Path, name: str, soft: Path, d: dict, firsts: np.ndarray) -> None:
    """NAME.pred.jsonl from a soft-label file's MC means (``neimsctl softlabel --part all``):
    how good a teacher ensemble, which is no single checkpoint, is on the test compounds."""
    from neimsctl.io.softlabel_shard import SoftLabelReader

    with SoftLabelReader(soft) as r:
        pos = r.row_of([str(d["id"][k]).encode() for k in firsts])
        if (pos < 0).any():
            raise SystemExit(f"{soft}: no soft labels for {int((pos < 0).sum())} test compounds "
                             "(run neimsctl softlabel with --part all)")
        mean = r.take(pos)["mean"]
    (out / f"{name}.pred.jsonl").write_bytes(
        nn_baseline._lines(d, firsts, mean, "neimsctl.prediction/1"))


def evaluate(out: Path, name: str, queries: str = "query") -> dict:
    """``neimsctl eval`` of NAME.pred.jsonl against QUERIES.jsonl, library = the predictions +
    train.jsonl, with and without +-5 Da (written to NAME[.QUERIES].eval.json).

    The library holds one prediction per compound of the split for every query set: ``eval``
    puts only the query compounds' predictions in its library, so for a subset of the queries
    (``query_rep``) the other compounds' predictions are given as a library too."""
    pred = str(out / f"{name}.pred.jsonl")
    rest = ["-l", pred] if queries != "query" else []
    cmd = ["neimsctl", "eval", pred, str(out / f"{queries}.jsonl"), *rest,
           "-l", str(out / "train.jsonl"), "--mass-filter", "5", "--json", "-q"]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
    tag = "" if queries == "query" else f".{queries}"
    (out / f"{name}{tag}.eval.json").write_text(json.dumps(res, indent=1))
    return res


def _members(ckpt: str) -> list[str]:
    """``A.pt+B.pt`` -> its members (unless a file of that name exists)."""
    return [ckpt] if Path(ckpt).exists() else ckpt.split("+")


def predict_cli(out: Path, name: str, ckpt: str, part: str = "test") -> float:
    """Wall seconds of ``neimsctl predict`` over PART.smi (start-up and featurization included).
    ``ckpt`` may be several checkpoints joined by ``+`` (an ensemble: one ``--model`` each)."""
    models = [a for c in _members(ckpt) for a in ("--model", c)]
    t0 = time.perf_counter()
    with open(out / f"{part}.smi", "rb") as fin:
        subprocess.run(["neimsctl", "predict", *models, "-O", "jsonl", "--threads", "1",
                        "--precision", "fp32", "-q", "-o", str(out / f"{name}.pred.jsonl")],
                       stdin=fin, check=True)
    return time.perf_counter() - t0


def model_speed(ckpt: str, smiles: list[str], calls: int) -> dict:
    """Parameters, batch-1 latency (median ms) and batched throughput, model only, 1 thread."""
    from neimsctl.predict.run import Featurizer, Item
    from neimsctl.predict.model import load_model, predict_block

    torch.set_num_threads(1)
    members = _members(ckpt)
    lm = load_model(members if len(members) > 1 else ckpt, device="cpu", precision="fp32",
                    log=open("/dev/null", "w"))
    items = [Item(i, "<bench>", i + 1, "smi", s.encode()) for i, s in enumerate(smiles)]
    feat = Featurizer(lm.mode, inchikey=False, extra_v1=lm.extra_v1)
    block, _ = feat(items)

    singles = [feat([it])[0] for it in items[:calls]]
    n = len(block["ordinal"])
    for one in singles[:3]:  # warm-up: the first calls pay for allocation and page faults
        predict_block(lm, one, batch_size=1)
    lat = []
    for one in singles:
        t = time.perf_counter()
        predict_block(lm, one, batch_size=1)
        lat.append(1000 * (time.perf_counter() - t))
    t = time.perf_counter()
    predict_block(lm, block, batch_size=256)
    batched = n / (time.perf_counter() - t)
    return {"params": lm.n_parameters, "ms_batch1": statistics.median(lat),
            "mol_per_s_batched": batched}


def recall_row(name: str, ev: dict) -> str:
    """Mean cosine and Recall@K with and without +-5 Da (the replicate-subset table)."""
    rec = " | ".join(f"{ev[f'recall@{k}']:.3f}" for k in (1, 5, 10, 20))
    recm = " | ".join(f"{ev[f'recall@{k}_mass5']:.3f}" for k in (1, 5, 10, 20))
    return f"| {name} | {ev['mean_cosine']:.3f} | {rec} | {recm} |"


def row(name: str, ev: dict, speed: dict | None, cli_s: float | None, n: int) -> str:
    """:func:`recall_row` + parameters, model-only speed and the CLI's wall time."""
    if speed is None:
        sp = "– | – | –"
    else:
        sp = f"{speed['params']:,} | {speed['ms_batch1']:.2f} | {speed['mol_per_s_batched']:,.0f}"
    cli = f"{cli_s:.1f} s ({1000 * cli_s / n:.1f} ms/mol)" if cli_s else "–"
    return f"{recall_row(name, ev)} {sp} | {cli} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shard", type=Path, help="student-mode shard of the whole library")
    ap.add_argument("models", nargs="*", metavar="NAME=CKPT")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--soft", action="append", default=[], metavar="NAME=SOFT.h5",
                    help="also judge a soft-label file's means (e.g. a teacher ensemble)")
    ap.add_argument("--latency-calls", type=int, default=100)
    ap.add_argument("--part", choices=("val", "test"), default="test",
                    help="the compounds judged: select on val, report test once (default test)")
    ap.add_argument("--no-speed", action="store_true", help="skip the model-only timings")
    args = ap.parse_intermixed_args()
    args.out.mkdir(parents=True, exist_ok=True)
    n, d, firsts = export_split(args.shard, args.out, args.part)
    smiles = [line.split()[0] for line in (args.out / f"{args.part}.smi").read_text().splitlines()]
    lines = ["| model | mean cosine | R@1 | R@5 | R@10 | R@20 | R@1 ±5 Da | R@5 ±5 Da | R@10 ±5 Da "
             "| R@20 ±5 Da | parameters | ms/mol batch 1 | mol/s batch 256 | CLI predict (test set) |",
             "|" + "---|" * 14]
    results: dict = {"part": args.part, "n_compounds": n}
    ev = evaluate(args.out, "nn")
    results["nearest-neighbour"] = ev
    lines.append(row("nearest neighbour (ECFP4 Tanimoto)", ev, None, None, n))
    rep_lines = ["| model | mean cosine | R@1 | R@5 | R@10 | R@20 | R@1 ±5 Da | R@5 ±5 Da "
                 "| R@10 ±5 Da | R@20 ±5 Da |", "|" + "---|" * 10]
    subset = {"replicate": evaluate(args.out, "replicate", "query_rep"),
              "nearest-neighbour": evaluate(args.out, "nn", "query_rep")}
    rep_lines.append(recall_row("measured replicate (another measured spectrum as the "
                                "prediction)", subset["replicate"]))
    rep_lines.append(recall_row("nearest neighbour (ECFP4 Tanimoto)", subset["nearest-neighbour"]))
    for spec in args.soft:
        name, soft = spec.split("=", 1)
        export_soft(args.out, name, Path(soft), d, firsts)
        ev = evaluate(args.out, name)
        results[name] = ev
        lines.append(row(f"{name} (soft-label means)", ev, None, None, n))
        subset[name] = evaluate(args.out, name, "query_rep")
        rep_lines.append(recall_row(f"{name} (soft-label means)", subset[name]))
    for spec in args.models:
        name, ckpt = spec.split("=", 1)
        cli_s = predict_cli(args.out, name, ckpt, args.part)
        ev = evaluate(args.out, name)
        speed = None if args.no_speed else model_speed(ckpt, smiles, args.latency_calls)
        results[name] = {**ev, **(speed or {}), "cli_seconds": cli_s}
        lines.append(row(name, ev, speed, cli_s, n))
        print(lines[-1], file=sys.stderr, flush=True)
        subset[name] = evaluate(args.out, name, "query_rep")
        rep_lines.append(recall_row(name, subset[name]))
    results["replicate_subset"] = subset
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"{args.part} split: {n} compounds; queries and library as SPEC.md (library = one "
          f"prediction per {args.part} compound + every training spectrum)")
    print("\n".join(lines))
    q = subset["replicate"]["counts"]
    print(f"\nReplicate subset: the {q['n_queries']} measured spectra of the {args.part} compounds "
          "with two or more spectra, other than the first (which is the replicate row's "
          "'prediction'); same library protocol, every model on the same queries")
    print("\n".join(rep_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
