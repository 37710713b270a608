"""The ``predict`` stream: input records -> featurized blocks (worker pool) -> spectra -> writer.

Inputs: SMILES lines, JSONL records or SDF, read by :func:`neimsctl.io.inputs.iter_items` (per
file auto-detected unless ``input_format`` is given); an SDF record's name is the MOL block's
first line.

Memory stays constant: at most ``2 * jobs + 2`` chunks of ``chunk`` records are in flight, and
each is featurized, predicted and formatted (by a worker with ``jobs > 1``) before this process
writes its bytes. Output order = input order.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterable, Iterator
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import orjson

from neimsctl.chem.domain import domain_flags, flag_kind
from neimsctl.chem.isotopes import above_molecule_capped
from neimsctl.chem.rowbuild import (Rejected, RowBuilder, RowOptions, crashed, crashed_block,
                                    one_by_one)
from neimsctl.errors import StrictStop
from neimsctl.io.inputs import Item
from neimsctl.io.parallel import chunked, ordered_map
from neimsctl.io.rejects import Reject, Tally
from neimsctl.io.prediction_write import PredictionWriter
from neimsctl.io.streams import decode_text
from neimsctl.predict.model import LoadedModel, predict_block

if TYPE_CHECKING:
    from neimsctl.predict.ensemble import LoadedEnsemble

__all__ = ["Featurizer", "featurized", "PredictOptions", "Predicted", "ChunkPredictor",
           "predicted", "run_predict", "reject_message"]

CHUNK = 1024
#: Predict any molecule: no molecular-weight filter (spectra are cut at m/z 500 anyway).
NO_MW_FILTER = {"min_mw": 0, "max_mw": 10**9}
_FEAT: Featurizer | None = None


class Featurizer:
    """Items -> (feature block, rejects) for one model architecture (runs in workers)."""

    def __init__(self, mode: str, *, inchikey: bool = True, extra_v1: bool = False,
                 fragments: bool = True) -> None:
        self.builder = RowBuilder(RowOptions(mode=mode, inchikey=inchikey, fragments=fragments,
                                             dummy_atoms=True, **NO_MW_FILTER))
        #: Add the NEIMS v1 Morgan counts to teacher blocks (an ensemble of both needs them).
        self.extra_v1 = extra_v1

    def __call__(self, items: list[Item]) -> tuple[dict[str, np.ndarray], list[Rejected]]:
        from neimsctl.chem.structure import StructureError, mol_from_molblock

        ready, early = [], []
        for it in items:
            if it.kind != "sdf":
                ready.append(it)
                continue
            text = decode_text(it.raw)
            title = text.split("\n", 1)[0].strip()
            try:
                mol = mol_from_molblock(text, where=f"MOL block {title!r}")
            except StructureError as exc:
                early.append(Rejected(it, title or None, exc.reason, str(exc), title))
                continue
            from rdkit import Chem

            smi = Chem.MolToSmiles(mol)
            ready.append(it._replace(kind="smi", raw=f"{smi} {title}".strip().encode("utf-8")))
        block, rejects = self.builder.build(ready)
        if self.extra_v1:
            block["morgan_counts"] = _morgan_counts(block["smiles"])
        return block, sorted(early + rejects, key=lambda r: r.item.ordinal)


def _morgan_counts(smiles: np.ndarray) -> np.ndarray:
    """NEIMS v1's Morgan counts ``(n, 4096)`` uint8 of the block's canonical SMILES (parsed
    again: only an ensemble of a GNN teacher and a Morgan-count NEIMS v1 model needs both)."""
    from rdkit import Chem

    from neimsctl.chem.features_v1 import MORGAN_COUNT_BITS, V1Featurizer

    feat = V1Featurizer()
    out = np.zeros((len(smiles), MORGAN_COUNT_BITS), np.uint8)
    for j, smi in enumerate(smiles):
        out[j] = feat(Chem.MolFromSmiles(str(smi))).morgan_counts
    return out


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
            parts = decode_text(r.item.raw).split(None, 1)
            smiles = parts[0] if parts else ""
        return f"{where}: cannot parse SMILES {smiles!r}"
    if r.reason == "unparsable_structure":
        return f"{where}: {r.detail}"
    return f"{where}: {r.reason}: {r.detail}"


def _init(mode: str, inchikey: bool = True, extra_v1: bool = False, fragments: bool = True) -> None:
    global _FEAT
    _FEAT = Featurizer(mode, inchikey=inchikey, extra_v1=extra_v1, fragments=fragments)


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
    #: ``flag`` (write the spectrum, marked) or ``reject`` molecules outside the model's domain
    #: (:mod:`neimsctl.chem.domain`).
    out_of_domain: str = "flag"


@dataclass
class Predicted:
    """One chunk's result: the output bytes, its rejects, records read and written."""

    data: bytes
    rejects: list[Rejected]
    n_read: int
    n_written: int
    #: Written molecules outside the model's domain: how many, and their flags by kind.
    n_flagged: int = 0
    flagged: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class ChunkPredictor:
    """Items -> :class:`Predicted`: featurize, predict, format (in this process or a worker).

    Under ``strict`` only the rows before the chunk's first rejected record are predicted, and
    that record is the only reject returned.
    """

    def __init__(self, lm: LoadedModel | LoadedEnsemble, opts: PredictOptions) -> None:
        self.lm, self.opts = lm, opts
        self.featurizer = Featurizer(lm.mode, inchikey=opts.inchikey, extra_v1=lm.extra_v1,
                                     fragments=lm.reads_fragments)
        self.writer = PredictionWriter(None, opts.fmt, model_desc=lm.describe(), top=opts.top)

    def featurize(self, items: list[Item]) -> tuple[dict[str, np.ndarray], list[Rejected], int]:
        block, rejects = self.featurizer(items)
        return block, rejects, len(items)

    def spectra(self, block: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray] | None]:
        """The model's ``(spectra, std, experts)`` of a featurized block (see ``predict_block``),
        peaks above the molecular ion that its isotopes cannot explain cut
        (:func:`~neimsctl.chem.isotopes.above_molecule_capped`)."""
        if not len(block["ordinal"]):
            return np.zeros((0, self.lm.n_bins), np.float32), None, None
        spectra, std, experts = predict_block(self.lm, block, batch_size=self.opts.batch_size,
                                              uncertainty=self.opts.uncertainty,
                                              mc_samples=self.opts.mc_samples)
        spectra, std = above_molecule_capped(spectra, std, block["formula"], block["mw"])
        return spectra, std, experts

    def predict(self, items: list[Item]) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                  np.ndarray | None, dict[str, np.ndarray] | None,
                                                  list[Rejected]]:
        """Featurize and predict a chunk, unformatted: ``(block, spectra, std, experts, rejects)``
        (the Python API's path; :meth:`__call__` formats the same arrays)."""
        block, rejects = self.featurizer(items)
        block, spectra, std, experts, refused = _refuse_non_finite(block, *self.spectra(block),
                                                                   items)
        return block, spectra, std, experts, sorted(rejects + refused, key=lambda r: r.item.ordinal)

    def finish(self, block: dict[str, np.ndarray], rejects: list[Rejected], n_items: int,
               items: list[Item] | None = None) -> Predicted:
        """Predict and format a featurized chunk (``items``: the chunk as read, to name the
        molecules whose prediction is refused)."""
        if self.opts.strict and rejects:
            block, rejects, n_items = _strict_prefix(block, rejects)
        if not len(block["ordinal"]):
            return Predicted(b"", rejects, n_items, 0)
        spectra, std, experts = self.spectra(block)
        block, spectra, std, experts, refused = _refuse_non_finite(block, spectra, std, experts,
                                                                   items)
        flags = [domain_flags(str(s), str(f), int(m))
                 for s, f, m in zip(block["smiles"], block["formula"], block["mw"])]
        if self.opts.out_of_domain == "reject" and any(flags):
            bad = np.asarray([bool(f) for f in flags])
            block, spectra, std, experts, more = _refuse(
                block, spectra, std, experts, items, bad, OUT_OF_DOMAIN,
                [", ".join(f) for f in flags if f])
            refused = sorted(refused + more, key=lambda r: r.item.ordinal)
            flags = [f for f in flags if not f]
        if refused:
            if self.opts.strict:       # nothing after the first refused molecule
                keep = block["ordinal"] < refused[0].item.ordinal
                block = {k: v[keep] for k, v in block.items()}
                spectra, std = spectra[keep], None if std is None else std[keep]
                experts = None if experts is None else {k: v[keep] for k, v in experts.items()}
                # the chunk's first featurize reject, if any, comes after the rows kept
                rejects, n_items = refused[:1], int(keep.sum()) + 1
            else:
                rejects = sorted(rejects + refused, key=lambda r: r.item.ordinal)
            if not len(spectra):
                return Predicted(b"", rejects, n_items, 0)
            flags = flags[:len(spectra)]
        flagged = collections.Counter(flag_kind(f) for row in flags for f in row)
        return Predicted(self.writer.format(block, spectra, std, experts, flags), rejects,
                         n_items, len(spectra), sum(1 for f in flags if f), flagged)

    def __call__(self, items: list[Item]) -> Predicted:
        return self.finish(*self.featurize(items), items)


