"""NEIMS v1 baseline: fingerprint MLP with forward / reverse (MW-anchored) heads and a sigmoid gate.

Wei, Belanger, Adams & Sculley, "Rapid prediction of electron-ionization mass spectrometry using
neural networks", ACS Cent. Sci. 5, 700-708 (2019), https://doi.org/10.1021/acscentsci.9b00085;
reference implementation github.com/brain-research/deep-molecular-massspec (``mlp`` model with the
hyperparameters of its released NEIMS checkpoint). Re-implemented here in PyTorch:

- input: hashed Morgan **count** fingerprint, radius 2, 4096 slots, raw counts (no log). In RDKit:
  ``rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=4096).GetCountFingerprintAsNumPy``.
  The student shards' 2048 ``counts`` are atom-pair counts, not Morgan counts, so the faithful input
  is a separate featurization; ``input_dim`` is configurable so the model also runs on the shards'
  unpacked ECFP4 bits (4096) or the student vector (6144), as a documented deviation;
- trunk: ``Linear(F, 2000) + ReLU``, then 7 residual blocks
  ``x + Linear(1000, 2000)(ReLU(BN(Linear(2000, 1000)(Dropout(ReLU(BN(x)))))))``, then BN + ReLU;
- forward head: ``Linear(2000, 501)``, zero above ``MW + 5``;
- reverse head: ``Linear(2000, 501)`` read backwards from the molecular weight,
  ``rev[b, j] = r[b, MW_b + 5 - j]`` (zero where that index falls outside ``0..500``), i.e. output
  ``k`` of the reverse head is the peak at neutral loss ``k - 5`` from the molecular ion;
- gate: ``g = sigmoid(Linear(2000, 501))``, ``pred = ReLU(g * fwd + (1 - g) * rev)``.

Targets live in ``(I / base peak * target_scale) ** intensity_power`` space (the paper: NIST
intensities 0..999, square root); the loss is in :mod:`neimsctl.train.losses_v1`. The reference
trains with Adam (lr 1e-3, constant), batch 100, gradient clipping at global norm 1.0, and
initialises dense layers Glorot-uniform with zero biases (TensorFlow defaults, reproduced here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import torch
from torch import Tensor, nn

from neimsctl.errors import ConfigError
from neimsctl.io.featblock import MORGAN_COUNT_BITS
from neimsctl.io.spectrum import N_BINS
from neimsctl.models.checks import config_from_dict, config_to_dict
from neimsctl.models.registry import register
from neimsctl.nn.mass_head import mask_above_mw, reverse_by_mw

PREDICTIONS = ("bidirectional", "forward", "reverse")
BN_EPS = 1e-3  # TensorFlow's default, as in the reference (running-stat momentum stays torch's 0.1)


@dataclass
class NeimsV1Config:
    """Hyperparameters; the defaults are those of the published NEIMS model.

    Attributes
    ----------
    input_dim : Fingerprint width (4096 Morgan counts in the paper).
    hidden_dim : Trunk width (2000).
    n_blocks : Residual blocks (7).
    bottleneck_factor : Inner width of a block relative to ``hidden_dim`` (0.5).
    dropout : Dropout inside each block (0.25).
    n_bins : Output bins, m/z 0..n_bins-1 (501 here; the paper used 1000).
    max_above_mw : Bins above the molecular weight still allowed a peak (5).
    prediction : ``bidirectional`` (both heads), ``forward`` or ``reverse`` only.
    gate : Mix the two heads with a learned per-bin sigmoid gate (True) or add them (False).
    intensity_power : Targets are intensities to this power (0.5).
    target_scale : Base-peak intensity before the power (999, as in NIST files).
    mz_power : Exponent of the m/z weight of the loss (1).
    """

    input_dim: int = MORGAN_COUNT_BITS
    hidden_dim: int = 2000
    n_blocks: int = 7
    bottleneck_factor: float = 0.5
    dropout: float = 0.25
    n_bins: int = N_BINS
    max_above_mw: int = 5
    prediction: str = "bidirectional"
    gate: bool = True
    intensity_power: float = 0.5
    target_scale: float = 999.0
    mz_power: float = 1.0

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"neims-v1: prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        for name in ("input_dim", "hidden_dim", "n_bins"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"neims-v1: {name} must be >= 1, got {getattr(self, name)}")
        if self.n_blocks < 0 or not 0.0 <= self.dropout < 1.0 or self.intensity_power <= 0:
            raise ConfigError("neims-v1: need n_blocks >= 0, 0 <= dropout < 1, intensity_power > 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "NeimsV1Config":
        """Build from a mapping, rejecting unknown keys (:class:`~neimsctl.errors.ConfigError`)."""
        return config_from_dict(cls, data, "neims-v1")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


class NeimsV1Output(NamedTuple):
    """All parts of a forward pass, each ``(B, n_bins)`` in target space (before the final ReLU for
    ``forward``/``reverse``; ``gate`` is ``None`` without a gate)."""

    pred: Tensor
    forward: Tensor | None
    reverse: Tensor | None
    gate: Tensor | None


class ResidualBlock(nn.Module):
    """Pre-activation bottleneck block: ``x + W2 ReLU(BN(W1 Dropout(ReLU(BN(x)))))``."""

    def __init__(self, dim: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(dim, eps=BN_EPS), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, inner),
            nn.BatchNorm1d(inner, eps=BN_EPS), nn.ReLU(), nn.Linear(inner, dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


@register("neims-v1")
class NeimsV1(nn.Module):
    """The NEIMS v1 model (see the module docstring).

    Parameters
    ----------
    config
        A :class:`NeimsV1Config` (defaults: the published model, ~39M parameters at 4096 inputs).

    Shapes
    ------
    x: ``(B, input_dim)`` float fingerprint; mw: ``(B,)`` long nominal molecular weight;
    ``forward`` returns ``(B, n_bins)`` in target space (``intensity ** intensity_power``).

    Examples
    --------
    >>> m = NeimsV1(NeimsV1Config(input_dim=16, hidden_dim=8, n_blocks=1)).eval()
    >>> m(torch.zeros(2, 16), torch.tensor([50, 120])).shape
    torch.Size([2, 501])
    """

    arch = "neims-v1"
    config_class = NeimsV1Config

    def __init__(self, config: NeimsV1Config | None = None) -> None:
        super().__init__()
        self.config = cfg = config or NeimsV1Config()
        inner = max(1, int(round(cfg.bottleneck_factor * cfg.hidden_dim)))
        self.embed = nn.Sequential(nn.Linear(cfg.input_dim, cfg.hidden_dim), nn.ReLU())
        self.blocks = nn.Sequential(*(ResidualBlock(cfg.hidden_dim, inner, cfg.dropout)
                                      for _ in range(cfg.n_blocks)))
        self.final = nn.Sequential(nn.BatchNorm1d(cfg.hidden_dim, eps=BN_EPS), nn.ReLU())
        both = cfg.prediction == "bidirectional"

        def head(wanted: bool) -> nn.Linear | None:
            return nn.Linear(cfg.hidden_dim, cfg.n_bins) if wanted else None

        self.forward_head = head(both or cfg.prediction == "forward")
        self.reverse_head = head(both or cfg.prediction == "reverse")
        self.gate_head = head(both and cfg.gate)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the reference (TensorFlow defaults): Glorot-uniform weights, zero biases,
        BatchNorm scale 1 / shift 0."""
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.BatchNorm1d):
                mod.reset_parameters()

    def hidden(self, x: Tensor) -> Tensor:
        """Trunk features ``(B, hidden_dim)``."""
        if x.dim() != 2 or x.shape[1] != self.config.input_dim:
            raise ValueError(f"neims-v1 expects x of shape (B, {self.config.input_dim}), got "
                             f"{tuple(x.shape)}; check the featurization (input_dim)")
        return self.final(self.blocks(self.embed(x)))

    def forward_parts(self, x: Tensor, mw: Tensor) -> NeimsV1Output:
        """Prediction plus the forward head, reverse head and gate that made it."""
        cfg, h = self.config, self.hidden(x)
        fwd = mask_above_mw(self.forward_head(h), mw, cfg.max_above_mw) \
            if self.forward_head is not None else None
        rev = reverse_by_mw(self.reverse_head(h), mw, cfg.max_above_mw) \
            if self.reverse_head is not None else None
        gate = None
        if fwd is not None and rev is not None:
            if self.gate_head is not None:
                gate = torch.sigmoid(self.gate_head(h))
                raw = gate * fwd + (1.0 - gate) * rev
            else:
                raw = fwd + rev
        else:
            raw = fwd if fwd is not None else rev
        return NeimsV1Output(torch.relu(raw), fwd, rev, gate)

    def forward(self, x: Tensor, mw: Tensor) -> Tensor:
        return self.forward_parts(x, mw).pred

    @torch.no_grad()
    def predict_spectrum(self, x: Tensor, mw: Tensor) -> Tensor:
        """Linear-intensity spectra, base peak 1 (all-zero predictions stay zero), in eval mode.

        The module's training flag is restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            lin = self.forward(x, mw).clamp_min(0).pow(1.0 / self.config.intensity_power)
        finally:
            self.train(was_training)
        top = lin.amax(dim=1, keepdim=True)
        return torch.where(top > 0, lin / top.clamp_min(1e-30), torch.zeros_like(lin))

    def transform_target(self, spectra: Tensor) -> Tensor:
        """Linear spectra (any scale) -> training targets ``(I / max * target_scale) ** power``."""
        return self.transform_target_with(spectra, self.config)

    @staticmethod
    def transform_target_with(spectra: Tensor, config: NeimsV1Config) -> Tensor:
        """:meth:`transform_target` for a given config (used by the loss)."""
        s = spectra.clamp_min(0)
        top = s.amax(dim=1, keepdim=True)
        s = torch.where(top > 0, s / top.clamp_min(1e-30), torch.zeros_like(s)) * config.target_scale
        return s.pow(config.intensity_power)
