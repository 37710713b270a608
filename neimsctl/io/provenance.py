"""Provenance of an output file: which neimsctl version made it, from which command line, when.

``featurize`` (HDF5 shard attributes, zblock headers), ``shards merge`` and ``softlabel`` write
these attributes unless ``--no-provenance`` asks for byte-stable output (tests, golden files).
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Sequence

__all__ = ["PROVENANCE_KEYS", "provenance"]

PROVENANCE_KEYS = ("neimsctl_version", "argv", "created")


def provenance(enabled: bool = True, *, argv: Sequence[str] | None = None,
               now: datetime.datetime | None = None) -> dict[str, str]:
    """The provenance attributes (:data:`PROVENANCE_KEYS`), or ``{}`` when not ``enabled``.

    Parameters
    ----------
    enabled
        ``False`` for ``--no-provenance``.
    argv
        The command line (default ``sys.argv``), stored as a JSON list.
    now
        The creation time (default: now); written in UTC, ISO 8601, to the second.

    Examples
    --------
    >>> provenance(False)
    {}
    >>> t = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
    >>> provenance(argv=["neimsctl", "featurize"], now=t)["created"]
    '2024-05-01T12:00:00+00:00'
    """
    if not enabled:
        return {}
    from neimsctl import __version__

    when = now if now is not None else datetime.datetime.now(datetime.timezone.utc)
    return {"neimsctl_version": __version__,
            "argv": json.dumps(list(sys.argv if argv is None else argv)),
            "created": when.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")}
