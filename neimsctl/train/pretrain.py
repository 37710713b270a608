"""Teacher pretraining by bond masking on a SMILES stream (SPEC.md "Training", step 1).

:func:`run_pretrain` trains the teacher's graph encoder (atom encoder + GINE layers) with the
shared machinery (:func:`neimsctl.train.trainer.run_training`):

- data: a :class:`~neimsctl.data.smiles_stream.SmilesStream` over ``data.train`` (or the given
  sources), split ``data.split`` (90:10) by a keyed hash of the SMILES text; validation on the
  first ``data.max_val_records`` molecules of the val part (or of ``data.val``), featurized once;
- objective: ``data.mask_ratio`` (15 %) of the bonds of every molecule batch get the head's
  learned mask token; :class:`~neimsctl.nn.bond_masking.BondMaskingHead` predicts their type
  (4-way cross-entropy) and conjugated/in-ring flags (BCE, weight ``loss.flag_weight``);
- validation after every epoch: ``val_bond_acc`` (bond-type accuracy on the masked val bonds,
  the same bonds every epoch), ``val_bond_ce``, ``val_flag_bce``, ``val_loss``; ``best.pt`` by
  ``train.best_metric`` (``val_bond_acc``, max);
- optimizer: AdamW (fused where the device supports it) from ``optim``; schedule, clipping,
  precision, checkpoints, log and report as for every stage.

Checkpoint layout (``neimsctl.ckpt/1``): ``model`` is the plain ``TeacherModel.state_dict()``
(so ``finetune --init`` and ``TeacherModel.load_state_dict`` take it as is; the parts bond
masking does not train keep their initial values), ``loss_state["bond_head"]`` the head's state
dict (with ``mask_token``), ``config["model"]`` the teacher sizes, ``featurizer_hash`` the hash
default teacher shards carry (``neimsctl featurize --mode teacher``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import orjson
import torch
from torch import nn

from neimsctl.data.smiles_stream import StreamSpec, SmilesStream, collect_part, featurize_batch
from neimsctl.errors import ConfigError, InputError, OutputError
from neimsctl.io.rejects import Reject, Tally
from neimsctl.io.streams import display_name, is_dash, output_error, spool_path
from neimsctl.models import registry
from neimsctl.models.teacher import TeacherModel
from neimsctl.nn.bond_masking import BondMaskingHead, BondMaskingLoss
from neimsctl.train.config import AT_LEAST_1, Config, NON_NEGATIVE, POSITIVE, check_ranges, check_widths, dataclass_from_dict
from neimsctl.train.trainer import (TrainResult, build_optimizer, check_resume_inputs,
                                   checkpoint_dir, describe_inputs, existing_run, run_training,
                                   seed_everything)

__all__ = ["PretrainLossConfig", "BondMaskingModel", "BondMaskingObjective", "make_validator",
           "pretrain_optimizer", "teacher_featurizer_hash", "run_pretrain", "VAL_METRICS"]

VAL_METRICS = ("val_bond_acc", "val_bond_ce", "val_flag_bce", "val_loss")
TRAINED = ("atom_encoder", "layers")  # the teacher parts bond masking reaches


@dataclass
class PretrainLossConfig:
    """The ``loss`` section of a pretrain config."""
    name: str = "bond_masking"
    lambda_bond: float = 1.0          # weight of the whole bond-masking loss
    flag_weight: float = 1.0          # weight of the conjugated/in-ring BCE inside it
    head_hidden: int | None = None    # hidden width of the head's MLP (None = model.hidden)

    def __post_init__(self) -> None:
        if self.name != "bond_masking":
            raise ConfigError(f"loss.name: pretrain uses 'bond_masking', got {self.name!r}")
        check_ranges(self, {"lambda_bond": POSITIVE, "flag_weight": NON_NEGATIVE,
                            "head_hidden": AT_LEAST_1}, "loss")


class BondMaskingModel(nn.Module):
    """Teacher + bond-masking head; ``forward(batch)`` masks, encodes and scores the bonds.

    ``state_dict``/``load_state_dict`` are the teacher's own (the checkpoint's ``model`` key);
    the head's state travels in the loss state (:class:`BondMaskingObjective`). Teacher parts
    that bond masking does not reach are frozen, so DDP and the optimizer see only used weights.
    """

    def __init__(self, teacher: TeacherModel, head: BondMaskingHead, mask_ratio: float = 0.15,
                 flag_weight: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < mask_ratio <= 1.0:
            raise ConfigError(f"data.mask_ratio: must be in (0, 1], got {mask_ratio}")
        self.teacher, self.head = teacher, head
        self.mask_ratio, self.flag_weight = mask_ratio, flag_weight
        for name, child in teacher.named_children():
            child.requires_grad_(name in TRAINED)

    def forward(self, batch: Any, generator: torch.Generator | None = None) -> BondMaskingLoss:
        masked, bonds = self.head.mask(batch, self.mask_ratio, generator)
        return self.head.loss(self.teacher.encode_nodes(masked), bonds, self.flag_weight)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.teacher.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True,  # type: ignore[override]
                        assign: bool = False) -> Any:
        return self.teacher.load_state_dict(state_dict, strict=strict, assign=assign)


class BondMaskingObjective:
    """``loss_fn(model, batch)`` for :func:`run_training`; carries the head's state."""

    def __init__(self, head: BondMaskingHead, lambda_bond: float = 1.0) -> None:
        self.head, self.lambda_bond = head, lambda_bond

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch)
        return self.lambda_bond * out.loss, {"bond_ce": float(out.type_loss.detach()),
                                             "flag_bce": float(out.flag_loss.detach()),
                                             "bond_acc": float(out.accuracy)}

    def state_dict(self) -> dict[str, Any]:
        return {"bond_head": self.head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["bond_head"])


