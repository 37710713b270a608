"""Throwaway MSP -> contract-1 JSONL records for featurize tests (until msp2jsonl is usable).

Only what featurize reads: id, name, smiles, inchikey, formula, mw, comments, mz, intensity.
"""

from __future__ import annotations

from pathlib import Path

import orjson


def msp_records(path: Path, limit: int | None = None) -> list[dict]:
    out: list[dict] = []
    rec: dict = {}
    peaks: list[tuple[float, float]] = []
    ordinal = 0

    def flush() -> None:
        nonlocal rec, peaks, ordinal
        if rec:
            out.append({
                "schema": "neimsctl.record/1", "id": rec.get("id", f"x:{ordinal}"),
                "name": rec.get("name", ""), "smiles": rec.get("smiles"),
                "inchikey": rec.get("inchikey"), "formula": rec.get("formula"),
                "mw": int(rec["mw"]) if "mw" in rec else None,
                "comments": dict(kv.strip().split("=", 1) for kv in
                                 rec.get("comments", "").strip('"').split(";") if "=" in kv),
                "source": {"file": str(path), "line": 0, "ordinal": ordinal},
                "mz": [p[0] for p in peaks], "intensity": [p[1] for p in peaks]})
            ordinal += 1
        rec, peaks = {}, []

    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            flush()
            if limit is not None and len(out) >= limit:
                return out
        elif ":" in line and not line[0].isdigit():
            k, v = line.split(":", 1)
            rec[k.strip().lower()] = v.strip()
        else:
            mz, it = line.split()[:2]
            peaks.append((float(mz), float(it)))
    flush()
    return out[:limit] if limit is not None else out


def write_jsonl(records: list[dict], path: Path) -> Path:
    with open(path, "wb") as fh:
        for r in records:
            fh.write(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE))
    return path
