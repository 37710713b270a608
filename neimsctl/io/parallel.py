"""Ordered, bounded-in-flight parallel map over chunks (fork worker pool); survives dead workers.

Shared by ``msp2jsonl`` (:mod:`neimsctl.chem.convert`), ``featurize``
(:mod:`neimsctl.chem.featurize_run`) and ``predict`` (:mod:`neimsctl.predict.run`):
results come back in input order and at most ``max_in_flight`` chunks are pending at any
time, so memory stays constant however long the input is.

A worker that dies (a segfault in RDKit, the out-of-memory killer, ``kill -9``) never hangs
the map and loses nothing: the pool notices (``BrokenProcessPool``), every chunk it still
held runs again, alone, in a fresh worker, and a chunk that kills that worker too runs record
by record (the caller's ``split``), each in the same fresh worker until one kills it: that
record becomes the caller's ``crashed(record, why)`` result (a reject) and the map goes on.
With ``jobs <= 1`` everything runs in this process, where a crash cannot be caught: the
commands refuse records that could crash RDKit before it sees them (``too_large``,
:mod:`neimsctl.chem.structure`).

Workers die with this process (:func:`die_with_parent`): a ``kill -9`` of the command leaves
no worker behind.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import itertools
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait as wait_ready
from typing import Any, TypeVar

from neimsctl.errors import NeimsError
from neimsctl.interrupts import check as check_interrupt

__all__ = ["chunked", "ordered_map", "die_with_parent", "dies_with_this_process", "exit_reason",
           "WorkerCrashed", "parse_jobs", "resolve_jobs", "available_cores"]

#: Seconds an interrupted map waits for the chunks in flight before killing the workers.
DRAIN_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

T = TypeVar("T")
R = TypeVar("R")


class WorkerCrashed(NeimsError):
    """A worker process died on a chunk that the caller cannot split into records."""


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


def die_with_parent(parent: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux; else a no-op).

    Call it first thing in a forked worker (a pool worker, a ``DataLoader`` worker through
    ``worker_init_fn``). Without it, workers of a ``kill -9``-ed command live on, blocked on
    their task queue for ever, or print tracebacks about the lost connection
    (``ConnectionResetError`` from a ``DataLoader`` worker). ``parent``: the pid the worker
    was forked from; if it has died already, this process exits at once.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: workers just do not die with the parent
            pass
    if parent is not None and os.getppid() != parent:
        os._exit(0)


def _orphan_is_quiet(parent: int, hook: Callable[..., Any]) -> Callable[..., None]:
    """A ``sys.excepthook`` that drops the connection errors of a worker whose parent died.

    A ``kill -9``-ed parent closes its sockets before the kernel reparents (and, with
    :func:`die_with_parent`, kills) its workers, so a worker thread may see the reset first:
    the hook waits up to a second for the parent to be gone before it calls it an error.
    """
    def quiet(exc_type: type, exc: BaseException, tb: Any) -> None:
        if issubclass(exc_type, (ConnectionError, EOFError)):
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                if os.getppid() != parent:
                    return
                time.sleep(0.01)
        hook(exc_type, exc, tb)
    return quiet


def _loader_worker_init(parent: int, worker_id: int) -> None:
    die_with_parent(parent)
    # multiprocessing's resource sharer (it hands tensors' file descriptors to the parent)
    # reports the parent's dead connection through sys.excepthook: a traceback
    sys.excepthook = _orphan_is_quiet(parent, sys.excepthook)


def dies_with_this_process() -> Callable[[int], None]:
    """A ``DataLoader`` ``worker_init_fn``: its workers die with this process (the one that
    calls this, i.e. the loader's owner), quietly, instead of printing
    ``ConnectionResetError`` tracebacks after a ``kill -9`` of it."""
    return functools.partial(_loader_worker_init, os.getpid())


def exit_reason(exitcode: int | None) -> str:
    """How a worker process ended, in words (``exitcode`` as in ``Process.exitcode``)."""
    if exitcode is None:
        return "the worker process died"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process exited with status {exitcode}"


def _child_init(quiet: bool, parent: int, initializer: Callable[..., Any] | None,
                initargs: tuple) -> None:
    """Worker start-up: die with the parent, optionally leave Ctrl-C to it, run ``initializer``."""
    die_with_parent(parent)
    if quiet:  # the parent handles Ctrl-C and stops the pool; workers die quietly
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:   # as SIGTERM; nohup: ignored
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (its ``__cause__`` in this process)."""

    def __str__(self) -> str:
        return "\n\n" + str(self.args[0])


def _solo_main(conn: Any, fn: Callable[[Any], Any], init: tuple) -> None:
    """The loop of an isolation worker: one task in, ``(ok, value)`` out, until ``None``."""
    failed: BaseException | None = None
    try:
        _child_init(*init)
    except BaseException as exc:  # noqa: BLE001  (answered to every task, raised by the parent)
        failed = exc
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            if failed is not None:
                raise failed
            out: tuple[bool, Any] = (True, fn(task))
        except BaseException as exc:  # noqa: BLE001
            out = (False, (exc, traceback.format_exc()))
        try:
            conn.send(out)
        except Exception as exc:  # noqa: BLE001  (an unpicklable result or exception)
            conn.send((False, (RuntimeError(f"cannot send the result back: {exc}"), "")))


class _Solo:
    """One worker process that runs tasks one at a time, so the task that kills it is known.

    :meth:`run` starts a fresh process whenever the previous one died.
    """

    def __init__(self, ctx: Any, fn: Callable[[Any], Any], init: tuple) -> None:
        self.ctx, self.fn, self.init = ctx, fn, init
        self.proc: Any = None
        self.conn: Any = None

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_solo_main, args=(child, self.fn, self.init),
                                     daemon=True)
        self.proc.start()
        child.close()

    def run(self, task: Any) -> tuple[bool, Any]:
        """``(True, fn(task))``, or ``(False, why)`` when the worker died on ``task``.

        An exception raised by ``fn`` is raised here (with the worker's traceback as cause).
        """
        if self.proc is None:
            self._start()
        try:
            self.conn.send(task)
            while True:
                ready = wait_ready([self.conn, self.proc.sentinel])
                if self.conn in ready:
                    ok, value = self.conn.recv()
                    break
                if self.proc.sentinel in ready:
                    raise EOFError
        except (EOFError, OSError):  # the process died before or while answering
            self.proc.join(5)
            why = exit_reason(self.proc.exitcode)
            self.close()
            return False, why
        if ok:
            return True, value
        exc, tb = value
        raise exc from _RemoteTraceback(tb)

    def close(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()
        self.proc = self.conn = None


def _stop_pool(pool: ProcessPoolExecutor, drain: float) -> None:
    """Cancel what has not started, let running chunks finish for ``drain`` s, then kill.

    Killing a worker half-way through sending a result would leave the pool's reader thread
    waiting for the rest of that message, so the workers get the time to finish first.
    """
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + drain
    while time.monotonic() < deadline and any(p.is_alive() for p in procs):
        time.sleep(0.05)
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(5)


def ordered_map(fn: Callable[[T], R], chunks: Iterable[T], jobs: int,
                initializer: Callable[..., Any] | None = None, initargs: tuple = (), *,
                max_in_flight: int, quiet_workers: bool = True,
                split: Callable[[T], list[T]] | None = None,
                crashed: Callable[[T, str], R] | None = None) -> Iterator[R]:
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
    split
        ``split(chunk)``: the chunk as single-record chunks, for finding the record that
        kills its worker.
    crashed
        ``crashed(one_record_chunk, why)``: the result to yield for a record that killed its
        worker (``why``: e.g. "the worker process was killed by SIGSEGV"); it stands in for
        ``fn`` of that record, so a chunk whose worker died yields one result per record.

    Raises
    ------
    WorkerCrashed
        A worker died on a chunk and ``split``/``crashed`` are not given.

    Notes
    -----
    The pool (:class:`concurrent.futures.ProcessPoolExecutor`) forks where it can. On any
    exception, including the generator being closed early, chunks not yet started are
    cancelled and the (at most ``max_in_flight``) chunks already handed out are let finish,
    for up to :data:`DRAIN_SECONDS`, before the workers are killed.
    """
    if jobs <= 1:
        if initializer is not None:
            initializer(*initargs)
        for c in chunks:
            check_interrupt()
            yield fn(c)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    init = (quiet_workers, os.getpid(), initializer, initargs)
    solo = _Solo(ctx, fn, init)

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_child_init, initargs=init)

    def isolated(chunk: T) -> Iterator[R]:
        """A chunk whose pool broke: alone in a fresh worker, then record by record."""
        check_interrupt()
        ok, value = solo.run(chunk)
        if ok:
            yield value
            return
        if split is None or crashed is None:
            raise WorkerCrashed(f"{value} while working on a chunk of the input")
        parts = split(chunk)
        if len(parts) == 1:
            yield crashed(parts[0], value)
            return
        for part in parts:
            check_interrupt()
            ok, value = solo.run(part)
            yield value if ok else crashed(part, value)

    def take(entry: tuple[T, Any]) -> Iterator[R]:
        chunk, fut = entry
        try:
            result = fut.result()
        except BrokenProcessPool:
            yield from isolated(chunk)
        else:
            yield result

    pool = new_pool()
    try:
        pending: collections.deque = collections.deque()
        for c in chunks:
            check_interrupt()
            try:
                fut = pool.submit(fn, c)
            except BrokenProcessPool:  # a worker died: the pending chunks are re-run by take()
                pool.shutdown(wait=False)
                pool = new_pool()
                fut = pool.submit(fn, c)
            pending.append((c, fut))
            while len(pending) >= max_in_flight:
                yield from take(pending.popleft())
        while pending:
            check_interrupt()
            yield from take(pending.popleft())
    except BaseException:
        _stop_pool(pool, DRAIN_SECONDS)
        solo.close(timeout=0)
        raise
    pool.shutdown(wait=True)
    solo.close()


#: ``--jobs auto`` runs in one process while the input holds at most this many records; past it,
#: forked workers pay for their start-up (~0.3 s for predict's model) many times over.
AUTO_MIN_RECORDS = 4096


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_jobs() -> int:
    """The most workers ``--jobs`` may ask for: 4 per core (``-j 99999`` forked until the
    machine stalled)."""
    return 4 * max(available_cores(), os.cpu_count() or 1)


def parse_jobs(text: str | int) -> int | None:
    """``--jobs``: a positive number, or ``auto`` (returned as ``None``).

    Raises
    ------
    ValueError
        Anything else.
    """
    if isinstance(text, int) or str(text).strip().isdigit():
        n = int(text)
        if n > max_jobs():
            raise ValueError(f"--jobs {text}: at most {max_jobs()} (4 workers per core of this machine)")
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
