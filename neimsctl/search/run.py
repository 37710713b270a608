"""The ``search`` pipeline: query spectra -> the top hits of one or more libraries.

Queries are read in batches (:func:`read_queries`), bad ones reported and skipped. For each
batch every library (:class:`neimsctl.io.spectral_index.SpectralIndex`, on disk or built in
memory from MSP/JSONL) is streamed in chunks through the one matching engine,
:func:`neimsctl.evaluate.matching.search_blocks`; only the chunks that a query's mass window or
the candidate list can reach are read. Hits of several libraries are merged by score (ties:
library order, then entry order).

Filters
-------
- ``mass_filter=D``: only entries whose nominal mass is within ``D`` Da of the query's (its
  ``MW``, else weighed from its SMILES or formula); a query without a mass is searched unfiltered.
- ``candidates``: InChIKey connectivity blocks (first 14 characters); only entries of those
  compounds are hits.
- ``source``: ``measured`` or ``predicted`` entries only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from neimsctl.errors import FormatError, shown
from neimsctl.evaluate.matching import Score, TopK, defers, pair_scores, search_blocks, use_bf16
from neimsctl.io.inchikey import is_inchikey
from neimsctl.io.native import amx
from neimsctl.io.peak_block import PeakBlock, bin_batch, check_peaks
from neimsctl.io.rejects import Reject, Tally
from neimsctl.io.spectral_index import SpectralIndex, is_index, open_index
from neimsctl.io.spectrum import N_BINS
from neimsctl.io.spectrum_records import SpectrumRecord, read_spectrum_records
from neimsctl.io.streams import check_input, display_name, is_dash, sniff
from neimsctl.search.build import build_memory_index, complete_record

__all__ = ["SearchOptions", "Hit", "HitTable", "QueryBatch", "open_libraries", "read_queries", "search_batch",
           "search_table", "read_candidates", "match_candidates", "allowed_count", "HIT_FIELDS"]

_SCORE_BUDGET = 1 << 24     # score-matrix elements per chunk (queries x entries)
#: Best cosine entries per query whose composite scores give its floor (:func:`_warm_floor`;
#: 10 / 20 / 50 / 100 of them: 6.7 / 6.7 / 6.2 / 6.1M pairs for 1,000 queries)
_WARM_TOP = 50

#: Columns of a hit, in output order.
HIT_FIELDS = ("query_id", "query_name", "rank", "score", "hit_id", "hit_name", "inchikey", "smiles",
              "formula", "mw", "mass_diff", "source", "library")


@dataclass
class SearchOptions:
    """How to search (see the module docstring)."""

    score: Score = field(default_factory=Score)
    top: int = 10
    mass_filter: float | None = None
    candidates: set[str] | None = None
    source: str | None = None


@dataclass
class QueryBatch:
    """Valid query spectra of one batch: records, their peaks and nominal masses (NaN unknown)."""

    records: list[SpectrumRecord]
    block: PeakBlock
    mw: np.ndarray


@dataclass
class Hit:
    """One hit of one query."""

    query: SpectrumRecord
    rank: int
    score: float
    library: int
    entry: int
    info: dict[str, Any] = field(default_factory=dict)

    def row(self, libraries: Sequence[SpectralIndex], score: Score) -> dict[str, Any]:
        return dict(zip(HIT_FIELDS, self.cells(score)))

    def cells(self, score: Score) -> list[Any]:
        """The hit's values in the order of :data:`HIT_FIELDS` (``None``: unknown)."""
        one = HitTable([self.query], [0], [self.rank], [self.score], [self.library], [self.entry],
                       {key: [value] for key, value in self.info.items()})
        return [column[0] for column in one.columns(score)]


