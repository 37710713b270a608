"""The native bfloat16 kernels (neimsctl/io/_native.c) against numpy: the product on AMX tiles
within its stated margin, the norms and largest bit pattern exactly as the check needs them,
and the switch that turns them off."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from neimsctl.io import native
from neimsctl.io.peak_block import bf16_bits, bf16_values

needs_amx = pytest.mark.skipif(not native.amx(), reason="no AMX tiles here (or the native kernel is not built)")
needs_native = pytest.mark.skipif(native.module() is None, reason="the native kernel is not built here")

#: native.product's stated margin against the float32 product of the same values
_REL = 1.2e-4


def _unit_rows(rng: np.random.Generator, n: int, w: int, density: float) -> np.ndarray:
    x = rng.random((n, w), dtype=np.float32) * (rng.random((n, w)) < density)
    x[:, 0] += (x.sum(axis=1) == 0)                   # no empty row
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@needs_amx
@pytest.mark.parametrize("nq,n,w", [(1, 1, 1), (1, 17, 5), (15, 16, 32), (16, 33, 33), (17, 4096, 310),
                                    (33, 100, 64), (40, 4097, 501), (70, 31, 200)])
def test_product_within_margin(nq: int, n: int, w: int) -> None:
    """Every shape the search meets (tiles cut at 16 entries, 16 queries and 32 columns, the last
    tile of a block padded): within the margin of the float64 product of the same values."""
    rng = np.random.default_rng(nq * 1000 + w)
    q = _unit_rows(rng, nq, w, 0.3)
    bits = bf16_bits(_unit_rows(rng, n, w, 0.5))
    got = native.product(q, bits)
    assert got is not None and got.shape == (nq, n) and got.dtype == np.float32
    exact = q.astype(np.float64) @ bf16_values(bits).astype(np.float64).T
    assert (np.abs(got - exact) <= _REL * exact + 1e-30).all()
    assert ((got == 0) == (exact == 0)).all()      # no shared peak is exactly 0 (no hit), and only that


@needs_amx
def test_product_extremes() -> None:
    """Identical vectors (score 1), one-peak spectra, weights spanning 2**-40 .. 1, and a query
    whose values are not bfloat16 numbers (the lo part carries the rest)."""
    w = 64
    q = np.zeros((4, w), dtype=np.float32)
    q[0, 7] = 1.0
    q[1, :] = 1.0 / np.sqrt(w)
    q[2, ::2] = 2.0 ** -np.arange(0, 40, 40 / 32, dtype=np.float32)[:32]
    q[3, :] = np.float32(1.0 + 2 ** -20)
    lib = np.vstack([q[0], q[1], np.where(q[2] > 0, 1.0, 0.0), np.full(w, 0.125)]).astype(np.float32)
    bits = bf16_bits(lib)
    got = native.product(q, bits)
    exact = q.astype(np.float64) @ bf16_values(bits).astype(np.float64).T
    assert (np.abs(got - exact) <= _REL * exact).all()
    assert got[0, 0] == 1.0


@needs_native
@pytest.mark.parametrize("n,w", [(0, 3), (1, 1), (5, 15), (33, 16), (64, 501), (7, 17)])
def test_norms_and_top(n: int, w: int) -> None:
    rng = np.random.default_rng(n + w)
    bits = bf16_bits(rng.random((n, w), dtype=np.float32))
    if n:
        bits[n // 2, w - 1] = 0x7FC0            # a NaN pattern: the largest bits, a NaN norm
    norms, top = native.row_norms(bits)
    values = bf16_values(bits).astype(np.float64)
    want = (values * values).sum(axis=1)
    assert top == (int(bits.max()) if n else 0)
    ok = np.isfinite(want)
    np.testing.assert_allclose(norms[ok], want[ok], rtol=1e-5)
    assert np.isnan(norms[~ok]).all()


@needs_native
def test_kernel_refuses_wrong_arrays() -> None:
    mod = native.module()
    with pytest.raises(TypeError):
        mod.norms(np.zeros((2, 3), dtype=np.float32), np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError):
        mod.norms(np.zeros((2, 3), dtype=np.uint16), np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        mod.norms(np.zeros((3, 2), dtype=np.uint16).T, np.zeros(2, dtype=np.float32))
    if native.amx():
        with pytest.raises(ValueError):
            mod.dot(np.zeros((2, 3), dtype=np.float32), np.zeros((4, 5), dtype=np.uint16),
                    np.zeros((2, 4), dtype=np.float32))
        with pytest.raises(ValueError, match="shapes"):
            native.product(np.zeros((2, 3), dtype=np.float32), np.zeros((4, 5), dtype=np.uint16))


#: calls whose 1-d arguments come as 2-d arrays holding nothing ((0, n): their second dimension
#: was taken for a length) or whose sizes sum past int64: each must raise ValueError
_HOSTILE_CALLS = """
import os, sys
import numpy as np
from neimsctl.io import native
mod, f32, i64 = native.module(), np.float32, np.int64
s, top, lo, hi = np.ones((4, 100), f32), np.zeros((4, 2), f32), np.zeros(4, i64), np.full(4, 100, i64)
calls = [
    lambda: mod.select(s, top, lo, hi, 0.5, np.empty((0, 400), i64), np.empty((0, 400), i64), np.empty((0, 400), f32)),
    lambda: mod.select(s, top, np.empty((0, 4), i64), np.empty((0, 4), i64), 0.5, np.empty(400, i64),
                       np.empty(400, i64), np.empty(400, f32)),
    lambda: mod.pread_ranges(0, np.empty((0, 100), i64), np.full(100, 10, i64), np.empty(1000, np.uint8)),
]
if native.amx():
    q, bits = np.ones((16, 64), f32), np.full((1000, 64), 0x3F80, np.uint16)
    top16, lo16, hi16 = np.zeros((16, 2), f32), np.zeros(16, i64), np.full(16, 1000, i64)
    calls.append(lambda: mod.dot_select(q, bits, top16, lo16, hi16, np.zeros(0, np.uint8), 0.0,
                                        np.empty((0, 99999), i64), np.empty((0, 99999), i64), np.empty((0, 99999), f32)))
    calls.append(lambda: mod.dot_select(q, bits, top16, lo16, hi16, np.zeros((0, 1000), np.uint8), 0.0,
                                        np.empty(9, i64), np.empty(9, i64), np.empty(9, f32)))
