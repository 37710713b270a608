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

Library search (``neimsctl search``), ``SpectralLibrary`` / ``open_index``:

>>> from neimsctl.api import open_index                         # doctest: +SKIP
>>> lib = open_index("library.h5")                               # doctest: +SKIP
>>> hits = lib.search([{"mz": [77, 105, 182], "intensity": [40, 999, 300], "mw": 182}],
...                   top=5, score="cosine", mass_filter=5)      # doctest: +SKIP
>>> hits[0][0]["hit_name"], hits[0][0]["score"]                  # doctest: +SKIP
('Benzophenone', 0.9731)
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neimsctl.chem.rowbuild import Item, Rejected
from neimsctl.errors import ConfigError, FormatError, InputError, shown_value
from neimsctl.io.prediction_write import top_peaks
from neimsctl.io.streams import open_out
from neimsctl.predict.ensemble import LoadedEnsemble
from neimsctl.predict.model import LoadedModel, load_model
from neimsctl.predict.run import (CHUNK, ChunkPredictor, PredictOptions, predicted,
                                  reject_message, run_predict)

__all__ = ["SpectrumPredictor", "SpectralLibrary", "open_index"]

_DEFAULTS = PredictOptions()
#: The settings a ``SpectrumPredictor`` takes; the defaults are ``neimsctl predict``'s own.
_OPTIONS = {"batch_size": _DEFAULTS.batch_size, "precision": "auto",
            "mc_samples": _DEFAULTS.mc_samples, "threads": None, "average": None,
            "sharpen": None}
#: The least value of each integer setting, as ``neimsctl predict``'s options (``--batch-size``,
#: ``--mc-samples``, ``--threads``: 0 = torch's default; ``threads`` None leaves torch's as well).
_LEAST = {"batch_size": 1, "mc_samples": 2, "threads": 0}
_API_FILE = "<input>"