@dataclass
class HitTable:
    """The hits of a batch of queries as columns, query by query, best first (a :class:`Hit`
    per hit cost more than writing it: 10,000 hits)."""

    records: list[SpectrumRecord]
    #: per hit: its query (position in :attr:`records`), rank, score, library and entry
    query: list[int]
    rank: list[int]
    score: list[float]
    library: list[int]
    entry: list[int]
    #: per hit, the entry's id, name, inchikey, smiles, formula, mw (-1: unknown), kind, file
    info: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.query)

    def columns(self, score: Score) -> list[list[Any]]:
        """The values of every hit, a list per field of :data:`HIT_FIELDS` (``None``: unknown)."""
        queries = [self.records[i] for i in self.query]
        i = self.info
        digits = 1 if score.name == "composite" else 4
        qmw = [q.mw for q in queries]
        mw = i["mw"]
        return [[q.id for q in queries], [q.name for q in queries], self.rank,
                [round(s, digits) for s in self.score], i["id"], i["name"], i["inchikey"], i["smiles"],
                i["formula"], [m if m >= 0 else None for m in mw],
                [(m - a) if (a is not None and m >= 0) else None for m, a in zip(mw, qmw)], i["kind"], i["file"]]

    def rows(self, score: Score) -> list[list[dict[str, Any]]]:
        """The hits of each query of :attr:`records` as dicts keyed by :data:`HIT_FIELDS`."""
        out: list[list[dict[str, Any]]] = [[] for _ in self.records]
        for qi, row in zip(self.query, zip(*self.columns(score))):
            out[qi].append(dict(zip(HIT_FIELDS, row)))
        return out

    def hits(self) -> list[list[Hit]]:
        """The hits of each query of :attr:`records` (none: an empty list)."""
        out: list[list[Hit]] = [[] for _ in self.records]
        keys = list(self.info)
        for j, (qi, rank, s, lib, e) in enumerate(zip(self.query, self.rank, self.score, self.library, self.entry)):
            out[qi].append(Hit(self.records[qi], rank, s, lib, e, {k: self.info[k][j] for k in keys}))
        return out

    def counts(self) -> list[int]:
        """Hits of each query of :attr:`records`."""
        n = [0] * len(self.records)
        for qi in self.query:
            n[qi] += 1
        return n


def open_libraries(paths: Sequence[str | os.PathLike], tally: Tally) -> list[SpectralIndex]:
    """Open index files; MSP/JSONL/shard libraries are indexed in memory (their rejects go to
    ``tally``)."""
    libs = []
    for path in paths:
        if not is_dash(path) and os.path.isfile(path) and sniff(path) == "h5" and not _is_shard(path):
            libs.append(open_index(path))
        else:
            if not is_dash(path):
                check_input(path)
            lib = build_memory_index([path], tally, name=display_name(path))
            if lib.n == 0:
                raise FormatError("no usable spectra: not an index, nor an MSP/JSONL library with peaks",
                                  file=display_name(path))
            libs.append(lib)
    return libs


def _is_shard(path: str | os.PathLike) -> bool:
    if is_index(path):
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("schema", "")).startswith("neimsctl.h5shard/")
    except OSError:
        return False


def read_queries(paths: Iterable[str | os.PathLike], tally: Tally, batch: int = 1024,
                 warn: Any = None) -> Iterator[QueryBatch]:
    """Batches of valid queries; a bad one is reported to ``tally`` (and ``warn(reject)``)."""
    recs: list[SpectrumRecord] = []
    for path in paths:
        for rec in read_spectrum_records(path):
            tally.read += 1
            problem = (rec.reason, rec.detail) if rec.reason else check_peaks(rec.mz, rec.intensity, N_BINS)
            if problem is not None:
                rej = Reject(problem[0], problem[1], rec.file, rec.line or None, rec.name or None, rec.id)
                tally.reject(rej)
                if warn is not None:
                    warn(rej)
                continue
            complete_record(rec)
            recs.append(rec)
            if len(recs) >= batch:
                yield _batch(recs)
                recs = []
    if recs:
        yield _batch(recs)


def _batch(recs: list[SpectrumRecord]) -> QueryBatch:
    block = bin_batch([r.mz for r in recs], [r.intensity for r in recs], N_BINS)
    mw = np.array([r.mw if r.mw is not None else np.nan for r in recs], dtype=np.float64)
    return QueryBatch(recs, block, mw)


