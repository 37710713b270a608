"""Student distillation and the NEIMS v1 baseline (SPEC.md "Training", step 4).

:func:`run_distill` trains, on the shared machinery (:func:`neimsctl.train.trainer.run_training`:
configs, exact resume, AMP on CUDA, DDP, logs, report), one of

- the **MoE student** with the full KD objective (:class:`neimsctl.train.losses.DistillLoss`:
  L_hard + confidence-weighted tempered L_soft + L_feature + L_load + L_entropy; fixed
  0.3/0.5/0.2 during ``loss.warmup_epochs``, then GradNorm; temperature cosine 4 -> 1 over
  ``train.epochs``) from teacher soft labels (``neimsctl softlabel``, aligned by ``id``);
- the same student **without KD** (``soft_labels=None``: L_hard + the gate terms);
- the **NEIMS v1** baseline (``model.name: neims-v1``, its own loss
  :class:`neimsctl.train.losses_v1.NeimsV1Loss`); its input is the published 4096 raw Morgan
  counts on ``featurize --mode v1`` shards, or the 6144 student vector on ``--mode student``
  shards (a documented deviation; ``model.input_dim`` follows the shards when not set).

Student- and v1-mode shards both work for every model (v1 shards hold the student's ``ecfp``
and ``counts`` too), so one shard serves the student, the no-KD student and NEIMS v1.

Rows are split by compound (InChIKey connectivity block, ``data.split``/``data.split_seed``,
8:1:1 seed 42): only **train** rows are trained on, **val** selects the best epoch
(``val_recall_at_10``), **test** is never read. Validation after every epoch is NEIMS library
matching (:mod:`neimsctl.evaluate.metrics`; queries = measured val spectra, library = one
prediction per val compound + measured train spectra), and, for the student, the expert usage
on the val compounds (eval-mode routing) overall and per compound class
(:mod:`neimsctl.chem.compound_class`), written as ``kind=experts`` records into
``train_log.jsonl`` and as a table into ``report.md`` (:mod:`neimsctl.train.distill_report`).

The pieces, one module each: the training data and soft-label alignment
(:mod:`neimsctl.train.distill_data`), the loss functions (:mod:`neimsctl.train.distill_loss`),
the per-epoch validation (:mod:`neimsctl.train.distill_validation`), the transfer set
(:mod:`neimsctl.train.distill_transfer`) and the report (:mod:`neimsctl.train.distill_report`);
this module is the run loop.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import numpy as np
import torch

from neimsctl.chem.compound_class import CLASSES
from neimsctl.data.augment import Augment
from neimsctl.data.shards import shard_settings
from neimsctl.errors import ConfigError
from neimsctl.evaluate.validation import VAL_METRICS, check_parts, dataset_split
from neimsctl.io.featblock import MORGAN_COUNT_BITS
from neimsctl.io.softlabel_shard import SoftLabelReader
from neimsctl.models import registry
from neimsctl.train.config import Config, check_widths
from neimsctl.train.distill_data import DistillData, collate_distill, make_dataset, soft_label_rows
from neimsctl.train.distill_loss import StudentKDLoss, V1Loss, loss_config
from neimsctl.train.distill_report import collapse_flags, write_distill_report
from neimsctl.train.distill_transfer import transfer_rows
from neimsctl.train.distill_validation import make_validator
from neimsctl.train.losses import DistillLoss
from neimsctl.train.trainer import (TrainResult, build_optimizer, check_resume_inputs,
                                    describe_inputs, full_console_default, run_training,
                                    seed_everything)

__all__ = ["distill_inputs", "resume_inputs", "run_distill"]


def distill_inputs(shards: Sequence[str | Path], *, soft_labels: str | Path | None = None,
                   transfer: Sequence[str | Path] = (), teacher: str | Path | None = None,
                   teacher_feats: Sequence[str | Path] = ()) -> list[dict[str, Any]]:
    """What a distill run trains on (:func:`neimsctl.train.trainer.describe_inputs`: name, size,
    SHA-256 and role of each file), in order: the student or v1 ``shards``, the ``transfer``
    shards, the ``soft_labels`` file, or instead of it the ``teacher`` checkpoint and the
    ``teacher_feats`` shards its soft labels are computed from (``distill --teacher``: the run
    keeps them in its directory). Roles are the command's options (``--transfer``, ...)."""
    files = ([(p, None) for p in shards] + [(p, "--transfer") for p in transfer]
             + ([(soft_labels, "--soft-labels")] if soft_labels is not None else [])
             + ([(teacher, "--teacher")] if teacher is not None else [])
             + [(p, "--teacher-feats") for p in teacher_feats])
    return describe_inputs([f for f, _ in files], [f for f, _ in files], [r for _, r in files])


