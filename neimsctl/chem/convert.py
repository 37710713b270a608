"""MSP records -> ``neimsctl.record/1`` JSONL lines, in one process or a pool of workers.

:func:`convert_record` turns one :class:`~neimsctl.io.msp.MspRecord` into a record dict or a
reject ``(reason, detail)``; :func:`convert_msp` streams whole inputs through it (chunks of
records, in input order, with a bounded number of chunks in flight when ``jobs > 1``), writes
the JSONL lines and counts everything in a :class:`~neimsctl.io.rejects.Tally`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

import orjson

from neimsctl.chem.domain import dummy_atom_detail
from neimsctl.io.msp import (MspRecord, iter_blocks, parse_block, parse_comments, parse_number,
                             record_inchikey, record_structure)
from neimsctl.io.parallel import ordered_map, resolve_jobs
from neimsctl.io.rejects import Reject, Tally
from neimsctl.io.streams import display_name, open_in

SCHEMA = "neimsctl.record/1"
_NOT_IN_MSP_OBJ = frozenset({"name", "comments", "num peaks", "id"})
_DUMPS_OPT = orjson.OPT_APPEND_NEWLINE
Result = bytes | tuple[str, str]


@dataclass(frozen=True)
class ConvertOptions:
    """Settings of :func:`convert_record` (see ``neimsctl msp2jsonl --help``)."""

    mol_dir: str | None = None
    min_mw: float = 50.0
    max_mw: float = 1000.0
    max_mz: float = 500.0
    structure: bool = True


_ST = None


def _st():  # type: ignore[no-untyped-def]
    """``neimsctl.chem.structure``, imported on first use (``--no-structure`` needs no RDKit)."""
    global _ST
    if _ST is None:
        from neimsctl.chem import structure

        _ST = structure
    return _ST


def _structure(rec: MspRecord, opts: ConvertOptions) -> tuple[object, str]:
    """Describe the record's structure: the one it states (SMILES line, InChI line, then the
    ``Comments`` pairs of MoNA exports: :func:`neimsctl.io.msp.record_structure`), else its MOL
    file; with the source taken (``structure_from``). A structure with a dummy atom (``*``, a
    MOL file's R-group) is a ``dummy_atom`` :class:`StructureError`, as one RDKit cannot parse:
    it is no molecule a spectrum could be learned from (``--no-structure`` keeps the spectrum)."""
    st = _ST or _st()
    f = rec.fields
    stated = record_structure(f)
    if stated is not None:
        source, kind, text = stated
        got = st.describe_smiles(text) if kind == "smiles" else st.describe_inchi(text)
    elif opts.mol_dir is not None:
        if not (f.get("id") or f.get("db") or f.get("nist")):
            raise st.StructureError("missing_mol_file", "record has no ID to join a MOL file on")
        source, got = "mol", st.describe(st.read_mol_file(opts.mol_dir, rec.record_id))
    else:
        raise st.StructureError("no_structure", "no SMILES or InChI line or Comments pair, and "
                                                "no --mol-dir")
    dummy = dummy_atom_detail(got.smiles)
    if dummy is not None:
        where = f"the MOL file of ID {rec.record_id} in {opts.mol_dir}: " if source == "mol" else ""
        raise st.StructureError("dummy_atom", where + dummy)
    return got, source


def structure_of(rec: MspRecord, opts: ConvertOptions) -> tuple[object, str] | Exception | None:
    """The structure work of one record (``None`` when rejected already or switched off; the
    :class:`StructureError` when it fails), for :func:`convert_record`'s ``structure``."""
    if rec.reason or not opts.structure:
        return None
    stm = _ST or _st()
    try:
        return _structure(rec, opts)
    except stm.StructureError as exc:
        return exc


def convert_record(rec: MspRecord, opts: ConvertOptions,
                   structure: tuple[object, str] | Exception | None = None) -> dict | tuple[str, str]:
    """One MSP record -> a ``neimsctl.record/1`` dict, or ``(reason, detail)`` when rejected.

    ``structure`` is :func:`structure_of` of the record when the caller did the RDKit work
    already (:func:`convert_raw` does it for a whole chunk in one tight loop); else it is done here.
    """
    if rec.reason:
        return rec.reason, rec.detail
    f = rec.fields
    flags: list[str] = []
    smiles = inchikey = formula = structure_from = exact_mass = None
    mw: int | None = None
    if opts.structure:
        stm = _ST or _st()
        got = structure if structure is not None else structure_of(rec, opts)
        if isinstance(got, Exception):
            return got.reason, got.message  # type: ignore[attr-defined]
        st, structure_from = got  # type: ignore[misc]
        smiles, inchikey, formula, mw, exact_mass = st  # type: ignore[misc]
        inchikey = inchikey or None
        key = None if "inchikey" in f else record_inchikey(f)  # MoNA: "InChIKey=" in Comments
        flags = stm.compare_with_msp(st,  # type: ignore[arg-type]
                                     {**f, "inchikey": key} if key else f)
        check_mw: float | None = mw
    else:  # the MSP's MW line is the filter's input: one that is not a finite number is a reject
        check_mw = parse_number(f["mw"]) if f.get("mw") else None
        if check_mw is None and f.get("mw"):
            return "bad_mw", f"MW {f['mw'][:40]!r} is not a finite number (--no-structure filters on it)"
    if check_mw is not None and not opts.min_mw <= check_mw <= opts.max_mw:
        return "mw_out_of_range", f"MW {check_mw:g} outside [{opts.min_mw:g}, {opts.max_mw:g}]"
    mz, intensity = rec.mz, rec.intensity
    if max(mz) > opts.max_mz:
        keep = [i for i, m in enumerate(mz) if m <= opts.max_mz]
        if not keep:
            return "no_peaks", f"all {len(mz)} peaks above --max-mz {opts.max_mz:g}"
        mz, intensity = [mz[i] for i in keep], [intensity[i] for i in keep]
        flags.append("peaks_above_max_mz")
    return {
        "schema": SCHEMA, "id": rec.record_id, "name": rec.name, "synonyms": rec.synonyms,
        "source": {"file": rec.file, "line": rec.line, "ordinal": rec.ordinal},
        "smiles": smiles, "inchikey": inchikey, "formula": formula, "mw": mw,
        "exact_mass": exact_mass, "structure_from": structure_from,
        "msp": {k: v for k, v in f.items() if k not in _NOT_IN_MSP_OBJ},
        "comments": parse_comments(f["comments"]) if "comments" in f else {},
        "flags": flags, "mz": mz, "intensity": intensity,
    }


def convert_chunk(recs: list[MspRecord], opts: ConvertOptions) -> list[Result]:
    """Convert a chunk: one JSONL line (bytes) or one ``(reason, detail)`` per record."""
    dumps = orjson.dumps
    out: list[Result] = []
    for rec in recs:
        res = convert_record(rec, opts)
        out.append(dumps(res, option=_DUMPS_OPT) if isinstance(res, dict) else res)
    return out


#: One raw record as split by :func:`neimsctl.io.msp.iter_blocks`, plus its file name.
RawRecord = tuple[bytes, int, int, bool]
#: What a chunk turns into: the JSONL bytes of its written records (concatenated) when
#: nothing was rejected, else one ``bytes`` or :class:`Reject` per record.
ChunkResult = tuple[int, bytes | list[bytes | Reject]]


def convert_raw(file: str, raws: list[RawRecord], opts: ConvertOptions) -> ChunkResult:
    """Parse and convert raw records of one file (runs in the workers under ``--jobs N``).

    Returns
    -------
    tuple
        ``(n_records, payload)``: ``payload`` is the concatenated JSONL lines when every record
        was written, else the per-record list of JSONL lines and :class:`Reject` objects.
    """
    dumps = orjson.dumps
    out: list[bytes | Reject] = []
    clean = True
    # three passes (parse; RDKit; records + JSON) instead of one per record: the RDKit calls
    # run back to back, which keeps the CPU caches warm for them (in-process on massbank_ei.msp:
    # 74 % -> 86 % of the bare RDKit loop, BENCHMARKS.md)
    recs = [parse_block(block, file, line, ordinal, at_eof) for block, line, ordinal, at_eof in raws]
    structures = [structure_of(rec, opts) for rec in recs]
    for rec, got in zip(recs, structures):
        res = convert_record(rec, opts, got)
        if isinstance(res, dict):
            out.append(dumps(res, option=_DUMPS_OPT))
        else:
            clean = False
            out.append(Reject(reason=res[0], detail=res[1], file=rec.file, line=rec.line,
                              record=rec.name or None,
                              id=rec.record_id if rec.is_record else None))
    return len(raws), (b"".join(out) if clean else out)  # type: ignore[arg-type]


_WORKER_OPTS: ConvertOptions | None = None


def _init_worker(opts: ConvertOptions) -> None:
    global _WORKER_OPTS
    _WORKER_OPTS = opts


def _worker_chunk(task: tuple[str, list[RawRecord]]) -> ChunkResult:
    assert _WORKER_OPTS is not None
    return convert_raw(task[0], task[1], _WORKER_OPTS)


def _one_by_one(task: tuple[str, list[RawRecord]]) -> list[tuple[str, list[RawRecord]]]:
    return [(task[0], [raw]) for raw in task[1]]


def _crashed(task: tuple[str, list[RawRecord]], why: str) -> ChunkResult:
    """The ``worker_crashed`` reject of the one record of ``task`` (named from its MSP text)."""
    block, line, ordinal, at_eof = task[1][0]
    rec = parse_block(block, task[0], line, ordinal, at_eof)  # no RDKit: safe in this process
    return 1, [Reject(reason="worker_crashed", detail=f"{why} while working on this record",
                      file=task[0], line=line, record=rec.name or None, id=rec.record_id)]


def raw_records(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, RawRecord]]:
    """``(file name, raw record)`` of every input in turn, split but not parsed (cheap)."""
    for path in paths:
        name = display_name(path)
        with open_in(path) as stream:
            for raw in iter_blocks(stream):
                yield name, raw