def read_candidates(path: str | os.PathLike, libraries: Sequence[SpectralIndex]) -> tuple[set[str], list[Reject]]:
    """Connectivity blocks of a candidate list (one InChIKey, block or SMILES per line, first
    field; a line starting with ``#`` is a comment, see :func:`_uncommented`), and the entries that match nothing, as rejects in line order
    (``unparsable_candidate``, ``candidate_not_found``; the token shown cut to 80 characters)."""
    from neimsctl.io.streams import iter_lines, open_in

    wanted: list[tuple[int, str]] = []
    with open_in(path) as fh:
        for lineno, raw in enumerate(iter_lines(fh), 1):    # LF, CRLF or bare CR line ends
            if b"\x00" in raw:
                raise FormatError("binary data, not a list of InChIKeys or SMILES",
                                  file=display_name(path), line=lineno)
            text = raw.decode("utf-8", "replace").lstrip("\ufeff").strip()
            if text and not text.startswith("#"):
                token = text.split()[0]
                if not wanted and token.lower() in _HEADERS:   # a column header, no compound
                    continue
                wanted.append((lineno, _uncommented(token)))
    if not wanted:
        raise FormatError("the candidate list is empty", file=display_name(path))
    blocks, bad = match_candidates([token for _, token in wanted], libraries)
    return blocks, [Reject(reason, detail, display_name(path), wanted[i][0], shown_candidate(wanted[i][1]))
                    for i, reason, detail in bad]


#: The first line of a candidate list that is a column header ("InChIKey", "SMILES").
_HEADERS = frozenset({"inchikey", "smiles", "inchi"})


def _uncommented(token: str) -> str:
    """A candidate's first field without a comment glued to it: ``#`` is a SMILES triple bond
    (``CC#N``), so it starts a comment only at the start of a line or a field, or right after an
    InChIKey or its first block (``...-N#note``)."""
    if "#" not in token:
        return token
    head = token.split("#", 1)[0]
    return head if is_inchikey(head) else token


def match_candidates(tokens: Sequence[str], libraries: Sequence[SpectralIndex]
                     ) -> tuple[set[str], list[tuple[int, str, str]]]:
    """Connectivity blocks of candidates (each an InChIKey, its first block or a SMILES), and the
    candidates that are neither or match no entry of ``libraries``, as ``(position, reason,
    detail)`` in the order given (reasons ``unparsable_candidate``, ``candidate_not_found``)."""
    found = [_candidate_block(token) for token in tokens]
    blocks = {b for b in found if b is not None}
    present: set[str] = set()
    for lib in libraries:
        present |= lib.key_matches(blocks)[1]
    bad = []
    for i, block in enumerate(found):
        if block is None:
            bad.append((i, "unparsable_candidate", "neither an InChIKey nor a parsable SMILES or InChI"))
        elif block not in present:
            bad.append((i, "candidate_not_found", "matches no library entry"))
    return blocks, bad


def shown_candidate(token: str, limit: int = 80) -> str:
    """A candidate as messages show it: cut to ``limit`` characters (a 2 MB line is not echoed)."""
    return shown(token, limit)


def _candidate_block(token: str) -> str | None:
    if is_inchikey(token):
        return token.upper()[:14]
    from neimsctl.chem import structure
    from rdkit import Chem

    if token.startswith("InChI="):     # an InChI (suspect lists often give them): its structure's key
        # (RDKit's log stays off: importing structure turned it off for the process)
        mol = Chem.MolFromInchi(token, logLevel=None)
        key = Chem.MolToInchiKey(mol) if mol is not None else ""
        return key[:14] if key else None
    try:
        key = Chem.MolToInchiKey(structure.mol_from_smiles(token))
    except FormatError:
        return None
    return key[:14] if key else None


def _allowed_mask(lib: SpectralIndex, opts: SearchOptions) -> np.ndarray | None:
    """The entries ``opts`` lets be hits (``None``: all); the candidate keys are matched once
    per library (:meth:`SpectralIndex.key_matches`)."""
    mask = None
    if opts.source is not None:
        mask = lib.predicted if opts.source == "predicted" else ~lib.predicted
    if opts.candidates is not None:
        cand = lib.key_matches(opts.candidates)[0]
        mask = cand if mask is None else mask & cand
    return mask