def make_validator(batches: Sequence[Any], seed: int) -> Callable[[nn.Module], dict[str, float]]:
    """``validate(model)``: masked-bond metrics on ``batches`` with the same masks every epoch."""

    def validate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        correct = typed = n_bonds = 0
        ce = bce = 0.0
        for b in batches:
            out = model(b.to(device), generator=gen)
            n_b = b.edge_index.size(1) // 2
            n = max(1, round(model.mask_ratio * n_b)) if n_b else 0  # as mask_bonds counts
            correct, typed, n_bonds = correct + out.correct, typed + out.n_typed, n_bonds + n
            ce += float(out.type_loss) * out.n_typed
            bce += float(out.flag_loss) * n
        acc, ce, bce = correct / max(typed, 1), ce / max(typed, 1), bce / max(n_bonds, 1)
        return {"val_bond_acc": acc, "val_bond_ce": ce, "val_flag_bce": bce,
                "val_loss": ce + model.flag_weight * bce}

    return validate


def pretrain_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """``build_optimizer``, but AdamW uses the fused kernel where the device supports it."""
    o = cfg.optim
    if o.name != "adamw":
        return build_optimizer(cfg, model)
    params = [p for p in model.parameters() if p.requires_grad]
    kw = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, **kw)


def teacher_featurizer_hash() -> str:
    """The settings hash of default teacher shards, whose graph features pretraining uses."""
    from neimsctl.chem.featurize_run import run_settings
    from neimsctl.chem.rowbuild import RowOptions

    return run_settings(RowOptions(mode="teacher"))[1]


class _RejectLog:
    """Counts and writes first-pass rejects (JSONL), once per (file, line), across resumes.

    A last line cut short (a full disk, a kill while it was written) is dropped when a resumed
    run reads the report (its SMILES is rejected and written again): it was a traceback at
    every ``--resume``."""

    def __init__(self, path: Path, names: list[str], log: TextIO, show: int = 10) -> None:
        self.path, self.names, self.log, self.show = path, names, log, show
        self.seen: set[tuple[str, int]] = set()
        if path.exists():
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                try:
                    with open(path, "r+b") as fh:
                        fh.truncate(end)
                except OSError as exc:
                    raise output_error(path, exc) from None
            for ln in data[:end].splitlines():
                if ln.strip():
                    r = orjson.loads(ln)
                    self.seen.add((r["file"], r["line"]))
        self.tally = Tally()

    def __call__(self, rejects: list) -> None:
        try:
            with open(self.path, "ab") as fh:
                self.tally.sink = fh
                for it, why, detail in rejects:
                    key = (self.names[it.src], it.line)
                    if key in self.seen:
                        continue
                    self.seen.add(key)
                    self.tally.reject(Reject(why, detail, file=key[0], line=it.line,
                                             record=it.smiles[:200]))
                    if self.tally.rejected <= self.show:
                        print(f"neimsctl pretrain: {key[0]}: line {it.line}: {why}: "
                              f"{it.smiles[:80]!r}", file=self.log, flush=True)
        except OSError as exc:          # a full disk: named, not "I/O error"
            raise output_error(self.path, exc) from None
        finally:
            self.tally.sink = None


@contextlib.contextmanager
def _spooled(sources: Sequence[str | Path]) -> Any:
    """Real files for every source: stdin is copied to a temporary file (read many times)."""
    if not any(is_dash(s) for s in sources):
        yield [str(s) for s in sources]
        return
    with spool_path(".smi") as tmp:
        with open(tmp, "wb") as fh:
            shutil.copyfileobj(sys.stdin.buffer, fh, 1 << 20)
        yield [str(tmp) if is_dash(s) else str(s) for s in sources]


