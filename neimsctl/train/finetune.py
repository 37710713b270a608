"""Teacher finetuning on a spectral library (SPEC.md "Training", step 2).

:func:`run_finetune` trains the teacher on teacher-mode feature shards with the shared machinery
(:func:`neimsctl.train.trainer.run_training`):

- rows are split by compound (InChIKey connectivity block, ``data.split`` / ``data.split_seed``,
  8:1:1 seed 42); only the **train** part is trained on, the **val** part selects the best
  epoch, and the **test** part is never touched here;
- the loss (:class:`TeacherSpectrumLoss`) is ``loss.mse`` times the MSE in the model's output
  space (sqrt intensity: targets go through ``model.from_linear``) plus ``loss.cosine`` times
  ``1 - cosine`` of the linear prediction and target weighted ``m/z^a * I^b``;
- targets are augmented on the fly (LDS smoothing ``data.smoothing_sigma``, 13C substitution on
  ``data.isotope_prob`` of the molecules; a new draw every epoch), never the validation data;
- after every epoch :func:`make_validator` runs NEIMS library matching on the val part
  (queries = measured val spectra; library = one prediction per val compound + the measured
  train spectra) and reports ``val_mean_cosine``, ``val_recall_at_K`` (K = 1, 5, 10, 20),
  ``val_recall_at_K_mass5`` and ``val_score`` = Recall@10 with mean-cosine tie-break
  (``R@10 + cos / (n_queries + 1)``: a Recall@10 step, ``1 / n_queries``, always outweighs
  the cosine term), which ``train.best_metric`` may name;
- ``init`` starts from a pretrained (or finetuned) checkpoint (:func:`load_init`), checking the
  featurizer settings hash and the architecture first.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import numpy as np
import torch

from neimsctl.data.augment import Augment
from neimsctl.data.dataset import TeacherDataset, collate_teacher
from neimsctl.data.shards import hash_matches, shard_settings, shown
from neimsctl.errors import CheckpointError, ConfigError, InputError
from neimsctl.models import registry
from neimsctl.models.checkpoint import load_checkpoint, model_state
from neimsctl.train.config import Config, NON_NEGATIVE, POWER, check_ranges, check_widths, dataclass_from_dict
from neimsctl.evaluate.validation import (VAL_MASS_FILTER, VAL_METRICS, Reference, check_parts, dataset_split,
                                          evaluate_split, read_reference, val_metrics)
from neimsctl.train.losses import hard_loss, spectral_cosine_loss
from neimsctl.train.trainer import (TrainResult, check_resume_inputs, describe_inputs,
                                   run_training, seed_everything)

__all__ = ["TeacherLossConfig", "TeacherSpectrumLoss", "build_teacher",
           "load_init", "make_validator", "run_finetune"]

#: Model-config keys that must agree between a pretrained checkpoint and the model to finetune.
ARCH_KEYS = ("atom_dim", "bond_dim", "hidden", "num_layers", "attention_hidden", "pair_norm")


@dataclass
class TeacherLossConfig:
    """The ``loss`` section of a finetune config."""

    name: str = "teacher_spectrum"
    mse: float = 1.0                 # weight of the output-space (sqrt) MSE
    mse_mz_power: float = 0.0        # weigh MSE bin m/z by (m/z+1)^a (mean 1); NEIMS v1 uses 1
    cosine: float = 0.0              # weight of 1 - weighted cosine (0 = off)
    cosine_mz_power: float = 1.0     # cosine weighting m/z^a ...
    cosine_intensity_power: float = 0.5  # ... * I^b (the library-matching weighting)
    lambda_bond: float = 0.0         # bond-masking auxiliary: pretrain only

    def __post_init__(self) -> None:
        if self.name != "teacher_spectrum":
            raise ConfigError(f"loss.name: finetune uses 'teacher_spectrum', got {self.name!r}")
        if self.lambda_bond:
            raise ConfigError("loss.lambda_bond: the bond-masking term belongs to pretrain; "
                              "set 0 here and use --init with a pretrained checkpoint")
        check_ranges(self, {"mse": NON_NEGATIVE, "cosine": NON_NEGATIVE, "mse_mz_power": POWER,
                            "cosine_mz_power": POWER, "cosine_intensity_power": POWER}, "loss")
        if self.mse + self.cosine == 0:
            raise ConfigError("loss.mse, loss.cosine: non-negative weights, not both 0",
                              key="loss.mse")


class TeacherSpectrumLoss:
    """``loss_fn(model, batch) -> (loss, parts)`` for :func:`run_training` (see module doc).

    ``set_epoch`` forwards the epoch to the training dataset so its augmentation draw changes
    every epoch (also after a resume).
    """

    def __init__(self, config: TeacherLossConfig, train_data: Any = None) -> None:
        self.config, self.train_data = config, train_data

    def set_epoch(self, epoch: int) -> None:
        if self.train_data is not None and hasattr(self.train_data, "set_epoch"):
            self.train_data.set_epoch(epoch)

    def __call__(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, core = self.config, getattr(model, "module", model)
        pred = model(batch).float()
        target = batch.y.float()
        mse = hard_loss(pred, target, core.config.output_space, mz_power=cfg.mse_mz_power)
        loss = cfg.mse * mse
        parts = {"mse": float(mse.detach())}
        if cfg.cosine > 0:
            cos = spectral_cosine_loss(core.to_linear(pred), target, mz_power=cfg.cosine_mz_power,
                                       intensity_power=cfg.cosine_intensity_power)
            loss = loss + cfg.cosine * cos
            parts["cos_loss"] = float(cos.detach())
        return loss, parts


def teacher_config(model_cfg: dict[str, Any]) -> tuple[type, Any]:
    """The teacher class and its config from a config's ``model`` section (``name: teacher``);
    a bad value is a :class:`ConfigError` naming ``model.<key>``."""
    cls = registry.get(model_cfg.get("name", "teacher"))
    if getattr(cls, "arch", None) != "teacher":
        raise ConfigError(f"model.name: finetune trains the teacher, not {model_cfg.get('name')!r}")
    return cls, registry.config_from_section(cls, model_cfg)


def build_teacher(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """The teacher described by a config's ``model`` section (``name: teacher``)."""
    cls, config = teacher_config(model_cfg)
    return cls(config)