def allowed_count(libraries: Sequence[SpectralIndex], opts: SearchOptions) -> int | None:
    """How many entries of ``libraries`` ``--source`` and ``--candidates`` let be hits (``None``:
    neither is given); the masks are those the search reuses (read once per library)."""
    if opts.source is None and opts.candidates is None:
        return None
    masks = [_allowed_mask(lib, opts) for lib in libraries]
    return sum(lib.n if m is None else int(np.count_nonzero(m)) for lib, m in zip(libraries, masks))


def _ranges(n: int, windows: tuple[np.ndarray, np.ndarray] | None, mask: np.ndarray | None) -> list[tuple[int, int]]:
    """Merged entry ranges that some query may reach."""
    if windows is None:
        spans = [(0, n)]
    else:
        order = np.argsort(windows[0])
        spans = []
        for lo, hi in zip(windows[0][order], windows[1][order]):
            if hi <= lo:
                continue
            if spans and lo <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], int(hi)))
            else:
                spans.append((int(lo), int(hi)))
    if mask is None:
        return spans
    out = []
    for lo, hi in spans:
        idx = np.flatnonzero(mask[lo:hi])
        if len(idx) == 0:
            continue
        breaks = np.flatnonzero(np.diff(idx) > 1)
        starts = np.concatenate([[idx[0]], idx[breaks + 1]]) + lo
        stops = np.concatenate([idx[breaks], [idx[-1]]]) + lo + 1
        out.extend(zip(starts.tolist(), stops.tolist()))
    return out


