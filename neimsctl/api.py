"""Python API: ``SpectrumPredictor`` (SPEC.md "Prediction"), also ``from neimsctl import SpectrumPredictor``.

Examples
--------
>>> from neimsctl import SpectrumPredictor                       # doctest: +SKIP
>>> p = SpectrumPredictor(checkpoint="student.pt")                # doctest: +SKIP
>>> spec = p.predict_from_smiles("CC(=O)Oc1ccccc1C(=O)O")        # doctest: +SKIP
>>> p.find_top_peaks(spec, top_n=3)                              # doctest: +SKIP
[(43, 1.0), (120, 0.61), (138, 0.38)]
>>> p.export_msp(["CCO", "c1ccccc1"], "out.msp", name=["ethanol", "benzene"])  # doctest: +SKIP
2
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neimsctl.chem.rowbuild import Item
from neimsctl.errors import ConfigError, FormatError
from neimsctl.io.streams import open_out
from neimsctl.predict.run import Featurizer, reject_message
from neimsctl.io.prediction_write import PredictionWriter, top_peaks
from neimsctl.io.spectrum import N_BINS
from neimsctl.predict.model import LoadedModel, load_model, predict_block

__all__ = ["SpectrumPredictor"]

_OPTIONS = {"batch_size": 1024, "precision": "auto", "mc_samples": 30, "threads": None}


class SpectrumPredictor:
    """Predict EI mass spectra (m/z 0..500, linear intensity, base peak 1) from SMILES.

    Parameters
    ----------
    config
        Optional settings: ``batch_size`` (1024), ``precision`` (``auto``; ``fp32``, ``bf16``,
        ``int8``), ``mc_samples`` (30, teacher uncertainty), ``threads`` (torch threads).
        ``auto`` resolves for single-molecule latency (student on a CPU: ``int8``); for large
        :meth:`predict_batch` jobs on a CPU with native bf16, ``{"precision": "bf16"}`` is
        ~2.5x faster (see :func:`neimsctl.models.quantize.resolve_precision`).
    checkpoint
        A neimsctl checkpoint file; ``None`` = the model shipped for ``model_type``.
    model_type
        ``student`` (fast, default) or ``teacher`` (needed for uncertainty); with a checkpoint
        the checkpoint's own architecture is used.
    device
        ``auto``, ``cpu``, ``cuda``...

    Raises
    ------
    neimsctl.errors.CheckpointError
        No such checkpoint (or no shipped model), or one that cannot be loaded.
    neimsctl.errors.ConfigError
        Unknown config key, device or precision.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, checkpoint: str | os.PathLike | None = None,
                 model_type: str = "student", device: str = "auto") -> None:
        cfg = dict(config or {})
        unknown = sorted(set(cfg) - set(_OPTIONS))
        if unknown:
            raise ConfigError(f"SpectrumPredictor config: unknown key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(_OPTIONS)}")
        self.options = {**_OPTIONS, **cfg}
        if self.options["threads"]:
            import torch

            torch.set_num_threads(int(self.options["threads"]))
        self.loaded: LoadedModel = load_model(checkpoint if checkpoint is not None else model_type,
                                              device=device, precision=str(self.options["precision"]))
        self._feat: dict[bool, Featurizer] = {}
        self._student_feat: Any = None

    @property
    def model_type(self) -> str:
        """``student`` or ``teacher``: the loaded architecture."""
        return self.loaded.arch

    def _featurize(self, smiles: Sequence[str], names: Sequence[str] | None = None,
                   inchikey: bool = False, errors: str = "raise") -> tuple[dict, list[int]]:
        if self.loaded.arch == "student" and names is None and not inchikey:
            return self._student_block(smiles, errors)
        if inchikey not in self._feat:
            self._feat[inchikey] = Featurizer(self.loaded.mode, inchikey=inchikey)
        items = []
        for i, smi in enumerate(smiles):
            if not isinstance(smi, str) or not smi.strip() or len(smi.split()) != 1:
                raise FormatError(f"not a single SMILES: {smi!r}", line=i + 1, file="<input>")
            name = names[i] if names is not None else ""
            items.append(Item(i, "<input>", i + 1, "smi", f"{smi} {name}".strip().encode("utf-8")))
        block, rejects = self._feat[inchikey](items)
        if rejects and errors == "raise":
            raise FormatError(reject_message(rejects[0]).split(": ", 1)[1],
                              file="<input>", line=rejects[0].item.line)
        return block, [int(o) for o in block["ordinal"]]

    def _student_block(self, smiles: Sequence[str], errors: str) -> tuple[dict, list[int]]:
        """Fast path (no canonical SMILES/formula/InChIKey): just the student's fingerprints."""
        from rdkit import Chem

        from neimsctl.chem.features import StudentFeaturizer
        from neimsctl.chem.structure import nominal_mass

        if self._student_feat is None:
            self._student_feat = StudentFeaturizer()
        ecfp, counts, mws, rows = [], [], [], []
        for i, smi in enumerate(smiles):
            mol = Chem.MolFromSmiles(smi) if isinstance(smi, str) and smi.strip() else None
            if mol is None or mol.GetNumAtoms() == 0:
                if errors == "raise":
                    raise FormatError(f"cannot parse SMILES {smi!r}", file="<input>", line=i + 1)
                continue
            f = self._student_feat(mol)
            ecfp.append(f.ecfp)
            counts.append(f.counts)
            mws.append(nominal_mass(mol))
            rows.append(i)
        if not rows:
            return {"ordinal": np.zeros(0, np.int64)}, []
        return {"ordinal": np.asarray(rows), "ecfp": np.stack(ecfp), "counts": np.stack(counts),
                "mw": np.asarray(mws, np.int32)}, rows

    def predict_from_smiles(self, smiles: str | Sequence[str], return_uncertainty: bool = False
                            ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Spectrum ``(501,)`` of one SMILES (``(n, 501)`` for a list), float32, base peak 1.

        With ``return_uncertainty`` (teacher only) returns ``(mean, std)``: MC-dropout mean
        and per-bin standard deviation on the same scale.

        Raises
        ------
        neimsctl.errors.FormatError
            A SMILES RDKit cannot parse (the message names it and its position).
        neimsctl.errors.ConfigError
            ``return_uncertainty`` with a student model.
        """
        one = isinstance(smiles, str)
        block, _ = self._featurize([smiles] if one else list(smiles))
        spec, std, _ = predict_block(self.loaded, block, batch_size=int(self.options["batch_size"]),
                                     uncertainty=return_uncertainty,
                                     mc_samples=int(self.options["mc_samples"]))
        if return_uncertainty:
            return (spec[0], std[0]) if one else (spec, std)  # type: ignore[index]
        return spec[0] if one else spec

    def predict_batch(self, smiles: Sequence[str], batch_size: int | None = None,
                      errors: str = "raise") -> np.ndarray:
        """Spectra ``(n, 501)`` of a list of SMILES, in order.

        Parameters
        ----------
        batch_size
            Molecules per model call (default: the config's).
        errors
            ``raise`` (default): a bad SMILES raises :class:`~neimsctl.errors.FormatError`;
            ``nan``: its row is all NaN.
        """
        if errors not in ("raise", "nan"):
            raise ValueError(f"errors must be 'raise' or 'nan', got {errors!r}")
        smiles = list(smiles)
        out = np.full((len(smiles), N_BINS), np.nan, dtype=np.float32)
        bs = int(batch_size or self.options["batch_size"])
        for a in range(0, len(smiles), max(bs, 1024)):
            block, rows = self._featurize(smiles[a:a + max(bs, 1024)], errors=errors)
            if rows:
                spec, _, _ = predict_block(self.loaded, block, batch_size=bs)
                out = out if out.shape[1] == spec.shape[1] else \
                    np.full((len(smiles), spec.shape[1]), np.nan, dtype=np.float32)
                out[a + np.asarray(rows)] = spec
        return out

    @staticmethod
    def find_top_peaks(spectrum: np.ndarray, top_n: int = 10, threshold: float = 0.01
                       ) -> list[tuple[int, float]]:
        """The ``top_n`` largest peaks ``(m/z, intensity relative to base)``, descending,
        leaving out peaks below ``threshold`` of the base peak."""
        return top_peaks(spectrum, top_n, threshold)

    def export_msp(self, smiles: str | Sequence[str], path: str | os.PathLike,
                   name: str | Sequence[str] | None = None) -> int:
        """Predict and write MSP (base peak 999; InChIKey, formula, MW, model comment) to ``path``.

        Returns the number of records written. ``path`` ``-`` writes to stdout.
        """
        one = isinstance(smiles, str)
        smi = [smiles] if one else list(smiles)
        names = [name] if isinstance(name, str) else (list(name) if name is not None else None)
        if names is not None and len(names) != len(smi):
            raise ValueError(f"{len(smi)} SMILES but {len(names)} names")
        if names is not None:
            names = [" ".join(str(n).split()) for n in names]
        block, _ = self._featurize(smi, names, inchikey=True)
        spec, _, experts = predict_block(self.loaded, block, batch_size=int(self.options["batch_size"]))
        with open_out(Path(path) if str(path) != "-" else "-") as fh:
            return PredictionWriter(fh, "msp", model_desc=self.loaded.describe())(block, spec)
