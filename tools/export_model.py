#!/usr/bin/env python3
"""Export a trained checkpoint as a shipped model: fp16 (or int8) weights + a JSON model card.

An ensemble file (``neimsctl ensemble``, e.g. with ``--int8``) is shipped as it is, with a card
that lists its members (those of the files it includes too: export those first, into the same
directory).

    python tools/export_model.py RUN/checkpoints/best.pt neimsctl/resources/models/student-default.pt \\
        --weights int8 --eval RUN-split/test.eval.json --train-log RUN/train_log.jsonl \\
        --command "tools/train_default_model.sh"

The output keeps only what inference needs (``format``, ``model`` as float16, ``config.model``,
``featurizer_hash``, ``versions``): no optimizer state, no pickled objects; ``neimsctl predict``
widens the weights back to float32 when it loads them. ``--weights int8`` stores every large
matrix as int8 codes with one float scale per row (``quantize_int8``, the storage of
``neimsctl ensemble --int8``; half the bytes of float16) and the rest in float16. The card (``OUT.json``) records the
sha256 of the weights file, the parameter count, the data and its licences, the test-split
metrics (``--eval``: a ``neimsctl eval --json`` output), the replicate reference (``--replicate``:
the model and a measured replicate on the same queries), the training run and the command that
retrains it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
from pathlib import Path

import torch

from neimsctl import __version__
from neimsctl.errors import CheckpointError, NeimsError
from neimsctl.models.checkpoint import (copy_checkpoint, file_sha256, is_ensemble, load_checkpoint,
                                        model_state, quantize_int8)

LICENSE_NOTE = ("Trained on MassBank EI records (../shared/data/massbank_ei.msp). Most of them are "
                "licensed CC BY-NC-SA (others CC BY / CC BY-SA): the weights are a derived work for "
                "NON-COMMERCIAL use only, under CC BY-NC-SA 4.0 terms, with attribution to the "
                "MassBank contributors (see the record accessions in the library). The code is MIT.")


def export(src: Path, dst: Path, *, eval_json: Path | None, train_log: Path | None, command: str,
           notes: str, weights: str = "fp16", replicate: tuple[Path, Path] | None = None) -> dict:
    ck = load_checkpoint(src, map_location="cpu", ensemble=True)
    for inc in ck.get("include") or []:    # already beside the destination (exported first)
        beside = dst.parent / inc["file"]
        if inc["file"] == dst.name:
            raise CheckpointError(f"{dst}: the file {src} includes: refusing to write over it")
        if not beside.is_file() or file_sha256(beside) != inc["sha256"]:
            raise CheckpointError(f"{dst}: {src} includes {inc['file']!r} (sha256 "
                                  f"{inc['sha256'][:12]}): export that file into {dst.parent} first")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if is_ensemble(ck):
        copy_checkpoint(src, dst)
        card = _ensemble_card(ck)
    else:
        scales: dict = {}
        if weights == "int8":
            state, scales = quantize_int8(model_state(ck))
        else:
            state = {k: (v.half() if v.is_floating_point() else v) for k, v in model_state(ck).items()}
        slim = {"format": ck["format"], "model": state, "config": {"model": _resolved(ck["config"]["model"])},
                "featurizer_hash": ck.get("featurizer_hash"), "versions": ck.get("versions", {}),
                "epoch": ck.get("epoch"), "best_metric": ck.get("best_metric"),
                **({"quantized": scales} if scales else {})}
        tmp = dst.with_suffix(".pt.partial")
        torch.save(slim, tmp)
        tmp.replace(dst)
        card = {"arch": ck["config"]["model"].get("name"),
                "weights_dtype": "int8 matrices + float16" if scales else "float16",
                "n_parameters": _n_parameters(state), "model_config": slim["config"]["model"],
                "featurizer_hash": ck.get("featurizer_hash"), "epoch_kept": ck.get("epoch"),
                "best_metric": ck.get("best_metric")}
    sha = hashlib.sha256(dst.read_bytes()).hexdigest()
    card = {
        "name": dst.stem, "arch": card.pop("arch"), "sha256": sha, "file_bytes": dst.stat().st_size,
        **card, "trained_from": str(src),
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "neimsctl_version": __version__, "versions": ck.get("versions", {}),
        "license": LICENSE_NOTE, "retrain_command": command, "notes": notes,
    }
    if eval_json is not None:
        card["test_metrics"] = _metrics(eval_json)
        card["test_metrics_source"] = str(eval_json)
    if replicate is not None:   # the model and a measured replicate on the same queries
        card["replicate_subset"] = {"model": _metrics(replicate[0]),
                                    "measured_replicate": _metrics(replicate[1]),
                                    "sources": [str(p) for p in replicate]}
    if train_log is not None:
        recs = [json.loads(x) for x in train_log.read_text().splitlines() if x.strip()]
        ep = [r for r in recs if r.get("kind") == "epoch"]
        if ep:
            card["training"] = {"epochs": len(ep), "seconds": round(sum(r.get("seconds", 0) for r in ep), 1),
                                "last_val": ep[-1].get("val", {})}
    dst.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def _resolved(model: dict) -> dict:
    """A student's config as the model reads it: ``input_dim`` widened for ``fragments: true``
    (a run's config keeps the width as written, e.g. 6144 with ``fragments: true``)."""
    if model.get("name") != "student":
        return model
    from neimsctl.models.student import StudentConfig

    width = StudentConfig.from_dict({k: v for k, v in model.items() if k != "name"}).input_dim
    return {**model, "input_dim": width}


def _metrics(path: Path) -> dict:
    """The identification figures of a ``neimsctl eval --json`` output."""
    m = json.loads(path.read_text())
    return {k: m[k] for k in m if k.startswith("recall@") or k in (
        "mean_cosine", "median_cosine", "mean_weighted_cosine", "mae", "rmse", "counts")}


def _n_parameters(state: dict) -> int:
    return int(sum(v.numel() for k, v in state.items()
                   if (v.is_floating_point() or v.dtype == torch.int8) and not k.endswith("expert_bias")))


def _ensemble_card(ens: dict) -> dict:
    """The card fields of an ensemble file: its members (architecture, parameters, weights)."""
    members = [{"label": m.get("label"), "arch": (m.get("config") or {}).get("model", {}).get("name"),
                "n_parameters": _n_parameters(m["model"]), "sha256": m.get("sha256"),
                "weights_dtype": "int8 matrices + float16" if m.get("quantized") else
                str(next(v.dtype for v in m["model"].values() if v.is_floating_point())).replace("torch.", ""),
                "model_config": _resolved((m.get("config") or {}).get("model") or {})}
               for m in ens["members"]]
    return {"arch": "ensemble", "format": ens["format"], "average": ens["average"],
            "sharpen": float(ens.get("sharpen", 1.0)),
            "weights_dtype": "; ".join(sorted({m["weights_dtype"] for m in members})),
            "n_parameters": sum(m["n_parameters"] for m in members), "members": members,
            **({"include": ens["include"]} if ens.get("include") else {})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--eval", type=Path, help="neimsctl eval --json output on the test split")
    ap.add_argument("--replicate", type=Path, nargs=2, metavar=("MODEL.json", "REPLICATE.json"),
                    help="eval --json of the model and of a measured replicate on the same queries "
                         "(compare_models.py's *.query_rep.eval.json)")
    ap.add_argument("--train-log", type=Path)
    ap.add_argument("--command", default="tools/train_default_model.sh")
    ap.add_argument("--notes", default="")
    ap.add_argument("--weights", choices=("fp16", "int8"), default="fp16",
                    help="storage of a single model's weights (an ensemble file keeps its own)")
    args = ap.parse_args()
    if args.output.resolve() == args.checkpoint.resolve():
        ap.error(f"{args.output}: the output would overwrite its input checkpoint; give another path")
    try:
        card = export(args.checkpoint, args.output, eval_json=args.eval, train_log=args.train_log,
                      command=args.command, notes=args.notes, weights=args.weights,
                      replicate=tuple(args.replicate) if args.replicate else None)
    except (NeimsError, OSError) as e:      # one line, no traceback (a missing or damaged file)
        print(f"export_model.py: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: card[k] for k in ("name", "sha256", "file_bytes", "n_parameters")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