def _chunks(lib: SpectralIndex, ranges: list[tuple[int, int]], size: int,
            windows: tuple[np.ndarray, np.ndarray] | None = None) -> Iterator[tuple[int, PeakBlock]]:
    """Library chunks of at most ``size`` entries over ``ranges``. With mass windows, a chunk spans
    about half the median width of the windows that reach its start (at least 1,024 entries):
    narrow where windows are narrow (a chunk then meets only the queries whose window reaches it),
    wide where the library is dense in masses (fewer, larger products)."""
    for lo, hi in ranges:
        if windows is None:
            yield from lib.chunks(size, lo, hi)
            continue
        pos = lo
        while pos < hi:
            step = size
            inside = (windows[0] <= pos) & (windows[1] > pos)
            if inside.any():
                step = int(np.clip(np.median(windows[1][inside] - windows[0][inside]) // 2, 1024, size))
            stop = min(pos + step, hi)
            yield pos, lib.block(pos, stop)
            pos = stop


def _dense_chunks(lib: SpectralIndex, blocks: Sequence[int], float32: bool, peaks: bool = True
                  ) -> Iterator[tuple[int, Any]]:
    """The index's blocks of stored weights ``blocks`` (ascending), with their peaks unless
    ``peaks`` is False (a search that reads only its candidates' peaks at the end), read (and
    converted to float32 for a float32 first pass) one block ahead in a thread, so that the
    reads overlap the products and the exact scores (and wait on the disk when the file is not
    in the page cache). Their memory is reused (the search releases each block's weights).
    (Two reader threads, two blocks ahead, were no faster: 0.67 vs 0.64 s for 1,000 queries.)
    Where the search's fused AMX pass takes the blocks (``peaks`` False, bfloat16), nothing is
    read ahead: the chunks are lazy (:attr:`DenseChunk.source`) and the kernel reads each block
    in pieces that stay in its core's cache, in as many lanes as there are CPUs
    (``matching._Deferred``): a 1,000-query search +-5 Da over 1.59M entries 0.53 s instead of
    0.62 s, its copies of 1.01 GB of weights out of the page cache into buffers read back gone."""
    if len(blocks) == 0:
        return
    if not (peaks or float32) and amx():    # the fused AMX pass reads the weights itself, in pieces
        blocks = [int(b) for b in blocks]
        for i, b in enumerate(blocks):
            if i % 16 == 0:         # the peak offsets of the next 16 searched blocks, checked at once
                _check_peak_ptr(lib, blocks[i:i + 16])
            yield lib.dense_chunk(b, check=False, lazy=True)
        return
    from concurrent.futures import ThreadPoolExecutor

    def read(b: int) -> tuple[int, Any]:
        # a search that scores at the end checks the blocks as it multiplies them (the fused AMX
        # pass: while they are in cache), or when it first uses them (DenseChunk.check)
        start, chunk = lib.dense_chunk(b, float32, pooled=True, check=peaks)
        if peaks:
            chunk.block                            # noqa: B018 (the peaks, for the exact scores)
        return start, chunk

    with ThreadPoolExecutor(1, thread_name_prefix="neimsctl-read") as pool:
        ahead = pool.submit(read, int(blocks[0]))
        for b in blocks[1:]:
            current, ahead = ahead, pool.submit(read, int(b))
            yield current.result()
        yield ahead.result()


def _check_peak_ptr(lib: SpectralIndex, blocks: list[int]) -> None:
    """Check the peak offsets of the entries of ``blocks`` (ascending) as reading their peaks
    would: one read per run of consecutive blocks, and on a failure block by block, so that the
    error names the damaged block's entries (only blocks the search reads are checked)."""
    size = lib.dense_block
    runs: list[list[int]] = []
    for b in blocks:
        if runs and b == runs[-1][-1] + 1:
            runs[-1].append(b)
        else:
            runs.append([b])
    for run in runs:
        try:
            lib.check_peak_ptr(run[0] * size, min((run[-1] + 1) * size, lib.n))
        except FormatError:
            for b in run:
                lib.check_peak_ptr(b * size, min((b + 1) * size, lib.n))
            raise


def _dense_blocks(lib: SpectralIndex, ranges: list[tuple[int, int]], score: Score) -> list[int] | None:
    """The blocks of stored weights to read (ascending), or ``None`` to read the peak lists: the
    stored weights serve the cosine they were made for, unless the ranges are a small part of the
    blocks they reach (a short candidate list)."""
    if lib.dense_block is None or not score.dot or lib.dense_powers != (score.mz_power, score.intensity_power):
        return None
    if not ranges:
        return None
    block = lib.dense_block
    blocks = sorted({b for lo, hi in ranges for b in range(lo // block, (hi - 1) // block + 1)})
    wanted = sum(hi - lo for lo, hi in ranges)
    return blocks if wanted * 8 >= sum(min(block, lib.n - b * block) for b in blocks) else None


def search_library(lib: SpectralIndex, batch: QueryBatch, opts: SearchOptions) -> TopK:
    """Top hits of one library for one batch of queries (engine: :func:`search_blocks`)."""
    windows = None
    if opts.mass_filter is not None:
        lo, hi = lib.window(np.nan_to_num(batch.mw, nan=0.0), opts.mass_filter)
        unknown = np.isnan(batch.mw)
        lo[unknown], hi[unknown] = 0, lib.n
        windows = (lo, hi)
    mask = _allowed_mask(lib, opts)
    ranges = _ranges(lib.n, windows, mask)
    size = int(max(1024, min(65536, _SCORE_BUDGET // max(1, len(batch.records)))))
    allowed = (lambda a, b: mask[a:b]) if mask is not None else None
    reach = float(np.sum(windows[1] - windows[0])) if windows is not None else float(lib.n) * len(batch.records)
    if mask is not None:        # a candidate list or source filter: at most the allowed entries
        reach = min(reach, float(np.count_nonzero(mask)) * len(batch.records))
    bf16 = use_bf16(opts.score, reach * N_BINS)
    blocks = _dense_blocks(lib, ranges, opts.score)
    if blocks is None:
        floor = _warm_floor(lib, batch, opts) if opts.score.name == "composite" else None
        return search_blocks(batch.block, _chunks(lib, ranges, size, windows), opts.score, opts.top,
                             windows=windows, allowed=allowed, bf16=bf16, floor=floor)
    defer = defers(opts.score, opts.top)        # the exact stage at the end, from the candidates' peaks
    return search_blocks(batch.block, _dense_chunks(lib, blocks, not bf16, peaks=not defer), opts.score, opts.top,
                         windows=windows, allowed=allowed, bf16=bf16, peaks=lib.entry_peaks if defer else None)


def _warm_floor(lib: SpectralIndex, batch: QueryBatch, opts: SearchOptions) -> np.ndarray | None:
    """For a composite search of an index with stored cosine weights: a score each query's
    hits reach (:func:`search_blocks`' ``floor``), the k-th best composite among its
    :data:`_WARM_TOP` best entries by that cosine (fast: the stored weights; the same filters).
    Without it a query's threshold rose only as its own window was read, and the composite
    scored ~2x the pairs it needed exactly (its bound takes F_R <= 1): at +-5 Da over 1.59M
    entries, 1,000 queries 12.3M -> 6.2M pairs (CPU 19.8 -> 15.5 s), 200 queries 1.71M ->
    1.07M (0.95M with their final thresholds known in advance); the hits are the same.
    ``None`` when the index has no stored weights."""
    if lib.dense_block is None or lib.dense_powers is None:
        return None
    warm = search_library(lib, batch, SearchOptions(Score("cosine", *lib.dense_powers), max(opts.top, _WARM_TOP),
                                                    opts.mass_filter, opts.candidates, opts.source))
    qrow, col = np.nonzero(warm.index >= 0)
    floor = np.full(len(batch.records), -np.inf)
    if len(qrow) == 0:
        return floor
    entries = warm.index[qrow, col]
    uniq, inv = np.unique(entries, return_inverse=True)
    peaks = lib.take(uniq).take(inv)
    scores = pair_scores(batch.block, qrow, peaks, opts.score)
    found = np.full(warm.index.shape, -np.inf)
    found[qrow, col] = scores
    k = opts.top
    full = (warm.index >= 0).sum(axis=1) >= k       # k entries: the k-th best of their scores
    floor[full] = -np.sort(-found[full], axis=1)[:, k - 1]
    return floor


def search_batch(libraries: Sequence[SpectralIndex], batch: QueryBatch, opts: SearchOptions) -> list[list[Hit]]:
    """The hits of every query of a batch, best first, over all libraries."""
    return search_table(libraries, batch, opts).hits()


def search_table(libraries: Sequence[SpectralIndex], batch: QueryBatch, opts: SearchOptions) -> HitTable:
    """:func:`search_batch`'s hits as one :class:`HitTable`."""
    results = []
    for lib in libraries:
        try:
            results.append(search_library(lib, batch, opts))
        except FormatError as exc:
            if exc.file is None:          # the engine's finding: name the library it came from
                raise FormatError(exc.message, file=str(lib.path)) from None
            raise
    scores = np.concatenate([r.scores for r in results], axis=1)
    index = np.concatenate([r.index for r in results], axis=1)
    libno = np.concatenate([np.full(r.index.shape, j) for j, r in enumerate(results)], axis=1)
    order = np.lexsort((index, libno, -scores), axis=1)[:, :opts.top]
    scores, index, libno = (np.take_along_axis(a, order, axis=1) for a in (scores, index, libno))
    found = (index >= 0) & np.isfinite(scores)
    # a query's hits: its best ones up to the first entry that is none
    keep = np.cumprod(found, axis=1, dtype=bool)
    qrow, col = np.nonzero(keep)
    scores, index, libno = scores[keep], index[keep], libno[keep]
    info: dict[str, list[Any]] = libraries[0].entries(index[:0]) if len(index) == 0 else {}
    for j in range(len(libraries)):     # (a bare np.unique imports numpy.ma: 7 ms)
        at = np.flatnonzero(libno == j)
        if len(at) == 0:
            continue
        got = libraries[j].entries(index[at])
        if len(at) == len(index):       # every hit in this library
            info = got
            break
        for key, values in got.items():
            column = info.setdefault(key, [None] * len(index))
            for pos, value in zip(at.tolist(), values):
                column[pos] = value
    return HitTable(batch.records, qrow.tolist(), (col + 1).tolist(), scores.tolist(), libno.tolist(), index.tolist(),
                    info)
