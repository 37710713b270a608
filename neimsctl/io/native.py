"""The search's native kernels (``neimsctl/io/_native.c``), with numpy (or Python) doing the
same where they are not built or the CPU lacks what they need.

- :func:`row_norms`: every stored block's check (unit vectors) without widening it to float32;
- :func:`product`: the cosine's first pass over stored weights, ``q @ bf16(bits).T``, on Intel
  AMX tiles (``None`` where they are not available: the caller takes its float32 product);
- :func:`select`: the first pass's candidates, against each query's running top-k first-pass
  scores, in one pass over the scores (the search defers its exact stage to the end with it);
- :func:`pread_ranges`: many small reads of a file in one call (the candidates' peaks).

``NEIMSCTL_NATIVE=0`` in the environment turns both off (the numpy paths; for comparisons).
The results agree within the search's margins either way, and its hits are the same (its exact
stage scores every candidate in float64).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from neimsctl.io.peak_block import bf16_values

__all__ = ["module", "amx", "row_norms", "product", "select", "product_select", "product_select_run", "pread_ranges", "pread_into"]


@functools.lru_cache(maxsize=1)
def module() -> Any:
    """The compiled module, or ``None`` (not built, or turned off by ``NEIMSCTL_NATIVE=0``)."""
    if os.environ.get("NEIMSCTL_NATIVE", "1").strip() == "0":
        return None
    try:
        from neimsctl.io import _native
    except ImportError:
        return None
    return _native


def amx() -> bool:
    """True when :func:`product` runs on AMX tiles here (a Linux x86-64 CPU with AMX-BF16)."""
    mod = module()
    return mod is not None and _tiles(mod)


@functools.lru_cache(maxsize=2)
def _tiles(mod: Any) -> bool:
    return bool(mod.amx())


def row_norms(bits: np.ndarray) -> tuple[np.ndarray, int]:
    """Squared norms (float32, ``(n,)``) of the rows of bfloat16 bit patterns ``bits`` ``(n, w)``,
    and the largest bit pattern (0 when empty)."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    if bits.ndim != 2:
        raise ValueError(f"row_norms: a 2-d array expected, got shape {bits.shape}")
    out = np.empty(len(bits), dtype=np.float32)
    mod = module()
    if mod is not None:
        return out, int(mod.norms(bits, out))
    values = bf16_values(bits)
    np.einsum("ij,ij->i", values, values, out=out)
    return out, int(bits.max()) if bits.size else 0


def product(q: np.ndarray, bits: np.ndarray) -> np.ndarray | None:
    """``q @ bf16(bits).T`` as float32 ``(len(q), len(bits))`` within relative 1.2e-4 of the
    float32 product (weights >= 0, finite; see ``_native.c``), or ``None`` without AMX here."""
    if not amx():
        return None
    q = np.ascontiguousarray(q, dtype=np.float32)
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    if q.ndim != 2 or bits.ndim != 2 or q.shape[1] != bits.shape[1]:
        raise ValueError(f"product: shapes (nq, w) and (n, w) expected, got {q.shape} and {bits.shape}")
    out = np.empty((len(q), len(bits)), dtype=np.float32)
    module().dot(q, bits, out)
    return out