def resume_inputs(cfg: Config, out_dir: str | Path, resume: bool | str | Path | None,
                  shards: Sequence[str | Path], **files: Any) -> list[dict[str, Any]]:
    """:func:`distill_inputs` of ``shards`` and ``files`` (its keywords), checked against the
    checkpoint a ``resume`` of the run in ``out_dir`` goes on from, before any is read.

    Raises
    ------
    InputError
        The run was trained on other files (:func:`neimsctl.train.trainer.check_inputs`).
    """
    inputs = distill_inputs(shards, **files)
    if resume:
        check_resume_inputs(cfg, out_dir, resume, inputs)
    return inputs


def run_distill(cfg: Config, shards: Sequence[str | Path], out_dir: str | Path, *,
                soft_labels: str | Path | None = None, resume: bool | str | Path | None = None,
                log: TextIO | None = None,
                inputs: list[dict[str, Any]] | None = None) -> TrainResult:
    """Train the student (KD from ``soft_labels``, or hard labels only) or NEIMS v1.

    ``data.transfer`` (student shards of molecules without spectra, soft-labelled in the same
    ``soft_labels`` file) adds KD-only rows to the train part (:class:`DistillData`).

    The run's input files (``inputs``; by default :func:`distill_inputs` of ``shards``,
    ``data.transfer`` and ``soft_labels``, checked here against a ``resume``'s checkpoint before
    any is read; a caller that gives them has checked them: :func:`resume_inputs`) are kept in
    its checkpoints.

    Raises
    ------
    ConfigError, FormatError, InputError, CheckpointError
        Bad config, wrong shards, missing soft labels, an empty split part, a bad resume, a
        ``resume`` on other input files than the run's (other contents, another order, more or
        fewer of them).
    """
    log = sys.stderr if log is None else log
    cfg = dataclasses.replace(cfg, stage="distill")    # its checkpoints say what they are
    d, t = cfg.data, cfg.train
    shards = [Path(p) for p in shards]
    name = cfg.model.get("name", "student")
    cls = registry.get(name)
    if getattr(cls, "arch", None) not in ("student", "neims-v1"):
        raise ConfigError(f"model.name: distill trains 'student' or 'neims-v1', not {name!r}")
    if t.best_metric not in VAL_METRICS:
        raise ConfigError(f"train.best_metric: {t.best_metric!r} is not reported by distill; use "
                          f"one of {', '.join(VAL_METRICS)}")
    is_v1 = cls.arch == "neims-v1"
    # the model and loss sections checked before any data is read (they are built after it)
    registry.config_from_section(cls, {"input_dim": MORGAN_COUNT_BITS, **_model_section(cfg)}
                                 if is_v1 else _model_section(cfg))
    if not is_v1:
        loss_config(cfg.loss, t.epochs)
    if is_v1 and soft_labels is not None:
        raise ConfigError("neims-v1 is the no-KD baseline: it takes no soft labels")
    tpaths = [Path(p) for p in d.transfer]
    if tpaths and soft_labels is None:
        raise ConfigError("data.transfer: transfer rows have no spectra; they need --soft-labels")
    if tpaths and is_v1:
        raise ConfigError("data.transfer: neims-v1 is trained without KD")
    # the run's inputs, kept in its checkpoints: a resume on others is refused here, before
    # their rows (or settings) are read
    if inputs is None:
        inputs = resume_inputs(cfg, out_dir, resume, shards, soft_labels=soft_labels,
                               transfer=tpaths)
    smode, fhash, _ = shard_settings([*shards, *tpaths], ("student", "v1"), stage="distill")
    frags = {"fragments": True} if not is_v1 and cfg.model.get("fragments") is True else {}
    if frags and smode == "v1":
        raise ConfigError("model.fragments: v1 shards carry no fragment masses; give student-mode "
                          "shards (`neimsctl featurize --mode student`)")
    base = make_dataset(shards, smode, cls.arch, in_memory=not d.lazy, **frags)
    aug = Augment(lds_sigma=d.smoothing_sigma or None, isotope_fraction=d.isotope_prob, seed=t.seed)
    train_base = make_dataset(shards, smode, cls.arch, in_memory=not d.lazy, **frags,
                              augment=aug if (d.smoothing_sigma or d.isotope_prob) else None)
    if d.max_records is not None:
        base = base.subset(np.arange(min(d.max_records, len(base))))
        train_base = train_base.subset(np.arange(len(base)))
    parts = dataset_split(base, seed=d.split_seed, fractions=d.split, fold=d.fold, log=log)
    check_parts(parts, d.split, len(base), log)
    train_view = train_base.subset(parts.train)
    soft = SoftLabelReader(soft_labels) if soft_labels is not None else None
    transfer = transfer_rows(tpaths, base, in_memory=not d.lazy, log=log) if tpaths else None
    train_ds = DistillData(train_view, soft, soft_label_rows(soft, train_view) if soft else None,
                           transfer=transfer, seed=t.seed, transfer_fraction=d.transfer_fraction,
                           transfer_soft_rows=(soft_label_rows(soft, transfer)
                                               if transfer is not None else None))
    mode = "neims-v1" if is_v1 else ("student + KD" if soft else "student, no KD")
    print(f"neimsctl: distill ({mode}, {smode} shards): {len(base)} spectra, train "
          f"{len(parts.train)} / val {len(parts.val)} / test {len(parts.test)} (test unused); "
          f"featurizer {fhash}", file=log, flush=True)
    seed_everything(t.seed)
    probe = base.get_batch([0])
    width = int(probe["x"].shape[1])
    model_cfg = _model_section(cfg)
    if is_v1:
        model_cfg.setdefault("input_dim", width)   # 4096 Morgan counts, or 6144 student vector
    model_config = registry.config_from_section(cls, model_cfg)
    # a student with fragments reads 7146 (its config says so); n_bins: a shape traceback in
    # the first step's loss
    check_widths(model_config, probe, f"{smode} shards", keys=("input_dim", "n_bins"))
    model = cls(model_config)
    if is_v1:
        print(f"neimsctl: distill: neims-v1 input: {width}-d "
              + ("raw Morgan counts (as published)" if width == MORGAN_COUNT_BITS and smode == "v1" else
                 "student vector (ECFP4 bits + log1p atom-pair counts; featurize --mode v1 for "
                 "the published Morgan-count input)"), file=log)
    usage: dict = {}
    n_exp = 0 if is_v1 else model.config.n_experts
    validate = make_validator(base, shards, seed=d.split_seed, fractions=d.split,
                              batch_size=max(t.batch_size, 64), n_experts=max(n_exp, 1),
                              usage=None if is_v1 else usage) if len(parts.val) else None
    kwargs: dict[str, Any] = {}
    if is_v1:
        loss_fn: Any = V1Loss(model.config, train_ds)
    else:
        lc = loss_config(cfg.loss, t.epochs)
        t_dim = int(soft.attrs["hidden_dim"]) if soft else model.config.hidden_dim
        if soft and lc.gamma > 0 and t_dim != model.config.hidden_dim and not lc.feature_proj:
            print(f"neimsctl: distill: teacher representation {t_dim} != student hidden "
                  f"{model.config.hidden_dim}: learning a projection (loss.feature_proj)", file=log)
            lc.feature_proj = True
        dl = DistillLoss(lc, space=model.config.output_space,
                         student_dim=model.config.hidden_dim, teacher_dim=t_dim)
        loss_fn = StudentKDLoss(dl, train_ds)
        if dl.proj is not None:
            def optimizer_factory(c: Config, m: torch.nn.Module) -> torch.optim.Optimizer:
                dl.to(next(m.parameters()).device)
                opt = build_optimizer(c, m)
                opt.add_param_group({"params": list(dl.proj.parameters())})
                return opt
            kwargs["optimizer_factory"] = optimizer_factory
        kwargs["on_epoch_end"] = _usage_logger(Path(out_dir), usage, model.config.top_k, log)
    print(f"neimsctl: {name} with {sum(p.numel() for p in model.parameters()):,} parameters",
          file=log, flush=True)
    result = run_training(cfg, model, loss_fn, train_ds, validate=validate, out_dir=out_dir,
                          resume=resume, log=log, collate_fn=collate_distill,
                          featurizer_hash=fhash, report=False, inputs=inputs, **kwargs)
    write_distill_report(Path(out_dir), mode=mode, n_steps=result.step)
    return result


