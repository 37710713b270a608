"""Hand-made spectra whose library-matching ranks are known by construction (eval tests).

Predictions: compounds A, B, C, each a single peak (m/z 50, 60, 70). Extra library (measured):
D (m/z 80, MW 305) and E (m/z 90, MW 400). Queries (measured), weighted cosine m/z^1 * I^0.5:

- A = {50: 1}                   -> only A's prediction matches: rank 1;
- B = {70: 1, 60: 0.5}          -> C (70 * 1) beats B (60 * 0.71): rank 2;
- C = {80: 1, 90: 0.8, 70: 0.5} -> D (80) and E (90 * 0.89 = 80.5) beat C (49.5): rank 3.

So Recall@1/2/3 = 1/3, 2/3, 1. With a +-5 Da mass filter (MWs A 100, B 200, C 300, D 305,
E 400): B's rival C (300) is filtered out (rank 1), C keeps D (305) but loses E: rank 2, so
Recall@1/2 = 2/3, 1.
"""

from __future__ import annotations

from pathlib import Path

import orjson

KEYS = {c: f"{c * 14}-UHFFFAOYSA-N" for c in "ABCDE"}
MW = {"A": 100, "B": 200, "C": 300, "D": 305, "E": 400}
PRED = {"A": {50: 999}, "B": {60: 999}, "C": {70: 999}}
LIBRARY = {"D": {80: 999}, "E": {90: 999}}
QUERIES = {"A": {50: 1.0}, "B": {70: 1.0, 60: 0.5}, "C": {80: 1.0, 90: 0.8, 70: 0.5}}
RECALL = {1: 1 / 3, 2: 2 / 3, 3: 1.0}
RECALL_MASS5 = {1: 2 / 3, 2: 1.0, 3: 1.0}


def msp_text(spectra: dict[str, dict[int, float]], with_mw: bool = True) -> str:
    out = []
    for c, peaks in spectra.items():
        out += [f"Name: compound {c}", f"ID: {c}", f"InChIKey: {KEYS[c]}"]
        out += [f"MW: {MW[c]}"] if with_mw else []
        out += [f"Num Peaks: {len(peaks)}", *(f"{mz} {i:g}" for mz, i in peaks.items()), ""]
    return "\n".join(out) + "\n"


def prediction_lines(spectra: dict[str, dict[int, float]], *, uncertainty: dict[str, float] | None = None,
                     experts: dict[str, tuple[list[int], list[float]]] | None = None,
                     header: dict | None = None) -> bytes:
    lines = [orjson.dumps({"schema": "neimsctl.prediction-run/1", **header})] if header else []
    for c, peaks in spectra.items():
        rec = {"schema": "neimsctl.prediction/1", "id": f"pred-{c}", "name": f"compound {c}",
               "smiles": "C", "inchikey": KEYS[c], "mw": MW[c], "mz": list(peaks),
               "intensity": list(peaks.values()), "latency_ms": 2.0 + len(lines)}
        if uncertainty is not None:
            rec["uncertainty"] = [uncertainty[c] * i for i in peaks.values()]
        if experts is not None:
            rec["experts"] = {"index": experts[c][0], "weight": experts[c][1]}
        lines.append(orjson.dumps(rec))
    return b"\n".join(lines) + b"\n"


def record_lines(spectra: dict[str, dict[int, float]]) -> bytes:
    return b"".join(orjson.dumps({"schema": "neimsctl.record/1", "id": c, "name": f"compound {c}",
                                  "inchikey": KEYS[c], "mw": MW[c], "mz": list(p),
                                  "intensity": list(p.values())}) + b"\n"
                    for c, p in spectra.items())


def write_case(tmp: Path) -> dict[str, Path]:
    """pred.msp, pred.jsonl (with experts, uncertainty, header), queries.jsonl, library.msp."""
    paths = {"pred_msp": tmp / "pred.msp", "pred_jsonl": tmp / "pred.jsonl",
             "queries": tmp / "queries.jsonl", "library": tmp / "library.msp",
             "queries_msp": tmp / "queries.msp"}
    paths["pred_msp"].write_text(msp_text(PRED))
    paths["pred_jsonl"].write_bytes(prediction_lines(
        PRED, uncertainty={"A": 0.01, "B": 0.2, "C": 0.5},
        experts={"A": ([0, 1], [0.75, 0.25]), "B": ([0, 2], [0.5, 0.5]), "C": ([2, 0], [0.9, 0.1])},
        header={"model": "toy", "n_parameters": 1234, "model_bytes": 5678, "n_molecules": 4,
                "seconds": 2.0}))
    paths["queries"].write_bytes(record_lines(QUERIES))
    paths["queries_msp"].write_text(msp_text(QUERIES))
    paths["library"].write_text(msp_text(LIBRARY))
    return paths
