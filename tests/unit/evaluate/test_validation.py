"""evaluate_split: the NEIMS library-matching protocol on one part of the compound split.

Real shards (the bundled MassBank sample, teacher mode). Reference models: an oracle that
"predicts" each compound's measured spectrum, and a constant one that predicts the same spectrum
for everything; the metrics must tell them apart and follow the protocol's definitions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neimsctl.data.augment import Augment
from neimsctl.data.dataset import TeacherDataset
from neimsctl.data.membench import build_sample_shard
from neimsctl.errors import ConfigError
from neimsctl.evaluate.validation import (VAL_MASS_FILTER, VAL_METRICS, dataset_split, evaluate_split,
                                          first_per_compound, predict_spectra, read_reference,
                                          val_metrics, val_score)
from neimsctl.train.finetune import build_teacher
from neimsctl.evaluate.metrics import build_library_eval, library_match


class Oracle(torch.nn.Module):
    """Predicts the measured spectrum of the row itself (a perfect model for single spectra)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def predict_spectrum(self, batch):
        return batch.y.float()


class Constant(Oracle):
    def predict_spectrum(self, batch):
        out = torch.zeros_like(batch.y)
        out[:, 43] = 1.0
        return out


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> TeacherDataset:
    return TeacherDataset(build_sample_shard(tmp_path_factory.mktemp("ev") / "t.h5", mode="teacher"))


def test_split_parts_are_compound_disjoint(ds: TeacherDataset) -> None:
    parts = dataset_split(ds)
    blocks = [set(ds.blocks[p].tolist()) for p in parts]
    assert sum(len(p) for p in parts) == len(ds)
    assert not (blocks[0] & blocks[1]) and not (blocks[0] & blocks[2]) and not (blocks[1] & blocks[2])
    firsts = first_per_compound(ds, parts.test)
    assert len(firsts) == len(blocks[2])


@pytest.mark.parametrize("split", ["val", "test"])
def test_oracle_beats_constant(ds: TeacherDataset, split: str) -> None:
    good = evaluate_split(Oracle(), ds, split)
    bad = evaluate_split(Constant(), ds, split)
    keys = {f"recall@{k}{m}" for k in (1, 5, 10, 20) for m in ("", "_mass5")}
    assert keys | {"mean_cosine", "n_queries", "n_library"} <= set(good)
    assert good["recall@1"] > 0.8 and good["mean_cosine"] > 0.9
    assert bad["recall@10"] < good["recall@10"] and bad["mean_cosine"] < good["mean_cosine"]
    for k in (1, 5, 10):
        assert good[f"recall@{k}"] <= good[f"recall@{k}_mass5"] + 1e-9
    parts = dataset_split(ds)
    n_ref = len(parts.train)
    assert good["n_queries"] == len(getattr(parts, split))
    assert good["n_library"] == n_ref + good["n_compounds"]


def test_matches_a_direct_library_match(ds: TeacherDataset) -> None:
    torch.manual_seed(0)
    model = build_teacher({"name": "teacher", "hidden": 16, "num_layers": 2, "ecfp_hidden": [32],
                           "ecfp_out": 16, "head_hidden": [32, 16]})
    got = evaluate_split(model, ds, "val", mass_filter=None)
    parts = dataset_split(ds)
    firsts = first_per_compound(ds, parts.val)
    pred = predict_spectra(model, ds, firsts)
    ref, q = read_reference(ds, parts.train), read_reference(ds, parts.val)
    task = build_library_eval(q.spectra.astype(np.float32), q.keys, q.mw, pred, ds.blocks[firsts].astype(str),
                              ds.mw[firsts], ref.spectra, ref.keys, ref.mw)
    res = library_match(task.query_spectra, task.query_keys, None, task.library_spectra,
                        task.library_keys, None)
    assert got["recall@10"] == pytest.approx(res["recall@10"])
    assert not any(k.endswith("_mass5") for k in got)


def test_mc_dropout_prediction_is_a_spectrum(ds: TeacherDataset) -> None:
    torch.manual_seed(0)
    model = build_teacher({"name": "teacher", "hidden": 16, "num_layers": 2, "ecfp_hidden": [32],
                           "ecfp_out": 16, "head_hidden": [32, 16], "dropout": 0.3})
    model.train()
    pred = predict_spectra(model, ds, np.arange(4), mc_samples=3)
    assert pred.shape == (4, 501) and np.allclose(pred.max(axis=1), 1.0)
    assert model.training


def test_refuses_train_split_and_augmented_data(ds: TeacherDataset) -> None:
    with pytest.raises(ConfigError, match="'val' or 'test'"):
        evaluate_split(Oracle(), ds, "train")
    aug = TeacherDataset(ds.paths, augment=Augment())
    with pytest.raises(ConfigError, match="without augmentation"):
        evaluate_split(Oracle(), aug, "test")


def test_val_metrics_are_what_training_may_select_on(ds: TeacherDataset) -> None:
    """finetune and distill report val_metrics(...) of the same protocol; their names are the
    VAL_METRICS that train.best_metric is checked against."""
    m = evaluate_split(Oracle(), ds, "val", mass_filter=VAL_MASS_FILTER)
    val = val_metrics(m)
    assert list(val) == ["val_mean_cosine", *(f"val_recall_at_{k}" for k in (1, 5, 10, 20)),
                         *(f"val_recall_at_{k}_mass5" for k in (1, 5, 10, 20)), "val_score"]
    assert set(val) == set(VAL_METRICS)
    assert val["val_recall_at_10_mass5"] == m["recall@10_mass5"]
    assert val["val_score"] == val_score(m)


def test_val_score_ranks_by_recall_then_by_cosine() -> None:
    n = 50
    step = 1 / n
    worse_recall_best_cosine = val_score({"recall@10": 0.5, "mean_cosine": 1.0, "n_queries": n})
    better_recall_worst_cosine = val_score({"recall@10": 0.5 + step, "mean_cosine": 0.0, "n_queries": n})
    assert better_recall_worst_cosine > worse_recall_best_cosine
    assert val_score({"recall@10": 0.5, "mean_cosine": 0.8, "n_queries": n}) > \
        val_score({"recall@10": 0.5, "mean_cosine": 0.7, "n_queries": n})
    assert val_score({"recall@10": 0.5, "mean_cosine": 0.9, "n_queries": 9}) == pytest.approx(0.59)