def _model_section(cfg: Config) -> dict[str, Any]:
    """The config's ``model`` section without its ``name`` (the model class's own keys)."""
    return {k: v for k, v in cfg.model.items() if k != "name"}


def _usage_logger(out_dir: Path, usage: dict, top_k: int, log: TextIO,
                  full: bool | None = None) -> Callable[[int, dict], None]:
    """on_epoch_end: append a ``kind=experts`` record; print collapse warnings when they first
    appear (again when they change), and with ``full`` (``-v``) the usage and every warning of
    every epoch."""
    import orjson

    full = full_console_default() if full is None else full
    warned: list[str] = []

    def on_epoch_end(epoch: int, summary: dict) -> None:
        if not usage:
            return
        flags = collapse_flags(usage["overall"], top_k)
        rec = {"kind": "experts", "epoch": epoch + 1, "classes": list(CLASSES), **usage,
               "collapse": flags}
        with open(out_dir / "train_log.jsonl", "ab") as fh:
            fh.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
        if full:
            shares = " ".join(f"{v:.2f}" for v in usage["overall"])
            print(f"neimsctl: epoch {epoch + 1} expert usage (val, share of routing slots) "
                  f"{shares}", file=log, flush=True)
        if full or flags != warned:
            for f in flags:
                print(f"neimsctl: warning: epoch {epoch + 1}: expert collapse: {f}", file=log,
                      flush=True)
        warned[:] = flags

    return on_epoch_end
