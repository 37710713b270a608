"""One training epoch and its validation, for :class:`neimsctl.train.trainer.Trainer`.

Kept apart from the trainer so each stays short. :func:`run_epoch` does forward under
autocast, backward (through the GradScaler for fp16), gradient accumulation (DDP ``no_sync`` on
the non-final micro-batches), clipping with the norm recorded, the optimizer and per-step
scheduler steps, the JSONL step records and the stop check after every optimizer step.
:func:`run_validation` turns the epoch's running sums into the epoch summary and adds the
validation metrics (rank 0).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from neimsctl.errors import InputError, NeimsError
from neimsctl.io.parallel import dies_with_this_process
from neimsctl.train import distributed as dd

if TYPE_CHECKING:
    from neimsctl.train.trainer import Trainer


def move_to(batch: Any, device: torch.device) -> Any:
    """Move tensors (nested in dicts/lists/tuples, or objects with ``.to``) to ``device``."""
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(move_to(v, device) for v in batch)
    if hasattr(batch, "_fields"):
        return type(batch)(*(move_to(v, device) for v in batch))
    return batch.to(device, non_blocking=True) if hasattr(batch, "to") else batch


def batch_size_of(batch: Any, default: int) -> int:
    """Number of samples in a batch (PyG ``num_graphs``, first tensor dim, else ``default``)."""
    if hasattr(batch, "num_graphs"):
        return int(batch.num_graphs)
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else default
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else []
    return next((batch_size_of(v, default) for v in items if isinstance(v, torch.Tensor)), default)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``bf16``/``fp16`` on ``device``; a no-op for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _new_acc() -> dict[str, Any]:
    return {"batches": 0, "n": 0, "samples": 0, "loss": 0.0, "parts": {}, "grad_norm": 0.0,
            "steps": 0, "seconds": 0.0}


def _add(acc: dict[str, Any], loss: float, parts: dict[str, float], samples: int) -> None:
    acc["n"] += 1
    acc["samples"] += samples
    acc["loss"] += loss
    for k, v in parts.items():
        acc["parts"][k] = acc["parts"].get(k, 0.0) + float(v)


def _sync_grads(params: list[torch.Tensor], info: dd.DistInfo) -> None:
    """Average gradients by hand (a final micro-batch group that ran under ``no_sync``)."""
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= info.world_size


def _step(tr: "Trainer", params: list[torch.Tensor], accs: tuple[dict, dict]) -> None:
    opt, scaler, t = tr.opt, tr.scaler, tr.t
    if scaler is not None:
        scaler.unscale_(opt)
    gn = float(torch.nn.utils.clip_grad_norm_(params, t.clip_norm or float("inf")))
    lr = float(opt.param_groups[0]["lr"])  # the rate this step uses (logged)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    tr.step += 1
    if tr.sched is not None and tr.cfg.schedule.interval == "step":
        tr.sched.step()
    for a in accs:
        a["grad_norm"] += gn
        a["steps"] += 1
        a["lr"] = lr


def run_epoch(tr: "Trainer", epoch: int, skip: int, acc: dict[str, Any]) -> tuple[bool, dict]:
    """Train one epoch from batch ``skip``; returns ``(stopped_by_signal, running_sums)``.

    With a known number of batches the last (partial) accumulation group is synchronised and
    stepped like the others; otherwise it is stepped after the loader ends (grads averaged by
    hand under DDP). Batches are fetched one at a time, so the RNG state saved at a step
    boundary is exactly the one the next batch will see.
    """
    t, opt, info = tr.t, tr.opt, tr.info
    acc = acc or _new_acc()
    model = tr.ddp_model
    model.train()
    params = [p for g in opt.param_groups for p in g["params"]]
    win, t_start, t_win = _new_acc(), time.perf_counter(), time.perf_counter()
    n_total = tr._n_batches()
    quiet = getattr(tr.log, "quiet", False) or not info.is_main
    bar = tqdm(total=n_total, initial=skip, disable=True if quiet else None,
               file=sys.stderr, leave=False, desc=f"epoch {epoch + 1}", dynamic_ncols=True)
    group, stopped = 0, False
    for batch in tr._loader(epoch, skip):
        batch = move_to(batch, tr.device)
        group += 1
        boundary = group == t.grad_accum or acc["batches"] + 1 == n_total
        sync = model.no_sync() if info.enabled and not boundary else contextlib.nullcontext()
        with sync:
            with autocast(tr.device, t.precision):
                loss, parts = tr.loss_fn(model, batch)
            if t.precision != "fp16" and not torch.isfinite(loss.detach()):
                raise NeimsError(f"epoch {epoch + 1} batch {acc['batches'] + 1}: loss is "
                                 f"{float(loss.detach())}; lower optim.lr or check the data")
            scaled = loss / t.grad_accum
            (tr.scaler.scale(scaled) if tr.scaler is not None else scaled).backward()
        lv, n = float(loss.detach()), batch_size_of(batch, t.batch_size)
        for a in (acc, win):
            _add(a, lv, parts, n)
        acc["batches"] += 1
        bar.update(1)
        if not boundary:
            continue
        group = 0
        _step(tr, params, (acc, win))
        if tr.step % t.log_every == 0:
            now = time.perf_counter()
            vals = dd.all_reduce_mean({"loss": win["loss"] / win["n"], "grad_norm":
                                       win["grad_norm"] / win["steps"],
                                       **{k: v / win["n"] for k, v in win["parts"].items()}}, info)
            tr._emit({"kind": "step", "epoch": epoch + 1, "step": tr.step, "batch": acc["batches"],
                      **vals, "lr": win["lr"],
                      "samples_per_s": win["samples"] * info.world_size / max(now - t_win, 1e-9)})
            win, t_win = _new_acc(), now
            bar.set_postfix(loss=f"{vals['loss']:.4g}", refresh=False)
        if dd.any_rank(tr._signals > 0, info):
            stopped = True
            break
    if acc["batches"] == 0 and skip == 0 and not stopped:
        raise InputError(f"epoch {epoch + 1}: not one training batch: the train part holds no "
                         "valid molecule, or fewer than train.batch_size with train.drop_last "
                         "(check data.split, data.max_records and the input)")
    if group and not stopped:  # leftover micro-batches of a loader without len()
        if info.enabled:
            _sync_grads(params, info)
        _step(tr, params, (acc, win))
    bar.close()
    acc["seconds"] += time.perf_counter() - t_start
    if not stopped and tr.sched is not None and tr.cfg.schedule.interval == "epoch":
        tr.sched.step()
    return stopped, acc


def _val_loss(tr: "Trainer", model: torch.nn.Module) -> dict[str, float]:
    loader = DataLoader(tr.val_data, batch_size=tr.t.batch_size, shuffle=False,
                        collate_fn=tr.collate_fn, num_workers=tr.t.num_workers,
                        generator=torch.Generator().manual_seed(tr.t.seed),
                        worker_init_fn=dies_with_this_process() if tr.t.num_workers else None)
    acc = _new_acc()
    with torch.no_grad():
        for batch in loader:
            batch = move_to(batch, tr.device)
            with autocast(tr.device, tr.t.precision):
                loss, parts = tr.loss_fn(model, batch)
            _add(acc, float(loss), parts, batch_size_of(batch, tr.t.batch_size))
    n = max(acc["n"], 1)
    return {"val_loss": acc["loss"] / n, **{f"val_{k}": v / n for k, v in acc["parts"].items()}}


def run_validation(tr: "Trainer", epoch: int, acc: dict[str, Any]) -> dict[str, Any]:
    """The epoch summary: mean train loss/components/grad norm, lr, and validation metrics."""
    n, steps = max(acc["n"], 1), max(acc["steps"], 1)
    means = dd.all_reduce_mean({"loss": acc["loss"] / n, "grad_norm": acc["grad_norm"] / steps,
                                **{k: v / n for k, v in acc["parts"].items()}}, tr.info)
    summary: dict[str, Any] = {"epoch": epoch + 1, "step": tr.step, **means,
                               "lr": acc.get("lr", tr.opt.param_groups[0]["lr"]),
                               "samples": acc["samples"] * tr.info.world_size,
                               "seconds": round(acc["seconds"], 3)}
    if tr.info.is_main and (tr.validate is not None or tr.val_data is not None):
        model = tr.model
        model.eval()
        try:
            with torch.no_grad():
                metrics = tr.validate(model) if tr.validate is not None else _val_loss(tr, model)
        finally:
            model.train()
        summary["val"] = {k: float(v) for k, v in metrics.items()}
    return summary
