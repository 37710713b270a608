"""Export one part of the compound-grouped split of feature shards (``neimsctl shards split``).

Training commands split the rows that carry a spectrum into train/val/test by InChIKey
connectivity block (:func:`neimsctl.data.split.split_indices`, 8:1:1, seed 42). This module
writes one part back out, so that the held-out compounds can be predicted and evaluated with the
ordinary commands::

    neimsctl shards split feats.h5 --part test --format smi > test.smi
    neimsctl shards split feats.h5 --part test > test.jsonl       # measured spectra (queries)
    neimsctl shards split feats.h5 --part train > train.jsonl     # the rest of the library
    neimsctl predict --model best.pt < test.smi > test.msp
    neimsctl eval test.msp test.jsonl -l train.jsonl --mass-filter 5

``--format jsonl`` writes ``neimsctl.record/1`` lines (peaks at base peak 999, the shard's
nominal-m/z spectrum); ``smi`` writes ``SMILES id`` for the first record of each compound.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
import orjson

from neimsctl.data.split import DEFAULT_FRACTIONS, SPLIT_SEED, split_indices
from neimsctl.io.h5shard import ShardReader
from neimsctl.io.inchikey import connectivity_blocks

PARTS = ("train", "val", "test")
FORMATS = ("jsonl", "smi")
RECORD_SCHEMA = "neimsctl.record/1"
_COLUMNS = ("id", "name", "smiles", "inchikey", "formula", "mw")


def _text(v: object) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def read_split(paths: Sequence[str | Path], part: str, *, seed: int = SPLIT_SEED,
               fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> dict[str, np.ndarray]:
    """Columns of the rows (with a spectrum) in ``part``, in shard order.

    Raises
    ------
    ValueError
        ``part`` is not train, val or test.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in (*_COLUMNS, "spectrum")}
    for p in paths:
        with ShardReader(p) as r:
            has = r.column("has_spectrum").astype(bool)
            for k in _COLUMNS:
                cols[k].append(r.column(k)[has])
            cols["spectrum"].append(r.column("spectrum")[has])
    d = {k: np.concatenate(v) for k, v in cols.items()}
    blocks = connectivity_blocks(d["inchikey"], as_bytes=True)
    parts = split_indices(blocks, ids=[_text(i).encode() for i in d["id"]], seed=seed,
                          fractions=fractions)
    rows = getattr(parts, part)
    return {k: v[rows] for k, v in d.items()}


def first_per_compound(inchikeys: np.ndarray) -> np.ndarray:
    """Positions of the first row of each connectivity block, in order."""
    _, first = np.unique(connectivity_blocks(inchikeys, as_bytes=True), return_index=True)
    return np.sort(first).astype(np.int64)


def write_split(d: dict[str, np.ndarray], out: BinaryIO, fmt: str = "jsonl", *,
                source: str = "") -> int:
    """Write ``d`` (from :func:`read_split`) as JSONL records or SMILES lines; returns lines written.

    Records carry what a shard keeps (no synonyms, MSP fields or comments); ``source.file`` is
    ``source`` (the shard), ``source.line``/``ordinal`` the 1-based position in this output.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "smi":
        rows = first_per_compound(d["inchikey"])
        for r in rows:
            out.write(f"{_text(d['smiles'][r])} {_text(d['id'][r])}\n".encode())
        return len(rows)
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdMolDescriptors

    RDLogger.DisableLog("rdApp.*")
    for r in range(len(d["id"])):
        mol = Chem.MolFromSmiles(_text(d["smiles"][r]))
        exact = round(rdMolDescriptors.CalcExactMolWt(mol), 5) if mol is not None else None
        spec = np.asarray(d["spectrum"][r], dtype=np.float32)
        mz = np.flatnonzero(spec > 0)
        top = float(spec.max()) if len(mz) else 1.0
        rec = {"schema": RECORD_SCHEMA, "id": _text(d["id"][r]), "name": _text(d["name"][r]),
               "synonyms": [], "source": {"file": source, "line": r + 1, "ordinal": r + 1},
               "smiles": _text(d["smiles"][r]), "inchikey": _text(d["inchikey"][r]),
               "formula": _text(d["formula"][r]), "mw": int(d["mw"][r]), "exact_mass": exact,
               "structure_from": "smiles" if mol is not None else None, "msp": {}, "comments": {}, "flags": [],
               "mz": mz.tolist(), "intensity": np.round(999.0 * spec[mz].astype(np.float64) / top, 3).tolist()}
        out.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
    return len(d["id"])
