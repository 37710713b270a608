"""Feature files of either format (HDF5 shard or zblock stream): list, read, merge.

``neimsctl shards`` builds on these. :func:`merge_shards` refuses inputs whose mode or
settings hash differ. When the inputs are a complete set made by ``featurize --shard K/N``
(attribute ``shard`` = ``"1/N"`` ... ``"N/N"``, each once), rows are interleaved back into
input order by their ``ordinal`` column, so merging the shards gives the same rows as one
unsharded run; otherwise the inputs are concatenated in the order given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from neimsctl.errors import FormatError
from neimsctl.interrupts import check as check_interrupt
from neimsctl.io.featblock import block_rows, concat_blocks, take_rows
from neimsctl.io.h5shard import ShardReader, ShardWriter
from neimsctl.io.streams import display_name, is_dash, open_in, sniff
from neimsctl.io.zblock import ZBlockReader

PROVENANCE_KEYS = ("neimsctl_version", "argv", "created")


@dataclass
class ShardInfo:
    """What ``neimsctl shards list`` prints about one file."""

    path: str
    format: str
    mode: str
    rows: int
    settings_hash: str
    size: int
    shard: str | None = None


@dataclass
class FeatureSource:
    """One feature input: header facts now, blocks on iteration (read once for streams)."""

    path: str
    format: str
    mode: str
    settings: dict[str, Any]
    settings_hash: str
    attrs: dict[str, Any] = field(default_factory=dict)
    rows: int | None = None

    def blocks(self, size: int = 4096) -> Iterator[dict[str, np.ndarray]]:
        if self.format == "h5":
            with ShardReader(self.path) as r:
                yield from r.iter_blocks(size)
            return
        with open_in(self.path) as fh:
            yield from ZBlockReader(fh, display_name(self.path))


def open_source(path: str | os.PathLike) -> FeatureSource:
    """Read the header of an HDF5 shard or zblock stream (``-`` is stdin, a stream)."""
    name = str(path)
    if not is_dash(path) and sniff(path) == "h5":
        with ShardReader(path) as r:
            return FeatureSource(name, "h5", r.mode, r.settings, r.settings_hash, dict(r.attrs),
                                 r.n_rows)
    with open_in(path) as fh:
        head = ZBlockReader(fh, display_name(path)).header
    if is_dash(path):
        raise FormatError("a zblock stream on stdin can be read only once; give a file")
    return FeatureSource(name, "zst", head["mode"], head["featurizer"], head["settings_hash"],
                         {k: v for k, v in head.items() if k not in ("featurizer",)})


def list_features(paths: Sequence[str | os.PathLike]) -> list[ShardInfo]:
    """Facts of each file for ``shards list``; zblock row counts need a full read."""
    out = []
    for p in paths:
        src = open_source(p)
        rows = src.rows if src.rows is not None else sum(block_rows(b) for b in src.blocks())
        out.append(ShardInfo(str(p), src.format, src.mode, rows, src.settings_hash,
                             os.path.getsize(p), src.attrs.get("shard")))
    return out


def shard_tag(tag: Any) -> tuple[int, int] | None:
    """``(K, N)`` of a ``shard`` attribute ``"K/N"`` with ``1 <= K <= N``; None for anything else
    (absent, or a value no ``featurize --shard`` writes)."""
    parts = tag.split("/") if isinstance(tag, str) else []
    if len(parts) != 2 or not all(x.isascii() and x.isdigit() for x in parts):
        return None
    k, n = int(parts[0]), int(parts[1])
    return (k, n) if 1 <= k <= n else None


def is_shard_set(sources: Sequence[FeatureSource]) -> bool:
    """True when the sources are exactly shards ``1/N .. N/N`` of one ``--shard`` split."""
    pairs = [shard_tag(s.attrs.get("shard")) for s in sources]
    if not pairs or any(p is None for p in pairs):
        return False
    n = pairs[0][1]  # type: ignore[index]
    return sorted(pairs) == [(k, n) for k in range(1, n + 1)]  # type: ignore[type-var]


def shard_set_gap(sources: Sequence[FeatureSource]) -> str | None:
    """Why inputs that all carry ``--shard K/N`` tags are no complete set (a part missing or
    given twice): they are then concatenated, not interleaved; None when that is not the case."""
    pairs = [shard_tag(s.attrs.get("shard")) for s in sources]
    if len(pairs) < 2 or any(p is None for p in pairs) or is_shard_set(sources):
        return None
    ns = sorted({p[1] for p in pairs})  # type: ignore[index]
    if len(ns) > 1:
        return f"their --shard tags are of different splits (/{', /'.join(map(str, ns))})"
    n = ns[0]
    ks = [p[0] for p in pairs]  # type: ignore[index]
    missing = [f"{k}/{n}" for k in range(1, n + 1) if k not in ks]
    twice = sorted({f"{k}/{n}" for k in ks if ks.count(k) > 1})
    why = [f"{', '.join(missing)} missing"] if missing else []
    why += [f"{', '.join(twice)} given more than once"] if twice else []
    return f"their --shard tags are no complete set of 1/{n} .. {n}/{n} ({'; '.join(why)})"


def _interleave(sources: Sequence[FeatureSource], mode: str,
                size: int) -> Iterator[dict[str, np.ndarray]]:
    """k-way merge of blocks by ``ordinal`` (each source is already in ordinal order)."""
    iters = [s.blocks(size) for s in sources]
    heads: list[dict[str, np.ndarray] | None] = [next(it, None) for it in iters]
    while any(h is not None and block_rows(h) for h in heads):
        live = [h for h in heads if h is not None and block_rows(h)]
        bound = min(int(h["ordinal"][-1]) for h in live)
        parts = []
        for i, h in enumerate(heads):
            if h is None or not block_rows(h):
                continue
            cut = int(np.searchsorted(h["ordinal"], bound, side="right"))
            parts.append(take_rows(h, np.arange(cut), mode))
            rest = take_rows(h, np.arange(cut, block_rows(h)), mode)
            heads[i] = rest if block_rows(rest) else next(iters[i], None)
        merged = concat_blocks(parts, mode)
        yield take_rows(merged, np.argsort(merged["ordinal"], kind="stable"), mode)


def merge_shards(paths: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 attrs: dict[str, Any] | None = None, size: int = 4096,
                 warn: Callable[[str], None] | None = None) -> int:
    """Merge HDF5 shards and/or zblock streams into one HDF5 shard at ``out``.

    ``warn`` is told when the inputs carry ``--shard`` tags that are no complete set (see
    :func:`shard_set_gap`): they are concatenated in the order given, not interleaved.

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    FormatError
        No inputs, or inputs with different modes or settings hashes.
    """
    sources = [open_source(p) for p in paths]
    if not sources:
        raise FormatError("nothing to merge")
    first = sources[0]
    for s in sources[1:]:
        if (s.mode, s.settings_hash) != (first.mode, first.settings_hash):
            raise FormatError(f"{s.path}: mode/settings hash {s.mode}/{s.settings_hash} differ from "
                              f"{first.path}: {first.mode}/{first.settings_hash}; refusing to merge")
    gap = shard_set_gap(sources)
    if gap is not None and warn is not None:
        warn(f"{gap}: the inputs are concatenated in the order given, not interleaved into "
             f"input order")
    blocks = _interleave(sources, first.mode, size) if is_shard_set(sources) and len(sources) > 1 \
        else (b for s in sources for b in s.blocks(size))
    with ShardWriter(out, first.mode, first.settings, first.settings_hash, attrs) as w:
        for b in blocks:
            check_interrupt()   # a Ctrl-C/SIGTERM an h5py callback swallowed stops it here
            w.append(b)
        return w.n_rows


def without_provenance(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k not in PROVENANCE_KEYS}
