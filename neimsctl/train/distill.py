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
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import numpy as np
import torch

from neimsctl.chem.compound_class import CLASSES, compound_classes
from neimsctl.data.augment import Augment
from neimsctl.data.dataset import StudentDataset
from neimsctl.errors import ConfigError, FormatError, InputError
from neimsctl.io.softlabel_shard import SoftLabelReader
from neimsctl.models import registry
from neimsctl.train.config import Config, dataclass_from_dict
from neimsctl.train.distill_report import collapse_flags, usage_table, write_distill_report
from neimsctl.evaluate.validation import Reference, dataset_split, first_per_compound
from neimsctl.train.losses import DistillLoss, DistillLossConfig, expert_load
from neimsctl.train.losses_v1 import NeimsV1Loss
from neimsctl.evaluate.metrics import build_library_eval, evaluate_predictions
from neimsctl.train.trainer import TrainResult, build_optimizer, run_training, seed_everything

__all__ = ["DistillData", "collate_distill", "StudentKDLoss", "V1Loss", "loss_config",
           "student_shard_hash", "make_validator", "run_distill"]

#: Spec-style names the distill configs use -> :class:`DistillLossConfig` fields.
LOSS_ALIASES = {"delta_load": "load_weight", "delta_entropy": "entropy_weight",
                "temperature_start": "t0", "temperature_end": "t1"}
VAL_METRICS = ("val_score", "val_mean_cosine",
               *(f"val_recall_at_{k}{m}" for k in (1, 5, 10, 20) for m in ("", "_mass5")))


class DistillData(torch.utils.data.Dataset):
    """Student rows (``x``, ``y``, ``mw``, ``row``, ``has_y``) plus, when given, their soft labels.

    ``soft_rows[i]`` is the soft-label row of dataset position ``i`` (all must exist). Batches
    are read whole (``__getitems__`` returns one batch dict; use :func:`collate_distill`).

    ``transfer`` adds rows without a library spectrum (a KD transfer set: molecules the teacher
    labelled, ``transfer_soft_rows`` their soft-label rows); their ``has_y`` is False, so the loss
    learns only the soft labels there. Each epoch draws ``round(transfer_fraction * n)`` of them
    (seeded by ``seed`` and the epoch); they follow the library rows in position.
    """

    def __init__(self, base: StudentDataset, soft: SoftLabelReader | None = None,
                 soft_rows: np.ndarray | None = None, *, transfer: StudentDataset | None = None,
                 transfer_soft_rows: np.ndarray | None = None, transfer_fraction: float = 1.0,
                 seed: int = 42) -> None:
        if transfer is not None and (soft is None or transfer_soft_rows is None):
            raise ConfigError("transfer rows need soft labels (they have no library spectrum)")
        if not 0.0 < transfer_fraction <= 1.0:
            raise ConfigError(f"data.transfer_fraction must be in (0, 1], got {transfer_fraction}")
        self.base, self.soft, self.soft_rows = base, soft, soft_rows
        self.transfer, self.transfer_soft_rows = transfer, transfer_soft_rows
        self.seed = seed
        n_t = len(transfer) if transfer is not None else 0
        self.n_transfer = int(round(transfer_fraction * n_t)) if n_t else 0
        self._tsel = np.arange(self.n_transfer, dtype=np.int64)
        self.set_epoch(0)

    def __len__(self) -> int:
        return len(self.base) + self.n_transfer

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)
        if self.transfer is not None:
            self.transfer.set_epoch(epoch)
            n_t = len(self.transfer)
            if self.n_transfer < n_t:
                rng = np.random.default_rng([self.seed, 7919, epoch])
                self._tsel = np.sort(rng.choice(n_t, self.n_transfer, replace=False))

    def _read(self, ds: StudentDataset, idx: np.ndarray, soft_rows: np.ndarray | None,
              has_y: bool) -> dict[str, torch.Tensor]:
        b = ds.get_batch(idx)
        out = {"x": b["x"], "y": b["y"], "row": b["row"],
               "mw": torch.from_numpy(ds._mw[b["row"].numpy()].astype(np.int64)),
               "has_y": torch.full((len(idx),), has_y, dtype=torch.bool)}
        if self.soft is not None and soft_rows is not None:
            t = self.soft.take(soft_rows[idx])
            out.update({f"t_{k}": torch.from_numpy(v) for k, v in t.items()})
        return out

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        n = len(self.base)
        lib = idx[idx < n]
        parts = [self._read(self.base, lib, self.soft_rows, True)] if len(lib) else []
        if self.transfer is not None and (idx >= n).any():
            tr = self._tsel[idx[idx >= n] - n]
            parts.append(self._read(self.transfer, tr, self.transfer_soft_rows, False))
        return collate_distill(parts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])


