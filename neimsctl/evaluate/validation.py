"""Evaluate a teacher on one part of the compound-grouped split (NEIMS library matching).

:func:`evaluate_split` is what ``finetune`` runs on the validation part after every epoch and
what ``eval`` runs once on the test part of a finished model:

- the dataset (teacher-mode shards, **no** augmentation) is split by compound with
  :func:`neimsctl.data.split.split_indices` (8:1:1, seed 42 by default);
- queries = every measured spectrum of the chosen part (``val`` or ``test``);
- library = one predicted spectrum per compound of that part (the first row of each
  connectivity block) + every measured spectrum of the ``train`` part;
- Recall@1/5/10/20 with and without a +-5 Da nominal-mass filter (weighted cosine
  ``m/z^1 * I^0.5``) and the plain mean cosine, all from :mod:`neimsctl.evaluate.metrics`.

The measured spectra of the training part are read once into a :class:`Reference` (float16,
``N x 501``) that can be reused across epochs.

:func:`val_metrics` turns those metrics into what the validators of ``finetune`` and ``distill``
report after every epoch (:data:`VAL_METRICS`, the names ``train.best_metric`` may use), including
``val_score`` (:func:`val_score`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TextIO

import numpy as np
import torch

from neimsctl.data.dataset import TeacherDataset
from neimsctl.data.split import (DEFAULT_FRACTIONS, SPLIT_NAMES, SPLIT_SEED, Split, parse_fold,
                                 split_indices, train_positions)
from neimsctl.errors import ConfigError, InputError
from neimsctl.evaluate.metrics import DEFAULT_KS, build_library_eval, evaluate_predictions
from neimsctl.io.spectrum import N_BINS

__all__ = ["Reference", "check_parts", "dataset_split", "first_per_compound", "read_reference",
           "predict_spectra", "evaluate_split", "VAL_MASS_FILTER", "VAL_METRICS", "val_score",
           "val_metrics"]

#: Half-width (Da) of the nominal-mass filter of the per-epoch validation (``..._mass5``).
VAL_MASS_FILTER = 5.0
#: What the per-epoch validators report (:func:`val_metrics`): the names ``train.best_metric``
#: may use in finetune and distill.
VAL_METRICS = ("val_score", "val_mean_cosine",
               *(f"val_recall_at_{k}{m}" for k in DEFAULT_KS
                 for m in ("", f"_mass{VAL_MASS_FILTER:g}")))


@dataclass(frozen=True)
class Reference:
    """Measured spectra of the reference (training) compounds: ``spectra (N, 501)`` float16,
    ``keys`` connectivity blocks and nominal ``mw`` (N,)."""

    spectra: np.ndarray
    keys: np.ndarray
    mw: np.ndarray


def dataset_split(dataset: TeacherDataset, *, seed: int = SPLIT_SEED,
                  fractions: Sequence[float] = DEFAULT_FRACTIONS, fold: str | None = None,
                  log: TextIO | None = None) -> Split:
    """Compound-grouped train/val/test indices of ``dataset`` (positions, not shard rows).

    ``fold`` (``data.fold``, ``"k/K"``): K-fold cross-fitting, the training compounds of fold k
    are left out of ``train`` (:func:`neimsctl.data.split.train_positions`); said on ``log``.
    """
    parts = split_indices(dataset.blocks, ids=dataset.ids, seed=seed, fractions=tuple(fractions))
    k_of = parse_fold(fold)
    if k_of is None:
        return parts
    parts = parts._replace(train=train_positions(parts.train, dataset.blocks, k_of, seed=seed,
                                                 ids=dataset.ids))
    if log is not None:
        print(f"neimsctl: data.fold {k_of[0]}/{k_of[1]}: {len(parts.train)} training spectra "
              f"(the compounds of fold {k_of[0]} left out)", file=log, flush=True)
    return parts


def check_parts(parts: Split, fractions: Sequence[float], n: int, log: TextIO) -> None:
    """A training stage's split: the train part must hold spectra, and so must the val part
    unless ``data.split`` gives it no share (a final fit on train + val after the recipe was
    chosen on val: nothing to select an epoch on, the last one is kept; said on ``log``).

    Raises
    ------
    ConfigError
        An empty train part, or a val part left empty by too few compounds.
    """
    if len(parts.train) and (len(parts.val) or float(fractions[1]) == 0.0):
        if not len(parts.val):
            print(f"neimsctl: data.split {list(fractions)}: no val part, no epoch selection: "
                  "the last epoch is kept (checkpoints/best.pt = last.pt)", file=log, flush=True)
        return
    raise ConfigError(f"data.split: train or val part is empty ({n} spectra); "
                      "more data or other fractions needed")


def first_per_compound(dataset: TeacherDataset, indices: np.ndarray) -> np.ndarray:
    """The first of ``indices`` (ascending) for each connectivity block among them."""
    indices = np.asarray(indices, dtype=np.int64)
    _, first = np.unique(dataset.blocks[indices], return_index=True)
    return indices[np.sort(first)]


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def read_reference(dataset: TeacherDataset, indices: np.ndarray, *,
                   batch_size: int = 1024) -> Reference:
    """Measured spectra, blocks and MWs of ``indices`` (read once; the dataset's augmentation
    must be off, so the spectra are the library's own)."""
    if dataset.augment is not None:
        raise ConfigError("reference spectra must come from a dataset without augmentation")
    indices = np.asarray(indices, dtype=np.int64)
    out = np.zeros((len(indices), N_BINS), dtype=np.float16)
    for sl in _batches(len(indices), batch_size):
        out[sl] = dataset.get_batch(indices[sl]).y.numpy().astype(np.float16)
    return Reference(out, dataset.blocks[indices].astype(str), dataset.mw[indices].copy())


@torch.no_grad()
def predict_spectra(model: torch.nn.Module, dataset: TeacherDataset, indices: np.ndarray, *,
                    batch_size: int = 256, device: Any = "cpu", mc_samples: int = 0) -> np.ndarray:
    """Linear, base-peak-1 predicted spectra ``(len(indices), 501)`` float32.

    ``mc_samples = 0`` predicts deterministically (eval mode: no dropout, no DropEdge);
    ``mc_samples >= 2`` returns the MC-dropout mean (:meth:`TeacherModel.mc_predict`).
    The model's train/eval state is left as it was.
    """
    indices = np.asarray(indices, dtype=np.int64)
    model = getattr(model, "module", model)
    out = np.zeros((len(indices), N_BINS), dtype=np.float32)
    for sl in _batches(len(indices), batch_size):
        batch = dataset.get_batch(indices[sl]).to(device)
        if mc_samples >= 2:
            pred = model.mc_predict(batch, n_samples=mc_samples)[0]
        else:
            pred = model.predict_spectrum(batch)
        out[sl] = pred.float().cpu().numpy()
    return out


def evaluate_split(model: torch.nn.Module, dataset: TeacherDataset, split: str = "test", *,
                   reference: Reference | None = None, seed: int = SPLIT_SEED,
                   fractions: Sequence[float] = DEFAULT_FRACTIONS, ks: Sequence[int] = DEFAULT_KS,
                   mass_filter: float | None = 5.0, batch_size: int = 256, device: Any = "cpu",
                   mc_samples: int = 0) -> dict[str, float]:
    """Library-matching metrics of ``model`` on one part of the compound-grouped split.

    Parameters
    ----------
    model
        A teacher (``predict_spectrum``/``mc_predict``), already on ``device``.
    dataset
        All rows with spectra, as a :class:`TeacherDataset` without augmentation.
    split
        ``"val"`` or ``"test"`` (``"train"`` is refused: it is the library).
    reference
        Pre-read training spectra (:func:`read_reference`); read here when ``None``.
    seed, fractions
        The split (must be the one the model was trained with: seed 42, 8:1:1).
    ks, mass_filter
        Recall@K cut-offs and the half-width (Da) of the nominal-mass filter (``None``: off).
    batch_size, device, mc_samples
        Prediction settings (see :func:`predict_spectra`).

    Returns
    -------
    dict
        ``recall@K`` and ``recall@K_mass5`` per K, ``mean_cosine``, ``mae``, ``rmse``,
        ``n_queries``, ``n_compounds``, ``n_library``.

    Raises
    ------
    ConfigError
        Unknown split name, or an augmented dataset.
    InputError
        The chosen part or the training part is empty.
    """
    if split not in SPLIT_NAMES[1:]:
        raise ConfigError(f"split must be 'val' or 'test', got {split!r}")
    if dataset.augment is not None:
        raise ConfigError("evaluate_split needs a dataset without augmentation")
    parts = dataset_split(dataset, seed=seed, fractions=fractions)
    query = getattr(parts, split)
    if len(query) == 0:
        raise InputError(f"the {split} part of the split is empty ({len(dataset)} rows)")
    if reference is None:
        if len(parts.train) == 0:
            raise InputError("the train part of the split is empty: no reference library")
        reference = read_reference(dataset, parts.train)
    firsts = first_per_compound(dataset, query)
    pred = predict_spectra(model, dataset, firsts, batch_size=batch_size, device=device,
                           mc_samples=mc_samples)
    measured = read_reference(dataset, query)
    task = build_library_eval(measured.spectra.astype(np.float32), measured.keys, measured.mw,
                              pred, dataset.blocks[firsts].astype(str), dataset.mw[firsts],
                              reference.spectra, reference.keys, reference.mw)
    return evaluate_predictions(task, ks=ks, mass_filter=mass_filter)


def val_score(metrics: dict[str, Any]) -> float:
    """Recall@10 with a mean-cosine tie-break: ``R@10 + cos / (n_queries + 1)``.

    A Recall@10 step (``1 / n_queries``) always outweighs the cosine term (< ``1 / (n + 1)``),
    so the score ranks by Recall@10 first and by mean cosine among equal recalls.

    Examples
    --------
    >>> val_score({"recall@10": 0.5, "mean_cosine": 0.9, "n_queries": 9})
    0.59
    """
    return metrics["recall@10"] + metrics["mean_cosine"] / (metrics["n_queries"] + 1)


def val_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The per-epoch validation metrics (:data:`VAL_METRICS`) from :func:`evaluate_split` /
    :func:`neimsctl.evaluate.metrics.evaluate_predictions` output: ``val_mean_cosine``,
    ``val_recall_at_K[_mass5]`` for each ``recall@K[_mass5]``, and ``val_score``."""
    out = {"val_mean_cosine": metrics["mean_cosine"]}
    out.update({"val_recall_at_" + k[len("recall@"):]: v for k, v in metrics.items()
                if k.startswith("recall@")})
    out["val_score"] = val_score(metrics)
    return out