def select(s: np.ndarray, top: np.ndarray, lo: np.ndarray, hi: np.ndarray, factor: float,
           work: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of first-pass scores ``s`` ``(m, n)`` (native kernel only: see :func:`module`).

    For each row ``j``: its running top-k ``top[j]`` (float32 ``(m, k)``, descending, 0 = no
    score yet; updated in place) takes in the scores ``s[j, lo[j]:hi[j]]``; then every score there
    that is > 0 and >= ``factor`` x the row's k-th best (its smallest kept) is a candidate.
    Returns ``(rows, cols, values)`` of the candidates, row by row, columns ascending (copies).
    ``work``: a list that keeps the output buffers from one call to the next (a fresh buffer per
    block of 4,096 entries cost its page faults: 45 of 490 ms in a 1,000-query search).
    """
    mod = module()
    s = np.ascontiguousarray(s, dtype=np.float32)
    m, n = s.shape
    lo = np.ascontiguousarray(lo, dtype=np.int64)
    hi = np.ascontiguousarray(hi, dtype=np.int64)
    work = [] if work is None else work
    if not work or len(work[0]) < m * n:
        work[:] = _outputs(m * n)
    rows, cols, vals = work
    count = mod.select(s, top, lo, hi, float(factor), rows, cols, vals)
    return rows[:count].copy(), cols[:count].copy(), vals[:count].copy()


def product_select(q: np.ndarray, bits: np.ndarray, top: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   ok: np.ndarray | None, factor: float, work: list[np.ndarray] | None = None,
                   norms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """:func:`product` and :func:`select` in one pass on AMX tiles (only where :func:`amx`), with
    no score matrix: each tile of scores updates the running top-k ``top`` and gives its
    candidates at once, against the k-th best so far (which only grows, so every candidate of
    :func:`select` is among them, and a few more). ``ok``: bool ``(n,)`` allowed entries, or
    ``None``. ``norms``: a float32 ``(n,)`` array to receive the rows' squared norms (the
    block's check, :func:`row_norms`, done in the same pass while the rows are in cache)
    (:func:`product_select_run`: over blocks of a file, read by the kernel).
    Returns ``(rows, cols, values)`` (copies), in no particular order, and the largest bit
    pattern of ``bits`` (0 without ``norms``)."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    lo = np.ascontiguousarray(lo, dtype=np.int64)
    hi = np.ascontiguousarray(hi, dtype=np.int64)
    allowed = np.zeros(0, np.uint8) if ok is None else np.ascontiguousarray(ok, dtype=np.uint8)
    work = [] if work is None else work
    before = top.copy()
    while True:
        _room(work, top)
        rows, cols, vals = work
        count, largest = module().dot_select(q, bits, top, lo, hi, allowed, float(factor), rows, cols, vals, norms)
        if count <= len(rows):
            return rows[:count].copy(), cols[:count].copy(), vals[:count].copy(), largest
        top[...] = before                   # not all written: again, from the same top-k, with room
        work[:] = _outputs(2 * count)


def product_select_run(q: np.ndarray, fd: int, blocks: np.ndarray, lo: np.ndarray, hi: np.ndarray, top: np.ndarray,
                       ok: np.ndarray | None, factor: float, work: list[np.ndarray], norms: np.ndarray,
                       tops: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, OSError | None]:
    """:func:`product_select` over a run of blocks of an open file in one call (AMX only): one
    lane's blocks, with no return to the interpreter between them (a call per block of 4,096
    entries spent a quarter of a lane's time in Python and in waiting for the GIL).

    ``q``: float32 ``(nq, W)``, every query; ``blocks``: int64 ``(m, 4)``, each block's first
    entry (entry numbers of the whole search), byte offset in ``fd``, rows and width (``<= W``);
    ``lo``, ``hi``: int64 ``(nq,)``, each query's window of entries (entry numbers of the whole
    search); ``top``: float32 ``(nq, k)``, the running top-k (updated); ``ok``: bool or uint8
    over the rows of all blocks, or ``None``; ``norms``: float32 over the rows of all blocks,
    receives their squared norms; ``tops``: int32 ``(m,)``, receives each block's largest bit
    pattern. Returns ``(done, rows, cols, values, error)``: the blocks done (all unless a read
    failed: ``error``, an ``OSError``, for block ``done``), and their candidates (query and
    entry numbers of the whole search; copies). ``work`` keeps the output buffers between calls
    (they grow when a block's candidates do not fit)."""
    allowed = np.zeros(0, np.uint8) if ok is None else np.ascontiguousarray(ok).view(np.uint8)
    mod = module()
    parts: list[tuple[np.ndarray, ...]] = []
    done, m, at = 0, len(blocks), 0
    while done < m:
        _room(work, top)
        rows, cols, vals = work
        d, count, err = mod.dot_select_blocks(q, fd, blocks[done:], lo, hi, top, allowed[at:] if len(allowed) else allowed,
                                              float(factor), rows, cols, vals, norms[at:], tops[done:])
        if count:
            parts.append((rows[:count].copy(), cols[:count].copy(), vals[:count].copy()))
        at += int(blocks[done:done + d, 2].sum())
        done += d
        if err is not None:
            return done, *_joined(parts), err
        if done < m:                # the next block's candidates did not fit: room for twice as many
            work[:] = _outputs(max(1 << 16, 2 * len(rows)))
    return done, *_joined(parts), None


def _joined(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return tuple(np.concatenate(p) for p in zip(*parts))      # type: ignore[return-value]


def _room(work: list[np.ndarray], top: np.ndarray) -> None:
    """First output buffers of the fused pass, when ``work`` holds none yet."""
    if not work:
        work[:] = _outputs(max(1 << 16, 8 * top.size))


def _outputs(size: int) -> list[np.ndarray]:
    """Room for ``size`` candidates of :func:`select` / :func:`product_select`: rows, columns, scores."""
    return [np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64), np.empty(size, dtype=np.float32)]


def pread_ranges(fd: int, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The byte ranges ``offsets[i] .. offsets[i] + sizes[i]`` of the open file ``fd``, one after
    another, as a uint8 array (native kernel, else :func:`pread_into` per range). ``OSError`` when the
    file ends before a range does."""
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    sizes = np.ascontiguousarray(sizes, dtype=np.int64)
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    mod = module()
    if mod is not None:
        mod.pread_ranges(fd, offsets, sizes, out)
        return out
    pos = 0
    for off, size in zip(offsets.tolist(), sizes.tolist()):
        pread_into(fd, out[pos:pos + size], off)
        pos += size
    return out


def pread_into(fd: int, out: np.ndarray, offset: int) -> None:
    """Fill ``out`` (a C-contiguous array) with the bytes at ``offset`` of the open file ``fd``.
    ``OSError`` when the file ends first."""
    view = memoryview(out).cast("B")
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [view[done:]], offset + done)
        else:                       # no preadv (Windows): a copy
            data = os.pread(fd, len(view) - done, offset + done)
            view[done:done + len(data)] = data
            got = len(data)
        if got <= 0:
            raise OSError("file shorter than its datasets (truncated?)")
        done += got