def run_pretrain(cfg: Config, sources: Sequence[str | Path], out_dir: str | Path, *,
                 input_format: str = "auto", smiles_column: str | None = None,
                 resume: bool | str | Path | None = None, log: TextIO | None = None,
                 shuffle_buffer: int = 50_000) -> tuple[TrainResult, Tally]:
    """Pretrain the teacher by bond masking on SMILES ``sources`` (see the module docstring).

    Returns the training result and the tally of rejected SMILES (first pass and val set).

    Raises
    ------
    ConfigError, InputError, FormatError, CheckpointError
        Bad config, unreadable input, no valid validation molecule, unusable checkpoint, a
        ``resume`` on other SMILES ``sources`` than the run's (by content: SHA-256 of each file).
    """
    log = sys.stderr if log is None else log
    cfg = dataclasses.replace(cfg, stage="pretrain")   # its checkpoints say what they are
    d, t = cfg.data, cfg.train
    loss_cfg = dataclass_from_dict(PretrainLossConfig, cfg.loss, "loss")
    registry.config_from_section(TeacherModel, cfg.model)   # checked before any data is read
    if t.best_metric not in VAL_METRICS + ("loss",):
        raise ConfigError(f"train.best_metric: {t.best_metric!r} is not reported by pretrain; "
                          f"use one of {', '.join(VAL_METRICS)}")
    out = Path(out_dir)
    held = None if resume else existing_run(out, checkpoint_dir(cfg, out))
    if held is not None:        # before rejects.jsonl is written
        raise OutputError(f"{out}: holds a training run ({held}); resume it (--resume) or "
                          "choose another run directory")
    out.mkdir(parents=True, exist_ok=True)
    names = [display_name(s) for s in sources] + ([display_name(d.val)] if d.val else [])
    with _spooled(list(sources) + ([d.val] if d.val else [])) as paths:
        train_paths = tuple(paths[:len(sources)])
        # the run's input, kept in its checkpoints: a resume on another input is refused here,
        # before a molecule is read or a reject of it written into the run's rejects.jsonl
        inputs = describe_inputs(train_paths, names[:len(sources)])
        if resume:
            check_resume_inputs(cfg, out, resume, inputs, featurizer_hash=teacher_featurizer_hash())
        split = None if d.val else tuple(d.split)
        if split is not None and (len(split) != 3 or split[0] <= 0 or split[1] <= 0):
            raise ConfigError(f"data.split: need [train, val, test] with train, val > 0, got {d.split}")
        spec = StreamSpec(train_paths, input_format, smiles_column, d.max_records, split,
                          d.split_seed)
        rejects = _RejectLog(out / "rejects.jsonl", names, log)
        val_spec = StreamSpec((paths[-1],), input_format, smiles_column, None, None) if d.val \
            else spec
        val_items = collect_part(val_spec, None if d.val else 1, d.max_val_records)
        val_batches = []
        for i in range(0, len(val_items), t.batch_size):
            b, rej = featurize_batch(val_items[i:i + t.batch_size])
            if rej:
                rejects([(it._replace(src=len(names) - 1) if d.val else it, why, detail)
                         for it, why, detail in rej])
            if b is not None:
                val_batches.append(b)
        n_val = sum(b.num_graphs for b in val_batches)
        if n_val == 0:
            raise InputError(f"no valid molecule in the validation part ({len(val_items)} read): "
                             "check the input format (--input-format, --smiles-column)")
        rejects.tally.read += len(val_items)
        rejects.tally.written += n_val
        stream = SmilesStream(spec, batch_size=t.batch_size, seed=t.seed,
                              num_workers=t.num_workers, steps_per_epoch=t.steps_per_epoch,
                              grad_accum=t.grad_accum, shuffle_buffer=shuffle_buffer,
                              on_rejects=rejects)
        seed_everything(t.seed)
        teacher = TeacherModel(registry.config_from_section(TeacherModel, cfg.model))
        # the graph branch's inputs (bond masking reads no fingerprint or spectrum)
        check_widths(teacher.config, val_batches[0], "featurized SMILES",
                     keys=("atom_dim", "bond_dim"))
        head = BondMaskingHead(teacher.config.hidden, loss_cfg.head_hidden or teacher.config.hidden,
                               bond_dim=teacher.config.bond_dim)
        model = BondMaskingModel(teacher, head, d.mask_ratio, loss_cfg.flag_weight)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in teacher.parameters())
        print(f"neimsctl: pretrain: teacher {n_all:,} parameters, "
              f"{n_train:,} trained by bond masking (GNN branch + head); val {n_val} molecules; "
              f"epoch = {f'{t.steps_per_epoch} steps' if t.steps_per_epoch else 'one pass'}",
              file=log, flush=True)
        result = run_training(cfg, model, BondMaskingObjective(head, loss_cfg.lambda_bond), stream,
                              validate=make_validator(val_batches, d.split_seed), out_dir=out,
                              resume=resume, log=log, featurizer_hash=teacher_featurizer_hash(),
                              optimizer_factory=pretrain_optimizer, inputs=inputs)
    return result, rejects.tally
