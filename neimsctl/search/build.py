"""The ``index`` pipeline: spectra of any kind -> one ``neimsctl.index/2`` file.

Inputs are read one record at a time (:func:`neimsctl.io.spectrum_records.read_spectrum_records`),
checked (:func:`neimsctl.io.peak_block.check_peaks`), completed where a record lacks them (the
nominal mass from its SMILES or formula, the InChIKey from its SMILES; RDKit only runs for such
records), binned in batches and handed to :class:`neimsctl.io.spectral_index.IndexWriter`,
which sorts by mass with bounded memory. Every record is either indexed or reported to the
:class:`~neimsctl.io.rejects.Tally` with its reason.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable

from neimsctl.errors import FormatError
from neimsctl.io.peak_block import bin_batch, check_peaks
from neimsctl.io.rejects import Reject, Tally
from neimsctl.io.spectral_index import IndexWriter, SpectralIndex
from neimsctl.io.spectrum import N_BINS
from neimsctl.io.spectrum_records import SpectrumRecord, read_spectrum_records
from neimsctl.io.streams import display_name

__all__ = ["complete_record", "build_index", "build_memory_index", "no_mass_text"]

_BATCH = 4096


class StrictStop(FormatError):
    """The first rejected record under ``strict``."""


def complete_record(rec: SpectrumRecord) -> None:
    """Fill ``mw`` (from the SMILES, else the formula) and ``inchikey`` (from the SMILES or
    InChI) where the record lacks them; leave them empty when that is impossible."""
    if rec.mw is not None and rec.inchikey:
        return
    if not (rec.smiles or rec.formula or rec.extra.get("inchi")):
        return
    from neimsctl.chem import structure

    mol = None
    try:
        if rec.smiles:
            mol = structure.mol_from_smiles(rec.smiles)
        elif rec.extra.get("inchi"):
            mol = structure.mol_from_inchi(rec.extra["inchi"])
    except FormatError:
        mol = None
    if rec.mw is None:
        if mol is not None:
            rec.mw = structure.nominal_mass(mol)
        elif rec.formula:
            try:
                rec.mw = structure.formula_nominal_mass(rec.formula) or None
            except Exception:  # noqa: BLE001 - an unknown element symbol: no mass
                rec.mw = None
    if not rec.inchikey and mol is not None:
        from rdkit import Chem

        rec.inchikey = Chem.MolToInchiKey(mol) or ""


def no_mass_text(n: int, total: int) -> str:
    """The warning about entries that ``--mass-filter`` never reaches (``n`` of ``total``)."""
    return (f"{n:,} of {total:,} entries have no molecular mass (no MW, nor a SMILES, InChI or "
            "formula that gives one): with --mass-filter only queries of unknown mass can find them")


def _reject(tally: Tally, rec: SpectrumRecord, reason: str, detail: str) -> None:
    tally.reject(Reject(reason, detail, rec.file, rec.line or None, rec.name or None, rec.id))


class _Batch:
    def __init__(self) -> None:
        self.recs: list[SpectrumRecord] = []
        self.sources: list[int] = []

    def flush(self, writer: IndexWriter) -> int:
        if not self.recs:
            return 0
        recs = self.recs
        block = bin_batch([r.mz for r in recs], [r.intensity for r in recs], N_BINS)
        writer.add(block, mw=[r.mw if r.mw is not None else -1 for r in recs],
                   predicted=[r.predicted for r in recs], source=self.sources,
                   inchikey=[r.inchikey for r in recs], ids=[r.id for r in recs],
                   names=[r.name for r in recs], smiles=[r.smiles for r in recs],
                   formula=[r.formula for r in recs])
        self.recs, self.sources = [], []
        return len(recs)


def add_inputs(writer: IndexWriter, paths: Iterable[str | os.PathLike], tally: Tally, *,
               strict: bool = False, log: Any = None, progress: Any = None) -> None:
    """Stream every record of ``paths`` into ``writer`` (rejects to ``tally``);
    ``progress(tally)`` after each batch of records."""
    n_bins = N_BINS
    for path in paths:
        name = display_name(path)
        src = writer.add_source(name, "measured")
        kinds: set[str] = set()
        batch = _Batch()
        for rec in read_spectrum_records(path):
            tally.read += 1
            problem = (rec.reason, rec.detail) if rec.reason else \
                check_peaks(rec.mz, rec.intensity, n_bins, above_range=True)
            if problem is not None:
                _reject(tally, rec, *problem)
                if strict:
                    raise StrictStop(f"{problem[0]}: {problem[1]}", file=rec.file, line=rec.line or None,
                                     record=rec.name or rec.id)
                continue
            if _above_range(rec.mz, n_bins):
                tally.trimmed[f"peaks_above_mz_{n_bins - 1}"] += 1
            complete_record(rec)
            tally.no_mass += rec.mw is None
            kinds.add("predicted" if rec.predicted else "measured")
            batch.recs.append(rec)
            batch.sources.append(src)
            if len(batch.recs) >= _BATCH:
                tally.written += batch.flush(writer)
                if progress is not None:
                    progress(tally)
        tally.written += batch.flush(writer)
        if progress is not None:
            progress(tally)
        writer.sources[src]["kind"] = kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "measured")


def _above_range(mz: Any, n_bins: int) -> bool:
    """Whether a (valid) peak list reaches beyond the last bin (those peaks are not indexed)."""
    return math.floor(float(max(mz)) + 0.5) >= n_bins


def build_index(paths: Iterable[str | os.PathLike], out: str | os.PathLike, tally: Tally, *,
                strict: bool = False, attrs: dict[str, Any] | None = None,
                run_peaks: int = 1 << 24, progress: Any = None) -> None:
    """Index ``paths`` into the HDF5 file ``out`` (the caller makes the write atomic);
    ``progress(tally)`` as records are read."""
    _fill(IndexWriter(out, attrs=attrs, run_peaks=run_peaks), paths, tally, strict, progress).file.close()


def build_memory_index(paths: Iterable[str | os.PathLike], tally: Tally, *, strict: bool = False,
                       name: str = "<memory>") -> SpectralIndex:
    """Index small libraries (MSP/JSONL/shards) in memory and open the result for searching."""
    writer = _fill(IndexWriter(name, in_memory=True, run_peaks=1 << 62), paths, tally, strict)
    return SpectralIndex(name, h5file=writer.file)


def _fill(writer: IndexWriter, paths: Iterable[str | os.PathLike], tally: Tally,
          strict: bool, progress: Any = None) -> IndexWriter:
    """Add every input to ``writer`` and close it (sorted, complete); abort it on any error."""
    try:
        add_inputs(writer, paths, tally, strict=strict, progress=progress)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer
