"""Nothing is lost: every input record is either written or reported with a reason.

:class:`Tally` counts records read / written / rejected (by reason) and writes each
rejection as one JSONL line (``file``, ``line``, ``record``, ``id``, ``reason``, ``detail``)
to the rejects report. :meth:`Tally.summary` is the one-line stderr summary every streaming
command prints: ``read N, written W, rejected R (reason: n, ...)``.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import BinaryIO

import orjson


@dataclass
class Reject:
    """One rejected input record and why."""

    reason: str
    detail: str = ""
    file: str | None = None
    line: int | None = None
    record: str | None = None
    id: str | None = None

    def to_json(self) -> dict:
        return {"file": self.file, "line": self.line, "record": self.record, "id": self.id,
                "reason": self.reason, "detail": self.detail}


@dataclass
class Tally:
    """Counts of read / written / rejected records, and the rejects report stream (optional)."""

    sink: BinaryIO | None = None
    read: int = 0
    written: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)
    #: Records written but marked (``predict``: outside the model's domain): how many, and the
    #: marks by kind (a record may carry several).
    n_flagged: int = 0
    flagged: collections.Counter = field(default_factory=collections.Counter)
    #: Records written with part of their content left out (``index``: peaks above the m/z
    #: range, dropped as ``eval`` bins spectra), by what was left out.
    trimmed: collections.Counter = field(default_factory=collections.Counter)
    #: Records written without a molecular mass (``index``: no MW, nor a structure or formula
    #: that gives one; ``--mass-filter`` searches never reach them).
    no_mass: int = 0
    #: Worker processes the run used (``--jobs``; 1 = everything in one process); the summary
    #: line ends with it when set.
    workers: int | None = None

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    def reject(self, rej: Reject) -> None:
        self.reasons[rej.reason] += 1
        if self.sink is not None:
            self.sink.write(orjson.dumps(rej.to_json(), option=orjson.OPT_APPEND_NEWLINE))

    def summary(self) -> str:
        text = f"read {self.read}, written {self.written}, rejected {self.rejected}"
        if self.reasons:
            text += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items())) + ")"
        if self.flagged:
            text += (f"; {self.n_flagged} flagged outside the model's domain ("
                     + ", ".join(f"{k}: {v}" for k, v in sorted(self.flagged.items())) + ")")
        if self.trimmed:
            text += "; written trimmed: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.trimmed.items()))
        if self.workers is not None:
            text += f"; {self.workers} workers" if self.workers > 1 else "; 1 process"
        return text

    @property
    def balanced(self) -> bool:
        """The invariant: read == written + rejected."""
        return self.read == self.written + self.rejected
