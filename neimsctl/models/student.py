"""The NEIMS v2 student: a top-2 mixture of 4 bottlenecked residual experts on fingerprints.

Architecture (defaults = SPEC.md "Models"; every width comes from :class:`StudentConfig`)::

    x (B, 6144) = ECFP4 4096 bits + log1p 2048 counts
    gate     6144 -> 512 -> 128 -> 4, softmax, keep top 2, renormalise (noisy choice in training)
    experts  4 x [6 x BottleneckResidualBlock(6144 -> 100 -> 6144)], each run only on its rows
    fusion   sum of the 2 chosen experts' outputs (6144) weighted by the renormalised gate
    head     LN -> 6144 -> 2048 -> 1024 -> 512 (``hidden``) -> 501, non-negative (ReLU)

Choices the spec leaves open, documented here:

- **Expert size.** Full-width 6144 -> 2048 -> 6144 blocks would give ~623M parameters, so each
  block squeezes through a 100-wide bottleneck (zero-initialised output: every expert starts as
  the identity). Defaults total 48,626,141 parameters; at batch 1 a call reads the gate, 2 of
  the 4 experts and the head (~34M weights).
- **Expert width** (``expert_width``, default: the input width). Set, a shared
  ``Linear(6144, expert_width) + GELU`` feeds narrower experts (the spec's other way to fit the
  size budget); the compact profile that ships with the package uses it.
- **``hidden``.** The head gets one extra 1024 -> 512 layer so that its penultimate
  representation has the teacher's width (512) for feature distillation; 512 -> 501 follows.
- **Mass-anchored output** (``mass_aware``, on in the shipped configs): the last layer is NEIMS
  v1's bidirectional head (:class:`neimsctl.nn.mass_head.MassAnchoredHead`: forward + reverse
  read back from the nominal mass, mixed by a per-bin gate), so ``forward`` needs ``mw``. Measured
  on MassBank: the teacher's val Recall@10 went from 0.44 to 0.56 after 2 epochs with it.
- **Output space.** ``pred`` is in ``config.output_space`` (``"sqrt"`` by default: the square
  root of the max-normalised linear intensity, as NEIMS v1 does);
  :meth:`StudentModel.predict_spectrum` returns linear, max-normalised spectra (DEVELOPERS.md,
  contract 3).
- **Routing.** Softmax over 4 gate logits, top 2 kept and renormalised; Gaussian noise with a
  learned scale is added to the logits in training only, and only to choose the experts
  (Shazeer et al. 2017); the weights and the probabilities the balance losses see are the clean
  softmax, the same in training and at inference. A per-expert selection bias
  (:meth:`StudentModel.update_expert_bias`, called by ``distill`` after every step) balances
  load without a loss term. Experts run only on the rows routed to them (index_select / index_add).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neimsctl.errors import ConfigError
from neimsctl.io.featblock import FRAG_BINS, STUDENT_DIM, STUDENT_FRAG_DIM
from neimsctl.io.spectrum import N_BINS
from neimsctl.models.checks import check_int, config_from_dict, config_to_dict
from neimsctl.models.registry import register
from neimsctl.nn.mass_head import MassAnchoredHead, activate
from neimsctl.nn.moe import Expert, TopKGate, dispatch
from neimsctl.nn.sparse_input import SparseInputLinear, SparseRows

SPACES = ("linear", "sqrt")


def spectrum_to_space(spectrum: Tensor, space: str) -> Tensor:
    """Map linear intensities (base peak 1) into a model output space (``linear`` or ``sqrt``)."""
    if space == "linear":
        return spectrum
    if space == "sqrt":
        return spectrum.clamp_min(0).sqrt()
    raise ValueError(f"unknown spectrum space {space!r}; expected one of {SPACES}")


def spectrum_from_space(values: Tensor, space: str) -> Tensor:
    """Inverse of :func:`spectrum_to_space`: output-space values back to linear intensities."""
    if space == "linear":
        return values.clamp_min(0)
    if space == "sqrt":
        return values.clamp_min(0).square()
    raise ValueError(f"unknown spectrum space {space!r}; expected one of {SPACES}")


@dataclass(frozen=True)
class StudentConfig:
    """Sizes and options of :class:`StudentModel`; the defaults are the spec's.

    Build one from YAML with :meth:`from_dict`, which rejects unknown keys.
    """

    input_dim: int = STUDENT_DIM
    gate_hidden: tuple[int, ...] = (512, 128)
    n_experts: int = 4
    top_k: int = 2
    expert_depth: int = 6
    expert_bottleneck: int = 100
    head_hidden: tuple[int, ...] = (2048, 1024)
    hidden_dim: int = 512
    n_bins: int = N_BINS
    dropout: float = 0.1
    gate_noise: bool = True
    output_space: str = "sqrt"
    output_activation: str = "relu"
    mass_aware: bool = False
    max_above_mw: int = 5
    expert_width: int | None = None
    fragments: bool = False
    fragment_channels: int = 0
    fragment_kernel: int = 7

    def __post_init__(self) -> None:
        if not isinstance(self.fragments, bool):
            raise ConfigError(f"student.fragments: expected true or false, got {self.fragments!r}")
        if self.fragments and self.input_dim == STUDENT_DIM:
            object.__setattr__(self, "input_dim", STUDENT_FRAG_DIM)   # the default width, + frags
        if self.fragments and self.input_dim != STUDENT_FRAG_DIM:
            raise ConfigError(f"student.fragments: the input is {STUDENT_FRAG_DIM} wide (ECFP4 + "
                              f"counts + fragment masses), got input_dim {self.input_dim}")
        check_int("student.fragment_channels", self.fragment_channels, minimum=0)
        check_int("student.fragment_kernel", self.fragment_kernel)
        if self.fragment_channels and not (self.fragments and self.mass_aware):
            raise ConfigError("student.fragment_channels: the fragment path feeds the mass-aware "
                              "head from the fragment masses: needs fragments: true and mass_aware: true")
        if self.fragment_kernel % 2 == 0:
            raise ConfigError(f"student.fragment_kernel must be odd (centred), got {self.fragment_kernel}")
        ints = ("input_dim", "n_experts", "top_k", "expert_depth", "expert_bottleneck",
                "hidden_dim", "n_bins")
        for name in ints:
            check_int(f"student.{name}", getattr(self, name))
        for name in ("gate_hidden", "head_hidden"):
            v = getattr(self, name)
            if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in v):
                raise ConfigError(f"student.{name}: expected a list of positive integers, got {v!r}")
        if self.top_k > self.n_experts:
            raise ConfigError(f"student.top_k={self.top_k} exceeds n_experts={self.n_experts}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"student.dropout must be in [0, 1), got {self.dropout!r}")
        if self.output_space not in SPACES:
            raise ConfigError(f"student.output_space must be one of {SPACES}, got {self.output_space!r}")
        check_int("student.expert_width", self.expert_width, optional=True)
        if not isinstance(self.mass_aware, bool):
            raise ConfigError(f"student.mass_aware: expected true or false, got {self.mass_aware!r}")
        check_int("student.max_above_mw", self.max_above_mw, minimum=0)
        if self.output_activation not in ("relu", "softplus"):
            raise ConfigError(f"student.output_activation must be relu or softplus, "
                              f"got {self.output_activation!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> StudentConfig:
        """Build a config from a mapping (e.g. a YAML section).

        Raises
        ------
        ConfigError
            On an unknown key, a wrong type or an impossible value.
        """
        return config_from_dict(cls, data, "student", tuples=("gate_hidden", "head_hidden"))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists instead of tuples) for YAML and checkpoints."""
        return config_to_dict(self)


