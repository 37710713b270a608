"""Resumable shard output: :class:`ResumableShardWriter`, the writer of ``featurize -o FILE.h5``.

Rows go into segments, complete shards ``FILE.h5.partial/seg-NNNNNN.h5`` (one per resume point,
each with the caller's resume state), which are joined into ``FILE.h5`` chunk by chunk as stored
(formats/h5-shard.v1.md, "Writing"). Each segment is written by a
:class:`neimsctl.io.h5shard.write.ShardWriter` and read back by a
:class:`neimsctl.io.h5shard.read.ShardReader`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from neimsctl.errors import FormatError, OutputError
from neimsctl.io.featblock import block_rows, check_mode
from neimsctl.io.h5shard.layout import ROW_CHUNK
from neimsctl.io.h5shard.read import ShardReader
from neimsctl.io.h5shard.write import ShardWriter
from neimsctl.io.streams import Writer, lock_partial, partial_path


class ResumableShardWriter(Writer):
    """Write one shard so that an interrupted run can be continued; a context manager.

    HDF5 is not crash-safe: a process killed half-way through a write can leave a file that
    the library cannot open again (or that crashes it). So the rows go, one *segment* per
    :meth:`commit`, into complete shards ``<path>.partial/seg-NNNNNN.h5``, each written by a
    :class:`ShardWriter` (temporary name, renamed when the segment is committed) and carrying
    the caller's resume state; :meth:`close` joins them into ``path`` and removes the
    directory. Whatever kills the process, the segments already renamed are intact.

    Rows stream into the open segment as they come (memory stays that of one
    :class:`ShardWriter`, at most :data:`~neimsctl.io.h5shard.write.FLUSH_ROWS` rows, however
    far apart the commits). A segment owns only its first ``aligned_rows`` rows (a multiple of
    :data:`ROW_CHUNK`): the rows after them (fewer than one chunk) are written again at the
    start of the next segment. So every segment starts on a chunk boundary of the final file, and its compressed
    chunks are copied as they are into the final file (``<path>.partial/joined.h5`` until the
    end) right after the segment is committed: the copying happens while the rows come in
    (under ``featurize --jobs N``, while the workers featurize), and :meth:`close` only copies
    the last segment. When nothing was committed (a run shorter than one commit interval), the
    open segment already is the whole output and is renamed into place without a copy.

    Parameters
    ----------
    path, mode, settings, settings_hash, attrs
        As :class:`ShardWriter` (``attrs`` go to the final file).
    resume
        Continue the segments of ``<path>.partial``: :attr:`resume_state` is the state of the
        last complete segment (``None`` when there is none: the run starts afresh).

    Raises
    ------
    FormatError
        ``resume`` with segments of another mode or featurizer settings hash.
    """

    def __init__(self, path: str | os.PathLike, mode: str, settings: dict[str, Any],
                 settings_hash: str, attrs: dict[str, Any] | None = None, *,
                 resume: bool = False) -> None:
        self.path, self.mode = Path(path), check_mode(mode)
        self._settings, self._hash, self._attrs = settings, settings_hash, attrs
        self.dir = partial_path(self.path)
        self.resume_state: dict[str, Any] | None = None
        self._seg: ShardWriter | None = None  # the open segment
        self._out: ShardWriter | None = None  # the final file, once a segment is committed
        self._unjoined: list[Path] = []  # committed segments not yet copied into it
        self._tail: dict[str, np.ndarray] | None = None  # the last segment's unowned rows
        # rows committed (the tail's included); the tail has ``_carry`` rows
        self._written = self._carry = 0
        self.dir.mkdir(exist_ok=True)
        self._lock = lock_partial(self.dir)   # one run at a time writes it
        try:
            segs = self._segments() if resume else []
            if not resume:  # a new run replaces an old partial output (the directory stays: locked)
                for old in self.dir.iterdir():
                    shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
            self._resume_from(segs, settings_hash)
        except BaseException:
            os.close(self._lock)
            raise
        self._next, self._unjoined = len(segs), segs

    def _resume_from(self, segs: list[Path], settings_hash: str) -> None:
        """The resume state and the unowned tail rows of the last complete segment.

        The last segment :meth:`close` wrote (no resume state: the run was finishing when it
        was stopped) is no resume point: it is removed and its rows are made again. Segments
        that are missing (a numbering gap, rows that do not add up to the recorded count) are
        refused: the output would silently lack their rows.
        """
        while segs:
            with ShardReader(segs[-1]) as r:
                if (r.mode, r.settings_hash) != (self.mode, settings_hash):
                    raise FormatError(f"segments of another run (mode {r.mode}, "
                                      f"settings hash {r.settings_hash}); run again without "
                                      "--resume to start afresh", file=str(self.dir))
                if "resume_state" not in r.attrs:
                    last = None
                else:
                    last = json.loads(r.attrs["resume_state"]), _owned_rows(r), len(r)
            if last is not None:
                break
            segs.pop().unlink()
        if segs:
            self.resume_state, own, n = last  # type: ignore[misc]
            rows = sum(_owned_rows_of(seg) for seg in segs[:-1]) + n
            names = [f"seg-{k:06d}.h5" for k in range(len(segs))]
            if [s.name for s in segs] != names or rows != int(self.resume_state["n_rows"]):
                raise FormatError(f"segments are missing (they hold {rows:,} rows, "
                                  f"the last one records {int(self.resume_state['n_rows']):,}); "
                                  "run again without --resume to start afresh",
                                  file=str(self.dir))
            if own < n:
                with ShardReader(segs[-1]) as r:
                    self._tail, self._carry = r.rows(own, n), n - own
            self._written = int(self.resume_state["n_rows"])

    def _segments(self) -> list[Path]:
        return sorted(self.dir.glob("seg-*.h5")) if self.dir.is_dir() else []

    def _open(self) -> ShardWriter:
        """The open segment (made with the final file's attributes, and the last tail)."""
        if self._seg is None:
            self._seg = ShardWriter(self.dir / f"seg-{self._next:06d}.h5", self.mode,
                                    self._settings, self._hash, self._attrs, shown=self.path)
            if self._tail is not None:
                self._seg.append(self._tail)
        return self._seg

    @property
    def n_rows(self) -> int:
        """Rows appended so far (committed or not)."""
        return self._written + (self._seg.n_rows - self._carry if self._seg is not None else 0)

    def append(self, block: dict[str, np.ndarray]) -> None:
        """Write the rows of ``block`` into the open segment (committed by :meth:`commit`)."""
        if block_rows(block):
            self._open().append(block)

    def commit(self, state: dict[str, Any]) -> None:
        """Finish the open segment with ``state`` (+ the row count): a resume point."""
        w = self._open()
        n = w.n_rows
        self._written += n - self._carry
        own = n // ROW_CHUNK * ROW_CHUNK
        w.attrs["resume_state"] = json.dumps({**state, "n_rows": self._written}, sort_keys=True)
        w.attrs["aligned_rows"] = own
        self._tail = w.last_rows(n - own) if own < n else None
        self._carry = n - own
        self._seg = None
        w.close()
        self._next += 1
        self._unjoined.append(w.path)
        self._join()

    def _join(self) -> None:
        """Copy the owned rows of the committed segments not yet copied into the final file."""
        if self._out is None:  # in the directory: a killed run leaves nothing beside ``path``
            self._out = ShardWriter(self.dir / "joined.h5", self.mode, self._settings, self._hash,
                                    self._attrs, shown=self.path)
        for seg in self._unjoined:
            with ShardReader(seg) as r:
                self._out.append_shard_rows(r, _owned_rows(r))
        self._unjoined = []

    def close(self) -> None:
        """Finish ``path`` with the open segment's rows; remove the segments."""
        last = self._open()
        if self._out is None and not self._unjoined:  # nothing committed: the open segment
            last.close()                                # is the output, attributes and all
            os.replace(last.path, self.path)
        else:
            last.attrs["aligned_rows"] = last.n_rows  # it owns all its rows
            last.close()
            self._unjoined.append(last.path)
            self._join()
            assert self._out is not None
            self._out.close()
            os.replace(self._out.path, self.path)
        self._seg = self._out = None
        # segments, and temporary files of a run killed mid-segment; renamed first, so that a
        # run stopped while they are removed leaves no partial output that a --resume would
        # take up (and join what is left of it over the finished output)
        trash = self.dir.with_name(f".{self.dir.name}.done-{os.getpid()}")
        os.replace(self.dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
        os.close(self._lock)

    def abort(self, exc: BaseException | None = None) -> None:
        """Drop the open segment and the unfinished final file; keep the committed segments
        for a resume."""
        failed = None
        try:
            for w in (self._seg, self._out):     # both, even when the first fails
                if w is not None:
                    try:
                        w.abort(exc)
                    except OutputError as err:
                        failed = failed or err
        finally:
            self._seg = self._out = None
            os.close(self._lock)
        if failed is not None:   # a segment or the joined file could not be written (a full
            raise failed from None   # disk): named as the output asked for (their ``shown``)


def _owned_rows_of(path: Path) -> int:
    with ShardReader(path) as r:
        return _owned_rows(r)


def _owned_rows(seg: ShardReader) -> int:
    """Rows of a segment that no later segment repeats (all its rows in segments written
    before ``aligned_rows`` existed)."""
    return int(seg.attrs.get("aligned_rows", len(seg)))
