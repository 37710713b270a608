"""The search's native bfloat16 kernels (``neimsctl/io/_bf16.c``), with numpy doing the same
where they are not built or the CPU lacks what they need.

- :func:`row_norms`: every stored block's check (unit vectors) without widening it to float32;
- :func:`product`: the cosine's first pass over stored weights, ``q @ bf16(bits).T``, on Intel
  AMX tiles (``None`` where they are not available: the caller takes its float32 product).

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

__all__ = ["native", "amx", "row_norms", "product"]


@functools.lru_cache(maxsize=1)
def native() -> Any:
    """The compiled module, or ``None`` (not built, or turned off by ``NEIMSCTL_NATIVE=0``)."""
    if os.environ.get("NEIMSCTL_NATIVE", "1").strip() == "0":
        return None
    try:
        from neimsctl.io import _bf16
    except ImportError:
        return None
    return _bf16


@functools.lru_cache(maxsize=1)
def amx() -> bool:
    """True when :func:`product` runs on AMX tiles here (a Linux x86-64 CPU with AMX-BF16)."""
    mod = native()
    return bool(mod is not None and mod.amx())


def row_norms(bits: np.ndarray) -> tuple[np.ndarray, int]:
    """Squared norms (float32, ``(n,)``) of the rows of bfloat16 bit patterns ``bits`` ``(n, w)``,
    and the largest bit pattern (0 when empty)."""
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    if bits.ndim != 2:
        raise ValueError(f"row_norms: a 2-d array expected, got shape {bits.shape}")
    out = np.empty(len(bits), dtype=np.float32)
    mod = native()
    if mod is not None:
        return out, int(mod.norms(bits, out))
    values = bf16_values(bits)
    np.einsum("ij,ij->i", values, values, out=out)
    return out, int(bits.max()) if bits.size else 0


def product(q: np.ndarray, bits: np.ndarray) -> np.ndarray | None:
    """``q @ bf16(bits).T`` as float32 ``(len(q), len(bits))`` within relative 1.2e-4 of the
    float32 product (weights >= 0, finite; see ``_bf16.c``), or ``None`` without AMX here."""
    if not amx():
        return None
    q = np.ascontiguousarray(q, dtype=np.float32)
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    if q.ndim != 2 or bits.ndim != 2 or q.shape[1] != bits.shape[1]:
        raise ValueError(f"product: shapes (nq, w) and (n, w) expected, got {q.shape} and {bits.shape}")
    out = np.empty((len(q), len(bits)), dtype=np.float32)
    native().dot(q, bits, out)
    return out
