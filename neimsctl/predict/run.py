"""The ``predict`` stream: input records -> featurized blocks (worker pool) -> spectra -> writer.

Inputs, per file auto-detected unless ``input_format`` is given:

- ``sdf``: SDF / MOL (a ``V2000``/``V3000`` counts line within the first 4 lines); records
  split at ``$$$$``; the name is the MOL block's first line.
- ``jsonl``: ``neimsctl.record/1`` lines (first non-blank line starts with ``{``).
- ``smi``: ``SMILES [name]`` per line; blank and ``#`` lines are not records.

Memory stays constant: at most ``2 * jobs + 2`` chunks of ``chunk`` records are in flight, and
each is featurized, predicted and formatted (by a worker with ``jobs > 1``) before this process
writes its bytes. Output order = input order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import orjson

from neimsctl.chem.rowbuild import (Item, Rejected, RowBuilder, RowOptions, crashed, crashed_block,
                                    one_by_one)
from neimsctl.errors import InputError
from neimsctl.io.parallel import chunked, ordered_map
from neimsctl.io.rejects import Reject, Tally
from neimsctl.io.streams import display_name, open_in
from neimsctl.io.prediction_write import PredictionWriter
from neimsctl.predict.model import LoadedModel, predict_block

__all__ = ["INPUT_FORMATS", "iter_inputs", "Featurizer", "featurized", "PredictOptions",
           "Predicted", "ChunkPredictor", "predicted", "run_predict", "reject_message",
           "StrictStop"]

INPUT_FORMATS = ("smi", "jsonl", "sdf")
CHUNK = 1024
#: Predict any molecule: no molecular-weight filter (spectra are cut at m/z 500 anyway).
NO_MW_FILTER = {"min_mw": 0, "max_mw": 10**9}
_FEAT: Featurizer | None = None


class StrictStop(InputError):
    """``--strict``: the first rejected record stops the run."""


def _sniff(head: list[bytes]) -> str:
    if any(b"V2000" in ln or b"V3000" in ln for ln in head[:4]):
        return "sdf"
    first = next((ln.strip() for ln in head if ln.strip()), b"")
    return "jsonl" if first.startswith(b"{") else "smi"


def _lines(fh: BinaryIO, kind: str | None) -> tuple[str, Iterator[bytes]]:
    head = []
    for ln in fh:
        head.append(ln)
        if len(head) >= 4:
            break
    it = iter(fh)

    def chained() -> Iterator[bytes]:
        yield from head
        yield from it
    return kind or _sniff(head), chained()


def iter_inputs(paths: Iterable[Any], input_format: str | None = None) -> Iterator[Item]:
    """Input records as :class:`Item` (raw bytes; ``kind`` smi, jsonl or sdf), numbered across files."""
    ordinal = 0
    for path in paths:
        name = display_name(path)
        with open_in(path) as fh:
            kind, lines = _lines(fh, input_format)
            if kind == "sdf":
                buf: list[bytes] = []
                start = 1
                for lineno, raw in enumerate(lines, start=1):
                    if raw.startswith(b"$$$$"):
                        yield Item(ordinal, name, start, "sdf", b"".join(buf))
                        ordinal, buf, start = ordinal + 1, [], lineno + 1
                    else:
                        buf.append(raw)
                if b"".join(buf).strip():
                    yield Item(ordinal, name, start, "sdf", b"".join(buf))
                    ordinal += 1
                continue
            for lineno, raw in enumerate(lines, start=1):
                text = raw.strip()
                if not text or (kind == "smi" and text.startswith(b"#")):
                    continue
                yield Item(ordinal, name, lineno, kind, text)
                ordinal += 1


class Featurizer:
    """Items -> (feature block, rejects) for one model architecture (runs in workers)."""

    def __init__(self, mode: str, *, inchikey: bool = True) -> None:
        self.builder = RowBuilder(RowOptions(mode=mode, inchikey=inchikey, **NO_MW_FILTER))

    def __call__(self, items: list[Item]) -> tuple[dict[str, np.ndarray], list[Rejected]]:
        from neimsctl.chem.structure import StructureError, mol_from_molblock

        ready, early = [], []
        for it in items:
            if it.kind != "sdf":
                ready.append(it)
                continue
            text = it.raw.decode("utf-8", "replace")
            title = text.split("\n", 1)[0].strip()
            try:
                mol = mol_from_molblock(text, where=f"MOL block {title!r}")
            except StructureError as exc:
                early.append(Rejected(it, title or None, exc.reason, str(exc), title))
                continue
            from rdkit import Chem

            smi = Chem.MolToSmiles(mol)
            ready.append(Item(it.ordinal, it.file, it.line, "smi",
                              f"{smi} {title}".strip().encode("utf-8")))
        block, rejects = self.builder.build(ready)
        return block, sorted(early + rejects, key=lambda r: r.item.ordinal)


def reject_message(r: Rejected) -> str:
    """``<file>:<line>: cannot parse SMILES 'xyz'`` (or the reason and detail of other rejects)."""
    where = f"{r.item.file}:{r.item.line}"
    if r.reason == "unparsable_smiles":
        smiles: Any = None
        if r.item.kind == "jsonl":
            try:
                smiles = orjson.loads(r.item.raw).get("smiles")
            except (orjson.JSONDecodeError, AttributeError):
                smiles = None
        else:
            parts = r.item.raw.decode("utf-8", "replace").split(None, 1)
            smiles = parts[0] if parts else ""
        return f"{where}: cannot parse SMILES {smiles!r}"
    if r.reason == "unparsable_structure":
        return f"{where}: {r.detail}"
    return f"{where}: {r.reason}: {r.detail}"


def _init(mode: str, inchikey: bool = True) -> None:
    global _FEAT
    _FEAT = Featurizer(mode, inchikey=inchikey)


def _work(items: list[Item]) -> tuple[dict[str, np.ndarray], list[Rejected], int]:
    assert _FEAT is not None
    block, rejects = _FEAT(items)
    return block, rejects, len(items)


def featurized(items: Iterator[Item], mode: str, *, jobs: int = 1, chunk: int = CHUNK,
               inchikey: bool = True) -> Iterator[tuple[dict[str, np.ndarray], list[Rejected], int]]:
    """Feature blocks in input order; ``jobs > 1`` featurizes in forked worker processes.

    ``inchikey=False`` skips the InChIKey (the costliest part of featurizing a SMILES). A record
    on which a worker dies is a ``worker_crashed`` reject.
    """
    return ordered_map(_work, chunked(items, chunk), jobs, _init, (mode, inchikey),
                       max_in_flight=2 * jobs + 2, split=one_by_one,
                       crashed=functools.partial(crashed_block, mode))


@dataclass
class PredictOptions:
    """What one ``predict`` run makes of each chunk (see :class:`ChunkPredictor`)."""

    fmt: str = "msp"
    top: int | None = None
    strict: bool = False
    batch_size: int = 1024
    uncertainty: bool = False
    mc_samples: int = 30
    inchikey: bool = True


@dataclass
class Predicted:
    """One chunk's result: the output bytes, its rejects, records read and written."""

    data: bytes
    rejects: list[Rejected]
    n_read: int
    n_written: int


