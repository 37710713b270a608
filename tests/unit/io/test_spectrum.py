"""Binning (round half up, sum per bin, drop > 500), normalization and noise removal."""

from __future__ import annotations

import numpy as np
import pytest

from neimsctl.io.spectrum import (bin_spectrum, normalize_l2, normalize_max,
                                    preprocess_spectrum, select_above_noise)


def test_bin_rounds_half_up_and_sums() -> None:
    v = bin_spectrum([77.4, 77.5, 78.49, 0.0, 500.4, 500.5, 1000.0], [1, 2, 4, 8, 16, 32, 64])
    assert v.shape == (501,) and v.dtype == np.float32
    assert v[77] == 1 and v[78] == 6 and v[0] == 8 and v[500] == 16
    assert v.sum() == 1 + 2 + 4 + 8 + 16                         # 500.5 -> 501 and 1000 dropped


@pytest.mark.parametrize("scale", [1e300, 1e-300, 3e38])
def test_intensities_beyond_float32_keep_their_ratios(scale: float) -> None:
    """Intensities of 1e300 were inf in float32 and the spectrum NaN ('no peaks' in eval); of
    1e-300, zero: scaled to base peak 1 instead, the ratios kept."""
    v = bin_spectrum([41.0, 43.0, 43.2, 57.0], [scale, scale / 2, scale / 4, scale / 5000])
    assert np.isfinite(v).all() and v.max() == pytest.approx(1.0)
    p = preprocess_spectrum([41.0, 43.0, 43.2, 57.0], [scale, scale / 2, scale / 4, scale / 5000])
    assert p[41] == pytest.approx(1.0) and p[43] == pytest.approx(0.75) and p[57] == 0  # noise
    assert bin_spectrum([1.0], [5.0])[1] == 5.0                 # ordinary values stay raw


def test_bin_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ"):
        bin_spectrum([1.0, 2.0], [1.0])


def test_normalizations() -> None:
    v = np.array([0, 3, 4], dtype=np.float32)
    assert normalize_max(v).tolist() == [0, 0.75, 1.0]
    assert np.linalg.norm(normalize_l2(v)) == pytest.approx(1.0)
    assert normalize_max(np.zeros(3)).tolist() == [0, 0, 0]
    assert normalize_l2(np.zeros(3)).tolist() == [0, 0, 0]


def test_noise_removed_below_a_thousandth() -> None:
    v = np.array([999.0, 0.5, 1.0, 0.99], dtype=np.float32)   # threshold 0.999
    out = select_above_noise(v)
    assert out.tolist() == [999.0, 0.0, 1.0, 0.0]
    assert v[1] == 0.5                                           # input unchanged


def test_preprocess_real_record_shape() -> None:
    # record ID 19 of massbank_ei_tiny.msp (data README)
    mz = [27, 29, 39, 41, 42, 43, 51, 55, 57, 65, 71, 77, 79, 89, 90, 91, 92, 148, 149, 207]
    it = [31, 41, 36, 6, 11, 132, 12, 2, 14, 61, 119, 2, 10, 11, 15, 999, 108, 33, 18, 36]
    v = preprocess_spectrum(mz, it)
    assert v[91] == 1.0 and v.max() == 1.0 and np.count_nonzero(v) == 20
    assert v[43] == pytest.approx(132 / 999)
    l2 = preprocess_spectrum(mz, it, norm="l2")
    assert np.linalg.norm(l2) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        preprocess_spectrum(mz, it, norm="sum")  # type: ignore[arg-type]
