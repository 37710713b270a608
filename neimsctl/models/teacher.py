"""The NEIMS v2 teacher: a GINE graph network fused with an ECFP MLP, with MC dropout.

Architecture (defaults = SPEC.md "Models"; every width comes from :class:`TeacherConfig`)::

    atoms    x (N, 48) -> Linear -> 256
    GNN      DropEdge(p=0.2, whole bonds), then 8 x GINEBlock:
             h + Dropout(ReLU(PairNorm(BondGatedGINEConv(h, bonds (E, 6)))))
    readout  [mean || max || attention] pooling -> 768
    ECFP     (B, 4096 bits + 2048 log1p atom-pair counts) -> 2048 -> 1024 -> 512 (ReLU, dropout)
    fusion   concat 768 + 512 = 1280 -> LayerNorm
    head     1280 -> 1024 -> 512 (``hidden``) -> 501, softplus (non-negative)

**Bond-breaking attention** (``neimsctl.nn.bond_attention``): in every GINE layer each bond gets
a sigmoid gate :math:`a_{ij} = a_{ji} \\in (0, 1)`, computed from both endpoint states and the
bond embedding, that scales the messages across that bond in both directions. It is learned
without direct supervision and reads as how much the bond matters for the spectrum, i.e. how
likely it is to break under 70 eV EI; :meth:`TeacherModel.bond_scores` returns the gates.

Choices the spec leaves open, documented here:

- **Output space.** ``forward`` returns ``config.output_space`` values (``"sqrt"`` by default,
  the square root of the base-peak-normalised intensity, so MSE weighs small peaks more, like
  the ``I^0.5`` weighting of library matching). Softplus rather than ReLU on the output, so no
  m/z bin can die. :meth:`TeacherModel.predict_spectrum` returns linear, max-normalised spectra.
- **Width of the ECFP MLP** (4096 -> 2048 -> 1024 -> 512) is what brings the total to the
  spec's ~15M parameters (14,616,582 with the defaults); the GNN branch is ~1.5M.
- **MC dropout** samples every ``nn.Dropout`` *and* DropEdge (:meth:`TeacherModel.mc_dropout`).
- **Mass-aware head** (``mass_aware=True``): NEIMS v1's bidirectional output
  (:class:`neimsctl.nn.mass_head.MassAnchoredHead`), a gated mix of a forward prediction and a
  reverse one anchored at the nominal mass ``batch.mw``, nothing above ``mw + max_above_mw``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from neimsctl.io.featblock import FRAG_SLOTS
from neimsctl.models.registry import register
from neimsctl.models.teacher_config import SPACES, TeacherConfig
from neimsctl.nn.bond_attention import GINEBlock
from neimsctl.nn.drop_edge import DropEdge
from neimsctl.nn.mass_head import MassAnchoredHead, activate
from neimsctl.nn.mlp import MLP
from neimsctl.nn.modes import only_training
from neimsctl.nn.pooling import GraphPooling

__all__ = ["TeacherConfig", "TeacherModel", "SPACES"]

OUT_BIAS_INIT = -3.0


def _side_input(batch: Any, name: str, shape: tuple[int, int], what: str, hint: str) -> Tensor:
    """``batch.<name>``, a fingerprint-branch input beside the ECFP bits, checked against ``shape``."""
    value = getattr(batch, name, None)
    if value is None or value.shape != shape:
        raise ValueError(f"batch.{name} must be {shape} log1p {what}, got "
                         f"{None if value is None else tuple(value.shape)}; re-featurize with this "
                         f"version (--mode teacher){hint}")
    return value


@register("teacher")
class TeacherModel(nn.Module):
    """GNN + ECFP hybrid teacher (see the module docstring).

    Parameters
    ----------
    config
        Sizes and options; ``None`` means the spec's defaults.

    Shapes
    ------
    batch: PyG ``Batch`` with ``x (N, atom_dim)``, ``edge_index (2, E)``, ``edge_attr (E, bond_dim)``,
    ``batch (N,)``, ``ecfp (B, ecfp_dim)`` [, ``mw (B,)`` when mass-aware]
    -> ``(B, n_bins)``, or ``((B, n_bins), hidden (B, hidden_dim))`` with ``return_hidden``.
    """

    arch = "teacher"
    config_class = TeacherConfig

    def __init__(self, config: Optional[TeacherConfig] = None) -> None:
        super().__init__()
        self.config = cfg = config or TeacherConfig()
        h = cfg.hidden
        self.atom_encoder = nn.Linear(cfg.atom_dim, h)
        self.drop_edge = DropEdge(cfg.drop_edge)
        self.layers = nn.ModuleList(
            GINEBlock(h, cfg.bond_dim, attention_hidden=cfg.attention_hidden, dropout=cfg.dropout,
                      pair_norm=cfg.pair_norm) for _ in range(cfg.num_layers))
        self.pool = GraphPooling(h, cfg.pool_gate_hidden)
        fp_dim = cfg.ecfp_dim + cfg.counts_dim + (FRAG_SLOTS if cfg.fragments else 0)
        self.ecfp_mlp = MLP(fp_dim, cfg.ecfp_hidden, cfg.ecfp_out, dropout=cfg.dropout,
                            final_activation=True)
        self.fusion_norm = nn.LayerNorm(cfg.fusion_dim)
        self.trunk = MLP(cfg.fusion_dim, cfg.head_hidden[:-1], cfg.head_hidden[-1],
                         dropout=cfg.dropout, final_activation=True)
        self.out: nn.Module = (
            MassAnchoredHead(cfg.hidden_dim, cfg.n_bins, shift=cfg.max_above_mw,
                             activation=cfg.output_activation,
                             bias_init=OUT_BIAS_INIT if cfg.output_activation == "softplus" else 0.0)
            if cfg.mass_aware else nn.Linear(cfg.hidden_dim, cfg.n_bins))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every learnable sub-module."""
        self.atom_encoder.reset_parameters()
        for layer in self.layers:
            layer.reset_parameters()
        self.pool.reset_parameters()
        self.ecfp_mlp.reset_parameters()
        self.fusion_norm.reset_parameters()
        self.trunk.reset_parameters()
        self.out.reset_parameters()  # the mass-anchored head sets its own biases
        if isinstance(self.out, nn.Linear) and self.config.output_activation == "softplus":
            # softplus(-3) ~ 0.05: start near an almost empty spectrum, as real EI spectra are sparse
            with torch.no_grad():
                self.out.bias.fill_(OUT_BIAS_INIT)

    # -- encoders ---------------------------------------------------------------------------
    def _graph_inputs(self, batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        w = self.atom_encoder.weight      # a method once --precision int8 quantized the layer
        cfg, dtype = self.config, (torch.float32 if callable(w) else w.dtype)
        x, ei, ea = batch.x, batch.edge_index, batch.edge_attr
        if x is None or x.dim() != 2 or x.size(1) != cfg.atom_dim:
            raise ValueError(f"batch.x must be (N, {cfg.atom_dim}), got "
                             f"{None if x is None else tuple(x.shape)}: featurize with --mode teacher")
        if ea is None or ea.dim() != 2 or ea.size(1) != cfg.bond_dim or ea.size(0) != ei.size(1):
            raise ValueError(f"batch.edge_attr must be (E, {cfg.bond_dim}) with E = edge_index.size(1)"
                             f" = {ei.size(1)}, got {None if ea is None else tuple(ea.shape)}")
        vec = getattr(batch, "batch", None)
        if vec is None:
            vec = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
        n_graphs = int(getattr(batch, "num_graphs", 1) or 1)
        return x.to(dtype), ei, ea.to(dtype), vec, n_graphs

    def encode_nodes(self, batch: Any, return_attention_weights: bool = False
                     ) -> Union[Tensor, tuple[Tensor, list[Tensor]]]:
        """Node states after the GNN branch (used by bond-masking pretraining).

        Returns ``(N, hidden)``; with ``return_attention_weights`` also one ``(E', 1)`` gate
        tensor per layer (``E'`` = edges left after DropEdge).
        """
        x, ei, ea, vec, _ = self._graph_inputs(batch)
        ei, ea = self.drop_edge(ei, ea)
        h = self.atom_encoder(x)
        gates = []
        for layer in self.layers:
            h, gate = layer(h, ei, ea, vec, return_attention_weights=True)
            gates.append(gate)
        return (h, gates) if return_attention_weights else h

    def encode(self, batch: Any) -> Tensor:
        """Fused molecule representation, ``(B, fusion_dim)`` (after the fusion LayerNorm)."""
        cfg = self.config
        h = self.encode_nodes(batch)
        _, _, _, vec, n_graphs = self._graph_inputs(batch)
        g = self.pool(h, vec, n_graphs)
        ecfp = getattr(batch, "ecfp", None)
        if ecfp is None:
            raise ValueError("batch has no ecfp: the teacher needs ECFP4 bits (B, "
                             f"{cfg.ecfp_dim}); featurize with --mode teacher")
        if ecfp.dim() == 1 and ecfp.numel() == n_graphs * cfg.ecfp_dim:
            ecfp = ecfp.view(n_graphs, cfg.ecfp_dim)  # Data items that stored ecfp as (4096,)
        if ecfp.shape != (n_graphs, cfg.ecfp_dim):
            raise ValueError(f"batch.ecfp must be ({n_graphs}, {cfg.ecfp_dim}), got {tuple(ecfp.shape)}")
        parts = [ecfp]
        if cfg.counts_dim:
            parts.append(_side_input(batch, "counts", (n_graphs, cfg.counts_dim), "atom-pair counts",
                                     " or set counts_dim: 0"))
        if cfg.fragments:
            parts.append(_side_input(batch, "frags", (n_graphs, FRAG_SLOTS), "fragment-mass counts", ""))
        ecfp = torch.cat([p.to(ecfp.dtype) for p in parts], dim=-1)
        f = self.ecfp_mlp(ecfp.to(g.dtype))
        return self.fusion_norm(torch.cat([g, f], dim=-1))

    # -- prediction -------------------------------------------------------------------------
    def forward(self, batch: Any, return_hidden: bool = False
                ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        hidden = self.trunk(self.encode(batch))
        if self.config.mass_aware:
            mw = getattr(batch, "mw", None)
            if mw is None:
                raise ValueError("mass_aware teacher needs batch.mw (nominal mass, (B,)); "
                                 "set mass_aware: false or use teacher shards that carry mw")
            pred = self.out(hidden, mw)
        else:
            pred = activate(self.out(hidden), self.config.output_activation)
        return (pred, hidden) if return_hidden else pred

    def to_linear(self, pred: Tensor) -> Tensor:
        """Output-space values -> linear intensities (not normalised)."""
        pred = pred.float().clamp_min(0)
        return pred.square() if self.config.output_space == "sqrt" else pred

    def from_linear(self, spectrum: Tensor) -> Tensor:
        """Linear intensities (base peak 1) -> the output space; apply to targets before MSE."""
        spectrum = spectrum.clamp_min(0)
        return spectrum.sqrt() if self.config.output_space == "sqrt" else spectrum

    @staticmethod
    def _max_normalise(lin: Tensor) -> Tensor:
        return lin / lin.amax(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def predict_spectrum(self, batch: Any) -> Tensor:
        """Deterministic (eval-mode) linear spectra, float32, base peak 1 ``(B, n_bins)``.

        The module's train/eval state is restored afterwards.
        """
        with self._modes(stochastic=False):
            return self._max_normalise(self.to_linear(self(batch)))

    # -- MC dropout -------------------------------------------------------------------------
    def stochastic_modules(self) -> list[nn.Module]:
        """The modules MC dropout samples: every ``nn.Dropout`` and the ``DropEdge``."""
        return [m for m in self.modules() if isinstance(m, (nn.Dropout, DropEdge))]

    def _modes(self, stochastic: bool) -> contextlib.AbstractContextManager[Any]:
        return only_training(self, self.stochastic_modules() if stochastic else ())

    def mc_dropout(self, enabled: bool = True) -> contextlib.AbstractContextManager["TeacherModel"]:
        """Context manager: everything in eval mode except dropout and DropEdge (if ``enabled``).

        >>> with model.mc_dropout():          # doctest: +SKIP
        ...     sample = model(batch)

        The previous train/eval state of every module is restored on exit.
        """
        return self._modes(stochastic=enabled)

    @torch.no_grad()
    def mc_predict(self, batch: Any, n_samples: int = 30) -> tuple[Tensor, Tensor]:
        """MC-dropout mean spectrum and per-bin variance, each ``(B, n_bins)`` float32.

        Each sample is converted to linear intensity and max-normalised; the mean over samples
        is max-normalised again (base peak 1) and the variance is rescaled by the same factor
        squared, so both are on the scale of the returned mean.
        """
        if n_samples < 2:
            raise ValueError(f"mc_predict needs n_samples >= 2 for a variance, got {n_samples}")
        mean = m2 = None
        with self.mc_dropout(True):
            for k in range(1, n_samples + 1):  # Welford's running mean and sum of squares
                s = self._max_normalise(self.to_linear(self(batch)))
                if mean is None:
                    mean, m2 = s.clone(), torch.zeros_like(s)
                    continue
                delta = s - mean
                mean += delta / k
                m2 += delta * (s - mean)
        var = m2 / (n_samples - 1)
        scale = 1.0 / mean.amax(dim=-1, keepdim=True).clamp_min(1e-12)
        return mean * scale, var * scale.square()

    @torch.no_grad()
    def bond_scores(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Bond-breaking gates in eval mode: ``edge_index (2, E)`` and gates ``(E, num_layers)``."""
        with self._modes(stochastic=False):
            _, gates = self.encode_nodes(batch, return_attention_weights=True)
        return batch.edge_index, torch.cat(gates, dim=1)

    # -- bookkeeping ------------------------------------------------------------------------
    def shared_parameters(self) -> list[nn.Parameter]:
        """Weight of the layer producing ``hidden`` (what every loss passes through; GradNorm)."""
        return [[m for m in self.trunk.layers if isinstance(m, nn.Linear)][-1].weight]

    def n_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