def _strip_prefix(state: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the key prefix (e.g. ``encoder.``) that best matches ``ours`` removed."""
    best, best_n = state, sum(k in ours for k in state)
    for prefix in {k.split(".", 1)[0] + "." for k in state if "." in k}:
        cand = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        n = sum(k in ours for k in cand)
        if n > best_n:
            best, best_n = cand, n
    return best


def load_init(model: torch.nn.Module, path: str | Path, *, featurizer_hash: str | frozenset[str] | None,
              log: TextIO | None = None) -> dict[str, Any]:
    """Initialise ``model`` from a pretrained/finetuned checkpoint's weights.

    Tensors whose names and shapes match are loaded (a ``prefix.`` wrapper such as a
    pretraining head's container is stripped); the rest keep their fresh initialisation.

    Returns
    -------
    dict
        ``{"loaded": n, "total": n_model_tensors, "missing": [names not in the checkpoint]}``.

    Raises
    ------
    CheckpointError
        Unreadable/unsafe file, a featurizer settings hash different from the shards', a
        different architecture (``ARCH_KEYS`` or tensor shapes), or no GNN weights in it.
    """
    log = sys.stderr if log is None else log
    ckpt = load_checkpoint(path)
    kind = ((ckpt.get("config") or {}).get("model") or {}).get("name")
    if kind not in (None, "teacher"):         # named before its features' hash, which differs too
        raise CheckpointError(f"{path}: a {kind} checkpoint where a GNN teacher's weights are needed "
                              "(--init takes the checkpoint of neimsctl pretrain or finetune)")
    have = ckpt.get("featurizer_hash")
    if have is None:
        print(f"neimsctl: warning: {path} records no featurizer hash; cannot check it",
              file=log)
    elif featurizer_hash is not None and not hash_matches(have, featurizer_hash):
        raise CheckpointError(f"{path}: featurizer mismatch: the checkpoint was trained on features "
                              f"with settings hash {have}, these shards have {shown(featurizer_hash)}; "
                              "featurize with the same neimsctl/RDKit settings or train from scratch")
    theirs = (ckpt.get("config") or {}).get("model") or {}
    cfg = model.config.to_dict()
    diff = [f"{k}: checkpoint {theirs[k]!r} vs config {cfg[k]!r}" for k in ARCH_KEYS
            if k in theirs and theirs[k] != cfg[k]]
    if diff:
        raise CheckpointError(f"{path}: architecture mismatch ({'; '.join(diff)}); "
                              "set model.* to the pretrained sizes")
    ours = model.state_dict()
    state = _strip_prefix(model_state(ckpt), ours)
    bad = [f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}" for k, v in state.items()
           if k in ours and tuple(v.shape) != tuple(ours[k].shape)]
    if bad:
        raise CheckpointError(f"{path}: architecture mismatch, tensor shapes differ: "
                              f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}")
    use = {k: v for k, v in state.items() if k in ours}
    if not any(k.startswith("layers.") for k in use):
        raise CheckpointError(f"{path}: holds no teacher GNN weights (layers.*); not a teacher "
                              "checkpoint")
    model.load_state_dict(use, strict=False)
    missing = sorted(k for k in ours if k not in use)
    heads = sorted({k.split(".")[0] for k in missing})
    print(f"neimsctl: init: {len(use)}/{len(ours)} tensors from {path}"
          + (f" (fresh: {', '.join(heads)})" if heads else ""), file=log, flush=True)
    return {"loaded": len(use), "total": len(ours), "missing": missing}


def make_validator(dataset: TeacherDataset, *, reference: Reference, seed: int,
                   fractions: Sequence[float], batch_size: int,
                   split: str = "val") -> Callable[[torch.nn.Module], dict[str, float]]:
    """``validate(model) -> {val_*: float}`` for :func:`run_training` (library matching)."""

    def validate(model: torch.nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        return val_metrics(evaluate_split(model, dataset, split, reference=reference, seed=seed,
                                          fractions=fractions, mass_filter=VAL_MASS_FILTER,
                                          batch_size=batch_size, device=device))

    return validate


def run_finetune(cfg: Config, shards: Sequence[str | Path], out_dir: str | Path, *,
                 init: str | Path | None = None, resume: bool | str | Path | None = None,
                 log: TextIO | None = None) -> TrainResult:
    """Finetune the teacher on ``shards`` (see the module docstring); returns the run's result.

    The run's ``shards`` (name, size, SHA-256 each, in order: :func:`describe_inputs`) are kept
    in its checkpoints; a ``resume`` on other shards is refused before any is read.

    Raises
    ------
    ConfigError, FormatError, InputError, CheckpointError
        Bad config, wrong shards, an empty split part, an incompatible ``init`` checkpoint, a
        ``resume`` on other ``shards`` than the run's (other contents, another order, more or
        fewer of them).
    """
    log = sys.stderr if log is None else log
    cfg = dataclasses.replace(cfg, stage="finetune")   # its checkpoints say what they are
    d, t = cfg.data, cfg.train
    if d.val is not None:
        raise ConfigError("data.val: finetune validates on the compound-grouped split of the "
                          "training shards; leave data.val empty")
    if t.best_metric not in VAL_METRICS + ("loss",):
        raise ConfigError(f"train.best_metric: {t.best_metric!r} is not reported by finetune; "
                          f"use one of {', '.join(VAL_METRICS)}")
    loss_cfg = dataclass_from_dict(TeacherLossConfig, cfg.loss, "loss")
    _, model_config = teacher_config(cfg.model)   # checked before any data is read (built after it)
    # the run's shards, kept in its checkpoints: a resume on others is refused here, before
    # their rows (or settings) are read
    inputs = describe_inputs(shards, shards)
    if resume:
        check_resume_inputs(cfg, out_dir, resume, inputs)
    found = shard_settings(shards, ("teacher",), stage="finetune")
    fhash = found.settings_hash
    frags = (cfg.model or {}).get("fragments") is True     # the teacher reads fragment masses
    base = TeacherDataset(list(shards), in_memory=not d.lazy, fragments=frags)
    aug = Augment(lds_sigma=d.smoothing_sigma or None, isotope_fraction=d.isotope_prob, seed=t.seed)
    augmented = TeacherDataset(list(shards), in_memory=not d.lazy, fragments=frags,
                               augment=aug if (d.smoothing_sigma or d.isotope_prob) else None)
    if not len(base):
        raise InputError(f"{', '.join(map(str, shards))}: no row has a spectrum (shards featurized "
                         "from bare SMILES hold structures only); finetune trains on library "
                         "records: featurize the output of neimsctl msp2jsonl")
    check_widths(model_config, base.get_batch([0]), "teacher shards")
    if d.max_records is not None:
        base = base.subset(np.arange(min(d.max_records, len(base))))
        augmented = augmented.subset(np.arange(len(base)))
    parts = dataset_split(base, seed=d.split_seed, fractions=d.split, fold=d.fold, log=log)
    check_parts(parts, d.split, len(base), log)
    train_ds = augmented.subset(parts.train)
    print(f"neimsctl: finetune: {len(base)} spectra, train {len(parts.train)} / val "
          f"{len(parts.val)} / test {len(parts.test)} (test unused); featurizer {fhash}",
          file=log, flush=True)
    validate = make_validator(base, reference=read_reference(base, parts.train), seed=d.split_seed,
                              fractions=d.split, batch_size=max(t.batch_size, 64)) if len(parts.val) else None
    seed_everything(t.seed)
    model = build_teacher(cfg.model)
    if init is not None and not resume:
        load_init(model, init, featurizer_hash=found.accepts, log=log)
    elif init is not None:
        print("neimsctl: --resume: the run continues from its checkpoint; --init is not applied",
              file=log)
    print(f"neimsctl: teacher with {model.n_parameters():,} parameters", file=log, flush=True)
    return run_training(cfg, model, TeacherSpectrumLoss(loss_cfg, train_ds), train_ds,
                        validate=validate, out_dir=out_dir, resume=resume, log=log,
                        collate_fn=collate_teacher, featurizer_hash=fhash, inputs=inputs)