class StudentOutput(NamedTuple):
    """What :meth:`StudentModel.forward` returns (DEVELOPERS.md contract 3).

    ``pred`` (B, n_bins) in the config's output space, non-negative; ``hidden`` (B, hidden_dim)
    penultimate features for feature distillation; ``gate_probs`` (B, E) softmax of the gate;
    ``topk_idx`` (B, k) long; ``topk_weight`` (B, k) summing to 1; ``gate_logits`` (B, E) the
    clean gate logits (training noise only picks experts).
    """

    pred: Tensor
    hidden: Tensor
    gate_probs: Tensor
    topk_idx: Tensor
    topk_weight: Tensor
    gate_logits: Tensor


@register("student")
class StudentModel(nn.Module):
    """Mixture-of-experts residual MLP on student fingerprints (see the module docstring).

    Parameters
    ----------
    config
        Sizes and options; ``None`` means the spec's defaults.

    Shapes
    ------
    x: (B, input_dim) -> :class:`StudentOutput`

    Examples
    --------
    >>> m = StudentModel(StudentConfig(input_dim=16, gate_hidden=(8,), expert_bottleneck=4,
    ...                                head_hidden=(12,), hidden_dim=8, n_bins=10)).eval()
    >>> m(torch.rand(3, 16)).pred.shape
    torch.Size([3, 10])
    """

    arch = "student"
    config_class = StudentConfig

    def __init__(self, config: StudentConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or StudentConfig()
        d = cfg.input_dim
        self.gate = TopKGate((d, *cfg.gate_hidden), cfg.n_experts, cfg.top_k,
                             noisy=cfg.gate_noise, dropout=cfg.dropout)
        w = cfg.expert_width or d
        # reduced-width experts (SPEC.md allows it): one shared projection in front of them
        self.proj = nn.Sequential(SparseInputLinear(d, w), nn.GELU()) if cfg.expert_width else None
        self.experts = nn.ModuleList(
            Expert(w, cfg.expert_bottleneck, cfg.expert_depth, cfg.dropout)
            for _ in range(cfg.n_experts))
        layers: list[nn.Module] = [nn.LayerNorm(w)]
        for a, b in zip((w, *cfg.head_hidden), (*cfg.head_hidden, cfg.hidden_dim)):
            layers += [nn.Linear(a, b), nn.GELU(), nn.Dropout(cfg.dropout)]
        self.trunk = nn.Sequential(*layers[:-1])  # no dropout on ``hidden`` itself
        self.out: nn.Module = (
            MassAnchoredHead(cfg.hidden_dim, cfg.n_bins, shift=cfg.max_above_mw,
                             activation=cfg.output_activation)
            if cfg.mass_aware else nn.Linear(cfg.hidden_dim, cfg.n_bins))
        # the fragment path: peaks near the masses of the pieces one or two broken bonds give,
        # weighted per molecule (a convolution over m/z, so the same shift means the same at any mass)
        c = cfg.fragment_channels
        self.frag_conv = nn.Conv1d(2, c, cfg.fragment_kernel, padding=cfg.fragment_kernel // 2) if c else None
        self.frag_mix = nn.Linear(cfg.hidden_dim, c) if c else None

    def forward(self, x: Tensor | SparseRows, mw: Tensor | None = None,
                frags: Tensor | None = None) -> StudentOutput:
        """``frags``: the fragment part of ``x`` as ``(B, 2, 501)`` when the caller has it dense
        (``predict``: cheaper than taking it out of a :class:`SparseRows` input); else it is
        read from ``x``."""
        cfg = self.config
        if isinstance(x, SparseRows) and not self.reads_sparse():
            x = x.dense()
        if x.dim() != 2 or x.shape[1] != cfg.input_dim:
            raise ValueError(f"student expects input of shape (B, {cfg.input_dim}), "
                             f"got {tuple(x.shape)}; featurize with --mode student")
        x = x.to(self.trunk[0].weight.dtype)  # LayerNorm: stays float under int8 quantization
        g = self.gate(x)
        h = self.proj(x) if self.proj is not None else x
        fused = dispatch(h, self.experts, g.topk_idx, g.topk_weight)
        hidden = self.trunk(fused)
        if cfg.mass_aware:
            if mw is None:
                raise ValueError("this student is mass-aware: pass mw, the (B,) nominal masses")
            extra = None
            if self.frag_conv is not None:
                if frags is None:
                    frags = _fragment_rows(x, cfg.input_dim - 2 * FRAG_BINS)
                frags = frags.to(hidden.dtype)
                extra = (self.frag_conv(frags) * self.frag_mix(hidden).unsqueeze(-1)).sum(1)
                extra = F.pad(extra, (0, cfg.n_bins - extra.shape[1])) if extra.shape[1] < cfg.n_bins \
                    else extra[:, :cfg.n_bins]
            pred = self.out(hidden, mw, extra)
        else:
            pred = activate(self.out(hidden), cfg.output_activation)
        return StudentOutput(pred, hidden, g.probs, g.topk_idx, g.topk_weight, g.logits)

    def reads_sparse(self) -> bool:
        """True when the input reaches only :class:`SparseInputLinear` layers (the gate's first
        and the shared projection), so that a :class:`SparseRows` input needs no dense copy."""
        body = self.gate.body
        return (self.proj is not None and isinstance(self.proj[0], SparseInputLinear)
                and len(body) > 0 and isinstance(body[0], SparseInputLinear))

    def to_linear(self, pred: Tensor) -> Tensor:
        """Output-space values -> linear intensities (float32, not normalised)."""
        return spectrum_from_space(pred.float(), self.config.output_space)

    def from_linear(self, spectrum: Tensor) -> Tensor:
        """Linear intensities (base peak 1) -> the output space (apply to targets before an MSE)."""
        return spectrum_to_space(spectrum, self.config.output_space)

    @torch.no_grad()
    def predict_spectrum(self, x: Tensor, mw: Tensor | None = None) -> Tensor:
        """Deterministic linear, max-normalised spectra ``(B, n_bins)`` float32, base peak 1.

        Runs in eval mode (no dropout, no gate noise); the train/eval state is restored.
        All-zero predictions stay zero.
        """
        was_training = self.training
        self.eval()
        try:
            lin = self.to_linear(self(x, mw).pred)
        finally:
            self.train(was_training)
        return lin / lin.amax(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def update_expert_bias(self, topk_idx: Tensor, rate: float = 1e-3) -> Tensor:
        """Nudge the gate's selection bias toward equal load; returns the batch's (E,) load.

        Optional auxiliary-loss-free balancing (see :meth:`neimsctl.nn.moe.TopKGate.update_bias`):
        call after each optimizer step with the batch's ``topk_idx``.
        """
        return self.gate.update_bias(topk_idx, rate)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the last layer that all three main losses pass through (for GradNorm).

        That is the layer producing ``hidden``: L_hard and L_soft reach it through ``out``,
        L_feature directly.
        """
        last = [m for m in self.trunk if isinstance(m, nn.Linear)][-1]
        return [last.weight]

    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _fragment_rows(x: Tensor | SparseRows, start: int) -> Tensor:
    """The fragment-mass part of the input (columns ``start`` on) as ``(B, 2, FRAG_BINS)``."""
    if isinstance(x, SparseRows):
        b = x.offsets.shape[0] - 1
        rows = torch.repeat_interleave(torch.arange(b, device=x.cols.device), x.offsets.diff())
        keep = x.cols >= start
        out = torch.zeros(b, 2 * FRAG_BINS, dtype=x.values.dtype, device=x.values.device)
        out[rows[keep], x.cols[keep] - start] = x.values[keep]
        return out.view(b, 2, FRAG_BINS)
    return x[:, start:].reshape(x.shape[0], 2, FRAG_BINS)