fd = os.open(sys.executable, os.O_RDONLY)
calls.append(lambda: mod.pread_ranges(fd, np.zeros(2, i64), np.array([2**63 - 1, 2], i64), np.empty(16, np.uint8)))
for call in calls:
    try:
        call()
        print("returned")
    except ValueError:
        print("ValueError")
"""


@needs_native
def test_kernel_refuses_arrays_that_would_read_or_write_past_them() -> None:
    """A (0, n) array where a vector is expected, and sizes whose sum overflows int64, are refused
    (they were taken as n long, or as a small total: the kernels read and wrote past the arrays)."""
    run = subprocess.run([sys.executable, "-c", _HOSTILE_CALLS], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.split()
    assert lines and set(lines) == {"ValueError"}, run.stdout

def test_switch_turns_the_kernels_off() -> None:
    """``NEIMSCTL_NATIVE=0``: numpy computes the norms, no AMX product."""
    code = ("import numpy as np; from neimsctl.io import native as b; "
            "n, t = b.row_norms(np.array([[0x3F80, 0]], dtype=np.uint16)); "
            "print(b.module() is None, b.amx(), b.product(np.ones((1, 2), np.float32), np.ones((1, 2), np.uint16)), "
            "float(n[0]), t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "NEIMSCTL_NATIVE": "0"}).stdout.split()
    assert out == ["True", "False", "None", "1.0", "16256"]


def _select_reference(s: np.ndarray, top: np.ndarray, lo: np.ndarray, hi: np.ndarray, factor: float):
    rows, cols, vals = [], [], []
    for j in range(len(s)):
        seg = s[j, lo[j]:hi[j]]
        t = np.sort(np.concatenate([top[j], seg]))[::-1][:top.shape[1]]
        top[j] = t
        thr = float(t[-1]) * factor
        for c in range(lo[j], hi[j]):
            if s[j, c] > 0 and float(s[j, c]) >= thr:
                rows.append(j), cols.append(c), vals.append(s[j, c])
    return np.array(rows, np.int64), np.array(cols, np.int64), np.array(vals, np.float32)


@needs_native
@pytest.mark.parametrize("k", [1, 3, 10])
def test_select_matches_a_reference(k: int) -> None:
    """Running top-k over two blocks, windows cut inside and outside a row, rows with fewer than
    ``k`` positive scores (every positive score is then a candidate), ties, zeros."""
    rng = np.random.default_rng(k)
    m, n = 7, 50
    top_a = np.zeros((m, k), np.float32)
    top_b = top_a.copy()
    work: list[np.ndarray] = []
    for block in range(2):
        s = np.round(rng.random((m, n)), 2).astype(np.float32) * (rng.random((m, n)) < 0.6)
        s[3] = 0.0                                   # a row without a positive score
        s[4, :] = 0.0
        s[4, 5] = 0.5                                # fewer than k positive scores
        lo = rng.integers(0, n // 2, m)
        hi = lo + rng.integers(0, n, m)              # beyond n: cut at n
        got = native.select(s, top_a, lo, hi, 0.9, work)
        want = _select_reference(s, top_b, lo, np.minimum(hi, n), 0.9)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(top_a, top_b)


def test_pread_ranges_reads_and_refuses_a_short_file(tmp_path, monkeypatch) -> None:
    """Ranges in any order and of size 0, with the kernel and without it; past the end: OSError."""
    import os

    data = bytes(range(256)) * 4
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        for mod in ([native.module()] if native.module() is not None else []) + [None]:
            monkeypatch.setattr(native, "module", lambda m=mod: m)
            got = native.pread_ranges(fd, np.array([10, 0, 1000, 5]), np.array([3, 2, 24, 0]))
            assert got.tobytes() == data[10:13] + data[0:2] + data[1000:1024]
            with pytest.raises(OSError, match="shorter"):
                native.pread_ranges(fd, np.array([1020]), np.array([8]))
    finally:
        os.close(fd)


@needs_amx
@pytest.mark.parametrize("k", [1, 5])
def test_product_select_keeps_every_candidate_of_select(k: int) -> None:
    """The fused pass (no score matrix) ends with the same running top-k as product + select, and
    its candidates hold theirs (it compares each score with the k-th best so far, which only
    grows); windows, an allowed mask and an output too small at first (the call is made again
    from the same top-k)."""
    rng = np.random.default_rng(k)
    nq, n, w = 37, 300, 70
    q = _unit_rows(rng, nq, w, 0.3)
    top_a = np.zeros((nq, k), np.float32)
    top_b = top_a.copy()
    work = [np.empty(4, np.int64), np.empty(4, np.int64), np.empty(4, np.float32)]     # too small: grows
    for block in range(3):
        bits = bf16_bits(_unit_rows(rng, n, w, 0.5))
        lo = rng.integers(0, n // 2, nq)
        hi = np.minimum(lo + rng.integers(0, n, nq), n)
        ok = rng.random(n) < 0.8
        got = native.product_select(q, bits, top_a, lo, hi, ok, 0.95, work)
        s = native.product(q, bits)
        s[:, ~ok] = 0.0
        want = native.select(s, top_b, lo, hi, 0.95)
        np.testing.assert_array_equal(top_a, top_b)
        got_pairs = dict(zip(zip(got[0].tolist(), got[1].tolist()), got[2].tolist()))
        for r, c, v in zip(*want):
            assert got_pairs[(r, c)] == v
        assert all(ok[c] and lo[r] <= c < hi[r] and v > 0 for (r, c), v in got_pairs.items())
    assert len(work[0]) > 4


def _blocks_file(path, rng, sizes, w_max):
    """Blocks of unit rows (widths up to ``w_max``) written one after another from byte 13 of
    ``path``: ``(arrays, blocks (start, offset, rows, width))``."""
    arrays, blocks, start, offset = [], [], 0, 13
    for n in sizes:
        w = int(rng.integers(1, w_max + 1))
        arrays.append(bf16_bits(_unit_rows(rng, n, w, 0.5)))
        blocks.append((start, offset, n, w))
        start, offset = start + n, offset + arrays[-1].nbytes
    path.write_bytes(b"x" * 13 + b"".join(a.tobytes() for a in arrays) + b"tail")
    return arrays, np.array(blocks, dtype=np.int64)


@needs_amx
@pytest.mark.parametrize("sizes", [[1], [255, 700, 3], [4096, 17, 300, 0, 900]])
def test_product_select_run_is_product_select_block_by_block(tmp_path, sizes) -> None:
    """A run of blocks of a file in one call (the kernel reads each block a piece of 256 rows at
    a time, gathers the queries whose window reaches it): the same running top-k, candidates
    (as query and entry numbers of the whole search), norms and largest bit patterns as
    product_select on each block's array with the queries of its windows; an output too small
    at first (the run goes on where it stopped, with room for more)."""
    rng = np.random.default_rng(len(sizes))
    nq, k, w_max = 45, 3, 90
    arrays, blocks = _blocks_file(tmp_path / "w.bin", rng, sizes, w_max)
    total = int(blocks[:, 2].sum())
    q = _unit_rows(rng, nq, w_max, 0.3)
    lo = rng.integers(-5, max(1, total), nq)
    hi = lo + rng.integers(0, max(2, total // 2), nq)
    ok = rng.random(total) < 0.8
    top_a, top_b = np.zeros((nq, k), np.float32), np.zeros((nq, k), np.float32)
    want, norms_b, tops_b = {}, [], []
    for (start, _, n, w), bits in zip(blocks.tolist(), arrays):
        sel = np.flatnonzero((lo < start + n) & (hi > start))
        top = top_b[sel]
        norms = np.empty(n, np.float32)
        r, c, v, largest = native.product_select(q[sel, :w], bits, top, np.clip(lo[sel] - start, 0, n),
                                                 np.clip(hi[sel] - start, 0, n), ok[start:start + n], 0.9, None, norms)
        top_b[sel] = top
        want.update(zip(zip(sel[r].tolist(), (c + start).tolist()), v.tolist()))
        norms_b.append(norms)
        tops_b.append(largest if len(sel) else int(bits.max(initial=0)))
    work = [np.empty(4, np.int64), np.empty(4, np.int64), np.empty(4, np.float32)]      # too small: grows
    norms_a, tops_a = np.empty(total, np.float32), np.zeros(len(blocks), np.int32)
    fd = os.open(tmp_path / "w.bin", os.O_RDONLY)
    try:
        done, rows, cols, vals, err = native.product_select_run(q, fd, blocks, lo, hi, top_a, ok, 0.9, work,
                                                                norms_a, tops_a)
    finally:
        os.close(fd)
    assert (done, err) == (len(blocks), None)
    np.testing.assert_array_equal(top_a, top_b)
    assert dict(zip(zip(rows.tolist(), cols.tolist()), vals.tolist())) == want
    assert len(want) > 0
    np.testing.assert_array_equal(norms_a, np.concatenate(norms_b))
    assert tops_a.tolist() == tops_b
    assert len(work[0]) > 4 or len(want) <= 4


@needs_amx
def test_product_select_run_stops_at_a_block_the_file_cuts(tmp_path) -> None:
    """A file that ends inside the third block: the first two are done (their candidates and
    top-k kept), the error (OSError: shorter) is for block 2; a bad block description is a
    ValueError."""
    rng = np.random.default_rng(7)
    nq, k = 20, 2
    arrays, blocks = _blocks_file(tmp_path / "w.bin", rng, [300, 200, 400, 100], 60)
    q = _unit_rows(rng, nq, 60, 0.3)
    lo, hi = np.zeros(nq, np.int64), np.full(nq, 10**6, np.int64)
    os.truncate(tmp_path / "w.bin", int(blocks[2, 1]) + 100)
    top = np.zeros((nq, k), np.float32)
    norms, tops = np.empty(1000, np.float32), np.zeros(4, np.int32)
    fd = os.open(tmp_path / "w.bin", os.O_RDONLY)
    try:
        done, rows, cols, vals, err = native.product_select_run(q, fd, blocks, lo, hi, top, None, 0.9, [], norms, tops)
        assert done == 2 and isinstance(err, OSError) and "shorter" in str(err)
        assert len(rows) and cols.max() < 500 and (top[:, 0] > 0).all()
        # empty output buffers at first: they grow (they were doubled from 0, for ever)
        top2 = np.zeros((nq, k), np.float32)
        again = native.product_select_run(q, fd, blocks[:2], lo, hi, top2, None, 0.9, native._outputs(0),
                                          norms[:500], tops[:2])
        assert again[0] == 2 and again[4] is None and len(again[1]) == len(rows)
        bad = blocks.copy()
        bad[1, 3] = 61                      # wider than the queries
        with pytest.raises(ValueError):
            native.product_select_run(q, fd, bad, lo, hi, top, None, 0.9, [], norms, tops)
    finally:
        os.close(fd)


@needs_amx
def test_product_select_windows_beyond_int32_keep_their_meaning() -> None:
    """Windows are entry indices (< n <= 2**31 - 1): a window starting past 2**32 holds no entry
    and one from -2**33 to 2**33 holds them all (they were cut to int32, wrapping around)."""
    rng = np.random.default_rng(3)
    q = _unit_rows(rng, 2, 40, 0.5)
    bits = bf16_bits(_unit_rows(rng, 50, 40, 0.5))
    none = native.product_select(q, bits, np.zeros((2, 50), np.float32), np.full(2, 2**32 + 1), np.full(2, 2**32 + 50),
                                 None, 0.0)
    every = native.product_select(q, bits, np.zeros((2, 50), np.float32), np.full(2, -2**33), np.full(2, 2**33),
                                  None, 0.0)
    assert len(none[0]) == 0 and len(every[0]) == 100
