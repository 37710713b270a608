#!/usr/bin/env python3
"""How good are a teacher's soft labels, and what do they add where the student trains?

    python tools/bench/softlabel_quality.py TEACHER.h5 SOFT.h5 [SOFT2.h5 ...] [--student-val RUN]

For each soft-label file (``neimsctl softlabel --part all``: one teacher or an ensemble) this
prints, on the compound-grouped 8:1:1 split (seed 42) that training uses:

- **val**: Recall@1/10 (no mass filter) and mean cosine of the soft labels used as predictions
  of the validation compounds, library matching exactly as in training's validation (library =
  those predictions + all training spectra). This is the teacher's quality on unseen compounds,
  the number to compare with the student's own validation figures.
- **train vs val agreement**: mean cosine (plain, like the "mean cosine" metric) between the
  soft label and every measured spectrum, on training compounds and on validation compounds. When the teacher
  has fitted its training compounds, the soft labels there are close copies of the hard labels
  and can teach the student little beyond them.

Never reads the test part. ``--student-val`` adds the best validation Recall@10 / mean cosine
from a distill run's ``train_log.jsonl`` for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from neimsctl.data.dataset import TeacherDataset  # noqa: E402
from neimsctl.io.softlabel_shard import SoftLabelReader  # noqa: E402
from neimsctl.evaluate.validation import dataset_split, first_per_compound, read_reference  # noqa: E402
from neimsctl.evaluate.metrics import build_library_eval, cosine_rows, evaluate_predictions  # noqa: E402


def soft_rows(soft: SoftLabelReader, ids: np.ndarray) -> np.ndarray:
    rows = soft.row_of([bytes(i) for i in ids])
    if (rows < 0).any():
        raise SystemExit(f"{soft.path}: {int((rows < 0).sum())} rows have no soft label; "
                         "make it with `neimsctl softlabel --part all`")
    return rows


def quality(ds: TeacherDataset, soft_path: Path) -> dict[str, float]:
    parts = dataset_split(ds)
    ref = read_reference(ds, parts.train)
    with SoftLabelReader(soft_path) as soft:
        firsts = first_per_compound(ds, parts.val)
        pred = soft.take(soft_rows(soft, ds.ids[firsts]))["mean"].astype(np.float32)
        measured = read_reference(ds, parts.val)
        task = build_library_eval(measured.spectra.astype(np.float32), measured.keys, measured.mw,
                                  pred, ds.blocks[firsts].astype(str), ds.mw[firsts],
                                  ref.spectra, ref.keys, ref.mw)
        val = evaluate_predictions(task, mass_filter=None)
        out = {"val_recall@1": val["recall@1"], "val_recall@10": val["recall@10"],
               "val_mean_cosine": val["mean_cosine"]}
        for name, idx in (("train", parts.train), ("val", parts.val)):
            truth = read_reference(ds, idx).spectra.astype(np.float32)
            lab = soft.take(soft_rows(soft, ds.ids[idx]))["mean"].astype(np.float32)
            out[f"agree_{name}"] = float(np.mean(cosine_rows(lab, truth)))
    return out


def best_student(run: Path) -> tuple[float, float]:
    best = (0.0, 0.0)
    for line in open(run / "train_log.jsonl", encoding="utf-8"):
        rec = json.loads(line)
        if rec.get("kind") == "epoch":
            v = rec["val"]
            best = max(best, (v["val_recall_at_10"], v["val_mean_cosine"]))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher_shard", type=Path)
    ap.add_argument("soft", type=Path, nargs="+")
    ap.add_argument("--student-val", type=Path, action="append", default=[])
    args = ap.parse_args()
    ds = TeacherDataset(args.teacher_shard)
    print("| soft labels | val Recall@1 | val Recall@10 | val mean cosine | "
          "cos(soft, measured) train | same, val |\n|---|---|---|---|---|---|")
    for p in args.soft:
        q = quality(ds, p)
        print(f"| {p} | {q['val_recall@1']:.3f} | {q['val_recall@10']:.3f} | "
              f"{q['val_mean_cosine']:.3f} | {q['agree_train']:.3f} | {q['agree_val']:.3f} |")
    for run in args.student_val:
        r10, cos = best_student(run)
        print(f"| student {run} (best epoch, own validation) | | {r10:.3f} | {cos:.3f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
