"""Sizes and options of the teacher (torch-free, so configs validate without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from neimsctl.errors import ConfigError
from neimsctl.io.featblock import ATOM_FDIM, BOND_FDIM, ECFP_BITS
from neimsctl.io.spectrum import N_BINS
from neimsctl.models.checks import check_int, config_from_dict, config_to_dict

__all__ = ["SPACES", "TeacherConfig"]

SPACES = ("sqrt", "linear")
_TUPLES = ("ecfp_hidden", "head_hidden")
_POSITIVE = ("atom_dim", "bond_dim", "ecfp_dim", "hidden", "num_layers", "attention_hidden",
             "pool_gate_hidden", "ecfp_out", "n_bins")


@dataclass(frozen=True)
class TeacherConfig:
    """Teacher sizes and options; the defaults are SPEC.md's ("Models": teacher).

    Attributes
    ----------
    atom_dim, bond_dim, ecfp_dim
        Input widths: 48 atom features, 6 bond features, 4096 ECFP4 bits.
    hidden
        Node width of the GNN branch (256).
    num_layers
        Number of GINE blocks (8).
    attention_hidden
        Hidden width of each bond-breaking gate.
    drop_edge
        DropEdge probability per bond (0.2).
    pair_norm
        PairNorm inside each block.
    pool_gate_hidden
        Hidden width of the attention-pooling gate.
    ecfp_hidden, ecfp_out
        ECFP branch: ``ecfp_dim -> *ecfp_hidden -> ecfp_out`` (4096 -> 2048 -> 1024 -> 512).
    head_hidden
        Head widths after the fusion; the last is ``hidden_dim`` (``return_hidden``).
    n_bins
        Output bins, m/z 0..500.
    dropout
        Dropout probability everywhere (also the MC-dropout rate).
    output_space
        ``"sqrt"`` or ``"linear"``: what ``forward`` predicts.
    counts_dim
        Width of the atom-pair count fingerprint (log1p) read next to the ECFP bits by the
        fingerprint branch (``batch.counts``); 0 reads the ECFP bits only.
    fragments
        Also read the fragment masses (``batch.frags``, log1p of the 1002 counts of
        formats/features.v1.md "Fragment masses") in the fingerprint branch, next to the ECFP
        bits and the atom-pair counts.
    output_activation
        ``softplus`` (default: no m/z bin can die) or ``relu`` (exact zeros, like NEIMS v1).
    mass_aware
        NEIMS v1-style bidirectional head anchored at ``batch.mw``.
    max_above_mw
        With ``mass_aware``: bins above the nominal mass still allowed a peak (5, as NEIMS v1).
    """

    atom_dim: int = ATOM_FDIM
    bond_dim: int = BOND_FDIM
    ecfp_dim: int = ECFP_BITS
    counts_dim: int = 0
    fragments: bool = False
    hidden: int = 256
    num_layers: int = 8
    attention_hidden: int = 64
    drop_edge: float = 0.2
    pair_norm: bool = True
    pool_gate_hidden: int = 128
    ecfp_hidden: tuple[int, ...] = (2048, 1024)
    ecfp_out: int = 512
    head_hidden: tuple[int, ...] = (1024, 512)
    n_bins: int = N_BINS
    dropout: float = 0.1
    output_space: str = "sqrt"
    output_activation: str = "softplus"
    mass_aware: bool = False
    max_above_mw: int = 5

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            check_int(f"teacher.{name}", getattr(self, name))
        for name in _TUPLES:
            v = getattr(self, name)
            if not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in v):
                raise ConfigError(f"teacher.{name}: expected a list of positive integers, got {v!r}")
        if not self.head_hidden:
            raise ConfigError("teacher.head_hidden: needs at least one width (the last is hidden_dim)")
        for name in ("drop_edge", "dropout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ConfigError(f"teacher.{name}: expected a probability in [0, 1), got {v!r}")
        for name in ("pair_norm", "mass_aware", "fragments"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"teacher.{name}: expected true or false, got {getattr(self, name)!r}")
        for name in ("counts_dim", "max_above_mw"):
            check_int(f"teacher.{name}", getattr(self, name), minimum=0)
        if self.output_activation not in ("softplus", "relu"):
            raise ConfigError(f"teacher.output_activation must be softplus or relu, "
                              f"got {self.output_activation!r}")
        if self.output_space not in SPACES:
            raise ConfigError(f"teacher.output_space must be one of {SPACES}, got {self.output_space!r}")

    @property
    def pooled_dim(self) -> int:
        """Width of the graph readout, ``3 * hidden`` (768)."""
        return 3 * self.hidden

    @property
    def fusion_dim(self) -> int:
        """Width of the fused representation, ``pooled_dim + ecfp_out`` (1280)."""
        return self.pooled_dim + self.ecfp_out

    @property
    def hidden_dim(self) -> int:
        """Width of ``hidden`` returned by ``forward(..., return_hidden=True)`` (512)."""
        return self.head_hidden[-1]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "TeacherConfig":
        """Build a config from a mapping (e.g. the ``model`` section of a YAML file).

        A ``name`` key, if present, must be ``"teacher"`` (the registry name) and is dropped.

        Raises
        ------
        ConfigError
            On an unknown key, a wrong type or an impossible value.
        """
        data = dict(data or {})
        name = data.pop("name", "teacher")
        if name != "teacher":
            raise ConfigError(f"teacher: model name {name!r} given to the teacher's config")
        return config_from_dict(cls, data, "teacher", tuples=_TUPLES)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists instead of tuples) for YAML and checkpoints."""
        return config_to_dict(self)