def collate_distill(batch: Any) -> dict[str, torch.Tensor]:
    """The batch dict read by :meth:`DistillData.__getitems__` (a list of them is concatenated)."""
    if isinstance(batch, dict):
        return batch
    return {k: torch.cat([b[k] for b in batch]) for k in batch[0]}


class StudentKDLoss:
    """``loss_fn(model, batch)`` of the student: :class:`DistillLoss` plus routing shares.

    Logged parts: the components of :meth:`DistillLoss.log_parts` and ``route_e<i>``, the
    share of this batch's routing slots that went to expert ``i`` (training routing, noisy gate).
    In training it also nudges the gate's selection bias toward equal load
    (``loss.expert_bias_rate``; :meth:`StudentModel.update_expert_bias`).
    """

    def __init__(self, loss: DistillLoss, train_data: Any = None) -> None:
        self.loss, self.train_data = loss, train_data

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_epoch(epoch)
        if self.train_data is not None:
            self.train_data.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.loss.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss.load_state_dict(state)

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        core = getattr(model, "module", model)
        out = model(batch["x"], batch["mw"])
        if model.training and self.loss.config.expert_bias_rate > 0:
            # balance the routing inference will use (clean probabilities + bias), not the
            # noisy training routing, which the noise keeps balanced anyway
            clean = torch.topk(out.gate_probs.detach() + core.gate.expert_bias,
                               core.config.top_k, dim=-1).indices
            core.update_expert_bias(clean, self.loss.config.expert_bias_rate)
        has_y = batch.get("has_y")
        res = self.loss(out, batch["y"], batch.get("t_mean"), batch.get("t_var"),
                        batch.get("t_hidden"),
                        shared=core.shared_parameters() if model.training else None,
                        target_mask=None if has_y is None or bool(has_y.all()) else has_y)
        parts = DistillLoss.log_parts(res)
        load = expert_load(out.topk_idx, core.config.n_experts).tolist()
        parts.update({f"route_e{i}": v for i, v in enumerate(load)})
        return res["total"], parts


