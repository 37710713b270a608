"""Build small contract-2 shards for the data tests from real molecules and spectra.

Shards are written by the real featurize code path (``neimsctl.data.membench.build_sample_shard``:
``io.msp`` -> ``chem.rowbuild`` -> ``io.h5shard.ShardWriter``), from the bundled sample or the
MassBank tiny file; :func:`smiles_shard` writes rows without spectra (``has_spectrum`` false).
"""

from __future__ import annotations

from pathlib import Path

import orjson

from neimsctl.data.membench import SAMPLE_MSP, build_sample_shard


def sample_shard(path: Path, mode: str = "student", *, msp: Path = SAMPLE_MSP,
                 limit: int | None = None) -> Path:
    """A shard of ``mode`` from the first ``limit`` records of ``msp`` (SMILES inline)."""
    return build_sample_shard(path, mode=mode, msp=msp, limit=limit)


def smiles_shard(path: Path, smiles: list[str], mode: str = "student",
                 spectra: dict[int, tuple[list[float], list[float]]] | None = None) -> Path:
    """A shard from SMILES; rows listed in ``spectra`` get ``(mz, intensity)`` peaks."""
    from neimsctl.chem.rowbuild import Item, RowBuilder, RowOptions
    from neimsctl.io.h5shard import ShardWriter

    builder = RowBuilder(RowOptions(mode=mode))
    items = []
    for i, smi in enumerate(smiles):
        rec = {"id": f"m{i}", "smiles": smi, "name": f"mol {i}"}
        if spectra and i in spectra:
            rec["mz"], rec["intensity"] = spectra[i]
        items.append(Item(i, "test", i + 1, "jsonl", orjson.dumps(rec)))
    block, rejects = builder.build(items)
    assert not rejects, rejects
    with ShardWriter(path, mode, builder.feat.settings, builder.feat.settings_hash) as sw:
        sw.append(block)
    return path
