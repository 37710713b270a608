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


@needs_amx
@pytest.mark.parametrize("n", [1, 255, 700])
def test_product_select_reads_the_weights_from_a_file_in_pieces(tmp_path, n: int) -> None:
    """``bits`` given as ``(fd, offset, n)``: the kernel reads the rows itself, a piece at a time
    (256 rows), at an odd offset; the same top-k, candidates (in the same order), norms and
    largest bit pattern as from the array. A file that ends before the rows do: OSError."""
    rng = np.random.default_rng(n)
    nq, w, k = 21, 70, 3
    q = _unit_rows(rng, nq, w, 0.3)
    bits = bf16_bits(_unit_rows(rng, n, w, 0.5))
    lo = rng.integers(0, max(1, n // 2), nq)
    hi = np.minimum(lo + rng.integers(0, n + 1, nq), n)
    ok = rng.random(n) < 0.8
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * 13 + bits.tobytes() + b"tail")
    results = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for source in (bits, (fd, 13, n)):
            top = np.zeros((nq, k), np.float32)
            norms = np.empty(n, np.float32)
            rows, cols, vals, largest = native.product_select(q, source, top, lo, hi, ok, 0.9, None, norms)
            results.append((top, rows, cols, vals, norms, largest))
        os.truncate(path, 13 + bits.nbytes - 2)
        with pytest.raises(OSError, match="shorter"):
            native.product_select(q, (fd, 13, n), np.zeros((nq, k), np.float32), lo, hi, ok, 0.9)
        with pytest.raises(ValueError):
            native.product_select(q, (fd, -1, n), np.zeros((nq, k), np.float32), lo, hi, ok, 0.9)
    finally:
        os.close(fd)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert len(results[0][1]) > 0
    values = bf16_values(bits).astype(np.float64)
    np.testing.assert_allclose(results[0][4], (values ** 2).sum(axis=1), rtol=1e-6)
    assert results[0][5] == int(bits.max())


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