class V1Loss:
    """``loss_fn(model, batch)`` of NEIMS v1: m/z-weighted MSE in sqrt(I * 999) space."""

    def __init__(self, model_config: Any, train_data: Any = None) -> None:
        self.loss, self.train_data = NeimsV1Loss(model_config), train_data

    def set_epoch(self, epoch: int) -> None:
        if self.train_data is not None:
            self.train_data.set_epoch(epoch)

    def __call__(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        pred = model(batch["x"], batch["mw"])
        loss = self.loss.to(pred.device)(pred.float(), batch["y"].float())
        return loss, {"mse_v1": float(loss.detach())}


def loss_config(section: dict[str, Any], epochs: int) -> DistillLossConfig:
    """:class:`DistillLossConfig` from a config's ``loss`` section (spec-style aliases allowed;
    ``epochs`` of the temperature schedule defaults to ``train.epochs``)."""
    data = dict(section or {})
    name = data.pop("name", "distill")
    if name != "distill":
        raise ConfigError(f"loss.name: the student uses 'distill', got {name!r}")
    for old, new in LOSS_ALIASES.items():
        if old in data:
            if new in data:
                raise ConfigError(f"loss.{old} and loss.{new} are the same setting; give one")
            data[new] = data.pop(old)
    data.setdefault("epochs", epochs)
    return dataclass_from_dict(DistillLossConfig, data, "loss")


def student_shard_hash(paths: Sequence[str | Path]) -> tuple[str, str]:
    """``(mode, settings hash)`` common to student- or v1-mode shards (FormatError otherwise)."""
    from neimsctl.io.h5shard import ShardReader

    found = {}
    for p in paths:
        with ShardReader(p) as r:
            if r.mode not in ("student", "v1"):
                raise FormatError(f"shard mode is {r.mode!r}; distill needs `neimsctl featurize "
                                  "--mode student` (or `--mode v1`) shards", file=str(p))
            found[str(p)] = (r.mode, r.settings_hash)
    if len(set(found.values())) > 1:
        raise FormatError(f"shards differ in mode or featurizer settings: {found}")
    return next(iter(found.values()))


class StudentOnV1Dataset(StudentDataset):
    """The student's 6144-d input read from mode-``v1`` shards (they hold ``ecfp`` + ``counts``)."""

    mode = "v1"


def make_dataset(shards: Sequence[Path], mode: str, arch: str, **kwargs: Any) -> StudentDataset:
    """The dataset that feeds ``arch`` from ``mode`` shards.

    NEIMS v1 on ``v1`` shards reads the raw 4096 Morgan counts (the published input); on
    ``student`` shards it reads the 6144 student vector (documented deviation). The student
    always reads its 6144 vector.
    """
    if arch == "neims-v1" and mode == "v1":
        from neimsctl.data.dataset import V1Dataset

        return V1Dataset(list(shards), x_scale="raw", **kwargs)
    cls = StudentOnV1Dataset if mode == "v1" else StudentDataset
    return cls(list(shards), **kwargs)


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
        m = evaluate_predictions(task, mass_filter=5.0)
        out = {"val_mean_cosine": m["mean_cosine"]}
        out.update({"val_recall_at_" + k[len("recall@"):]: v for k, v in m.items()
                    if k.startswith("recall@")})
        out["val_score"] = m["recall@10"] + m["mean_cosine"] / (m["n_queries"] + 1)
        if routes is not None and usage is not None:
            usage.clear()
            usage.update(usage_table(routes, classes, n_experts))
        return out

    return validate


def _soft_rows(soft: SoftLabelReader, ds: StudentDataset) -> np.ndarray:
    rows = soft.row_of(ds.ids)
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        raise InputError(f"{soft.path}: no soft labels for {len(missing)} of {len(ds)} training "
                         f"rows (e.g. id {ds.ids[missing[0]].decode()!r}); run neimsctl softlabel "
                         "on the teacher features of the same records")
    return rows


def transfer_rows(paths: Sequence[Path], library: StudentDataset, *, in_memory: bool = False,
                  log: TextIO | None = None) -> StudentDataset:
    """The transfer set: rows of ``paths`` (spectra or not) whose compound is not in ``library``.

    Every compound of the library, whatever its part of the split, is left out by InChIKey
    connectivity block, so a val or test compound never comes back as a soft-labelled row.
    """
    ds = StudentDataset(list(paths), in_memory=in_memory, require_spectrum=False)
    blank = np.flatnonzero(ds.blocks == b"")
    if len(blank):
        raise InputError(f"{paths[0]}: {len(blank)} transfer rows have no InChIKey (e.g. id "
                         f"{ds.ids[blank[0]].decode()!r}), so library compounds cannot "
                         "be left out; featurize the transfer set without --no-inchikey")
    keep = np.flatnonzero(~np.isin(ds.blocks, library.blocks))
    if log is not None:
        print(f"neimsctl: distill: transfer set: {len(keep)} of {len(ds)} rows "
              f"({len(ds) - len(keep)} are library compounds, left out)", file=log, flush=True)
    if len(keep) == 0:
        raise InputError(f"{paths[0]}: no transfer rows left (all are library compounds)")
    return ds.subset(keep)


def run_distill(cfg: Config, shards: Sequence[str | Path], out_dir: str | Path, *,
                soft_labels: str | Path | None = None, resume: bool | str | Path | None = None,
                log: TextIO | None = None) -> TrainResult:
    """Train the student (KD from ``soft_labels``, or hard labels only) or NEIMS v1.

    ``data.transfer`` (student shards of molecules without spectra, soft-labelled in the same
    ``soft_labels`` file) adds KD-only rows to the train part (:class:`DistillData`).

    Raises
    ------
    ConfigError, FormatError, InputError, CheckpointError
        Bad config, wrong shards, missing soft labels, an empty split part, a bad resume.
    """
    log = sys.stderr if log is None else log
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
    if is_v1 and soft_labels is not None:
        raise ConfigError("neims-v1 is the no-KD baseline: it takes no soft labels")
    tpaths = [Path(p) for p in d.transfer]
    if tpaths and soft_labels is None:
        raise ConfigError("data.transfer: transfer rows have no spectra; they need --soft-labels")
    if tpaths and is_v1:
        raise ConfigError("data.transfer: neims-v1 is trained without KD")
    smode, fhash = student_shard_hash([*shards, *tpaths])
    base = make_dataset(shards, smode, cls.arch, in_memory=not d.lazy)
    aug = Augment(lds_sigma=d.smoothing_sigma or None, isotope_fraction=d.isotope_prob, seed=t.seed)
    train_base = make_dataset(shards, smode, cls.arch, in_memory=not d.lazy,
                              augment=aug if (d.smoothing_sigma or d.isotope_prob) else None)
    if d.max_records is not None:
        base = base.subset(np.arange(min(d.max_records, len(base))))
        train_base = train_base.subset(np.arange(len(base)))
    parts = dataset_split(base, seed=d.split_seed, fractions=d.split)
    train_view = train_base.subset(parts.train)
    soft = SoftLabelReader(soft_labels) if soft_labels is not None else None
    transfer = transfer_rows(tpaths, base, in_memory=not d.lazy, log=log) if tpaths else None
    train_ds = DistillData(train_view, soft, _soft_rows(soft, train_view) if soft else None,
                           transfer=transfer, seed=t.seed, transfer_fraction=d.transfer_fraction,
                           transfer_soft_rows=(_soft_rows(soft, transfer)
                                               if transfer is not None else None))
    mode = "neims-v1" if is_v1 else ("student + KD" if soft else "student, no KD")
    print(f"neimsctl: distill ({mode}, {smode} shards): {len(base)} spectra, train "
          f"{len(parts.train)} / val {len(parts.val)} / test {len(parts.test)} (test unused); "
          f"featurizer {fhash}", file=log, flush=True)
    seed_everything(t.seed)
    width = int(base.get_batch([0])["x"].shape[1])
    model_cfg = {k: v for k, v in cfg.model.items() if k != "name"}
    if is_v1:
        model_cfg.setdefault("input_dim", width)   # 4096 Morgan counts, or 6144 student vector
    if model_cfg.get("input_dim", width) != width:
        raise ConfigError(f"model.input_dim is {model_cfg['input_dim']} but the {smode} shards give "
                          f"{width}-d inputs; set model.input_dim={width}")
    model = cls(cls.config_class.from_dict(model_cfg))
    if is_v1:
        print(f"neimsctl: distill: neims-v1 input: {width}-d "
              + ("raw Morgan counts (as published)" if width == 4096 and smode == "v1" else
                 "student vector (ECFP4 bits + log1p atom-pair counts; featurize --mode v1 for "
                 "the published Morgan-count input)"), file=log)
    usage: dict = {}
    n_exp = 0 if is_v1 else model.config.n_experts
    validate = make_validator(base, shards, seed=d.split_seed, fractions=d.split,
                              batch_size=max(t.batch_size, 64), n_experts=max(n_exp, 1),
                              usage=None if is_v1 else usage)
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
                          featurizer_hash=fhash, report=False, **kwargs)
    write_distill_report(Path(out_dir), mode=mode, n_steps=result.step)
    return result


def _usage_logger(out_dir: Path, usage: dict, top_k: int, log: TextIO) -> Callable[[int, dict], None]:
    """on_epoch_end: append a ``kind=experts`` record; print usage and collapse warnings."""
    import orjson

    def on_epoch_end(epoch: int, summary: dict) -> None:
        if not usage:
            return
        flags = collapse_flags(usage["overall"], top_k)
        rec = {"kind": "experts", "epoch": epoch + 1, "classes": list(CLASSES), **usage,
               "collapse": flags}
        with open(out_dir / "train_log.jsonl", "ab") as fh:
            fh.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
        shares = " ".join(f"{v:.2f}" for v in usage["overall"])
        print(f"neimsctl: epoch {epoch + 1} expert usage (val, share of routing slots) {shares}",
              file=log, flush=True)
        for f in flags:
            print(f"neimsctl: warning: expert collapse: {f}", file=log, flush=True)

    return on_epoch_end
