"""Tests for neimsctl.io.parallel.ordered_map: order, in-flight bound, initializer, errors."""

from __future__ import annotations

import os

import pytest

from _fuzz_props import time_limit

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
    with pytest.raises(ValueError, match="at most"):      # -j 99999 forked until the machine stalled
        parse_jobs("99999")
    n, it = resolve_jobs(3, iter(range(10)))
    assert n == 3 and list(it) == list(range(10))
    n, it = resolve_jobs(None, iter(range(10)), min_records=10)          # small: one process
    assert n == 1 and list(it) == list(range(10))
    n, it = resolve_jobs(None, (i for i in range(25)), min_records=10)   # large: every core
    assert n == available_cores() and list(it) == list(range(25))


# -- dead workers ---------------------------------------------------------------------------

import contextlib
import faulthandler
import signal
import subprocess
import sys
import time

from neimsctl.io.parallel import WorkerCrashed, die_with_parent, exit_reason

_CRASH = {13: signal.SIGSEGV, 14: signal.SIGKILL}


def _double_or_die(chunk: list[int]) -> list[int]:
    """Twice each value; 13 segfaults the worker, 14 is SIGKILLed, 15 exits with status 3."""
    for x in chunk:
        if x in _CRASH:
            faulthandler.disable()  # pytest's dump of the segfault is noise here
            os.kill(os.getpid(), _CRASH[x])
        if x == 15:
            os._exit(3)
        if x < 0:
            raise ValueError(f"negative {x}")
    return [2 * x for x in chunk]


def _split(chunk: list[int]) -> list[list[int]]:
    return [[x] for x in chunk]


def _crashed(chunk: list[int], why: str) -> tuple[str, int, str]:
    return ("crashed", chunk[0], why)


_deadline = time_limit   # fail instead of hanging (SIGALRM in the main thread)


def test_a_segfaulting_record_is_found_rejected_and_the_map_goes_on() -> None:
    chunks = [[1, 2], [3, 13, 4], [5, 6], [7, 8], [9]]
    with _deadline(60):
        out = list(ordered_map(_double_or_die, chunks, 2, max_in_flight=3, split=_split,
                               crashed=_crashed))
    # the crashed chunk comes back record by record, in place; every other chunk whole
    assert out[:2] == [[2, 4], [6]]
    assert out[2][:2] == ("crashed", 13) and "SIGSEGV" in out[2][2]
    assert out[3:] == [[8], [10, 12], [14, 16], [18]]


def test_several_dead_workers_in_one_run_and_a_single_record_chunk() -> None:
    chunks = [[14], [1], [15, 2], [3], [13, 13], [4]]
    with _deadline(60):
        out = list(ordered_map(_double_or_die, chunks, 2, max_in_flight=2, split=_split,
                               crashed=_crashed))
    assert [o if isinstance(o, list) else o[:2] for o in out] == [
        ("crashed", 14), [2], ("crashed", 15), [4], [6], ("crashed", 13), ("crashed", 13), [8]]
    assert "SIGKILL (out of memory?)" in out[0][2] and "exited with status 3" in out[2][2]


def test_a_dead_worker_without_split_raises_instead_of_hanging() -> None:
    with _deadline(60), pytest.raises(WorkerCrashed, match="killed by SIGSEGV"):
        list(ordered_map(_double_or_die, [[1], [13], [2]], 2, max_in_flight=2))


def test_an_error_of_a_record_run_alone_still_propagates() -> None:
    with _deadline(60), pytest.raises(ValueError, match="negative -1"):
        list(ordered_map(_double_or_die, [[1], [13, -1]], 2, max_in_flight=2, split=_split,
                         crashed=_crashed))


def test_exit_reason_names_the_signal_or_the_status() -> None:
    assert exit_reason(-signal.SIGSEGV) == "the worker process was killed by SIGSEGV"
    assert exit_reason(-signal.SIGKILL).endswith("SIGKILL (out of memory?)")
    assert exit_reason(2) == "the worker process exited with status 2"
    assert exit_reason(None) == "the worker process died"


_ORPHANS = """
import os, signal, sys, time
from neimsctl.io.parallel import ordered_map
def pid(chunk):
    time.sleep(0.3)
    return os.getpid()
pids = set()
for p in ordered_map(pid, range(50), 2, max_in_flight=4):
    pids.add(p)
    if len(pids) == 2:
        break
print(*pids, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie (not yet reaped by init) counts as dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_workers_die_with_a_killed_parent(tmp_path) -> None:
    out = tmp_path / "pids"
    with open(out, "w") as fh:  # a file, not a pipe: surviving workers would keep a pipe open
        p = subprocess.run([sys.executable, "-c", _ORPHANS], stdout=fh, timeout=60)
    assert p.returncode == -signal.SIGKILL
    pids = [int(x) for x in out.read_text().split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(_alive(x) for x in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [x for x in pids if _alive(x)]
    for x in left:
        os.kill(x, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed parent"


def test_die_with_parent_exits_when_the_parent_is_gone_already() -> None:
    code = ("import os; from neimsctl.io.parallel import die_with_parent; "
            "die_with_parent(os.getppid() + 1000000); print('still here')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout == b""
    die_with_parent()  # in this process: sets the signal, returns


def test_orphan_hook_drops_connection_errors_only_once_the_parent_is_gone() -> None:
    from neimsctl.io.parallel import _orphan_is_quiet

    seen: list[type] = []
    gone = _orphan_is_quiet(-1, lambda t, e, tb: seen.append(t))        # parent already gone
    gone(ConnectionResetError, ConnectionResetError(104, "reset"), None)
    gone(EOFError, EOFError(), None)
    gone(ValueError, ValueError("a real error"), None)
    assert seen == [ValueError]
    alive = _orphan_is_quiet(os.getppid(), lambda t, e, tb: seen.append(t))
    t0 = time.monotonic()
    alive(ConnectionResetError, ConnectionResetError(104, "reset"), None)  # a real reset
    assert seen == [ValueError, ConnectionResetError] and time.monotonic() - t0 >= 0.9


_LOADER = """
import os, signal, sys, threading, torch
from torch.utils.data import DataLoader, Dataset
from neimsctl.io.parallel import dies_with_this_process

class Zeros(Dataset):
    def __len__(self):
        return 10**9
    def __getitem__(self, i):
        return torch.zeros(2000)

init = dies_with_this_process()
def worker_init(worker_id):
    init(worker_id)
    print(os.getpid(), flush=True)
threading.Timer(float(sys.argv[1]), os.kill, (os.getpid(), signal.SIGKILL)).start()
for batch in DataLoader(Zeros(), batch_size=64, num_workers=1, worker_init_fn=worker_init):
    pass
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_data_loader_workers_of_a_killed_process_die_quietly(tmp_path) -> None:
    """A kill -9 lands while the worker hands a batch over (about every second run without
    the worker_init_fn): no ConnectionResetError traceback, no worker left."""
    for delay in ("1.3", "1.55", "1.8"):
        with open(tmp_path / "pid", "w") as out, open(tmp_path / "err", "w") as err:
            p = subprocess.run([sys.executable, "-c", _LOADER, delay], stdout=out, stderr=err,
                               timeout=120)
        assert p.returncode == -signal.SIGKILL
        worker = int((tmp_path / "pid").read_text().split()[0])
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)
        time.sleep(1.2)  # the orphan hook's grace period: anything printed is printed by now
        assert (tmp_path / "err").read_text() == ""
