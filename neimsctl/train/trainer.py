"""The generic training loop shared by ``pretrain``, ``finetune`` and ``distill``.

A CLI command builds the model, the loss and the datasets, then calls :func:`run_training`::

    seed_everything(cfg.train.seed)                  # before building the model
    model = build_model(cfg.model)
    result = run_training(cfg, model, loss_fn, train_ds, val_ds, validate=validate,
                          out_dir=out, resume=resume, log=sys.stderr,
                          collate_fn=collate, featurizer_hash=shard_hash)
    raise typer.Exit(130 if result.interrupted else 0)

Contracts
---------
``loss_fn(model, batch) -> (loss, {name: float})``
    ``batch`` is already on the device; the loss runs under autocast. A stateful loss (GradNorm
    weights, temperature) may define ``state_dict``/``load_state_dict`` (checkpointed) and
    ``set_epoch(epoch)`` (called before each epoch, 0-based).
``train_data``
    a map-style ``Dataset`` (ordered by :class:`SeededSampler`: the order depends only on
    ``(train.seed, epoch)``, so resume is exact, mid-epoch too), an ``IterableDataset``
    (``set_epoch(epoch)`` called when present; resume skips batches by reading them), or a
    factory ``train_data(epoch, skip_batches, dist_info) -> iterable of batches``.
``validate(model) -> {metric: float}``
    run on rank 0 with the unwrapped model in ``eval()`` mode; ``train.best_metric`` and
    ``train.best_mode`` select ``best.pt``. Without it the mean ``loss_fn`` over ``val_data``
    is reported as ``val_loss``. Without either (a final fit on train + val, no part left to
    select on) nothing is selected: ``best.pt`` is the latest epoch, the last one at the end.

Outputs in ``out_dir`` (rank 0 only): ``config.yaml`` (resolved), ``train_log.jsonl`` (one
record per ``log_every`` optimizer steps: kind=step, epoch, step, batch, loss + components
(means over the window), grad_norm (before clipping), lr (the rate the step used), samples_per_s;
one kind=epoch record per epoch: epoch means, lr, samples, seconds, ``val`` metrics, best),
``checkpoints/last.pt``, ``best.pt``, ``interrupted.pt`` (SIGINT/SIGTERM/SIGHUP: saved at the next
optimizer-step boundary, then :func:`run_training` returns with ``interrupted=True`` and the
``signal``; a second signal aborts at once), and the report (:mod:`neimsctl.train.report`).
Human-readable lines go to ``log`` (stderr by default; :class:`QuietLog` keeps only warnings
and errors, and no progress bar), the progress bar to stderr on a TTY only; nothing to stdout.
Each epoch ends with one compact line (:func:`epoch_line`: epoch, train loss, the selection
metric ``train.best_metric``, the best value so far and its epoch, wall time); ``full_console``
(default: the ``neimsctl`` logger is at DEBUG, i.e. the commands' ``-v``) prints every metric
of the epoch instead. The full set is always in ``train_log.jsonl`` and the report.
``DataLoader`` workers die with the training process (a ``kill -9`` leaves no worker behind
and no traceback).

A stage that passes ``inputs`` (:func:`describe_inputs`: its input files' names and SHA-256)
has them stored in every checkpoint (``extra["inputs"]``); a resume on other inputs is refused
(:func:`check_resume_inputs`, which a stage calls before it reads any data).

Exact resume holds in one process (model, optimizer, scheduler, scaler, loss state, RNGs, data
order, epoch/step). Under DDP the order and all states resume; ranks > 0 restart their RNG from
rank 0's saved state. With ``num_workers > 0`` augmentation RNGs are exact at epoch boundaries.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

import numpy as np
import orjson
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from neimsctl import interrupts
from neimsctl.errors import CheckpointError, ConfigError, InputError, OutputBusy, OutputError
from neimsctl.io.parallel import dies_with_this_process
from neimsctl.io.streams import lock_partial, make_dirs, output_error
from neimsctl.models import checkpoint as ck
from neimsctl.train import distributed as dd
from neimsctl.train.config import Config, resolve, resolve_device, save_config
from neimsctl.train.epoch import move_to, run_epoch, run_validation

__all__ = ["Trainer", "TrainResult", "QuietLog", "run_training", "resolve_device", "existing_run",
           "checkpoint_dir", "resume_checkpoint", "describe_inputs", "check_inputs",
           "check_resume_inputs",
           "seed_everything", "build_optimizer", "build_scheduler", "move_to", "epoch_line",
           "full_epoch_line", "full_console_default"]

LossFn = Callable[[torch.nn.Module, Any], "tuple[torch.Tensor, dict[str, float]]"]


def checkpoint_dir(cfg: Config, out_dir: str | Path) -> Path:
    """Where a run into ``out_dir`` writes its checkpoints: ``train.ckpt_dir``, else
    ``out_dir/checkpoints``."""
    return Path(cfg.train.ckpt_dir) if cfg.train.ckpt_dir else Path(out_dir) / "checkpoints"


def existing_run(out_dir: str | Path, ckpt_dir: str | Path | None = None) -> str | None:
    """What shows that ``out_dir`` already holds a training run, or ``None``: its
    ``train_log.jsonl``, or a file in its checkpoint directory (``ckpt_dir``, default
    ``out_dir/checkpoints``). A new run there would overwrite it: only ``resume`` may go on.

    Examples
    --------
    >>> existing_run("/nonexistent/run") is None
    True
    """
    out = Path(out_dir)
    ckpts = Path(ckpt_dir) if ckpt_dir is not None else out / "checkpoints"
    if (out / "train_log.jsonl").exists():
        return str(out / "train_log.jsonl")
    try:
        names = sorted(e.name for e in ckpts.iterdir() if not e.is_dir())
    except OSError:                       # no such directory (or not one): nothing there
        return None
    return f"{ckpts}/{names[0]}" if names else None


def resume_checkpoint(ckpt_dir: str | Path, resume: str | Path | bool = True, *,
                      featurizer_hash: str | None = None,
                      log: TextIO | None = None) -> tuple[Path, dict] | None:
    """``(path, checkpoint)`` a resume goes on from: the file ``resume`` names, or for
    True/"auto" the latest of the run whose checkpoints are in ``ckpt_dir``: ``interrupted.pt``,
    or ``last.pt`` when there is none or it cannot be read (said on ``log``); ``None`` when the
    directory holds no checkpoint at all (a run killed before its first one).

    Raises
    ------
    CheckpointError
        No usable checkpoint: the error of the one tried last.
    """
    if resume is not True and str(resume) != "auto":
        return Path(resume), ck.load_checkpoint(resume, featurizer_hash=featurizer_hash)
    ckpt_dir, log = Path(ckpt_dir), sys.stderr if log is None else log
    interrupted, last = ckpt_dir / "interrupted.pt", ckpt_dir / "last.pt"
    if not interrupted.exists() and not last.exists():
        if any(ckpt_dir.glob("*.pt")):
            raise CheckpointError(f"{ckpt_dir}: neither interrupted.pt nor last.pt to "
                                  "resume from")
        print(f"neimsctl: resume: no checkpoint in {ckpt_dir} yet (the run stopped "
              "before its first one): training from the start", file=log, flush=True)
        return None
    if interrupted.exists():
        try:
            return interrupted, ck.load_checkpoint(interrupted, featurizer_hash=featurizer_hash)
        except CheckpointError as exc:
            if not last.exists():
                raise
            print(f"neimsctl: warning: resume: {exc}; resuming from {last} instead (the "
                  "steps after it are trained again)", file=log, flush=True)
    return last, ck.load_checkpoint(last, featurizer_hash=featurizer_hash)


def describe_inputs(paths: Iterable[str | Path], names: Iterable[str],
                    roles: Iterable[str | None] | None = None) -> list[dict[str, Any]]:
    """What a run trains on, to know it again on resume: per input file, in order, its name as
    given (``names``: for messages), size and SHA-256, and its ``role`` when ``roles`` gives
    one (e.g. ``--soft-labels``: a stage with several kinds of input; ``None`` or ``""`` = the
    stage's main input, no ``role`` key). A file moved, renamed or given by another path is the
    same input; one edited, another file, another order or another role is not. ``paths`` are
    regular files (a stage spools standard input first); reading them costs ~0.7 s per GB
    (SHA-256 at ~1.4 GB/s on the development machine, page cache or not).
    """
    roles = itertools.repeat(None) if roles is None else roles
    return [{"name": str(name), "size": Path(path).stat().st_size,
             "sha256": ck.file_sha256(path), **({"role": str(role)} if role else {})}
            for path, name, role in zip(paths, names, roles)]


def _inputs_text(inputs: list[dict[str, Any]]) -> str:
    """``a.smi (sha256 e1be203cc9df, 10,536 bytes) + --soft-labels b.h5 (...)``."""
    def size(n: Any) -> str:
        return f"{n:,}" if isinstance(n, int) else str(n)
    return " + ".join(f"{str(i['role']) + ' ' if i.get('role') else ''}{i.get('name')} (sha256 "
                      f"{str(i.get('sha256'))[:12]}, {size(i.get('size'))} bytes)" for i in inputs)


def _inputs_change(was: list[tuple], now: list[tuple]) -> str:
    """Why ``now`` (``(role, sha256)`` per input) is not the run's ``was`` when it holds the same
    files in another order, or the run's files and more, or some of them only; else ``""``."""
    from collections import Counter

    a, b = Counter(was), Counter(now)
    why = ("the same files in another order: their data would be read in another order" if a == b
           else "the run's files and more: the data added would change what the epochs train on"
           if a < b else "only some of the run's files: the data left out would change what the "
           "epochs train on" if b < a else "")
    return f" ({why}, so the run would not go on where it stopped)" if why else ""


def check_inputs(ckpt: dict[str, Any], inputs: list[dict[str, Any]] | None,
                 where: str | Path) -> None:
    """Refuse to go on from checkpoint ``ckpt`` (at ``where``) with other ``inputs``
    (:func:`describe_inputs`) than its run was trained on: other contents, another order, more
    or fewer files, a file in another role. A checkpoint that does not say (written before runs
    recorded their inputs) or no ``inputs`` given: nothing to compare.

    Raises
    ------
    InputError
        One line naming the run's inputs and these (and, for the same files in another order,
        a superset or a subset of the run's, why that cannot resume either).
    """
    was = (ckpt.get("extra") or {}).get("inputs")
    if not inputs or not isinstance(was, list) or not all(isinstance(i, dict) for i in was):
        return
    old = [(i.get("role") or None, i.get("sha256")) for i in was]
    new = [(i.get("role") or None, i["sha256"]) for i in inputs]
    if old != new:
        raise InputError(f"cannot resume: {where} was trained on {_inputs_text(was)}, not on "
                         f"{_inputs_text(inputs)}{_inputs_change(old, new)}; give the run's input "
                         "again, or start a new run in another run directory")


def check_resume_inputs(cfg: Config, out_dir: str | Path, resume: str | Path | bool,
                        inputs: list[dict[str, Any]], *,
                        featurizer_hash: str | None = None) -> None:
    """:func:`check_inputs` against the checkpoint ``resume`` will go on from
    (:func:`resume_checkpoint` of the run in ``out_dir``), for a stage to call before it reads
    any data or writes into the run directory. The trainer loads the checkpoint again (and says
    what it found); this look is silent."""
    found = resume_checkpoint(checkpoint_dir(cfg, out_dir), resume,
                              featurizer_hash=featurizer_hash, log=io.StringIO())
    if found is not None:
        check_inputs(found[1], inputs, found[0])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD over the trainable parameters, from ``cfg.optim``."""
    o, params = cfg.optim, [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int | None) -> Any:
    """The ``cfg.schedule`` scheduler (None for ``none``); stepped per ``schedule.interval``."""
    s, epochs = cfg.schedule, cfg.train.epochs
    sched = torch.optim.lr_scheduler
    if s.name == "none":
        return None
    if s.name == "cosine_warm_restarts":
        return sched.CosineAnnealingWarmRestarts(optimizer, T_0=s.t0, T_mult=s.t_mult,
                                                 eta_min=s.eta_min)
    total = s.total_steps
    if total is None:
        if s.interval == "step" and steps_per_epoch is None:
            raise ConfigError(f"schedule.total_steps: needed by {s.name} when the training "
                              "data have no length")
        total = epochs * (steps_per_epoch if s.interval == "step" else 1)
    if s.name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(total, 1), eta_min=s.eta_min)
    return sched.OneCycleLR(optimizer, max_lr=s.max_lr or cfg.optim.lr, total_steps=max(total, 2),
                            pct_start=s.pct_start, div_factor=s.div_factor,
                            final_div_factor=s.final_div_factor)


def _changed_model_keys(was: dict[str, Any], now: dict[str, Any], shown: int = 3) -> str:
    """``model.hidden 16 -> 32, ...``: the ``model`` keys whose values differ (the first
    ``shown``), or ``""``."""
    keys = [k for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
    text = ", ".join(f"model.{k} {was.get(k)!r} -> {now.get(k)!r}" for k in keys[:shown])
    return text + (f" (+{len(keys) - shown} more)" if len(keys) > shown else "")


class QuietLog(io.TextIOBase):
    """A ``log`` stream for ``-q``: passes on only the lines that are warnings or errors
    (``neimsctl: warning: ...``, ``...: error: ...``); the trainer also shows no progress bar.

    Examples
    --------
    >>> q = QuietLog(sys.stdout)
    >>> print("neimsctl: epoch 1/3 loss 0.5", file=q); print("neimsctl: warning: collapse", file=q)
    neimsctl: warning: collapse
    """

    quiet = True

    def __init__(self, stream: TextIO) -> None:
        self.stream, self._part = stream, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._part = (self._part + text).split("\n")
        for line in lines:
            low = line.lower()
            if "warning:" in low or "error:" in low:
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@dataclass
class TrainResult:
    """What a run ended with (``epochs_done`` counts completed epochs; ``signal``: the one
    that interrupted it)."""
    out_dir: Path
    epochs_done: int
    step: int
    best_metric: float | None
    interrupted: bool
    history: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    signal: int | None = None


class Trainer:
    """One training run; see the module docstring for the contracts. Use :meth:`fit`."""

    def __init__(self, config: Config, model: torch.nn.Module, loss_fn: LossFn,
                 train_data: Any, val_data: Dataset | None = None, *,
                 validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
                 out_dir: str | Path, collate_fn: Callable | None = None,
                 log: TextIO | None = None, featurizer_hash: str | None = None,
                 optimizer_factory: Callable | None = None,
                 scheduler_factory: Callable | None = None,
                 on_epoch_end: Callable[[int, dict], None] | None = None,
                 full_console: bool | None = None,
                 inputs: list[dict[str, Any]] | None = None) -> None:
        self.cfg = resolve(config)
        self.t = self.cfg.train
        self.model, self.loss_fn, self.validate = model, loss_fn, validate
        self.train_data, self.val_data, self.collate_fn = train_data, val_data, collate_fn
        self.out_dir = Path(out_dir)
        self.ckpt_dir = checkpoint_dir(self.cfg, self.out_dir)
        self.log = sys.stderr if log is None else log
        self.featurizer_hash = featurizer_hash
        #: What the run trains on (:func:`describe_inputs`), kept in its checkpoints.
        self.inputs = inputs
        self.optimizer_factory = optimizer_factory or build_optimizer
        self.scheduler_factory = scheduler_factory or build_scheduler
        self.on_epoch_end = on_epoch_end
        #: Every metric on the console each epoch (``-v``) instead of the compact line.
        self.full_console = full_console_default() if full_console is None else full_console
        self._epoch_t0 = time.perf_counter()
        self._signals = 0
        self._saved = 0  # checkpoints written by this run
        self._signum: int | None = None
        self._jsonl: Any = None

    # -- data -------------------------------------------------------------------------------
    def _loader(self, epoch: int, skip: int) -> Iterable[Any]:
        data, t = self.train_data, self.t
        if callable(data) and not isinstance(data, Dataset):
            return data(epoch, skip, self.info)
        gen = torch.Generator().manual_seed(t.seed * 1_000_003 + epoch)
        common = dict(batch_size=t.batch_size, collate_fn=self.collate_fn, generator=gen,
                      num_workers=t.num_workers, pin_memory=self.device.type == "cuda",
                      worker_init_fn=dies_with_this_process() if t.num_workers else None)
        if isinstance(data, IterableDataset):
            if hasattr(data, "set_epoch"):
                data.set_epoch(epoch)
            return itertools.islice(DataLoader(data, drop_last=t.drop_last, **common), skip, None)
        self.sampler.set_epoch(epoch, start=skip * t.batch_size)
        return DataLoader(data, sampler=self.sampler, drop_last=t.drop_last, **common)

    def _n_batches(self) -> int | None:
        data = self.train_data
        if isinstance(data, IterableDataset) or callable(data) and not isinstance(data, Dataset):
            try:
                return len(data)  # type: ignore[arg-type]
            except TypeError:
                return None
        n = len(self.sampler.order())
        return n // self.t.batch_size if self.t.drop_last else -(-n // self.t.batch_size)

    # -- signals and logging ----------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            interrupts.interrupt(signum)  # the command exits 128 + signum
        self._signum = signum
        with contextlib.suppress(OSError):      # SIGHUP: the terminal the log went to is gone
            print(f"neimsctl: {signal.Signals(signum).name}: saving a checkpoint at the next step "
                  "(send again to abort)", file=self.log, flush=True)

    def _emit(self, rec: dict[str, Any]) -> None:
        if self.info.is_main:
            try:
                self._jsonl.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE
                                               | orjson.OPT_SERIALIZE_NUMPY))
                self._jsonl.flush()
            except OSError as exc:
                raise output_error(self.out_dir / "train_log.jsonl", exc) from None

    def _open_log(self, keep_step: int, keep_epochs: int) -> None:
        path = self.out_dir / "train_log.jsonl"
        if self.info.is_main and path.exists():  # drop what a killed run logged after its checkpoint
            def keep(line: bytes) -> bool:
                try:
                    r = orjson.loads(line)
                except orjson.JSONDecodeError:
                    return False                 # a line cut short by a kill
                return r["step"] <= keep_step if r["kind"] == "step" else r["epoch"] <= keep_epochs

            kept = [ln for ln in path.read_bytes().splitlines() if ln.strip() and keep(ln)]
            logged = {r["epoch"] for r in map(orjson.loads, kept) if r["kind"] == "epoch"}
            # the epochs of the checkpoint a run stopped before logging (a full disk, a kill)
            kept += [orjson.dumps({"kind": "epoch", **h}, option=orjson.OPT_SERIALIZE_NUMPY)
                     for h in self.history if h.get("epoch") not in logged]
            path.write_bytes(b"".join(ln + b"\n" for ln in kept))
        try:
            self._jsonl = open(path, "ab") if self.info.is_main else None  # noqa: SIM115
        except OSError as exc:
            raise output_error(path, exc) from None

    # -- checkpoints ------------------------------------------------------------------------
    def _save(self, name: str, epoch: int, batch: int, acc: dict) -> Path:
        path = self.ckpt_dir / name
        if self.info.is_main:
            ls = self.loss_fn.state_dict() if hasattr(self.loss_fn, "state_dict") else None
            ck.save_checkpoint(path, model=self.model, optimizer=self.opt, scheduler=self.sched,
                               scaler=self.scaler, loss_state=ls, epoch=epoch, batch=batch,
                               step=self.step, config=self.cfg.to_dict(),
                               featurizer_hash=self.featurizer_hash, best_metric=self.best,
                               history=self.history, extra={"epoch_acc": acc, **(
                                   {"inputs": self.inputs} if self.inputs else {})})
            self._saved += 1
        return path

    def _resume(self, resume: str | Path | bool) -> tuple[int, int, dict] | None:
        """Restore the run's state from ``resume`` (a path, or True/"auto": ``interrupted.pt``,
        else ``last.pt``); ``None`` when "auto" finds a run that stopped before its first
        checkpoint (it starts from the beginning)."""
        found = resume_checkpoint(self.ckpt_dir, resume, featurizer_hash=self.featurizer_hash,
                                  log=self.log)
        if found is None:
            return None
        path, ckpt = found
        check_inputs(ckpt, self.inputs, path)
        old = ckpt["config"].get("train", {})
        changed = [k for k in ("seed", "batch_size", "grad_accum") if old.get(k) != getattr(self.t, k)]
        if changed:
            print(f"neimsctl: warning: resume: train.{', train.'.join(changed)} differ from the "
                  "checkpoint; the run will not replay exactly", file=self.log)
        self._check_schedule_length(ckpt, old)
        length = [f"train.{k} {old[k]} -> {getattr(self.t, k)}" for k in ("epochs", "steps_per_epoch")
                  if k in old and old[k] != getattr(self.t, k)]
        if length:        # said: a resume with another config silently ran another length
            print(f"neimsctl: warning: resume: {', '.join(length)} (not the checkpoint's): the run "
                  f"goes on with the new length (the run's own config: {self.out_dir / 'config.yaml'})",
                  file=self.log)
        try:
            ck.restore(ckpt, model=self.model, optimizer=self.opt, scheduler=self.sched,
                       scaler=self.scaler, loss_fn=self.loss_fn)
        except CheckpointError as exc:      # name the settings that changed, not only tensors
            changed = _changed_model_keys(ckpt["config"].get("model") or {}, self.cfg.model or {})
            if not changed:
                raise
            raise CheckpointError(
                f"{path}: the run was trained with other model settings ({changed}): resume with "
                f"the run's own (-c {self.out_dir / 'config.yaml'}); {exc}") from None
        self.step, self.best, self.history = ckpt["step"], ckpt["best_metric"], ckpt["history"]
        if path == self.ckpt_dir / "last.pt" and self.history and self.history[-1].get("best") \
                and self.info.is_main:
            # its epoch is the best: the run may have stopped (a full disk, a kill) before it
            # copied it to best.pt, and no later epoch that is not better would do that
            ck.copy_checkpoint(path, self.ckpt_dir / "best.pt")
        print(f"neimsctl: resumed from {path} (epoch {ckpt['epoch']}, batch {ckpt['batch']}, "
              f"step {self.step})", file=self.log)
        return ckpt["epoch"], ckpt["batch"], ckpt["extra"].get("epoch_acc") or {}

    def _check_schedule_length(self, ckpt: dict, old_train: dict) -> None:
        """Refuse to lengthen a run whose learning-rate schedule has a fixed length (one-cycle,
        cosine): its restored state keeps the old length, and stepping past it was a
        traceback (OneCycleLR) or a second, unplanned cycle (cosine)."""
        saved = ckpt.get("scheduler") or {}
        for key in ("total_steps", "T_max"):
            if self.sched is None or key not in saved or not hasattr(self.sched, key):
                continue
            if int(getattr(self.sched, key)) > int(saved[key]):
                was = old_train.get("epochs")
                raise ConfigError(
                    f"train.epochs: the run's {self.cfg.schedule.name} learning-rate schedule was "
                    f"laid out for {was} epochs ({saved[key]} steps) and cannot be lengthened on "
                    f"--resume (asked: {self.t.epochs} epochs); resume with train.epochs={was}, or "
                    "start a new run")

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, resume: str | Path | bool | None = None) -> TrainResult:
        """Train ``train.epochs`` epochs (from ``resume``: a path, or True/"auto" = latest).

        Raises
        ------
        OutputError
            The run directory cannot be written (a run directory made by this run is removed
            again when no checkpoint could be written into it), or, without ``resume``, it
            already holds a training run (:func:`existing_run`): nothing of it is touched.
        CheckpointError
            ``resume`` finds no usable checkpoint.
        """
        t = self.t
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device)
        self.info = dd.init_distributed(self.device)
        self.device = dd.local_device(self.device, self.info)
        self.model.to(self.device)
        self.opt = self.optimizer_factory(self.cfg, self.model)
        if isinstance(self.train_data, Dataset) and not isinstance(self.train_data, IterableDataset):
            self.sampler = dd.SeededSampler(len(self.train_data), t.seed, True, self.info.rank,
                                            self.info.world_size)
        nb = self._n_batches()
        self.steps_per_epoch = None if nb is None else max(1, -(-nb // t.grad_accum))
        self.sched = self.scheduler_factory(self.cfg, self.opt, self.steps_per_epoch)
        sc = self.cfg.schedule
        if (sc.name == "onecycle" and sc.max_lr is not None and sc.max_lr != self.cfg.optim.lr
                and self.info.is_main):
            print(f"neimsctl: warning: optim.lr={self.cfg.optim.lr:g} is not used: the onecycle "
                  f"schedule sets the learning rate, up to schedule.max_lr={sc.max_lr:g} "
                  "(schedule.max_lr=null peaks at optim.lr)", file=self.log, flush=True)
        self.scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" else None
        self.step, self.best, self.history = 0, None, []
        fresh_dir = not self.out_dir.exists()
        lock = self._lock_run_dir() if self.info.is_main else None
        try:
            return self._fit_locked(resume, fresh_dir)
        finally:
            if lock is not None:
                os.close(lock)
            if fresh_dir and not self._saved and self.info.is_main:
                with contextlib.suppress(OSError):
                    self.out_dir.rmdir()      # made for the lock; refused before any file

    def _lock_run_dir(self) -> int:
        """Hold an exclusive lock on the run directory (made if need be) while this run trains:
        two runs in one directory (two ``--resume`` at once, or two new runs started together)
        both trained and wrote its checkpoints and log, the epochs twice in train_log.jsonl.

        Raises
        ------
        OutputBusy
            Another run holds it: nothing of the directory is touched.
        """
        make_dirs(self.out_dir)
        try:
            return lock_partial(self.out_dir)
        except OutputBusy:
            raise OutputBusy(f"{self.out_dir}: another run is training in this run directory; "
                             "wait for it to end (or stop it) before starting or resuming one"
                             ) from None
        except OSError as exc:
            raise output_error(self.out_dir, exc) from None

    def _fit_locked(self, resume: str | Path | bool | None, fresh_dir: bool) -> TrainResult:
        t = self.t
        epoch0, skip, acc = 0, 0, {}
        if not resume:
            held = existing_run(self.out_dir, self.ckpt_dir)
            if held is not None:
                raise OutputError(f"{self.out_dir}: holds a training run ({held}); resume it "
                                  "(--resume) or choose another run directory")
        restored = self._resume(resume) if resume else None
        if restored is not None:
            epoch0, skip, acc = restored
        else:
            seed_everything(t.seed + self.info.rank)
        self.ddp_model = dd.wrap_model(self.model, self.device, self.info)
        try:
            return self._fit(epoch0, skip, acc)
        except OutputError:
            if fresh_dir and not resume and not self._saved:
                self._remove_run_files()
            raise
        except (InputError, ConfigError):
            # refused before its first checkpoint (e.g. not one training batch): no config.yaml
            # and log left to make the next run "hold a training run"
            if not resume and not self._saved and self.info.is_main:
                self._remove_run_files(dirs=fresh_dir)
            raise

    def _remove_run_files(self, dirs: bool = True) -> None:
        """Undo a run that wrote no checkpoint: no ``config.yaml`` and log are left to look like
        a run (and, with ``dirs``, the directories it made are removed when empty)."""
        if self._jsonl is not None:
            with contextlib.suppress(OSError):
                self._jsonl.close()
        for name in ("config.yaml", "train_log.jsonl"):
            with contextlib.suppress(OSError):
                (self.out_dir / name).unlink()
        for d in (self.ckpt_dir, self.out_dir) if dirs else ():
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty

    def _fit(self, epoch0: int, skip: int, acc: dict) -> TrainResult:
        t = self.t
        if self.info.is_main:
            make_dirs(self.out_dir)
            # a resume that trains nothing (a finished run given fewer epochs) keeps the record
            # of the run as it was trained
            if epoch0 < t.epochs or not (self.out_dir / "config.yaml").is_file():
                save_config(self.cfg, self.out_dir / "config.yaml")
        self._open_log(self.step, epoch0)
        main_thread = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, self._on_signal) for s in interrupts.stop_signals()} \
            if main_thread else {}
        last: Path | None = None
        try:
            for epoch in range(epoch0, t.epochs):
                if hasattr(self.loss_fn, "set_epoch"):
                    self.loss_fn.set_epoch(epoch)
                self._epoch_t0 = time.perf_counter()
                stopped, acc = run_epoch(self, epoch, skip if epoch == epoch0 else 0,
                                         acc if epoch == epoch0 else {})
                if stopped:
                    last = self._save("interrupted.pt", epoch, acc["batches"], acc)
                    return self._result(epoch, True, last)
                summary = run_validation(self, epoch, acc)
                last = self._finish_epoch(epoch, summary, acc)
                if dd.any_rank(self._signals > 0, self.info):
                    return self._result(epoch + 1, True, last)
            return self._result(t.epochs if epoch0 < t.epochs else epoch0, False, last)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if self._jsonl is not None:
                self._jsonl.close()

    def _finish_epoch(self, epoch: int, summary: dict, acc: dict) -> Path:
        t = self.t
        metric = summary.get("val", {}).get(t.best_metric, summary.get(t.best_metric))
        better = metric is not None and math.isfinite(metric) and (
            self.best is None or (metric < self.best if t.best_mode == "min" else metric > self.best))
        if better:
            self.best = float(metric)
        elif metric is None and self.validate is None and self.val_data is None:
            better = True               # nothing to select on: the latest epoch is the one kept
        summary["best"] = better
        self.history.append(summary)
        last = self._save("last.pt", epoch + 1, 0, {})
        if self.info.is_main:
            if better:
                ck.copy_checkpoint(last, self.ckpt_dir / "best.pt")
            if t.keep_every and (epoch + 1) % t.keep_every == 0:
                ck.copy_checkpoint(last, self.ckpt_dir / f"epoch_{epoch + 1:04d}.pt")
            with contextlib.suppress(FileNotFoundError):
                (self.ckpt_dir / "interrupted.pt").unlink()
            self._emit({"kind": "epoch", **summary})
            if self.full_console:
                line = full_epoch_line(summary, t.epochs)
            else:
                best_epoch = next((h["epoch"] for h in reversed(self.history) if h.get("best")),
                                  None)
                line = epoch_line(summary, t.epochs, t.best_metric, self.best, best_epoch,
                                  time.perf_counter() - self._epoch_t0)
            print(line, file=self.log, flush=True)
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, summary)
        dd.barrier(self.info)
        return last

    def _result(self, epochs_done: int, interrupted: bool, last: Path | None) -> TrainResult:
        return TrainResult(self.out_dir, epochs_done, self.step, self.best, interrupted,
                           list(self.history), last, self._signum if interrupted else None)


def full_console_default() -> bool:
    """Whether training prints every metric of each epoch: the ``neimsctl`` logger is at DEBUG
    (the commands' ``-v``)."""
    return logging.getLogger("neimsctl").isEnabledFor(logging.DEBUG)


def epoch_line(summary: dict, epochs: int, metric: str, best: float | None,
               best_epoch: int | None, seconds: float) -> str:
    """The compact console line of an epoch: epoch, train loss, the selection metric, the best
    value so far (and its epoch) and the epoch's wall time (training and validation).

    Examples
    --------
    >>> s = {"epoch": 3, "loss": 0.041234, "val": {"val_recall_at_10": 0.51, "val_loss": 0.2}}
    >>> epoch_line(s, 10, "val_recall_at_10", 0.53, 2, 41.23)
    'neimsctl: epoch 3/10  loss 0.04123  val_recall_at_10 0.5100  best 0.5300 (epoch 2)  41.2 s'
    """
    parts = [f"neimsctl: epoch {summary['epoch']}/{epochs}", f"loss {summary['loss']:.4g}"]
    value = summary.get("val", {}).get(metric, summary.get(metric))
    if isinstance(value, (int, float)):
        parts.append(f"{metric} {value:.4f}")
    if best is not None:
        when = "" if best_epoch is None else \
            " (new)" if best_epoch == summary["epoch"] else f" (epoch {best_epoch})"
        parts.append(f"best {best:.4f}{when}")
    parts.append(f"{seconds:.1f} s")
    return "  ".join(parts)


def full_epoch_line(summary: dict, epochs: int) -> str:
    """Every number of an epoch's summary on one line (``-v``): step, the train loss and its
    components, grad norm, every validation metric, lr, and ``*best*`` on a new best."""
    vals = " ".join(f"{k} {v:.4g}" for k, v in [*summary.items(), *summary.get("val", {}).items()]
                    if isinstance(v, float) and k not in ("lr", "seconds"))
    return (f"neimsctl: epoch {summary['epoch']}/{epochs} step {summary['step']} {vals} "
            f"lr {summary['lr']:.3g}{' *best*' if summary.get('best') else ''}")


def run_training(config: Config, model: torch.nn.Module, loss_fn: LossFn, train_data: Any,
                 val_data: Dataset | None = None, *, validate: Callable | None = None,
                 out_dir: str | Path, resume: str | Path | bool | None = None,
                 log: TextIO | None = None, report: bool = True, **kwargs: Any) -> TrainResult:
    """Train, checkpoint and (rank 0) write the report; see the module docstring.

    Extra keyword arguments go to :class:`Trainer` (``collate_fn``, ``featurizer_hash``,
    ``optimizer_factory``, ``scheduler_factory``, ``on_epoch_end``, ``full_console``,
    ``inputs``).

    Raises
    ------
    ConfigError, CheckpointError, NeimsError
        Bad config, unusable checkpoint, non-finite loss.
    """
    trainer = Trainer(config, model, loss_fn, train_data, val_data, validate=validate,
                      out_dir=out_dir, log=log, **kwargs)
    try:
        result = trainer.fit(resume)
        if report and trainer.info.is_main:
            from neimsctl.train.report import write_report

            write_report(trainer.out_dir, n_steps=result.step)
        return result
    finally:
        if hasattr(trainer, "info"):
            dd.cleanup(trainer.info)

