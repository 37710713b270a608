"""A stream of SMILES as teacher-graph batches, for bond-masking pretraining on millions of molecules.

Memory stays flat whatever the input size: nothing but a bounded shuffle buffer of raw SMILES
strings is held, and molecules are featurized on the fly in DataLoader workers.

Input (:func:`read_smiles`): ``.smi`` lines ``SMILES [name]``, JSONL records with a ``smiles``
field, or CSV with a header and a SMILES column (PCQM4Mv2's ``data.csv.gz``: ``idx,smiles,...``);
plain, gzip or zstd (sniffed by magic bytes). ``auto`` picks the format per file from its first line.

Split: a molecule's part is a pure function of ``(split_seed, SMILES as written)`` (the keyed
BLAKE2b of :func:`neimsctl.data.split.block_unit` cut at the cumulative ``data.split``
fractions), so it does not depend on the line order and costs no RDKit parse. MOSES and
PCQM4Mv2 write one canonical SMILES per molecule, so this is the canonical-SMILES split there;
one molecule spelled two ways could land in two parts.

Order (:class:`SmilesStream`): pass ``p`` over the train part goes through a bounded shuffle
buffer seeded by ``(seed, p)`` and is cut into *global batches* of ``batch_size`` raw items.
Global batch ``j`` goes to rank ``j % world_size`` as its batch ``k = j // world_size`` (a pass
is cut to a multiple of ``world_size`` batches under DDP, so ranks step together), and within a
rank an epoch window's batches are dealt round robin to the DataLoader workers from the first
one on; every worker reads the raw stream itself (cheap: no parse) and featurizes only its own
batches, so the order is the same with any number of workers, and skipping batches (resume)
needs no featurization. Without ``steps_per_epoch``
epoch ``e`` is pass ``e``; with it, epochs are consecutive windows of ``steps_per_epoch x
grad_accum`` batches of the endless sequence of passes. SMILES RDKit cannot parse are dropped
from their batch (a batch may be a little short) and reported once (first pass only).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import random
import signal
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import orjson
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from neimsctl.chem.graph import atom_features, bond_graph
from neimsctl.chem.structure import StructureError, mol_from_smiles
from neimsctl.data.split import SPLIT_SEED, block_unit
from neimsctl.errors import ConfigError, FormatError
from neimsctl.io.parallel import dies_with_this_process
from neimsctl.io.streams import display_name, open_in

__all__ = ["SmilesItem", "StreamSpec", "SmilesStream", "read_smiles", "split_part",
           "featurize_batch", "collect_part", "FORMATS"]

FORMATS = ("auto", "smi", "csv", "jsonl")
PARTS = ("train", "val", "test")
SHUFFLE_BUFFER = 50_000


class SmilesItem(NamedTuple):
    """One raw input molecule: source file index, 1-based line, SMILES text, name."""
    src: int
    line: int
    smiles: str
    name: str


def _detect(first: str, smiles_column: str | None) -> str:
    text = first.lstrip()
    if text.startswith("{"):
        return "jsonl"
    fields = [f.strip().strip('"').lower() for f in text.split(",")]
    if len(fields) > 1 and (smiles_column or "smiles").lower() in fields:
        return "csv"
    if "," in (text.split() or [""])[0]:
        return "csv"      # no SMILES holds a comma: a CSV header without the column (named then)
    if smiles_column is not None:
        raise FormatError(f"--smiles-column {smiles_column!r}: the first line is not a CSV "
                          f"header holding that column: {first[:80]!r}")
    return "smi"


def read_smiles(path: str | os.PathLike, fmt: str = "auto", *, smiles_column: str | None = None,
                src: int = 0) -> Iterator[SmilesItem]:
    """Yield the molecules of one input (``-`` = stdin) as :class:`SmilesItem`.

    Empty lines and ``#`` comments are skipped, as is a first ``.smi`` line that is only the
    word ``smiles``. JSONL records without a SMILES string are yielded with ``smiles=""`` (the
    featurizer rejects them, so they are reported).

    Raises
    ------
    InputError
        Unreadable file.
    FormatError
        Unknown format, a CSV without the SMILES column, or bad JSON.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"input format {fmt!r} is not one of {', '.join(FORMATS)}")
    name = display_name(path)
    with open_in(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        first, first_no = "", 1
        for first_no, first in enumerate(text, 1):   # blank lines before it still count
            if first.strip():
                break
        kind = _detect(first, smiles_column) if fmt == "auto" else fmt
        lines = itertools.chain([first], text)
        if kind == "csv":
            yield from _read_csv(lines, smiles_column or "smiles", name, src, first_no - 1)
            return
        col = smiles_column or "smiles"
        for no, ln in enumerate(lines, first_no):
            s = ln.strip()
            if not s or s.startswith("#"):
                continue
            if kind == "jsonl":
                try:
                    rec = orjson.loads(s)
                except orjson.JSONDecodeError as exc:
                    raise FormatError(f"bad JSON: {exc}", file=name, line=no) from None
                rec = rec if isinstance(rec, dict) else {}
                smi, label = rec.get(col), rec.get("id") or rec.get("name") or ""
                yield SmilesItem(src, no, smi if isinstance(smi, str) else "", str(label))
                continue
            smi, *label = s.split(None, 1)      # at the first blank or tab, as predict reads it
            if no == first_no and smi.lower() == "smiles":
                continue
            yield SmilesItem(src, no, smi, label[0] if label else "")


def _read_csv(lines: Iterator[str], column: str, name: str, src: int,
              skipped: int = 0) -> Iterator[SmilesItem]:
    """The SMILES column of CSV ``lines``; ``skipped`` blank lines came before them."""
    reader = csv.reader(lines)
    header = [h.strip().lower() for h in next(reader, [])]
    if column.lower() not in header:
        raise FormatError(f"CSV header has no column {column!r} (columns: {', '.join(header)}); "
                          "use --smiles-column", file=name, line=skipped + 1)
    ci = header.index(column.lower())
    ni = next((header.index(k) for k in ("name", "id", "idx") if k in header), None)
    for row in reader:
        if len(row) > ci and row[ci].strip():
            yield SmilesItem(src, skipped + reader.line_num, row[ci].strip(),
                             row[ni] if ni is not None and len(row) > ni else "")


def split_part(smiles: str, seed: int, fractions: Sequence[float]) -> int:
    """Part of a molecule: 0 train, 1 val, 2 test, from ``(seed, SMILES text)``."""
    u = block_unit(smiles.encode(), seed)
    return 0 if u < fractions[0] else 1 if u < fractions[0] + fractions[1] else 2


def featurize_batch(items: Sequence[Any]) -> tuple[Any, list[tuple[Any, str]]]:
    """Teacher graphs of ``items`` (objects with ``.smiles``) collated into a PyG ``Batch``.

    Returns ``(batch or None when nothing parsed, [(item, reason, detail), ...] rejected)``:
    ``reason`` a reject code (formats/rejects.v1.md), ``detail`` what was wrong. The batch
    has ``x (N, 48)``, ``edge_index (2, E)``, ``edge_attr (E, 6)``, ``batch (N,)``, ``ptr``.
    """
    from torch_geometric.data import Batch

    xs, eis, eas, rejects = [], [], [], []
    for it in items:
        try:
            mol = mol_from_smiles(it.smiles)
            x = atom_features(mol)
            ei, ea = bond_graph(mol)
        except StructureError as exc:
            rejects.append((it, exc.reason, str(exc)))
            continue
        except (ValueError, RuntimeError) as exc:  # RDKit oddities in featurization
            rejects.append((it, "featurize_failed", f"RDKit failed on its graph: {exc}"[:200]))
            continue
        xs.append(x)
        eis.append(ei)
        eas.append(ea)
    if not xs:
        return None, rejects
    sizes = np.array([len(x) for x in xs])
    ptr = np.concatenate([[0], np.cumsum(sizes)])
    ei = np.concatenate([e.astype(np.int64) + off for e, off in zip(eis, ptr[:-1])])
    batch = Batch(x=torch.from_numpy(np.concatenate(xs)),
                  edge_index=torch.from_numpy(np.ascontiguousarray(ei.T)).reshape(2, -1),
                  edge_attr=torch.from_numpy(np.concatenate(eas)).reshape(-1, eas[0].shape[1]),
                  batch=torch.from_numpy(np.repeat(np.arange(len(xs)), sizes)),
                  ptr=torch.from_numpy(ptr))
    return batch, rejects


@dataclass(frozen=True)
class StreamSpec:
    """What to read and how to split it (picklable, shipped to workers)."""
    paths: tuple[str, ...]
    fmt: str = "auto"
    smiles_column: str | None = None
    max_records: int | None = None
    fractions: tuple[float, ...] | None = (0.9, 0.1, 0.0)  # None: no split, all is one part
    split_seed: int = SPLIT_SEED

    def items(self, part: int | None = 0) -> Iterator[SmilesItem]:
        """Molecules of ``part`` (0 train, 1 val, 2 test; None = all) in file order."""
        def all_items() -> Iterator[SmilesItem]:
            for i, p in enumerate(self.paths):
                yield from read_smiles(p, self.fmt, smiles_column=self.smiles_column, src=i)
        it = itertools.islice(all_items(), self.max_records)
        if part is None or self.fractions is None:
            return it
        fr = self.fractions
        return (x for x in it if split_part(x.smiles, self.split_seed, fr) == part)


def collect_part(spec: StreamSpec, part: int | None, limit: int | None) -> list[SmilesItem]:
    """The first ``limit`` molecules of a part (validation set), in file order."""
    return list(itertools.islice(spec.items(part), limit))


def _shuffled(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Bounded-buffer shuffle: memory ``size`` items, exact permutation when the input fits."""
    buf: list[Any] = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = x
    rng.shuffle(buf)
    yield from buf


class _Tagged(NamedTuple):
    pass_no: int
    src: int
    line: int
    smiles: str


class _BatchStream(IterableDataset):
    """Yields ``(Batch or None, rejects)`` for this worker's slots of one epoch window."""

    def __init__(self, owner: "SmilesStream", first_pass: int, k_start: int,
                 k_end: int | None, rank: int, world: int) -> None:
        self.owner, self.first_pass, self.k_start, self.k_end = owner, first_pass, k_start, k_end
        self.rank, self.world = rank, world

    def _global_batches(self) -> Iterator[list[_Tagged]]:
        o = self.owner
        chunk: list[_Tagged] = []
        passes = itertools.count(self.first_pass) if o.steps_mode else [self.first_pass]
        for p in passes:
            n = 0
            rng = random.Random(o.seed * 1_000_003 + p)
            for it in _shuffled(o.spec.items(0), o.shuffle_buffer, rng):
                n += 1
                chunk.append(_Tagged(p, it.src, it.line, it.smiles))
                if len(chunk) == o.batch_size:
                    yield chunk
                    chunk = []
            if n == 0:
                break
            if not o.steps_mode and chunk:  # a pass is an epoch: its last batch may be short
                yield chunk
                chunk = []

    def __iter__(self) -> Iterator[tuple[Any, list]]:
        info = get_worker_info()
        w, i = (info.num_workers, info.id) if info is not None else (1, 0)
        if info is not None:  # a worker: Ctrl-C is the main process's business (checkpoint first)
            torch.set_num_threads(1)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:   # as SIGTERM; nohup: ignored
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
        batches = self._global_batches()
        for k in itertools.count():  # rank-local batch k = global batches k*world .. +world-1
            group = list(itertools.islice(batches, self.world))
            if len(group) < self.world:
                return  # under DDP every rank must see the same number of batches
            if self.k_end is not None and k >= self.k_end:
                return
            if k < self.k_start or (k - self.k_start) % w != i:
                continue  # the DataLoader asks worker 0 first: it takes k_start
            yield featurize_batch(group[self.rank])


class SmilesStream:
    """The training data of :func:`neimsctl.train.trainer.run_training` as a batch factory.

    ``stream(epoch, skip_batches, dist_info)`` returns an iterator of PyG ``Batch`` objects;
    ``len(stream)`` is ``steps_per_epoch * grad_accum`` when ``steps_per_epoch`` is set
    (otherwise an epoch is one pass and has no known length). ``on_rejects(list)`` is called
    in the main process with ``(item, reason, detail)`` triples met in the first pass.
    """

    def __init__(self, spec: StreamSpec, *, batch_size: int, seed: int = 42, num_workers: int = 0,
                 steps_per_epoch: int | None = None, grad_accum: int = 1,
                 shuffle_buffer: int = SHUFFLE_BUFFER, on_rejects: Any = None) -> None:
        if batch_size < 1 or shuffle_buffer < 1:
            raise ConfigError("batch size and shuffle buffer must be >= 1")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ConfigError(f"train.steps_per_epoch: must be >= 1, got {steps_per_epoch}")
        self.spec, self.batch_size, self.seed = spec, batch_size, seed
        self.num_workers, self.shuffle_buffer = num_workers, shuffle_buffer
        self.steps_per_epoch, self.grad_accum = steps_per_epoch, grad_accum
        self.on_rejects = on_rejects

    @property
    def steps_mode(self) -> bool:
        return self.steps_per_epoch is not None

    def __len__(self) -> int:
        if self.steps_per_epoch is None:
            raise TypeError("an epoch is one pass over the stream; its length is unknown")
        return self.steps_per_epoch * self.grad_accum

    def batches(self, epoch: int, skip: int = 0, rank: int = 0,
                world_size: int = 1) -> Iterator[Any]:
        """This rank's batches of ``epoch`` from batch ``skip`` on."""
        if self.steps_mode:
            per = len(self)
            ds = _BatchStream(self, 0, epoch * per + skip, (epoch + 1) * per, rank, world_size)
        else:
            ds = _BatchStream(self, epoch, skip, None, rank, world_size)
        # a generator of its own: a DataLoader without one draws its base seed from the global
        # torch RNG, one draw per epoch's loader; a run resumed mid-epoch made that draw again
        # after restoring the RNG, so every later bond mask and dropout differed
        loader = DataLoader(ds, batch_size=None, collate_fn=_identity,
                            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch),
                            num_workers=self.num_workers,
                            worker_init_fn=dies_with_this_process() if self.num_workers else None)
        for batch, rejects in loader:
            if rejects and self.on_rejects is not None:
                first = [r for r in rejects if r[0].pass_no == 0]
                if first:
                    self.on_rejects(first)
            if batch is not None:
                yield batch

    def __call__(self, epoch: int, skip: int, info: Any) -> Iterator[Any]:
        return self.batches(epoch, skip, getattr(info, "rank", 0), getattr(info, "world_size", 1))


def _identity(x: Any) -> Any:
    return x
