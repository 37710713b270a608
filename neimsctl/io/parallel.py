"""Ordered, bounded-in-flight parallel map over chunks (fork worker pool).

Shared by ``msp2jsonl`` (:mod:`neimsctl.chem.convert`), ``featurize``
(:mod:`neimsctl.chem.featurize_run`) and ``predict`` (:mod:`neimsctl.predict.run`):
results come back in input order and at most ``max_in_flight`` chunks are pending at any
time, so memory stays constant however long the input is.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from neimsctl.interrupts import check as check_interrupt

__all__ = ["chunked", "ordered_map", "parse_jobs", "resolve_jobs", "available_cores"]

#: Seconds an interrupted map waits for the chunks in flight before terminating the workers.
DRAIN_SECONDS = 30.0

T = TypeVar("T")
R = TypeVar("R")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one may be shorter), read lazily."""
    buf: list[T] = []
    for it in items:
        buf.append(it)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def _child_init(quiet: bool, initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    """Worker start-up: optionally leave Ctrl-C to the parent, then run ``initializer``."""
    if quiet:  # the parent handles Ctrl-C and terminates the pool; workers die quietly
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


def ordered_map(fn: Callable[[T], R], chunks: Iterable[T], jobs: int,
                initializer: Callable[..., Any] | None = None, initargs: tuple = (), *,
                max_in_flight: int, quiet_workers: bool = True) -> Iterator[R]:
    """Yield ``fn(chunk)`` for every chunk, in input order.

    Parameters
    ----------
    fn
        Module-level function applied to each chunk (in a worker when ``jobs > 1``).
    chunks
        The inputs; consumed lazily, never more than ``max_in_flight`` ahead of the caller.
    jobs
        Worker processes; ``jobs <= 1`` runs everything in this process.
    initializer, initargs
        Called once per worker (or once in this process when ``jobs <= 1``).
    max_in_flight
        Most chunks submitted but not yet yielded.
    quiet_workers
        Workers ignore SIGINT (and take the default SIGTERM action) so only the parent
        reacts to Ctrl-C.

    Notes
    -----
    The pool uses the ``fork`` start method where available. On any exception, including
    the generator being closed early, the pool is closed and the (at most ``max_in_flight``)
    chunks already handed out are let finish, for up to :data:`DRAIN_SECONDS`, before the
    workers are terminated: ``Pool.terminate`` kills workers that may be half-way through
    sending a result, and the pool's result thread then waits forever for the rest of that
    message (seen with Ctrl-C during ``featurize -j 2``).
    """
    if jobs <= 1:
        if initializer is not None:
            initializer(*initargs)
        for c in chunks:
            check_interrupt()
            yield fn(c)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    pool = ctx.Pool(jobs, initializer=_child_init, initargs=(quiet_workers, initializer, initargs))
    try:
        pending: collections.deque = collections.deque()
        for c in chunks:
            check_interrupt()
            pending.append(pool.apply_async(fn, (c,)))
            if len(pending) >= max_in_flight:
                yield pending.popleft().get()
        while pending:
            check_interrupt()
            yield pending.popleft().get()
        pool.close()
    except BaseException:
        pool.close()
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline and any(p.is_alive() for p in pool._pool):
            time.sleep(0.05)
        if any(p.is_alive() for p in pool._pool):
            pool.terminate()
        raise
    finally:
        pool.join()


#: ``--jobs auto`` runs in one process while the input holds at most this many records; past it,
#: forked workers pay for their start-up (~0.3 s for predict's model) many times over.
AUTO_MIN_RECORDS = 4096


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_jobs(text: str | int) -> int | None:
    """``--jobs``: a positive number, or ``auto`` (returned as ``None``).

    Raises
    ------
    ValueError
        Anything else.
    """
    if isinstance(text, int) or str(text).strip().isdigit():
        n = int(text)
        if n >= 1:
            return n
    elif str(text).strip().lower() == "auto":
        return None
    raise ValueError(f"--jobs {text!r}: expected a number >= 1 or 'auto'")


def resolve_jobs(jobs: int | None, items: Iterable[T], *,
                 min_records: int = AUTO_MIN_RECORDS) -> tuple[int, Iterator[T]]:
    """The worker count for ``jobs`` (``None`` = auto) and the items, unchanged.

    The auto rule: one process when the input ends within ``min_records`` records (read ahead
    here, so stdin works too), else one worker per available core (:func:`available_cores`).
    """
    it = iter(items)
    if jobs is not None:
        return jobs, it
    head = list(itertools.islice(it, min_records + 1))
    chosen = 1 if len(head) <= min_records else available_cores()
    return chosen, itertools.chain(head, it)
