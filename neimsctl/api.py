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

from neimsctl.chem.rowbuild import Item, Rejected
from neimsctl.errors import ConfigError, FormatError
from neimsctl.io.prediction_write import top_peaks
from neimsctl.io.streams import open_out
from neimsctl.predict.model import LoadedModel, load_model
from neimsctl.predict.run import (CHUNK, ChunkPredictor, PredictOptions, predicted,
                                  reject_message, run_predict)

__all__ = ["SpectrumPredictor"]

_DEFAULTS = PredictOptions()
#: The settings a ``SpectrumPredictor`` takes; the defaults are ``neimsctl predict``'s own.
_OPTIONS = {"batch_size": _DEFAULTS.batch_size, "precision": "auto",
            "mc_samples": _DEFAULTS.mc_samples, "threads": None}
_API_FILE = "<input>"


def _items(smiles: Sequence[Any], names: Sequence[str] | None = None, *,
           skip_invalid: bool = False) -> list[Item]:
    """SMILES (and names) as the ``SMILES [name]`` lines ``neimsctl predict`` reads.

    Items keep their position in ``smiles`` as ordinal (``line`` = position + 1).

    Raises
    ------
    FormatError
        An entry that is not one SMILES string (the message names its position), unless
        ``skip_invalid`` leaves it out.
    """
    items = []
    for i, smi in enumerate(smiles):
        if not isinstance(smi, str) or len(smi.split()) != 1:
            if skip_invalid:
                continue
            raise FormatError(f"not a single SMILES: {smi!r}", line=i + 1, file=_API_FILE)
        name = names[i] if names is not None else ""
        items.append(Item(i, _API_FILE, i + 1, "smi", f"{smi.strip()} {name}".strip().encode("utf-8")))
    return items


def _raise(rejects: list[Rejected]) -> None:
    if rejects:
        first = rejects[0]
        raise FormatError(reject_message(first).split(": ", 1)[1], file=_API_FILE,
                          line=first.item.line)


class SpectrumPredictor:
    """Predict EI mass spectra (m/z 0..500, linear intensity, base peak 1) from SMILES.

    Every method runs the pipeline of ``neimsctl predict`` (the same featurizer, model call,
    chunking and defaults), so the same molecules give the same spectra through both.

    Parameters
    ----------
    config
        Optional settings: ``batch_size`` (1024), ``precision`` (``auto``; ``fp32``, ``bf16``,
        ``int8``), ``mc_samples`` (30, teacher uncertainty), ``threads`` (torch threads).
        ``auto`` resolves as in ``neimsctl predict`` (student on a CPU with native bf16:
        ``bf16``); ``{"precision": "int8"}`` trades identical-to-the-CLI spectra for ~0.3 ms
        less single-molecule latency (see :func:`neimsctl.models.quantize.resolve_precision`).
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
        self._stages: dict[tuple[str, bool, bool], ChunkPredictor] = {}

    @property
    def model_type(self) -> str:
        """``student`` or ``teacher``: the loaded architecture."""
        return self.loaded.arch

    def _stage(self, fmt: str = "msp", *, inchikey: bool = False,
               uncertainty: bool = False) -> ChunkPredictor:
        key = (fmt, inchikey, uncertainty)
        if key not in self._stages:
            self._stages[key] = ChunkPredictor(self.loaded, PredictOptions(
                fmt=fmt, batch_size=int(self.options["batch_size"]), uncertainty=uncertainty,
                mc_samples=int(self.options["mc_samples"]), inchikey=inchikey))
        return self._stages[key]

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
        items = _items([smiles] if one else list(smiles))
        if return_uncertainty and self.loaded.arch != "teacher":
            self._stage(uncertainty=True)        # raises the ConfigError of predict_block
        spec, std, rejects = self._spectra(items, uncertainty=return_uncertainty)
        _raise(rejects)
        if return_uncertainty:
            return (spec[0], std[0]) if one else (spec, std)  # type: ignore[index]
        return spec[0] if one else spec

    def _spectra(self, items: list[Item], *, uncertainty: bool = False
                 ) -> tuple[np.ndarray, np.ndarray | None, list[Rejected]]:
        """Spectra of the accepted items, chunk by chunk as ``neimsctl predict`` reads them."""
        stage = self._stage(uncertainty=uncertainty)
        specs, stds, rejects = [], [], []
        for a in range(0, len(items), CHUNK):
            block, spec, std, _, rej = stage.predict(items[a:a + CHUNK])
            specs.append(spec)
            stds.append(std)
            rejects += rej
        n_bins = self.loaded.model.config.n_bins
        spec = np.concatenate(specs) if specs else np.zeros((0, n_bins), np.float32)
        std = np.concatenate(stds) if uncertainty and stds else None
        return spec, std, rejects

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
        items = _items(smiles, skip_invalid=errors == "nan")
        if batch_size is not None and int(batch_size) != int(self.options["batch_size"]):
            saved = self.options["batch_size"]
            self.options["batch_size"], self._stages = int(batch_size), {}
            try:
                spec, _, rejects = self._spectra(items)
            finally:
                self.options["batch_size"], self._stages = saved, {}
        else:
            spec, _, rejects = self._spectra(items)
        if errors == "raise":
            _raise(rejects)
        out = np.full((len(smiles), spec.shape[1]), np.nan, dtype=np.float32)
        bad = {r.item.ordinal for r in rejects}
        rows = [it.ordinal for it in items if it.ordinal not in bad]
        out[np.asarray(rows, dtype=np.int64)] = spec
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
        The records are those ``neimsctl predict`` writes for the same ``SMILES name`` lines.
        """
        one = isinstance(smiles, str)
        smi = [smiles] if one else list(smiles)
        names = [name] if isinstance(name, str) else (list(name) if name is not None else None)
        if names is not None and len(names) != len(smi):
            raise ValueError(f"{len(smi)} SMILES but {len(names)} names")
        if names is not None:
            names = [" ".join(str(n).split()) for n in names]
        items = _items(smi, names)
        stage = self._stage("msp", inchikey=True)
        results = list(predicted(items, stage))
        _raise([r for p in results for r in p.rejects])
        from neimsctl.io.rejects import Tally

        tally = Tally()
        with open_out(Path(path) if str(path) != "-" else "-") as fh:
            run_predict(results, fh, tally)
        return tally.written