class ChunkPredictor:
    """Items -> :class:`Predicted`: featurize, predict, format (in this process or a worker).

    Under ``strict`` only the rows before the chunk's first rejected record are predicted, and
    that record is the only reject returned.
    """

    def __init__(self, lm: LoadedModel, opts: PredictOptions) -> None:
        self.lm, self.opts = lm, opts
        self.featurizer = Featurizer(lm.mode, inchikey=opts.inchikey)
        self.writer = PredictionWriter(None, opts.fmt, model_desc=lm.describe(), top=opts.top)

    def featurize(self, items: list[Item]) -> tuple[dict[str, np.ndarray], list[Rejected], int]:
        block, rejects = self.featurizer(items)
        return block, rejects, len(items)

    def spectra(self, block: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray] | None]:
        """The model's ``(spectra, std, experts)`` of a featurized block (see ``predict_block``)."""
        if not len(block["ordinal"]):
            return np.zeros((0, self.lm.model.config.n_bins), np.float32), None, None
        return predict_block(self.lm, block, batch_size=self.opts.batch_size,
                             uncertainty=self.opts.uncertainty, mc_samples=self.opts.mc_samples)

    def predict(self, items: list[Item]) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                  np.ndarray | None, dict[str, np.ndarray] | None,
                                                  list[Rejected]]:
        """Featurize and predict a chunk, unformatted: ``(block, spectra, std, experts, rejects)``
        (the Python API's path; :meth:`__call__` formats the same arrays)."""
        block, rejects = self.featurizer(items)
        return (block, *self.spectra(block), rejects)

    def finish(self, block: dict[str, np.ndarray], rejects: list[Rejected], n_items: int
               ) -> Predicted:
        """Predict and format a featurized chunk."""
        if self.opts.strict and rejects:
            first = rejects[0]
            keep = block["ordinal"] < first.item.ordinal
            block = {k: v[keep] if len(v) == len(keep) else v for k, v in block.items()} \
                if "n_atoms" not in block else _teacher_prefix(block, int(keep.sum()))
            rejects, n_items = [first], int(keep.sum()) + 1
        if not len(block["ordinal"]):
            return Predicted(b"", rejects, n_items, 0)
        spectra, std, experts = self.spectra(block)
        return Predicted(self.writer.format(block, spectra, std, experts), rejects, n_items,
                         len(spectra))

    def __call__(self, items: list[Item]) -> Predicted:
        return self.finish(*self.featurize(items))


