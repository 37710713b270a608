"""Per-epoch validation of ``distill``: NEIMS library matching on the val part, expert usage.

:func:`make_validator` returns ``validate(model) -> {val_*: float}``
(:func:`neimsctl.evaluate.validation.val_metrics`): queries = measured val spectra, library = one
prediction per val compound + the measured train spectra, Recall@K with and without the +-5 Da
mass filter. For the student it also fills ``usage`` with the expert usage on the val compounds
(eval-mode routing) overall and per compound class (:mod:`neimsctl.chem.compound_class`), which
``distill`` logs (:mod:`neimsctl.train.distill_report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from neimsctl.chem.compound_class import compound_classes
from neimsctl.data.dataset import StudentDataset
from neimsctl.errors import InputError
from neimsctl.evaluate.metrics import build_library_eval, evaluate_predictions
from neimsctl.evaluate.validation import (VAL_MASS_FILTER, Reference, dataset_split,
                                          first_per_compound, val_metrics)
from neimsctl.train.distill_report import usage_table

__all__ = ["make_validator"]


def _smiles(paths: Sequence[Path], rows: np.ndarray) -> list[str]:
    from neimsctl.io.h5shard import ShardReader

    cols = []
    for p in paths:
        with ShardReader(p) as r:
            cols.append(r.column("smiles"))
    return [str(s) for s in np.concatenate(cols)[rows]]


@torch.no_grad()
def _predict(model: torch.nn.Module, ds: StudentDataset, idx: np.ndarray, batch_size: int,
             device: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Linear base-peak-1 predictions (eval mode) and, for the student, the top-k experts."""
    core = getattr(model, "module", model)
    preds, routes = [], []
    for i in range(0, len(idx), batch_size):
        b = ds.get_batch(idx[i:i + batch_size])
        x = b["x"].to(device)
        mw = torch.from_numpy(ds.mw[idx[i:i + batch_size]].astype(np.int64)).to(device)
        if getattr(core, "arch", "") == "student":
            out = core(x, mw)
            lin = core.to_linear(out.pred)
            routes.append(out.topk_idx.cpu().numpy())
            preds.append((lin / lin.amax(1, keepdim=True).clamp_min(1e-12)).cpu().numpy())
        else:
            preds.append(core.predict_spectrum(x, mw).float().cpu().numpy())
    return np.concatenate(preds), (np.concatenate(routes) if routes else None)


def make_validator(ds: StudentDataset, paths: Sequence[Path], *, seed: int,
                   fractions: Sequence[float], batch_size: int, n_experts: int = 4,
                   usage: dict | None = None) -> Callable[[torch.nn.Module], dict[str, float]]:
    """``validate(model)``: library matching on the val part (+ expert usage into ``usage``)."""
    parts = dataset_split(ds, seed=seed, fractions=fractions)
    if len(parts.val) == 0 or len(parts.train) == 0:
        raise InputError(f"the train or val part of the split is empty ({len(ds)} rows)")
    ref_y = np.concatenate([ds.get_batch(parts.train[i:i + 1024])["y"].numpy()
                            for i in range(0, len(parts.train), 1024)]).astype(np.float16)
    ref = Reference(ref_y, ds.blocks[parts.train].astype(str), ds.mw[parts.train].copy())
    meas = np.concatenate([ds.get_batch(parts.val[i:i + 1024])["y"].numpy()
                           for i in range(0, len(parts.val), 1024)])
    firsts = first_per_compound(ds, parts.val)
    classes = compound_classes(_smiles(paths, ds.rows[firsts]))

    def validate(model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        pred, routes = _predict(model, ds, firsts, batch_size, device)
        task = build_library_eval(meas, ds.blocks[parts.val].astype(str), ds.mw[parts.val], pred,
                                  ds.blocks[firsts].astype(str), ds.mw[firsts], ref.spectra,
                                  ref.keys, ref.mw)
        out = val_metrics(evaluate_predictions(task, mass_filter=VAL_MASS_FILTER))
        if routes is not None and usage is not None:
            usage.clear()
            usage.update(usage_table(routes, classes, n_experts))
        return out

    return validate
