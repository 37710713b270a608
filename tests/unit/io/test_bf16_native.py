"""The native bfloat16 kernels (neimsctl/io/_bf16.c) against numpy: the product on AMX tiles
within its stated margin, the norms and largest bit pattern exactly as the check needs them,
and the switch that turns them off."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from neimsctl.io import bf16_native
from neimsctl.io.peak_block import bf16_bits, bf16_values

needs_amx = pytest.mark.skipif(not bf16_native.amx(), reason="no AMX tiles here (or the native kernel is not built)")
needs_native = pytest.mark.skipif(bf16_native.native() is None, reason="the native kernel is not built here")

#: bf16_native.product's stated margin against the float32 product of the same values
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
    got = bf16_native.product(q, bits)
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
    got = bf16_native.product(q, bits)
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
    norms, top = bf16_native.row_norms(bits)
    values = bf16_values(bits).astype(np.float64)
    want = (values * values).sum(axis=1)
    assert top == (int(bits.max()) if n else 0)
    ok = np.isfinite(want)
    np.testing.assert_allclose(norms[ok], want[ok], rtol=1e-5)
    assert np.isnan(norms[~ok]).all()


@needs_native
def test_kernel_refuses_wrong_arrays() -> None:
    mod = bf16_native.native()
    with pytest.raises(TypeError):
        mod.norms(np.zeros((2, 3), dtype=np.float32), np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError):
        mod.norms(np.zeros((2, 3), dtype=np.uint16), np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        mod.norms(np.zeros((3, 2), dtype=np.uint16).T, np.zeros(2, dtype=np.float32))
    if bf16_native.amx():
        with pytest.raises(ValueError):
            mod.dot(np.zeros((2, 3), dtype=np.float32), np.zeros((4, 5), dtype=np.uint16),
                    np.zeros((2, 4), dtype=np.float32))
        with pytest.raises(ValueError, match="shapes"):
            bf16_native.product(np.zeros((2, 3), dtype=np.float32), np.zeros((4, 5), dtype=np.uint16))


def test_switch_turns_the_kernels_off() -> None:
    """``NEIMSCTL_NATIVE=0``: numpy computes the norms, no AMX product."""
    code = ("import numpy as np; from neimsctl.io import bf16_native as b; "
            "n, t = b.row_norms(np.array([[0x3F80, 0]], dtype=np.uint16)); "
            "print(b.native() is None, b.amx(), b.product(np.ones((1, 2), np.float32), np.ones((1, 2), np.uint16)), "
            "float(n[0]), t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "NEIMSCTL_NATIVE": "0"}).stdout.split()
    assert out == ["True", "False", "None", "1.0", "16256"]