#: Reject reason of a molecule whose predicted spectrum is not finite.
NON_FINITE = "non_finite_prediction"
#: Reject reason of a molecule outside the model's domain under ``--out-of-domain reject``.
OUT_OF_DOMAIN = "out_of_domain"
#: The block columns the writers read.
_WRITTEN = ("ordinal", "id", "name", "smiles", "inchikey", "formula", "mw")


def _item(items: list[Item] | None, ordinal: int) -> Item:
    found = next((it for it in items or () if it.ordinal == ordinal), None)
    return found if found is not None else Item(ordinal, "<input>", 0, "smi", b"")


def _refuse_non_finite(block: dict[str, np.ndarray], spectra: np.ndarray, std: np.ndarray | None,
                       experts: dict[str, np.ndarray] | None, items: list[Item] | None
                       ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None,
                                  dict[str, np.ndarray] | None, list[Rejected]]:
    """Leave out the rows whose spectrum holds NaN/inf; they come back as rejects."""
    bad = ~np.isfinite(spectra).all(axis=1)
    return _refuse(block, spectra, std, experts, items, bad, NON_FINITE,
                   ["the model predicted NaN or inf intensities for this molecule"] * int(bad.sum()))


def _refuse(block: dict[str, np.ndarray], spectra: np.ndarray, std: np.ndarray | None,
            experts: dict[str, np.ndarray] | None, items: list[Item] | None, bad: np.ndarray,
            reason: str, details: list[str]
            ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None,
                       dict[str, np.ndarray] | None, list[Rejected]]:
    """Leave out the rows ``bad`` marks; they come back as rejects (``details``: one per row).

    The block returned holds only the columns the writers read (:data:`_WRITTEN`) when rows
    were left out.
    """
    if not bad.any():
        return block, spectra, std, experts, []
    rows = np.flatnonzero(bad)
    refused = [Rejected(_item(items, int(block["ordinal"][j])), str(block["id"][j]), reason,
                        detail, str(block["name"][j]) or None) for j, detail in zip(rows, details)]
    keep = ~bad
    return ({k: block[k][keep] for k in _WRITTEN}, spectra[keep],
            None if std is None else std[keep],
            None if experts is None else {k: v[keep] for k, v in experts.items()}, refused)


