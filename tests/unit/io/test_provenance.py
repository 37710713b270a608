"""provenance(): the one builder of the version/argv/date attributes that --no-provenance drops."""

from __future__ import annotations

import datetime
import json
import sys

import neimsctl
from neimsctl.io.featsource import PROVENANCE_KEYS as DROPPED_BY_MERGE, without_provenance
from neimsctl.io.provenance import PROVENANCE_KEYS, provenance


def test_attributes_and_their_format() -> None:
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    p = provenance()
    assert tuple(p) == PROVENANCE_KEYS
    assert p["neimsctl_version"] == neimsctl.__version__
    assert json.loads(p["argv"]) == sys.argv
    created = datetime.datetime.fromisoformat(p["created"])
    assert created.tzinfo is not None and created >= before and created.microsecond == 0


def test_given_argv_and_time_in_utc() -> None:
    t = datetime.datetime(2024, 5, 1, 14, 0, 30, 123, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    p = provenance(argv=("neimsctl", "featurize", "-o", "x.h5"), now=t)
    assert p["argv"] == '["neimsctl", "featurize", "-o", "x.h5"]'
    assert p["created"] == "2024-05-01T12:00:30+00:00"


def test_no_provenance_is_empty_and_merge_strips_the_same_keys() -> None:
    assert provenance(False) == {}
    assert set(DROPPED_BY_MERGE) == set(PROVENANCE_KEYS)
    assert without_provenance({**provenance(), "shard": "1/2"}) == {"shard": "1/2"}
