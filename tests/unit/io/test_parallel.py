"""Tests for neimsctl.io.parallel.ordered_map: order, in-flight bound, initializer, errors."""

from __future__ import annotations

import os

import pytest

from neimsctl.io.parallel import ordered_map

_STATE: dict[str, int] = {}


def _init(offset: int) -> None:
    _STATE["offset"] = offset
    _STATE["inits"] = _STATE.get("inits", 0) + 1


def _add(x: int) -> tuple[int, int]:
    if x < 0:
        raise ValueError(f"negative {x}")
    return x + _STATE["offset"], os.getpid()


def _counted(n: int, pulled: list[int]):
    for i in range(n):
        pulled.append(i)
        yield i


def test_in_process_keeps_order_and_initializes_once() -> None:
    _STATE.clear()
    out = list(ordered_map(_add, range(5), 1, _init, (10,), max_in_flight=2))
    assert [v for v, _ in out] == [10, 11, 12, 13, 14]
    assert {pid for _, pid in out} == {os.getpid()} and _STATE["inits"] == 1


def test_workers_keep_input_order_and_bound_the_in_flight_chunks() -> None:
    _STATE.clear()
    pulled: list[int] = []
    gen = ordered_map(_add, _counted(20, pulled), 2, _init, (100,), max_in_flight=3)
    first = next(gen)
    assert first[0] == 100 and first[1] != os.getpid()
    assert len(pulled) == 3                      # only max_in_flight chunks taken so far
    rest = list(gen)
    assert [v for v, _ in [first, *rest]] == list(range(100, 120))
    assert "inits" not in _STATE                 # the initializer ran in the workers only


def test_worker_error_propagates() -> None:
    with pytest.raises(ValueError, match="negative -1"):
        list(ordered_map(_add, [1, 2, -1, 3], 2, _init, (0,), max_in_flight=2))


def test_chunked_splits_lazily_and_keeps_the_tail() -> None:
    from neimsctl.io.parallel import chunked

    assert list(chunked(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunked([], 3)) == []


def test_parse_and_resolve_jobs():
    from neimsctl.io.parallel import available_cores, parse_jobs, resolve_jobs

    assert parse_jobs("auto") is None and parse_jobs("AUTO") is None
    assert parse_jobs("3") == 3 and parse_jobs(2) == 2
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="--jobs"):
            parse_jobs(bad)
    n, it = resolve_jobs(3, iter(range(10)))
    assert n == 3 and list(it) == list(range(10))
    n, it = resolve_jobs(None, iter(range(10)), min_records=10)          # small: one process
    assert n == 1 and list(it) == list(range(10))
    n, it = resolve_jobs(None, (i for i in range(25)), min_records=10)   # large: every core
    assert n == available_cores() and list(it) == list(range(25))