def _strict_prefix(block: dict[str, np.ndarray], rejects: list[Rejected]
                   ) -> tuple[dict[str, np.ndarray], list[Rejected], int]:
    """``--strict``: the rows before the chunk's first reject, that reject, and the count read."""
    first = rejects[0]
    keep = block["ordinal"] < first.item.ordinal
    block = {k: v[keep] if len(v) == len(keep) else v for k, v in block.items()} \
        if "n_atoms" not in block else _teacher_prefix(block, int(keep.sum()))
    return block, [first], int(keep.sum()) + 1


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
        pending: dict[int, Item] = {}     # items in flight, to name refused molecules

        def remember(chunks: Iterable[list[Item]]) -> Iterator[list[Item]]:
            for c in chunks:
                pending.update((it.ordinal, it) for it in c)
                yield c
        for block, rejects, n in ordered_map(_work, remember(chunked(items, chunk)), jobs, _init,
                                             (stage.lm.mode, stage.opts.inchikey,
                                              stage.lm.extra_v1, stage.lm.reads_fragments),
                                             max_in_flight=2 * jobs + 2, split=one_by_one,
                                             crashed=functools.partial(crashed_block,
                                                                       stage.lm.mode)):
            for r in rejects:
                pending.pop(r.item.ordinal, None)
            yield stage.finish(block, rejects, n, [pending.pop(int(o)) for o in block["ordinal"]])


def run_predict(results: Iterable[Predicted], out: BinaryIO, tally: Tally, *,
                strict: bool = False, show: Callable[[str], None] | None = None,
                progress: Callable[[Tally], None] | None = None) -> None:
    """Write every chunk's bytes to ``out``; count and show every rejected record.

    ``progress`` is called with the tally after each chunk (a progress bar).

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
        tally.n_flagged += p.n_flagged
        tally.flagged.update(p.flagged)
        for r in p.rejects:
            if show is not None:
                show(reject_message(r))
            tally.reject(Reject(r.reason, r.detail, file=r.item.file, line=r.item.line,
                                record=r.name, id=r.id))
        if progress is not None:
            progress(tally)
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
