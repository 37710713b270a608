"""Library matching, cosine, MAE/RMSE and the nearest-neighbour baseline on hand-made spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neimsctl.errors import InputError
from neimsctl.evaluate.matching import Score
from neimsctl.evaluate.metrics import (build_library_eval, cosine_matrix, evaluate_predictions, library_match,
                                    mae, mean_cosine, nearest_neighbour_predict, rmse, weighted_vectors)

N = 501


def spec(**peaks: float) -> np.ndarray:
    """A 501-bin spectrum from ``mz<m>=intensity`` keywords, e.g. ``spec(mz100=1.0)``."""
    v = np.zeros(N, dtype=np.float32)
    for k, val in peaks.items():
        v[int(k[2:])] = val
    return v


def key(block_letter: str, stereo: str = "UHFFFAOYSA") -> str:
    return f"{block_letter * 14}-{stereo}-N"


# Query: one peak at m/z 100. Weighted cosine (m/z^1 I^0.5) against:
#   RIGHT  {100, 200}: 100/sqrt(100^2+200^2) = 0.447
#   A      {100}     : 1.0                     (higher)
#   B      {100, 110}: 100/sqrt(100^2+110^2) = 0.673 (higher)
#   C      {300}     : 0                       (lower)
#   D      {100, 300}: 100/sqrt(100^2+300^2) = 0.316 (lower)
QUERY = spec(mz100=1.0)
RIGHT, A, B = spec(mz100=1.0, mz200=1.0), spec(mz100=1.0), spec(mz100=1.0, mz110=1.0)
C, D = spec(mz300=1.0), spec(mz100=1.0, mz300=1.0)


def match(library, keys, mws=None, query_mw=120, **kw):
    mws = mws if mws is not None else [120] * len(library)
    return library_match(QUERY[None], [key("Q")], [query_mw], np.stack(library), keys, mws, **kw)


def test_identical_spectrum_ranks_first():
    res = match([QUERY, C, D], [key("Q"), key("C"), key("D")])
    assert res["ranks"].tolist() == [1]
    assert res["recall@1"] == 1.0 and res["top_hit"].tolist() == [0]


def test_exactly_two_other_compounds_higher_gives_rank_3():
    res = match([RIGHT, A, B, C, D], [key("Q"), key("A"), key("B"), key("C"), key("D")])
    assert res["ranks"].tolist() == [3]
    assert (res["recall@1"], res["recall@5"]) == (0.0, 1.0)
    assert res["top_hit"].tolist() == [1]


def test_duplicate_entries_and_stereoisomers_of_a_wrong_compound_count_once():
    lib = [RIGHT, A, A, A, B, C]
    keys = [key("Q"), key("A"), key("A"), key("A", "ZZZZZZZZZZ"), key("B"), key("C")]
    assert match(lib, keys)["ranks"].tolist() == [3]


def test_right_compound_matched_by_connectivity_block_and_its_best_entry_counts():
    # the right compound appears as a stereoisomer (other full key) with a worse and a perfect entry
    lib = [A, C, D, QUERY]
    keys = [key("A"), key("Q", "SNVLJLYESA"), key("D"), key("Q", "XXXXXXXXXX")]
    assert match(lib, keys)["ranks"].tolist() == [1]  # ties with A (cos 1) do not count


def test_ties_do_not_push_the_right_compound_down():
    res = match([QUERY, A], [key("Q"), key("A")])
    assert res["ranks"].tolist() == [1]


@pytest.mark.parametrize("score", [None, Score("cosine", reverse=True)], ids=["cosine", "reverse"])
def test_identical_spectra_of_other_compounds_tie_wherever_they_sit_in_the_library(score):
    # identical spectra scored at other places of one matrix product came out 2**-52 above the
    # right compound's own entry (OpenBLAS edge kernels): rank 2 for half of these libraries
    ranks = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        q = np.where(rng.random((1, N)) < 0.15, rng.random((1, N)), 0).astype(np.float32)
        for n_copies in range(1, 60):
            lib = np.repeat(q, n_copies + 1, axis=0)
            keys = [f"{i:014d}" for i in range(n_copies + 1)]
            ranks.append(int(library_match(q, keys[:1], None, lib, keys, None, score=score)["ranks"][0]))
    assert ranks == [1] * len(ranks)


def test_mass_filter_excludes_candidates_outside_the_window_and_can_improve_rank():
    lib = [RIGHT, A, B, C]
    keys = [key("Q"), key("A"), key("B"), key("C")]
    mws = [120, 126, 115, 120]  # A is 6 Da away (out), B 5 Da away (in)
    assert match(lib, keys, mws)["ranks"].tolist() == [3]
    assert match(lib, keys, mws, mass_filter=5)["ranks"].tolist() == [2]
    assert match(lib, keys, mws, mass_filter=4)["ranks"].tolist() == [1]


def test_mass_filter_always_keeps_the_right_compound():
    # an isotopologue entry of the right compound, 8 Da heavier, is still a candidate
    res = match([RIGHT, B], [key("Q", "DEUTERATED"), key("B")], [128, 121], mass_filter=5)
    assert res["ranks"].tolist() == [2]


def test_mass_filter_needs_weights():
    with pytest.raises(InputError, match="mass filter"):
        library_match(QUERY[None], [key("Q")], None, QUERY[None], [key("Q")], None, mass_filter=5)


def test_recall_is_share_of_queries_within_k():
    queries = np.stack([QUERY, QUERY, C])
    lib = np.stack([RIGHT, A, B, C])
    qk = [key("Q"), key("Q"), key("P")]
    lk = [key("Q"), key("A"), key("B"), key("P")]
    res = library_match(queries, qk, None, lib, lk, None, ks=(1, 2, 3))
    assert res["ranks"].tolist() == [3, 3, 1]
    assert res["recall@1"] == pytest.approx(1 / 3) and res["recall@2"] == pytest.approx(1 / 3)
    assert res["recall@3"] == 1.0


def test_query_compound_missing_from_library_is_an_error():
    with pytest.raises(InputError, match="no entry of their compound"):
        match([A, B], [key("A"), key("B")])


def test_cosine_identical_orthogonal_and_weighting_by_hand():
    a, b = spec(mz10=4.0, mz20=1.0), spec(mz10=1.0, mz20=4.0)
    cm = cosine_matrix(np.stack([a, b]), np.stack([a, b, spec(mz30=2.0)]))
    assert cm[0, 0] == pytest.approx(1.0, abs=1e-6) and cm[0, 2] == 0.0
    # m/z^1 I^0.5: a -> (10*2, 20*1) = (20, 20); b -> (10*1, 20*2) = (10, 40)
    assert cm[0, 1] == pytest.approx(1000 / math.sqrt(800 * 1700), rel=1e-6)
    w = weighted_vectors(a[None])[0]
    assert (w[10], w[20]) == pytest.approx((1 / math.sqrt(2), 1 / math.sqrt(2)))
    assert cosine_matrix(a[None], np.zeros((1, N)))[0, 0] == 0.0


def test_mean_cosine_is_plain_cosine_without_weights():
    pred = np.stack([spec(mz10=1.0, mz20=1.0), spec(mz50=1.0)])
    true = np.stack([spec(mz10=1.0), spec(mz50=3.0)])
    assert mean_cosine(pred, true) == pytest.approx((1 / math.sqrt(2) + 1.0) / 2, rel=1e-6)


def test_mae_and_rmse_on_max_normalised_spectra():
    pred = np.zeros((1, 4), np.float32)
    pred[0, 1:3] = [2.0, 1.0]  # -> [0, 1, 0.5, 0]
    true = np.zeros((1, 4), np.float32)
    true[0, 1] = 5.0  # -> [0, 1, 0, 0]
    assert mae(pred, true) == pytest.approx(0.5 / 4)
    assert rmse(pred, true) == pytest.approx(math.sqrt(0.25 / 4))


def test_build_library_eval_protocol_and_evaluate():
    test_spectra = np.stack([QUERY, QUERY, B])  # two spectra of Q, one of P
    test_keys = [key("Q"), key("Q", "OTHERSTERE"), key("P")]
    predicted = np.stack([RIGHT, B, A])  # Q, P, and a second (ignored) prediction of Q
    pred_keys = [key("Q"), key("P"), key("Q")]
    reference = np.stack([A, C, QUERY])  # training compounds A, C and a leaked spectrum of Q
    ref_keys = [key("A"), key("C"), key("Q")]
    task = build_library_eval(test_spectra, test_keys, [120, 120, 130], predicted, pred_keys, [120, 130, 120],
                              reference, ref_keys, [120, 300, 120])
    assert task.library_keys.tolist() == ["Q" * 14, "P" * 14, "A" * 14, "C" * 14]
    assert task.library_is_predicted.tolist() == [True, True, False, False]
    assert task.query_pred_row.tolist() == [0, 0, 1]
    res = evaluate_predictions(task, ks=(1, 5), mass_filter=5)
    # Q queries: A (1.0) and P's prediction B (0.673) beat RIGHT (0.447) -> rank 3; P query -> rank 1
    assert res["recall@1"] == pytest.approx(1 / 3) and res["recall@5"] == 1.0
    # with the filter, P's prediction (MW 130) leaves the window of Q (MW 120): rank 2
    assert res["recall@1_mass5"] == pytest.approx(1 / 3)
    ranks = library_match(task.query_spectra, task.query_keys, task.query_mw, task.library_spectra,
                          task.library_keys, task.library_mw, mass_filter=5)["ranks"]
    assert ranks.tolist() == [2, 2, 1]
    assert res["mean_cosine"] == pytest.approx((2 / math.sqrt(2) + 1.0) / 3, rel=1e-5)
    assert (res["n_queries"], res["n_compounds"], res["n_library"]) == (3, 2, 4)


def test_build_library_eval_needs_a_prediction_per_test_compound():
    with pytest.raises(InputError, match="no predicted spectrum"):
        build_library_eval(QUERY[None], [key("Q")], [120], A[None], [key("A")], [120], C[None], [key("C")], [120])


def test_nearest_neighbour_picks_the_most_tanimoto_similar_training_row():
    bits = np.zeros((4, 64), dtype=bool)
    bits[0, [1, 2, 3, 4]] = True          # train 0
    bits[1, [1, 2, 3, 9, 10, 11]] = True  # train 1
    bits[2, [20, 21]] = True              # train 2
    bits[3, [1, 2, 3, 9]] = True          # query: T(0) = 3/5, T(1) = 4/6, T(2) = 0
    train_fps, query_fps = np.packbits(bits[:3], axis=1), np.packbits(bits[3:], axis=1)
    spectra = np.stack([A, B, C])
    pred, idx, sim = nearest_neighbour_predict(query_fps, train_fps, spectra, chunk=2)
    assert idx.tolist() == [1] and sim[0] == pytest.approx(4 / 6)
    np.testing.assert_array_equal(pred[0], B)


def test_library_match_is_fast_at_eval_size():
    import time

    rng = np.random.default_rng(0)
    lib = (rng.random((7000, N), dtype=np.float32) ** 16).astype(np.float32)
    keys = [f"{i // 2:014d}" for i in range(7000)]
    t0 = time.perf_counter()
    res = library_match(lib[:900] * 2, keys[:900], None, lib, keys, None)
    assert time.perf_counter() - t0 < 5.0  # ~0.3 s on one core; generous for a shared machine
    assert res["recall@1"] == 1.0


def test_query_blocking_does_not_change_ranks(monkeypatch):
    import neimsctl.evaluate.metrics as metrics

    rng = np.random.default_rng(1)
    lib = (rng.random((40, N), dtype=np.float32) ** 8).astype(np.float32)
    keys = [f"{i % 13:014d}" for i in range(40)]
    mws = rng.integers(100, 120, 40)
    queries = lib[:25] + 0.05 * rng.random((25, N), dtype=np.float32)
    whole = library_match(queries, keys[:25], mws[:25], lib, keys, mws, mass_filter=5)
    monkeypatch.setattr(metrics, "_SCORE_BUDGET", 50)  # one query per block
    blocked = library_match(queries, keys[:25], mws[:25], lib, keys, mws, mass_filter=5)
    np.testing.assert_array_equal(whole["ranks"], blocked["ranks"])
    np.testing.assert_array_equal(whole["top_hit"], blocked["top_hit"])
