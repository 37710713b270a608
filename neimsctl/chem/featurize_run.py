"""The ``featurize`` pipeline: input lines -> chunks -> (parallel) rows -> HDF5 shard / zblock stream.

- Inputs (:func:`neimsctl.io.inputs.iter_items` with :data:`FEATURIZE_FORMATS`): JSONL records
  (contract 1) or ``SMILES [name]`` lines, per file auto-detected from the first non-blank line
  (``{`` -> JSONL) unless ``input_format`` is given. Blank lines and ``#`` comment lines of
  SMILES files are not records. LF, CRLF and CR line ends are read.
- Ordinals: records are numbered 0, 1, 2 ... across all inputs in order; ``shard=(K, N)`` keeps
  records with ``ordinal % N == K - 1`` (round robin, so shards are balanced without knowing the
  input length). Rows carry their ordinal, which lets ``shards merge`` restore input order.
- Parallelism: chunks of :data:`CHUNK` records go to ``jobs`` worker processes; at most
  ``2 * jobs + 2`` chunks are in flight and results are written in submission order, so the
  output is identical for any ``jobs`` and memory stays bounded on endless stdin.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from neimsctl.chem.rowbuild import Rejected, RowBuilder, RowOptions, crashed_block, one_by_one
from neimsctl.errors import InputError, StrictStop
from neimsctl.io.featblock import block_rows
from neimsctl.io.h5shard import ResumableShardWriter, ShardWriter
from neimsctl.io.inputs import Item
from neimsctl.io.parallel import chunked, ordered_map
from neimsctl.io.rejects import Reject, Tally
from neimsctl.io.spectrum import N_BINS, NOISE_LEVEL
from neimsctl.io.streams import atomic_path, copy_file_to, is_dash, is_special_file, spool_path
from neimsctl.io.zblock import ZBlockWriter

CHUNK = 256
#: What featurize reads (:func:`neimsctl.io.inputs.iter_items` detects among these; no SDF).
FEATURIZE_FORMATS = ("jsonl", "smi")
# input records between two resume points of a resumable HDF5 output: a crash loses at most a few
# seconds of work, and runs of fewer records need no join at the end (BENCHMARKS.md, session 7)
COMMIT_ROWS = 16384
_BUILDER: RowBuilder | None = None


class Sink(Protocol):
    def append(self, block: dict[str, np.ndarray]) -> None: ...


def _init_worker(opts: RowOptions) -> None:
    global _BUILDER
    _BUILDER = RowBuilder(opts)


def _work(items: list[Item]) -> tuple[dict[str, np.ndarray], list[Rejected], int]:
    assert _BUILDER is not None
    block, rejects = _BUILDER.build(items)
    return block, rejects, len(items)


def _results(chunks: Iterator[list[Item]], opts: RowOptions,
             jobs: int) -> Iterator[tuple[dict[str, np.ndarray], list[Rejected], int]]:
    """Feature blocks in input order; at most ``2 * jobs + 2`` chunks in flight; a record on
    which a worker dies is a ``worker_crashed`` reject."""
    return ordered_map(_work, chunks, jobs, _init_worker, (opts,), max_in_flight=2 * jobs + 2,
                       split=one_by_one, crashed=functools.partial(crashed_block, opts.mode))


def run_featurize(items: Iterator[Item], sink: Sink, tally: Tally, *, opts: RowOptions,
                  jobs: int = 1, strict: bool = False, chunk: int = CHUNK,
                  show: Callable[[str], None] | None = None, show_limit: int | None = 10,
                  commit: Callable[[int], None] | None = None, commit_every: int = COMMIT_ROWS,
                  progress: Callable[[Tally], None] | None = None) -> None:
    """Featurize ``items`` into ``sink``, counting and reporting every record in ``tally``.

    ``show`` receives a one-line message for each of the first ``show_limit`` rejects
    (all when ``None``), e.g. to print them on stderr. ``commit`` is called about every
    ``commit_every`` input records, after the rows and rejects of all records before ordinal
    ``n`` were handed on, with that ``n`` (a resume point). ``progress`` is called with the
    tally after each chunk (a progress bar).

    Raises
    ------
    StrictStop
        ``strict`` and a record was rejected (rows before it are written, the output is not
        finished by the caller).
    """
    since = 0
    for block, rejects, n_items in _results(chunked(items, chunk), opts, jobs):
        if strict and rejects:
            r = rejects[0]
            tally.read += int(np.count_nonzero(block["ordinal"] < r.item.ordinal)) + 1
            tally.reject(Reject(r.reason, r.detail, file=r.item.file, line=r.item.line,
                                record=r.name, id=r.id))
            raise StrictStop(f"{r.item.file}: line {r.item.line}: {r.reason}: {r.detail}")
        tally.read += n_items
        for r in rejects:
            if show is not None and (show_limit is None or tally.rejected < show_limit):
                show(f"{r.item.file}: line {r.item.line}: {r.reason}: {r.detail}")
            tally.reject(Reject(r.reason, r.detail, file=r.item.file, line=r.item.line,
                                record=r.name, id=r.id))
        sink.append(block)
        tally.written += block_rows(block)
        if progress is not None:
            progress(tally)
        if commit is not None:
            since += n_items
            if since >= commit_every:
                ords = [int(block["ordinal"].max())] if block_rows(block) else []
                commit(max(ords + [r.item.ordinal for r in rejects]) + 1)
                since = 0


class _ZSink:
    def __init__(self, w: ZBlockWriter) -> None:
        self.w = w

    def append(self, block: dict[str, np.ndarray]) -> None:
        self.w.write(block)


@contextlib.contextmanager
def open_sink(out: str | os.PathLike, fmt: str, mode: str, settings: dict[str, Any],
              settings_hash: str, attrs: dict[str, Any] | None = None,
              stdout: IO[bytes] | None = None, resumable: bool = False,
              resume: bool = False) -> Iterator[Sink]:
    """Where rows go: ``fmt`` ``h5`` or ``zst``; ``out`` a file (atomic) or ``-`` (stdout).

    HDF5 to stdout is written to a spool file and copied out once complete; zblocks stream.
    On an exception nothing complete-looking is left: files stay under their temporary name
    (removed), and a zblock stream lacks its end frame. ``resumable`` HDF5 file outputs are
    written in segments (:class:`ResumableShardWriter`; the caller must ``commit``) kept for
    ``resume``.
    """
    stdout = stdout if stdout is not None else sys.stdout.buffer
    if fmt == "zst":
        with contextlib.ExitStack() as stack:
            if is_dash(out):
                fh: IO[bytes] = stdout
            else:
                tmp = stack.enter_context(atomic_path(out))
                fh = stack.enter_context(open(tmp, "wb", buffering=1 << 20))
            w = ZBlockWriter(fh, mode, settings, settings_hash, attrs)
            yield _ZSink(w)
            w.close()
        return
    special = not is_dash(out) and is_special_file(out)  # -o /dev/null, a named pipe
    if not is_dash(out) and not special:
        if resumable or resume:
            with ResumableShardWriter(out, mode, settings, settings_hash, attrs, resume=resume) as rw:
                yield rw
        else:
            with ShardWriter(out, mode, settings, settings_hash, attrs) as sw:
                yield sw
        return
    with spool_path(".h5") as spool:
        with ShardWriter(spool, mode, settings, settings_hash, attrs) as sw:
            yield sw
        if special:
            with open(out, "wb") as fh:
                copy_file_to(spool, fh)
        else:
            copy_file_to(spool, stdout)


def resume_point(paths: Iterable[str | os.PathLike], input_format: str | None,
                 shard: tuple[int, int] | None, state: dict[str, Any] | None,
                 inchikey: bool = True) -> dict[str, Any]:
    """What identifies this run's input (files with size and mtime, format, shard) and the
    one row setting the shard's settings hash leaves out (``inchikey``: whether SMILES
    input gets InChIKeys; :func:`run_settings`).

    Stored with every resume point; a resumed run (``state`` from the partial output) must
    read the same input with the same ``inchikey``, else :class:`InputError` (the rows before
    the interruption would have InChIKeys and the later ones none, or the other way round).
    A partial output of a version that did not store ``inchikey`` is not checked for it.
    Standard input cannot be checked: give the same stream again.
    """
    inputs = []
    for p in paths:
        if is_dash(p):
            inputs.append(["-"])
        else:
            st = os.stat(p)
            inputs.append([str(p), st.st_size, st.st_mtime_ns])
    point = {"inputs": inputs, "input_format": input_format,
             "shard": list(shard) if shard else None, "inchikey": inchikey}
    if state is not None:
        old = {k: state.get(k) for k in point if k != "inchikey" or k in state}
        if old != {k: point[k] for k in old}:
            raise InputError(f"cannot resume: the partial output was made from other input "
                             f"({old}) than this run's ({point}); run again without --resume")
    return point


def run_settings(opts: RowOptions) -> tuple[dict[str, Any], str]:
    """Featurizer settings plus the row filters of ``opts``, and their hash.

    The InChIKey switch is left out: it changes no feature, only a metadata column.
    """
    from neimsctl.chem.features import get_featurizer, settings_hash

    settings = get_featurizer(opts.mode).settings
    settings["rows"] = {"min_mw": opts.min_mw, "max_mw": opts.max_mw,
                        "spectrum": {"bins": N_BINS, "norm": "max", "noise": NOISE_LEVEL,
                                     "dtype": "float16"}}
    return settings, settings_hash(settings)


def guess_format(out: str | os.PathLike) -> str | None:
    """``h5``/``zst`` from an output file suffix; ``None`` when it says nothing."""
    suffix = Path(str(out)).suffix.lower()
    return {".h5": "h5", ".hdf5": "h5", ".zst": "zst", ".zblk": "zst"}.get(suffix)