_STAGE: ChunkPredictor | None = None


def _init_stage(stage: ChunkPredictor, threads: int) -> None:
    global _STAGE
    import torch

    torch.set_num_threads(threads)
    _STAGE = stage


def _work_stage(items: list[Item]) -> Predicted:
    assert _STAGE is not None
    return _STAGE(items)


def _crashed_stage(items: list[Item], why: str) -> Predicted:
    return Predicted(b"", [crashed(it, why) for it in items], len(items), 0)


def predicted(items: Iterable[Item], stage: ChunkPredictor, *, jobs: int = 1,
              chunk: int = CHUNK, worker_threads: int = 1,
              model_in_workers: bool | None = None) -> Iterator[Predicted]:
    """Every chunk of ``items`` through ``stage``, in input order.

    With ``jobs > 1`` on the CPU, each forked worker featurizes, predicts (``worker_threads``
    torch threads; the model's weights are shared copy-on-write) and formats whole chunks, and
    this process only reads input and writes bytes: measured on 2 cores, a main process that ran
    the model itself kept the two featurizing workers ~74 % busy. On a GPU the workers only
    featurize and the model runs here (``model_in_workers`` overrides the choice by device).
    """
    if model_in_workers is None:
        model_in_workers = stage.lm.device.type == "cpu"
    if jobs <= 1:
        for c in chunked(items, chunk):
            yield stage(c)
    elif model_in_workers:
        yield from ordered_map(_work_stage, chunked(items, chunk), jobs, _init_stage,
                               (stage, worker_threads), max_in_flight=2 * jobs + 2,
                               split=one_by_one, crashed=_crashed_stage)
    else:
        for block, rejects, n in featurized(iter(items), stage.lm.mode, jobs=jobs, chunk=chunk,
                                            inchikey=stage.opts.inchikey):
            yield stage.finish(block, rejects, n)


def run_predict(results: Iterable[Predicted], out: BinaryIO, tally: Tally, *,
                strict: bool = False, show: Callable[[str], None] | None = None) -> None:
    """Write every chunk's bytes to ``out``; count and show every rejected record.

    Raises
    ------
    StrictStop
        ``strict`` and a record was rejected; rows before it are written first.
    """
    for p in results:
        tally.read += p.n_read
        if p.data:
            out.write(p.data)
        tally.written += p.n_written
        for r in p.rejects:
            if show is not None:
                show(reject_message(r))
            tally.reject(Reject(r.reason, r.detail, file=r.item.file, line=r.item.line,
                                record=r.name, id=r.id))
        if strict and p.rejects:
            raise StrictStop(reject_message(p.rejects[0]))


def _teacher_prefix(block: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first ``n`` rows of a teacher block (per-atom / per-edge tables cut to match)."""
    na, ne = int(block["n_atoms"][:n].sum()), int(block["n_edges"][:n].sum())
    out = {}
    for k, v in block.items():
        if k == "atom_x":
            out[k] = v[:na]
        elif k in ("edge_index", "edge_attr"):
            out[k] = v[:ne]
        else:
            out[k] = v[:n]
    return out