def _integer(name: str, value: Any, least: int) -> int:
    """``value`` as an int, if it is an integer >= ``least`` (else ConfigError naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _smiles_list(smiles: Any, where: str) -> tuple[bool, list[Any]]:
    """``(one, list)``: a SMILES string as a list of one, a sequence (or iterable) as a list.

    Raises
    ------
    TypeError
        Neither (``None``, a number, bytes): named, instead of Python's "object is not iterable".
    """
    if isinstance(smiles, np.ndarray) and smiles.ndim == 0:
        smiles = smiles.item()       # np.array("CCO"): one value, not a sequence to iterate
    if isinstance(smiles, str):
        return True, [smiles]
    if isinstance(smiles, (bytes, bytearray)) or not isinstance(smiles, Iterable):
        raise TypeError(f"{where}: expects a SMILES string or a sequence of them, got "
                        f"{type(smiles).__name__}")
    return False, list(smiles)


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
    chunking and defaults), so the same molecules give the same spectra through both (a single
    molecule's call on a CPU with AMX tiles: within bf16 rounding, see
    :mod:`neimsctl.models.student_stack`).

    Parameters
    ----------
    config
        Optional settings: ``batch_size`` (1024), ``precision`` (``auto``; ``fp32``, ``bf16``,
        ``int8``), ``mc_samples`` (30, teacher uncertainty), ``threads`` (torch threads),
        ``average`` (an ensemble's averaging space: ``linear`` or ``sqrt``; default: the
        ensemble files' own when every model is one and they agree, else ``linear``),
        ``sharpen`` (the power an ensemble raises its average to, 0.25 to 4; default by the same
        rule, else 1; the shipped default's file says 1.1).
        ``auto`` resolves as in ``neimsctl predict`` (student on a CPU with native bf16:
        ``bf16``). A single model at ``{"precision": "int8"}`` trades identical-to-the-CLI
        spectra for ~0.3 ms less single-molecule latency; an ensemble (the shipped default)
        is fastest as it is: at ``auto`` its students run as one on a single molecule
        (:mod:`neimsctl.models.student_stack`), int8 members run one by one (see
        :func:`neimsctl.models.quantize.resolve_precision`, BENCHMARKS.md).
    checkpoint
        A neimsctl checkpoint file or ensemble file (``neimsctl ensemble``), or a list of
        them (an ensemble: their spectra are averaged); ``None`` = the model shipped for
        ``model_type``.
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
        Unknown config key, device or precision; ``batch_size`` not an integer >= 1,
        ``mc_samples`` not an integer >= 2, ``threads`` not None nor an integer >= 0 (the
        ranges of ``neimsctl predict``'s options); ``average`` or ``sharpen`` for one model
        that is no ensemble, or ``sharpen`` out of its range.
    """

    def __init__(self, config: Mapping[str, Any] | None = None,
                 checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                 model_type: str = "student", device: str = "auto") -> None:
        cfg = dict(config or {})
        unknown = sorted(set(cfg) - set(_OPTIONS))
        if unknown:
            raise ConfigError(f"SpectrumPredictor config: unknown key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(_OPTIONS)}")
        self.options = {**_OPTIONS, **cfg}
        for key, least in _LEAST.items():
            if key == "threads" and self.options[key] is None:
                continue
            self.options[key] = _integer(f"SpectrumPredictor config: {key}", self.options[key], least)
        if self.options["threads"]:
            import torch

            from neimsctl.io.parallel import max_jobs

            if self.options["threads"] > max_jobs():
                raise ConfigError(f"SpectrumPredictor config: threads must be at most {max_jobs()} "
                                  f"(4 per core of this machine), got {self.options['threads']}")

            torch.set_num_threads(int(self.options["threads"]))
        if self.options["sharpen"] is not None:
            from neimsctl.models.checkpoint import sharpen_problem

            if (problem := sharpen_problem(self.options["sharpen"])) is not None:
                raise ConfigError(f"SpectrumPredictor config: sharpen {problem}")
            self.options["sharpen"] = float(self.options["sharpen"])
        spec: Any = model_type if checkpoint is None else \
            checkpoint if isinstance(checkpoint, (str, os.PathLike)) else list(checkpoint)
        self.loaded: LoadedModel | LoadedEnsemble = load_model(
            spec, device=device, precision=str(self.options["precision"]),
            average=self.options["average"], sharpen=self.options["sharpen"])
        for key in ("average", "sharpen"):
            if self.options[key] is not None and self.loaded.arch != "ensemble":
                raise ConfigError(f"SpectrumPredictor config: {key!r} needs an ensemble (several "
                                  "checkpoints, or an ensemble file)")
        self._stages: dict[tuple[str, bool, bool, int], ChunkPredictor] = {}

    @property
    def model_type(self) -> str:
        """``student``, ``teacher``, ``neims-v1`` or ``ensemble``: the loaded architecture."""
        return self.loaded.arch

    def _stage(self, fmt: str = "msp", *, inchikey: bool = False, uncertainty: bool = False,
               batch_size: int | None = None) -> ChunkPredictor:
        """The pipeline for these settings (``batch_size``: the config's when None; another one
        gets a pipeline of its own, not cached). Nothing shared is changed, so threads may call
        with their own batch sizes (predict_batch(batch_size=...) swapped the config's for the
        call: two threads left it at one of theirs for good)."""
        size = int(self.options["batch_size"]) if batch_size is None else batch_size
        key = (fmt, inchikey, uncertainty, size)
        stage = self._stages.get(key)
        if stage is None:
            stage = ChunkPredictor(self.loaded, PredictOptions(
                fmt=fmt, batch_size=size, uncertainty=uncertainty,
                mc_samples=int(self.options["mc_samples"]), inchikey=inchikey))
            if size == self.options["batch_size"]:
                self._stages[key] = stage
        return stage

    def predict_from_smiles(self, smiles: str | Sequence[str], return_uncertainty: bool = False
                            ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Spectrum ``(501,)`` of one SMILES (``(n, 501)`` for a list), float32, base peak 1.

        With ``return_uncertainty`` (teacher or ensemble) returns ``(mean, std)``: the mean
        and per-bin standard deviation on the same scale (MC dropout; an ensemble's member
        disagreement).

        Raises
        ------
        TypeError
            ``smiles`` neither a string nor a sequence of them (``None``, a number, bytes).
        neimsctl.errors.FormatError
            A SMILES RDKit cannot parse (the message names it and its position).
        neimsctl.errors.ConfigError
            ``return_uncertainty`` with a student model.
        """
        one, smi = _smiles_list(smiles, "predict_from_smiles")
        items = _items(smi)
        if return_uncertainty and not self.loaded.supports_uncertainty:
            self._stage(uncertainty=True)        # raises the ConfigError of predict_block
        spec, std, rejects = self._spectra(items, uncertainty=return_uncertainty)
        _raise(rejects)
        if return_uncertainty:
            return (spec[0], std[0]) if one else (spec, std)  # type: ignore[index]
        return spec[0] if one else spec

    def _spectra(self, items: list[Item], *, uncertainty: bool = False, batch_size: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, list[Rejected]]:
        """Spectra of the accepted items, chunk by chunk as ``neimsctl predict`` reads them."""
        stage = self._stage(uncertainty=uncertainty, batch_size=batch_size)
        specs, stds, rejects = [], [], []
        for a in range(0, len(items), CHUNK):
            block, spec, std, _, rej = stage.predict(items[a:a + CHUNK])
            specs.append(spec)
            stds.append(std)
            rejects += rej
        n_bins = self.loaded.n_bins
        spec = np.concatenate(specs) if specs else np.zeros((0, n_bins), np.float32)
        std = None if not uncertainty else \
            np.concatenate(stds) if stds else np.zeros((0, n_bins), np.float32)
        return spec, std, rejects

    def predict_batch(self, smiles: str | Sequence[str], batch_size: int | None = None,
                      errors: str = "raise") -> np.ndarray:
        """Spectra ``(n, 501)`` of a list of SMILES, in order.

        Parameters
        ----------
        smiles
            SMILES strings; a single string is one SMILES (``(1, 501)``), never its characters.
        batch_size
            Molecules per model call, an integer >= 1 (default: the config's).
        errors
            ``raise`` (default): a bad SMILES raises :class:`~neimsctl.errors.FormatError`;
            ``nan``: its row is all NaN.

        Raises
        ------
        TypeError
            ``smiles`` neither a string nor a sequence of them (``None``, a number, bytes).
        neimsctl.errors.FormatError
            With ``errors="raise"``: an entry that is not one SMILES string, or one RDKit
            cannot parse (the message names its position).
        neimsctl.errors.ConfigError
            ``batch_size`` not an integer >= 1, ``errors`` neither ``raise`` nor ``nan``.
        """
        if errors not in ("raise", "nan"):
            raise ConfigError(f"errors must be 'raise' or 'nan', got {errors!r}")
        if batch_size is not None:
            batch_size = _integer("batch_size", batch_size, _LEAST["batch_size"])
        smiles = _smiles_list(smiles, "predict_batch")[1]
        items = _items(smiles, skip_invalid=errors == "nan")
        spec, _, rejects = self._spectra(items, batch_size=batch_size)
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
        leaving out peaks below ``threshold`` of the base peak.

        Parameters
        ----------
        spectrum
            One dense spectrum ``(501,)`` (a row of :meth:`predict_batch`), finite, >= 0.
        top_n
            Peaks at most, an integer >= 1 (``neimsctl predict --top``).
        threshold
            A finite number >= 0, relative to the base peak.

        Raises
        ------
        neimsctl.errors.FormatError
            ``spectrum`` not one 1-D spectrum of numbers (a batch ``(n, 501)``: take a row),
            or with negative or non-finite values.
        neimsctl.errors.ConfigError
            ``top_n`` or ``threshold`` out of range.
        """
        top_n = _integer("top_n", top_n, 1)
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) \
                or not (math.isfinite(threshold) and threshold >= 0):
            raise ConfigError(f"threshold must be a finite number >= 0, got {threshold!r}")
        try:
            s = np.asarray(spectrum, dtype=np.float64)
        except (TypeError, ValueError):
            raise FormatError(f"find_top_peaks: not a spectrum of numbers: {repr(spectrum)[:80]}") from None
        if s.ndim != 1:
            raise FormatError(f"find_top_peaks: one spectrum (1-D) is needed, got shape {s.shape}"
                              + (" (a batch: pass one row)" if s.ndim == 2 else ""))
        if not np.isfinite(s).all() or (s < 0).any():
            raise FormatError("find_top_peaks: the spectrum has negative or non-finite values")
        return top_peaks(s, top_n, threshold)

    def export_msp(self, smiles: str | Sequence[str], path: str | os.PathLike,
                   name: str | Sequence[str] | None = None) -> int:
        """Predict and write MSP (base peak 999; InChIKey, formula, MW, model comment) to ``path``.

        Returns the number of records written. ``path`` ``-`` writes to stdout.
        The records are those ``neimsctl predict`` writes for the same ``SMILES name`` lines.

        Raises
        ------
        TypeError
            ``smiles`` neither a string nor a sequence of them (``None``, a number, bytes).
        neimsctl.errors.ConfigError
            ``name`` a sequence of another length than ``smiles``.
        neimsctl.errors.FormatError
            An entry that is not one SMILES string, or one RDKit cannot read (nothing written).
        """
        one, smi = _smiles_list(smiles, "export_msp")
        names = [name] if isinstance(name, str) else (list(name) if name is not None else None)
        if names is not None and len(names) != len(smi):
            raise ConfigError(f"export_msp: {len(smi)} SMILES but {len(names)} names: one name per "
                              "SMILES, or None")
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


class SpectralLibrary:
    """One or more search libraries, searched together as ``neimsctl search --library`` does.

    Parameters
    ----------
    paths
        Index files (``neimsctl index``) and/or small MSP / JSONL libraries (indexed in memory).

    Raises
    ------
    InputError, FormatError
        A library that is missing, truncated, of another index version, or without spectra.
    """

    def __init__(self, *paths: str | os.PathLike) -> None:
        from neimsctl.io.rejects import Tally
        from neimsctl.search.run import open_libraries

        if not paths:
            raise ConfigError("SpectralLibrary needs at least one library path")
        self.rejects = Tally()
        self.libraries = open_libraries([str(p) for p in paths], self.rejects)
        self.closed = False

    def __len__(self) -> int:
        return sum(len(lib) for lib in self.libraries)

    def close(self) -> None:
        """Close the libraries' files; :meth:`search` then raises :class:`~neimsctl.errors.InputError`."""
        for lib in self.libraries:
            lib.close()
        self.closed = True

    def __enter__(self) -> SpectralLibrary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def search(self, spectra: Any, *, top: int = 10, score: str | None = None, reverse: bool = False,
               mass_filter: float | None = None, candidates: str | Sequence[str] | None = None,
               source: str | None = None, mz_power: float = 1.0,
               intensity_power: float = 0.5) -> list[list[dict[str, Any]]]:
        """The ``top`` hits of each query spectrum, best first (the CLI's columns as dict keys).

        Parameters
        ----------
        spectra
            A path to an MSP / JSONL file of queries; or a sequence of queries, each a dict
            with ``mz`` and ``intensity`` (optional ``mw``, ``id``, ``name``, ``smiles``,
            ``formula``) or a ``(mz, intensity)`` pair; or a dense array ``(n, 501)`` (one
            query per row, the intensity at each m/z). A query's ``mw`` is its nominal mass
            (a number, rounded); ``None`` or ``0`` is unknown, as an MSP's ``MW: 0`` is to
            ``neimsctl search``: its mass then comes from its SMILES or formula, else it is
            searched unfiltered.
        top
            Hits per query, an integer >= 1 (``--top``); more than the libraries hold is
            capped to their size, as the CLI does.
        score
            ``cosine``, ``composite`` or ``entropy`` (``--score``); None: the default, cosine.
        reverse, mass_filter, source, mz_power, intensity_power
            As ``neimsctl search``, with its ranges: ``mass_filter`` a finite number >= 0 (Da)
            or None; ``source`` None, ``"measured"`` or ``"predicted"``; ``mz_power`` and
            ``intensity_power`` finite numbers in 0..10, for the cosine only.
        candidates
            InChIKeys (or their first blocks), SMILES or InChIs: only these compounds are hits. A single
            string is one candidate. Every candidate must be one of these and match an entry
            of the libraries (``neimsctl search --candidates`` reports the others and exits 1);
            an empty list is refused (None searches every entry).

        Returns
        -------
        list of list of dict
            Per query, its hits: ``query_id``, ``query_name``, ``rank``, ``score``, ``hit_id``,
            ``hit_name``, ``inchikey``, ``smiles``, ``formula``, ``mw``, ``mass_diff``,
            ``source`` (measured/predicted), ``library``.

        Raises
        ------
        neimsctl.errors.ConfigError
            An option out of the range above (the value and the range named); ``candidates``
            empty, or with an entry that is neither an InChIKey nor a parsable SMILES or InChI, or that
            matches no library entry (each named with its position).
        neimsctl.errors.FormatError
            A query without peaks, with non-numeric, negative or non-finite peaks (a dense
            row's too), m/z above 500, or an ``mw`` that is no mass (a non-number, NaN,
            infinite or negative); a query that is neither a dict nor an ``(mz, intensity)``
            pair (its position named). A query file's first such record raises as soon as it
            is read, named by file, line and record (``neimsctl search`` skips it and exits 1).
        neimsctl.errors.InputError
            ``spectra`` none of the forms above (None, a single query dict, a 1-D array), a
            query file that cannot be read; the library is closed.
        """
        from neimsctl.evaluate.matching import DEFAULT_SCORE, Score
        from neimsctl.io.rejects import Tally
        from neimsctl.search.options import cap_top, check_search_args
        from neimsctl.search.run import SearchOptions, read_queries, search_table

        if self.closed:
            raise InputError("the library is closed (SpectralLibrary.close): open it again to search")
        check_search_args(top=top, score=score, reverse=reverse, mass_filter=mass_filter, source=source,
                          mz_power=mz_power, intensity_power=intensity_power)
        spec = Score(score or DEFAULT_SCORE, float(mz_power), float(intensity_power), bool(reverse))
        opts = SearchOptions(spec, cap_top(int(top), len(self)),
                             None if mass_filter is None else float(mass_filter), None, source)
        if candidates is not None:
            opts.candidates = self._candidates(candidates)
        tally = Tally()
        if isinstance(spectra, (str, os.PathLike)):
            # the first query that cannot be searched stops the search, as soon as it is read
            batches = read_queries([spectra], tally, warn=_raise_reject)
        else:
            batches = iter([_query_batch(spectra)])
        out: list[list[dict[str, Any]]] = []
        for qb in batches:
            out.extend(search_table(self.libraries, qb, opts).rows(spec))
        return out

    def _candidates(self, candidates: str | Sequence[str]) -> set[str]:
        """Connectivity blocks of ``candidates`` (a str is one), each checked as
        ``neimsctl search --candidates`` checks the lines of its file (a problem: ConfigError)."""
        from neimsctl.search.run import match_candidates, shown_candidate

        given = [candidates] if isinstance(candidates, str) else candidates
        try:
            given = list(given)
        except TypeError:
            raise ConfigError(f"candidates must be a list of InChIKeys or SMILES, got {candidates!r}") from None
        if not given:
            raise ConfigError("candidates is empty: give None to search every entry")
        for i, c in enumerate(given):
            if not isinstance(c, str) or not c.strip() or len(c.split()) != 1:
                raise ConfigError(f"candidates[{i}]: {c!r}: not one InChIKey or SMILES")
        blocks, bad = match_candidates([c.strip() for c in given], self.libraries)
        problems = [f"candidates[{i}]: {shown_candidate(given[i].strip())}: {detail}" for i, _, detail in bad]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ConfigError("; ".join(problems[:3]) + more)
        return blocks


def _raise_reject(r: Any) -> None:
    """A query of a file that cannot be searched: :class:`FormatError` naming its file, line and
    record."""
    raise FormatError(f"{r.reason}: {r.detail}", file=r.file, line=r.line, record=r.record or r.id)


def open_index(*paths: str | os.PathLike) -> SpectralLibrary:
    """Open search libraries (see :class:`SpectralLibrary`)."""
    return SpectralLibrary(*paths)


def _query_batch(spectra: Any):  # type: ignore[no-untyped-def]
    """Queries given as Python objects -> a ``QueryBatch`` (every one checked, as the CLI checks
    the records of a query file)."""
    from neimsctl.io.peak_block import check_peaks
    from neimsctl.io.spectrum_records import SpectrumRecord
    from neimsctl.search.build import complete_record
    from neimsctl.search.run import _batch

    if isinstance(spectra, np.ndarray):
        if spectra.ndim != 2:
            raise InputError(f"spectra: a dense array must be (n, 501), one query per row, got shape "
                             f"{spectra.shape}")
        # every m/z whose intensity is not 0 (negative and NaN ones too: check_peaks refuses them)
        nonzero = [np.flatnonzero(row != 0) for row in spectra]
        spectra = [(mz, row[mz]) for mz, row in zip(nonzero, spectra)]
    elif spectra is None or isinstance(spectra, (Mapping, bytes)) or not isinstance(spectra, Iterable):
        what = "a single query: pass a list of queries" if isinstance(spectra, Mapping) else repr(spectra)[:80]
        raise InputError(f"spectra must be a query file path, a sequence of queries or an (n, 501) array, "
                         f"got {what}")
    recs = []
    for i, q in enumerate(spectra):
        if isinstance(q, Mapping):
            qid = str(i + 1 if q.get("id") is None else q["id"])    # None: no id, as no name
            rec = SpectrumRecord(_API_FILE, i + 1, i + 1, qid, str(q.get("name") or ""),
                                 str(q.get("inchikey", "") or ""), str(q.get("smiles", "") or ""),
                                 str(q.get("formula", "") or ""), _query_mw(q.get("mw"), i, qid),
                                 mz=q.get("mz"), intensity=q.get("intensity"))
        elif isinstance(q, (Sequence, np.ndarray)) and not isinstance(q, (str, bytes)) and len(q) == 2:
            mz, inten = q
            rec = SpectrumRecord(_API_FILE, i + 1, i + 1, str(i + 1), mz=mz, intensity=inten)
        else:
            raise FormatError(f"a query is a dict with mz and intensity, or an (mz, intensity) pair; got "
                              f"{repr(q)[:80]}", file=_API_FILE, line=i + 1)
        problem = check_peaks(rec.mz, rec.intensity)
        if problem is not None:
            raise FormatError(f"{problem[0]}: {problem[1]}", file=_API_FILE, line=i + 1)
        complete_record(rec)
        recs.append(rec)
    return _batch(recs)


def _query_mw(value: Any, i: int, qid: str) -> int | None:
    """A query's ``mw`` as a nominal mass; ``None`` (or 0) unknown, as ``neimsctl search`` reads an
    MSP's ``MW: 0``."""
    from neimsctl.io.spectrum import MASS_LIMIT

    if value is None:
        return None
    try:
        mass = float(value) if not isinstance(value, (bool, bytes)) else math.nan
    except (TypeError, ValueError, OverflowError):      # (an int past float's range: 10**400)
        mass = math.nan
    if not (math.isfinite(mass) and 0 <= mass < MASS_LIMIT):
        raise FormatError(f"mw {shown_value(value)} is no nominal mass (a number 0..{MASS_LIMIT - 1}; None or 0: "
                          "unknown)", file=_API_FILE, line=i + 1, record=qid)
    return int(round(mass)) or None
