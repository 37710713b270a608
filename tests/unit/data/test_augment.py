"""LDS smoothing and 13C isotope substitution of targets."""

from __future__ import annotations

import numpy as np

from neimsctl.data.augment import (Augment, gaussian_kernel, isotope_13c_shift, select_rows,
                                   smooth_lds)


def _spec(peaks: dict[int, float]) -> np.ndarray:
    y = np.zeros((1, 501), np.float32)
    for k, v in peaks.items():
        y[0, k] = v
    return y


def test_kernel():
    k = gaussian_kernel(1.5)
    assert len(k) == 13 and np.isclose(k.sum(), 1.0) and k.argmax() == 6
    var = (k * (np.arange(13) - 6) ** 2).sum()
    assert abs(var - 1.5**2) < 0.01


def test_lds_spreads_a_peak_symmetrically_and_renormalises():
    out = smooth_lds(_spec({100: 1.0, 300: 0.5}))
    assert out.shape == (1, 501) and out.max() == 1.0 and out[0].argmax() == 100
    assert np.allclose(out[0, 94:100], out[0, 101:107][::-1])
    assert out[0, 93] == 0 and out[0, 98] > 0.4
    assert np.isclose(out[0, 300], 0.5, atol=1e-6)
    assert smooth_lds(np.zeros((2, 501), np.float32)).max() == 0
    edge = smooth_lds(_spec({0: 1.0, 500: 1.0}))
    assert edge[0, 0] == edge[0, 500] == 1.0


def test_isotope_shift_moves_mass_fraction_to_plus_one():
    y = _spec({50: 1.0, 100: 0.4})                       # M = 100: molecular ion moves entirely
    out = isotope_13c_shift(y, np.array([100]), np.array([True]))
    assert out[0, 100] == 0 and np.isclose(out[0, 101], 0.4 / 0.5)
    assert np.isclose(out[0, 50], 1.0) and np.isclose(out[0, 51], 1.0)     # half of m/z 50 moved
    same = isotope_13c_shift(y, np.array([100]), np.array([False]))         # no carbon
    assert np.allclose(same, y)
    top = isotope_13c_shift(_spec({500: 1.0, 250: 0.5}), np.array([500]), np.array([True]))
    assert top[0, 250] > 0 and top.max() == 1.0                             # 500 -> 501 drops out


def test_selection_is_5_percent_deterministic_and_per_epoch():
    rows = np.arange(200_000)
    a = select_rows(rows, fraction=0.05, seed=42, epoch=0)
    assert abs(a.mean() - 0.05) < 0.003
    assert np.array_equal(a, select_rows(rows, fraction=0.05, seed=42, epoch=0))
    assert np.array_equal(a[1000:1100], select_rows(rows[1000:1100], fraction=0.05, seed=42, epoch=0))
    assert (a & select_rows(rows, fraction=0.05, seed=42, epoch=1)).mean() < 0.005


def test_augment_call():
    y = np.repeat(_spec({40: 1.0, 60: 0.3}), 4, axis=0)
    out, mask = Augment(lds_sigma=None, isotope_fraction=1.0)(y, rows=np.arange(4), mw=np.array([60, 60, 0, 60]),
                                              has_carbon=np.array([True, True, True, False]), epoch=0)
    assert mask.tolist() == [True, True, False, False]
    assert out[0, 61] > 0 and out[2, 61] == 0 and np.allclose(out.max(axis=1), 1.0)
    plain, none = Augment(lds_sigma=None, isotope_fraction=0.0)(y, rows=np.arange(4), mw=np.full(4, 60),
                                                                has_carbon=np.ones(4, bool), epoch=0)
    assert np.array_equal(plain, y) and not none.any()
    smooth, _ = Augment(isotope_fraction=0.0)(y, rows=np.arange(4), mw=np.full(4, 60),
                                              has_carbon=np.ones(4, bool), epoch=0)
    assert np.allclose(smooth, smooth_lds(y))
