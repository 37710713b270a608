"""chem.isotopes: isotope patterns of formulas, and predicted peaks above M that they cannot explain."""

from __future__ import annotations

import numpy as np
import pytest

from neimsctl.chem.isotopes import PROTONATED, above_molecule_capped, isotope_pattern


@pytest.mark.parametrize("formula, want", [
    ("Cl2", [1.0, 0.0, 0.639, 0.0, 0.102]),           # (0.7578 + 0.2422)^2 over 0.7578^2
    ("Br", [1.0, 0.0, 0.973]),
    ("C10H8", [1.0, 0.109, 0.0054]),                   # 13C: 10 x 1.07 %, H 8 x 0.0115 %
    ("CH4S", [1.0, 0.019, 0.045]),                     # 33S, 34S
])
def test_patterns_of_known_formulas(formula, want):
    got = isotope_pattern(formula)
    assert got[:len(want)] == pytest.approx(want, abs=2e-3)


def test_elements_whose_most_common_isotope_is_not_the_lightest():
    # Se: most common 80, isotopes 74..82; Sn: 120, isotopes 112..124 -> shifts below zero
    se, sn = isotope_pattern("Se"), isotope_pattern("Sn")
    assert se[:3] == pytest.approx([1.0, 0.0, 0.0873 / 0.4961], abs=1e-3)
    assert sn[4] == pytest.approx(0.0579 / 0.3258, abs=1e-3)      # 124Sn over 120Sn


@pytest.mark.parametrize("formula", ["CD3O", "C[13C]H6", "CH4Xx", "", "C2H6Q", " ", "123", "c7h16",
                                     "C16 H13 Cl N2 O2", "C" + "9" * 5000, "C1234567"])
def test_labelled_unknown_or_malformed_formulas_have_no_pattern(formula):
    # a formula of no element was a pattern of one isotope (every peak above M+2 cut to 0), a
    # count of 5,000 digits a traceback that stopped predict
    assert isotope_pattern(formula) is None


def test_charged_formulas_and_the_cached_pattern_is_read_only():
    assert isotope_pattern("C2H6N+")[:2] == pytest.approx(isotope_pattern("C2H6N")[:2])
    a = isotope_pattern("CH3Cl")
    with pytest.raises(ValueError):
        a[2] = 0


def _row(peaks: dict[int, float]) -> np.ndarray:
    s = np.zeros((1, 501), np.float32)
    for mz, i in peaks.items():
        s[0, mz] = i
    return s


def test_a_peak_no_isotope_explains_is_cut_and_m1_m2_are_left():
    # temazepam C16H13ClN2O2, M 300: the model's M+5 at 0.17, nothing of that mass exists
    peaks = {300: 0.78, 301: 0.14, 302: 0.078, 303: 0.014, 305: 0.17, 273: 1.0}
    s = _row(peaks)
    out, _ = above_molecule_capped(s.copy(), None, ["C16H13ClN2O2"], [300])
    assert out[0, 305] < 0.03                          # 2 x its isotopologues' share + [M+H]+'s
    for mz in (273, 300, 301, 302, 303):
        assert out[0, mz] == np.float32(peaks[mz])     # M+1, M+2 and what lies below M: as they were
    # a Cl3 compound's M+4 and M+6 are its own isotopologues: nothing is cut
    a = isotope_pattern("C6H3Cl3")
    cl3 = _row({180: 1.0, 182: float(a[2]), 184: float(a[4]), 186: float(a[6])})
    same, _ = above_molecule_capped(cl3.copy(), None, ["C6H3Cl3"], [180])
    assert np.array_equal(same, cl3)


def test_a_cut_base_peak_rescales_the_row_and_its_spread():
    s = _row({100: 0.3, 104: 1.0, 50: 0.6})
    std = _row({100: 0.03, 104: 0.5, 50: 0.06})
    out, sd = above_molecule_capped(s.copy(), std.copy(), ["C8H12"], [100])
    cap = out[0, 104] / out.max()
    assert out.max() == pytest.approx(1.0) and out[0, 50] == pytest.approx(1.0)    # new base peak
    assert out[0, 100] == pytest.approx(0.5) and cap < 0.01 * PROTONATED + 0.03
    # the spread of the cut peak falls with it; the others are rescaled with the row
    assert sd[0, 50] == pytest.approx(0.1) and sd[0, 104] < 0.5 * 0.03


def test_rows_without_pattern_mass_or_peaks_above_are_untouched():
    s = np.concatenate([_row({60: 1.0, 65: 0.9}), _row({60: 1.0, 65: 0.9}), _row({60: 1.0}),
                        _row({499: 1.0}), _row({60: np.nan, 65: 0.9})])
    out, _ = above_molecule_capped(s.copy(), None, ["CD3CO", "C3H8O", "C3H8O", "C30H60", "C3H8O"],
                                   [60, -1, 60, 499, 60])
    assert np.array_equal(out[:4], s[:4])                       # labelled, no mass, nothing above, edge
    assert np.isnan(out[4, 60]) and out[4, 65] == np.float32(0.9)  # a NaN row: refused later, not here


def test_isotopologues_of_the_peaks_above_m_do_not_stack_into_an_allowance():
    """Br2: M, M+2, M+4 are 1 : 1.95 : 0.95, and nothing lies at M+6 or M+8. Counting the
    isotopologues of M+2 and M+4 again (as the first version of the cut did) allowed 40 % at
    M+6; the molecular ion's amount is read from the cluster instead."""
    s = _row({107: 1.0, 186: 0.25, 188: 0.5, 190: 0.25, 192: 0.4, 194: 0.3})
    out, _ = above_molecule_capped(s.copy(), None, ["C2H4Br2"], [186])
    assert out[0, 192] < 0.01 and out[0, 194] < 0.01
    assert [out[0, m] for m in (107, 186, 188, 190)] == [1.0, 0.25, 0.5, 0.25]
    # a tribromophenol-like row: an odd M+3 at 79 % (13C only) is cut, the Br3 cluster kept
    a = isotope_pattern("C6H3Br3O")
    row = {328 + k: 0.3 * float(a[k]) for k in (0, 2, 4, 6)} | {331: 0.79, 250: 1.0}
    out, _ = above_molecule_capped(_row(row).copy(), None, ["C6H3Br3O"], [328])
    assert out[0, 331] < 0.25                          # 2 x its 13C share (0.06) + an [M+H]+ of 10 %
    assert all(out[0, 328 + k] == np.float32(row[328 + k]) for k in (0, 2, 4, 6))


def test_a_pattern_with_zeros_in_its_cluster_warns_of_nothing():
    """Cl2's M+1 and M+3 have no isotopologue: reading the molecular ion's amount divided by
    those zeros printed numpy's 'divide by zero' on predict's stderr (the result was right)."""
    import warnings

    s = _row({70: 1.0, 72: 0.64, 74: 0.1, 75: 0.3, 35: 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, _ = above_molecule_capped(s.copy(), None, ["Cl2"], [70])
    assert out[0, 75] < 0.011 and out[0, 74] == np.float32(0.1)    # 0.1 x A[4]: an [M+H]+'s share
