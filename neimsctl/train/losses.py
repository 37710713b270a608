"""Distillation losses of the NEIMS v2 student (SPEC.md "Training", step 4).

.. math::
    L = \\alpha L_{hard} + \\beta L_{soft} + \\gamma L_{feature}
        + \\delta_{load} L_{load} + \\delta_{entropy} L_{entropy}

All spectra passed in are **linear intensities, base peak 1** (library spectra and the teacher's
MC-dropout mean/variance as ``TeacherModel.mc_predict`` returns them); ``pred`` is in the
student's output space (``sqrt`` by default) and the losses move targets there themselves.

- ``L_hard``: MSE between ``pred`` and the library spectrum mapped to the output space.
- ``L_soft``: confidence-weighted MSE to the teacher in a *tempered* space. KD's temperature
  softens a distribution so that its small entries matter; for a spectrum the analogue is to
  flatten the intensity range, :math:`\\phi_T(I) = ((I+\\epsilon)^{p/T} - \\epsilon^{p/T}) /
  ((1+\\epsilon)^{p/T} - \\epsilon^{p/T})`, with ``p`` the output-space power (0.5 for sqrt, 1 for
  linear). :math:`\\phi_T(0)=0` and :math:`\\phi_T(1)=1` for every T, so the loss scale stays
  comparable while T anneals; at T=1 the soft space is (up to the small :math:`\\epsilon`) the
  output space itself, and at T=4 small fragment peaks weigh almost like large ones (sqrt
  space, 1 % -> 0.25 and 10 % -> 0.57 at T=4, 0.08 and 0.30 at T=1). No :math:`T^2` factor:
  that corrects the :math:`1/T^2` gradient of softmax logits, which this map does not have.
  Per-bin confidence weights
  :math:`w = 1 / (1 + s^2 / \\bar{s^2})` down-weight bins where the teacher is unsure, with
  :math:`s^2 = \\phi_T'(\\mu)^2 \\sigma^2` the MC-dropout variance carried into the compared space
  (delta method) and :math:`\\bar{s^2}` its batch mean. Carrying it over matters: raw variance
  grows with intensity, so it would distrust every large peak, whereas :math:`s^2` is small for
  a large, stable peak (0.8 +- 0.05) and large for a faint, flickering one (0.02 +- 0.05).
  ``confidence="exp"`` uses :math:`\\exp(-s^2/\\bar{s^2})`, ``"none"`` plain MSE.
- ``cosine > 0`` adds ``cosine * (1 - cos)`` to ``L_hard`` (against the library spectrum) and to
  ``L_soft`` (against the teacher's mean, untempered), with the library-matching weights
  ``m/z^1 * I^0.5``: the MSE alone under-weights what matching looks at (measured on the teacher:
  val Recall@10 0.41 -> 0.47 with the term).
- ``plain_cosine > 0`` adds ``plain_cosine * (1 - cos)`` of the plain linear spectra (``I^1``, no
  m/z weight: the space of the reported mean cosine) to ``L_hard`` and ``L_soft`` likewise.
- ``expert_bias_rate`` (used by ``distill``, not here): step of the gate's load-balancing
  selection bias after each training batch.
- ``L_feature``: student ``hidden`` vs teacher penultimate features (both 512): MSE after a
  parameter-free LayerNorm of each (``normalized_mse``, scale-free, default), plain ``mse``, or
  ``cosine`` (1 - cos); optionally through a learned ``Linear`` projection (its parameters live
  in :class:`DistillLoss`: give them to the optimizer).
- ``L_load``: Switch Transformer balance, :math:`N \\sum_i f_i P_i` (``f_i`` share of routing
  slots, ``P_i`` mean gate probability); 1 for uniform routing, N / k when every sample goes
  to the same k experts.
- ``L_entropy``: mean per-sample gate entropy (nats). With the positive default weight it is
  *minimised*: each molecule is routed decisively (specialisation) while ``L_load`` keeps the
  batch balanced; a negative ``entropy_weight`` maximises it (softer routing) instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neimsctl.models.student import StudentOutput, spectrum_from_space, spectrum_to_space
from neimsctl.errors import ConfigError
from neimsctl.train.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, POWER, check_ranges, dataclass_from_dict
from neimsctl.train.gradnorm import GradNorm

SPACE_POWER = {"linear": 1.0, "sqrt": 0.5}


def _mz_weights(n_bins: int, mz_power: float, ref: Tensor) -> Tensor | float:
    if mz_power == 0:
        return 1.0
    w = torch.arange(1, n_bins + 1, dtype=torch.float32, device=ref.device).pow(mz_power)
    return w / w.mean()


def hard_loss(pred: Tensor, target: Tensor, space: str = "sqrt", *, mz_power: float = 0.0,
              mask: Tensor | None = None) -> Tensor:
    """MSE between ``pred`` (output space) and linear ``target`` mapped to that space.

    ``mz_power > 0`` weights bin ``j`` by ``(j+1)**mz_power`` (mean weight 1); ``mask`` (B,) bool
    keeps only rows that have a library spectrum.
    """
    err = (pred.float() - spectrum_to_space(target.float(), space)).square()
    err = err * _mz_weights(pred.shape[1], mz_power, pred)
    if mask is not None:
        return err[mask].mean() if bool(mask.any()) else err.sum() * 0.0
    return err.mean()


def tempered(spectrum: Tensor, temperature: float, power: float = 0.5, eps: float = 1e-3) -> Tensor:
    """Flatten linear intensities: :math:`\\phi_T` of the module docstring (0 -> 0, 1 -> 1)."""
    e = power / float(temperature)
    lo, hi = eps ** e, (1.0 + eps) ** e
    return ((spectrum.clamp_min(0) + eps).pow(e) - lo) / (hi - lo)


def tempered_variance(mean: Tensor, var: Tensor, temperature: float, power: float = 0.5,
                      eps: float = 1e-3) -> Tensor:
    """Variance of :math:`\\phi_T(I)` by the delta method, :math:`\\phi_T'(\\mu)^2 \\sigma^2`."""
    e = power / float(temperature)
    slope = e * (mean.clamp_min(0) + eps).pow(e - 1.0) / ((1.0 + eps) ** e - eps ** e)
    return slope.square() * var.clamp_min(0)


def confidence_weights(var: Tensor,
                       mode: Literal["relative", "exp", "none"] = "relative") -> Tensor:
    """Per-bin weights in (0, 1] from a per-bin variance (high variance -> low weight)."""
    var = var.detach().float().clamp_min(0)
    if mode == "none":
        return torch.ones_like(var)
    ref = var.mean().clamp_min(1e-12)
    if mode == "relative":
        return 1.0 / (1.0 + var / ref)
    if mode == "exp":
        return torch.exp(-var / ref)
    raise ValueError(f"unknown confidence mode {mode!r}; use relative, exp or none")


def soft_loss(pred: Tensor, teacher_mean: Tensor, teacher_var: Tensor | None = None, *,
              temperature: float = 1.0, space: str = "sqrt", eps: float = 1e-3,
              confidence: Literal["relative", "exp", "none"] = "relative",
              mz_power: float = 0.0) -> Tensor:
    """Confidence-weighted MSE between tempered student and teacher spectra (weighted mean).

    ``teacher_mean`` and ``teacher_var`` are linear (base peak 1); ``pred`` is in ``space``.
    """
    p = SPACE_POWER[space]
    s = tempered(spectrum_from_space(pred.float(), space), temperature, p, eps)
    t = tempered(teacher_mean.float(), temperature, p, eps)
    if teacher_var is None:
        w = torch.ones_like(t)
    else:
        tvar = tempered_variance(teacher_mean.float(), teacher_var.float(), temperature, p, eps)
        w = confidence_weights(tvar, confidence)
    w = w * _mz_weights(pred.shape[1], mz_power, pred)
    return (w * (s - t).square()).sum() / w.sum().clamp_min(1e-12)


def feature_loss(student: Tensor, teacher: Tensor,
                 mode: Literal["normalized_mse", "mse", "cosine"] = "normalized_mse") -> Tensor:
    """Distance between student and teacher representations of the same width ``(B, D)``."""
    s, t = student.float(), teacher.float().detach()
    if s.shape != t.shape:
        raise ValueError(f"feature shapes differ: student {tuple(s.shape)} vs teacher {tuple(t.shape)}; "
                         "set feature_proj to learn a projection")
    if mode == "normalized_mse":
        return F.mse_loss(F.layer_norm(s, s.shape[-1:]), F.layer_norm(t, t.shape[-1:]))
    if mode == "mse":
        return F.mse_loss(s, t)
    if mode == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()
    raise ValueError(f"unknown feature loss {mode!r}; use normalized_mse, mse or cosine")


def expert_load(topk_idx: Tensor, n_experts: int) -> Tensor:
    """(E,) share of routing slots each expert received (sums to 1)."""
    counts = torch.bincount(topk_idx.reshape(-1), minlength=n_experts).float()
    return counts / counts.sum().clamp_min(1.0)


def load_balance_loss(gate_probs: Tensor, topk_idx: Tensor) -> Tensor:
    """Switch-style :math:`N \\sum_i f_i P_i`; equals 1 for uniform routing."""
    n = gate_probs.shape[1]
    f = expert_load(topk_idx, n).to(gate_probs.device)
    return n * (f * gate_probs.float().mean(0)).sum()


def gate_entropy(gate_probs: Tensor) -> Tensor:
    """Mean over the batch of :math:`-\\sum_i p_i \\log p_i` (nats, in [0, log N])."""
    p = gate_probs.float()
    return -(p * p.clamp_min(1e-12).log()).sum(-1).mean()


def spectral_cosine_loss(pred: Tensor, target: Tensor, *, mz_power: float = 0.0,
                         intensity_power: float = 1.0) -> Tensor:
    """Mean ``1 - cosine`` of weighted spectra ``m/z**mz_power * I**intensity_power`` (linear I)."""
    def weigh(x: Tensor) -> Tensor:
        # a floor for powers < 1: d(x^p)/dx is infinite at exactly 0 (masked bins of a mass-anchored head)
        x = x.float().clamp_min(1e-8 if intensity_power < 1 else 0.0)
        x = x.pow(intensity_power) if intensity_power != 1 else x
        if mz_power:
            x = x * torch.arange(x.shape[1], device=x.device, dtype=x.dtype).pow(mz_power)
        return x
    return (1.0 - F.cosine_similarity(weigh(pred), weigh(target), dim=-1, eps=1e-8)).mean()


def temperature_schedule(epoch: float, total: int, t0: float = 4.0, t1: float = 1.0) -> float:
    """Cosine annealing from ``t0`` at epoch 0 to ``t1`` at the last epoch (``total - 1``).

    ``epoch`` may be fractional (per-step annealing); values outside the run are clamped.
    """
    progress = 1.0 if total <= 1 else min(max(float(epoch) / (total - 1), 0.0), 1.0)
    return t1 + (t0 - t1) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class DistillLossConfig:
    """Weights and options of :class:`DistillLoss` (SPEC.md defaults)."""

    alpha: float = 0.3
    beta: float = 0.5
    gamma: float = 0.2
    load_weight: float = 0.01
    entropy_weight: float = 0.01
    gradnorm: bool = True
    gradnorm_alpha: float = 1.5
    gradnorm_lr: float = 0.025
    warmup_epochs: int = 15
    epochs: int = 150
    t0: float = 4.0
    t1: float = 1.0
    soft_eps: float = 1e-3
    confidence: Literal["relative", "exp", "none"] = "relative"
    feature: Literal["normalized_mse", "mse", "cosine"] = "normalized_mse"
    feature_proj: bool = False
    mz_power: float = 0.0
    cosine: float = 0.0
    cosine_mz_power: float = 1.0
    cosine_intensity_power: float = 0.5
    plain_cosine: float = 0.0
    expert_bias_rate: float = 0.0

    def __post_init__(self) -> None:
        check_ranges(self, {**dict.fromkeys(_DISTILL_WEIGHTS, NON_NEGATIVE),
                            "gradnorm_alpha": NON_NEGATIVE, "gradnorm_lr": POSITIVE,
                            "warmup_epochs": NON_NEGATIVE, "epochs": AT_LEAST_1, "t0": POSITIVE,
                            "t1": POSITIVE, "soft_eps": NON_NEGATIVE, "mz_power": POWER,
                            "cosine_mz_power": POWER, "cosine_intensity_power": POWER}, "loss")
        if self.alpha + self.beta + self.gamma == 0:
            raise ConfigError("loss.alpha, loss.beta, loss.gamma: not all 0 (the spectrum "
                              "terms' weights)", key="loss.alpha")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DistillLossConfig:
        """Strict construction: unknown keys or wrong types raise ConfigError."""
        return dataclass_from_dict(cls, data, "loss")


_DISTILL_WEIGHTS = ("alpha", "beta", "gamma", "load_weight", "entropy_weight", "cosine",
                    "plain_cosine", "expert_bias_rate")


class DistillLoss(nn.Module):
    """The full distillation objective, with the temperature schedule and GradNorm weights.

    Parameters
    ----------
    config
        Loss settings; ``None`` = SPEC.md defaults.
    space
        The student's output space (``StudentConfig.output_space``).
    student_dim, teacher_dim
        Widths of ``hidden`` on both sides (used only with ``feature_proj``).

    Notes
    -----
    Call :meth:`set_epoch` before each epoch (the shared trainer does). Pass
    ``shared=model.shared_parameters()`` to :meth:`forward` during training to let GradNorm adapt
    the weights once the warm-up is over. Without teacher inputs (training without KD) only
    ``L_hard`` (weighted by ``alpha + beta + gamma``) and the gate terms remain. The GradNorm state
    and the epoch are part of ``state_dict()`` (extra state), so resume restores them.

    Examples
    --------
    >>> loss = DistillLoss()
    >>> loss.set_epoch(0); loss.temperature
    4.0
    """

    MAIN = ("hard", "soft", "feature")

    def __init__(self, config: DistillLossConfig | None = None, *, space: str = "sqrt",
                 student_dim: int = 512, teacher_dim: int = 512) -> None:
        super().__init__()
        self.config = c = config or DistillLossConfig()
        if space not in SPACE_POWER:
            raise ValueError(f"unknown output space {space!r}; expected one of {sorted(SPACE_POWER)}")
        self.space = space
        self.proj = nn.Linear(student_dim, teacher_dim) if c.feature_proj else None
        self.gradnorm = GradNorm((c.alpha, c.beta, c.gamma), alpha=c.gradnorm_alpha,
                                 warmup_epochs=c.warmup_epochs if c.gradnorm else 10 ** 9,
                                 lr=c.gradnorm_lr)
        self.epoch = 0
        self.temperature = temperature_schedule(0, c.epochs, c.t0, c.t1)

    def set_epoch(self, epoch: float) -> None:
        """Set the temperature (cosine schedule) and GradNorm's warm-up clock for ``epoch`` (0-based)."""
        self.epoch = epoch
        c = self.config
        self.temperature = temperature_schedule(epoch, c.epochs, c.t0, c.t1)
        self.gradnorm.set_epoch(int(epoch))

    def forward(self, out: StudentOutput, target: Tensor | None, teacher_mean: Tensor | None = None,
                teacher_var: Tensor | None = None, teacher_hidden: Tensor | None = None, *,
                shared: list[Tensor] | None = None,
                target_mask: Tensor | None = None) -> dict[str, Tensor]:
        """Compute every component; returns ``{"total", "hard", "soft", "feature", "load",
        "entropy", "w_hard", "w_soft", "w_feature", "temperature"}`` (absent terms are 0).

        ``target``, ``teacher_mean``, ``teacher_var``: (B, n_bins) linear, base peak 1;
        ``teacher_hidden``: (B, teacher_dim); ``target_mask``: (B,) rows with a library spectrum.
        """
        c = self.config
        parts: dict[str, Tensor | None] = {k: None for k in self.MAIN}
        if target is not None:
            parts["hard"] = hard_loss(out.pred, target, self.space, mz_power=c.mz_power,
                                      mask=target_mask)
            parts["hard"] = self._plus_cosines(parts["hard"], out.pred, target, target_mask)
        if teacher_mean is not None and c.beta > 0:  # a zero weight switches a term off
            parts["soft"] = soft_loss(out.pred, teacher_mean, teacher_var, temperature=self.temperature,
                                      space=self.space, eps=c.soft_eps, confidence=c.confidence,
                                      mz_power=c.mz_power)
            parts["soft"] = self._plus_cosines(parts["soft"], out.pred, teacher_mean)
        if teacher_hidden is not None and c.gamma > 0:
            h = self.proj(out.hidden.float()) if self.proj is not None else out.hidden
            parts["feature"] = feature_loss(h, teacher_hidden, c.feature)
        main = [parts[k] for k in self.MAIN]
        if all(p is None for p in main):
            raise ValueError("DistillLoss needs a target spectrum or teacher soft labels")
        if shared is not None and self.training:
            self.gradnorm.update(main, shared)
        w = self.gradnorm.weights.to(out.pred.device)
        present = torch.tensor([p is not None for p in main], device=w.device)
        w = w * (self.gradnorm.initial.sum().to(w.device) / w[present].sum())  # absent terms' weight
        w = torch.where(present, w, torch.zeros_like(w))                     # goes to present ones
        zero = torch.zeros((), device=out.pred.device)
        total = sum(w[i] * p for i, p in enumerate(main) if p is not None)
        load = load_balance_loss(out.gate_probs, out.topk_idx)
        ent = gate_entropy(out.gate_probs)
        total = total + c.load_weight * load + c.entropy_weight * ent
        res = {k: (p if p is not None else zero) for k, p in parts.items()}
        res.update(total=total, load=load, entropy=ent, w_hard=w[0], w_soft=w[1], w_feature=w[2],
                   temperature=torch.tensor(self.temperature))
        return res

    def _plus_cosines(self, loss: Tensor, pred: Tensor, spectrum: Tensor,
                      mask: Tensor | None = None) -> Tensor:
        """``loss`` + the configured ``cosine`` and ``plain_cosine`` terms against ``spectrum``."""
        c = self.config
        if c.cosine > 0:
            loss = loss + c.cosine * self._cosine(pred, spectrum, mask)
        if c.plain_cosine > 0:
            loss = loss + c.plain_cosine * self._cosine(pred, spectrum, mask, plain=True)
        return loss

    def _cosine(self, pred: Tensor, spectrum: Tensor, mask: Tensor | None = None, *,
                plain: bool = False) -> Tensor:
        """``1 - cosine`` of ``pred`` (output space) and a linear spectrum, library-matching
        weights (``plain``: unweighted linear intensities)."""
        c = self.config
        if mask is not None:
            if not bool(mask.any()):
                return pred.sum() * 0.0
            pred, spectrum = pred[mask], spectrum[mask]
        return spectral_cosine_loss(spectrum_from_space(pred.float(), self.space), spectrum,
                                    mz_power=0.0 if plain else c.cosine_mz_power,
                                    intensity_power=1.0 if plain else c.cosine_intensity_power)

    @staticmethod
    def log_parts(res: dict[str, Tensor]) -> dict[str, float]:
        """Plain floats of every component except the total (for the trainer's log)."""
        return {k: float(v.detach()) for k, v in res.items() if k != "total"}

    def get_extra_state(self) -> dict[str, Any]:
        return {"gradnorm": self.gradnorm.state_dict(), "epoch": self.epoch}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.gradnorm.load_state_dict(state["gradnorm"])
        self.set_epoch(state["epoch"])