def _raw_chunks(records: Iterable[tuple[str, RawRecord]],
                size: int) -> Iterator[tuple[str, list[RawRecord]]]:
    """``(file name, raw records)`` chunks of at most ``size`` records, never across files."""
    name, chunk = "", []
    for file, raw in records:
        if chunk and file != name:
            yield name, chunk
            chunk = []
        name = file
        chunk.append(raw)
        if len(chunk) >= size:
            yield name, chunk
            chunk = []
    if chunk:
        yield name, chunk


def _converted(records: Iterable[tuple[str, RawRecord]], opts: ConvertOptions, jobs: int,
               chunk_size: int) -> Iterator[ChunkResult]:
    """Chunk results in input order; at most ``2 * jobs`` chunks in flight.

    The main process only splits the input into raw records and writes bytes; parsing,
    RDKit and JSON happen in the workers. A record on which a worker dies (RDKit crashed) is
    a ``worker_crashed`` reject (:func:`neimsctl.io.parallel.ordered_map`).
    """
    return ordered_map(_worker_chunk, _raw_chunks(records, chunk_size), jobs, _init_worker, (opts,),
                       max_in_flight=2 * jobs, split=_one_by_one, crashed=_crashed)


def convert_msp(paths: Iterable[str | os.PathLike], out: BinaryIO, tally: Tally,
                opts: ConvertOptions, *, jobs: int | None = 1, strict: bool = False,
                chunk_size: int = 512, on_reject: Callable[[Reject], None] | None = None,
                progress: Callable[[Tally], None] | None = None) -> Reject | None:
    """Convert MSP inputs to JSONL records on ``out``; count and report every record.

    Parameters
    ----------
    paths
        Input paths (``-`` is stdin; gzip/zstd decoded transparently).
    out
        Binary stream for the JSONL lines.
    tally
        Receives read/written counts and every reject (and writes the rejects report), and
        the number of worker processes used (``tally.workers``).
    opts
        Structure and filter settings.
    jobs
        Worker processes, or ``None`` for the ``--jobs auto`` rule
        (:func:`neimsctl.io.parallel.resolve_jobs`: one process for inputs of up to
        :data:`~neimsctl.io.parallel.AUTO_MIN_RECORDS` records, else one per core); the output
        does not depend on it.
    strict
        Stop at the first rejected record and return it.
    chunk_size
        Records per task handed to a worker.
    on_reject
        Called with every reject after it was counted (e.g. to log it).
    progress
        Called with ``tally`` after each chunk (a progress bar).

    Returns
    -------
    Reject or None
        The rejected record that stopped a ``strict`` run, else ``None``.
    """
    write = out.write
    tally.workers, records = resolve_jobs(jobs, raw_records(paths))
    for n, payload in _converted(records, opts, tally.workers, chunk_size):
        if isinstance(payload, bytes):
            write(payload)
            tally.read += n
            tally.written += n
            if progress is not None:
                progress(tally)
            continue
        for res in payload:
            tally.read += 1
            if isinstance(res, bytes):
                write(res)
                tally.written += 1
                continue
            tally.reject(res)
            if on_reject is not None:
                on_reject(res)
            if strict:
                return res
        if progress is not None:
            progress(tally)
    return None
