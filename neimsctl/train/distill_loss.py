"""The loss functions ``distill`` trains with, as ``loss_fn(model, batch) -> (loss, parts)``.

- :class:`StudentKDLoss`: the MoE student's full KD objective
  (:class:`neimsctl.train.losses.DistillLoss`) plus routing shares and the load-balancing bias;
- :class:`V1Loss`: the NEIMS v1 baseline (:class:`neimsctl.train.losses_v1.NeimsV1Loss`);
- :func:`loss_config`: a config's ``loss`` section (spec-style aliases allowed) ->
  :class:`neimsctl.train.losses.DistillLossConfig`.
"""

from __future__ import annotations

from typing import Any

import torch

from neimsctl.errors import ConfigError
from neimsctl.train.config import dataclass_from_dict
from neimsctl.train.losses import DistillLoss, DistillLossConfig, expert_load
from neimsctl.train.losses_v1 import NeimsV1Loss

__all__ = ["LOSS_ALIASES", "StudentKDLoss", "V1Loss", "loss_config"]

#: Spec-style names the distill configs use -> :class:`DistillLossConfig` fields.
LOSS_ALIASES = {"delta_load": "load_weight", "delta_entropy": "entropy_weight",
                "temperature_start": "t0", "temperature_end": "t1"}


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
    try:
        return dataclass_from_dict(DistillLossConfig, data, "loss")
    except ConfigError as exc:          # named as the config names it (temperature_start, not t0)
        given = {new: old for old, new in LOSS_ALIASES.items() if old in (section or {})}
        name = (exc.key or "").removeprefix("loss.")
        if name not in given:
            raise
        raise ConfigError(str(exc).replace(f"loss.{name}", f"loss.{given[name]}", 1),
                          key=f"loss.{given[name]}") from None
