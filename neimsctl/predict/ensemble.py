"""Ensembles: several models whose predicted spectra are averaged.

An ensemble is given as several ``--model`` options (``predict --model A --model B``) or as
one ensemble file (``neimsctl.ensemble/1``, written by ``neimsctl ensemble``;
formats/ensemble.v2.md). Its members may be any mix of students, NEIMS v1 models and GNN
teachers: the molecules are featurized once, in the mode that holds every member's inputs
(:attr:`LoadedEnsemble.mode`), and each member predicts from the same block.

The members' spectra (linear, base peak 1) are averaged in one of two spaces
(:func:`average_spectra`): ``linear`` (the mean intensity) or ``sqrt`` (the mean of the square
roots, squared: a geometric-like mean that keeps a peak only a few members predict smaller);
the result is scaled to base peak 1 again. An ensemble may then raise the averaged spectrum to
a power (``sharpen``, :func:`sharpen_spectra`; 1 = as averaged): an average of several models
is flatter than any of them, and a power a little above 1 gives back the contrast between
peaks that library matching ranks by (the shipped default: 1.1, chosen on the validation split;
BENCHMARKS.md "Sharpened ensembles"). With ``uncertainty`` the per-peak spread is the
members' disagreement (their standard deviation) plus, for teacher members, their MC-dropout
variance (the law of total variance), on the scale of the averaged spectrum (through the
power's derivative when it is sharpened).
"""

from __future__ import annotations

import os

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np
import torch

from neimsctl.errors import CheckpointError, ConfigError
from neimsctl.models.checkpoint import AVERAGES, ensemble_sharpen, power_text, sharpen_problem
from neimsctl.models.student_stack import StudentStack
from neimsctl.predict.model import (LoadedModel, below_min_mz_cleared, linear_base_one, predict_block,
                                    student_input_key, student_rows, student_spectra)

__all__ = ["LoadedEnsemble", "average_spectra", "sharpen_spectra", "ensemble_average",
           "choose_average", "choose_sharpen", "DEFAULT_AVERAGE", "DEFAULT_SHARPEN"]

#: The averaging space of an ensemble given as several ``--model`` (or bundled without
#: ``--average``): measured on the validation split (the GNN teacher + three students: Recall@10
#: 0.889 linear vs 0.884 sqrt, mean cosine 0.746 vs 0.743; BENCHMARKS.md "Issue 18").
DEFAULT_AVERAGE = "linear"
#: The power of an ensemble given as several ``--model`` (or bundled without ``--sharpen``)
#: whose files do not agree on one: the average as it is.
DEFAULT_SHARPEN = 1.0


def ensemble_average(average: str | None, files: Sequence[dict[str, Any]] = ()) -> str:
    """The averaging space: ``average`` when given, else the ensemble files' own (when they
    agree), else :data:`DEFAULT_AVERAGE`.

    Raises
    ------
    ConfigError
        An unknown ``average``.
    """
    if average is not None:
        if average not in AVERAGES:
            raise ConfigError(f"--average {average!r}: choose one of {', '.join(AVERAGES)}")
        return average
    own = {str(f.get("average")) for f in files}
    return own.pop() if len(own) == 1 else DEFAULT_AVERAGE


def _overruled(what: str, result: str, flag: str, chosen: Any,
               own: Sequence[tuple[str, Any]], log: TextIO | None) -> None:
    """Tell ``log`` that the ensemble files' own ``what`` (``own``: ``(name, value)``) is not
    the ``chosen`` one, and what is done instead (``result``)."""
    if log is not None and any(v != chosen for _, v in own):
        print(f"neimsctl: warning: the ensemble files' own {what} "
              f"({', '.join(f'{n}: {v}' for n, v in own)}) are not used: {result} "
              f"(the default when the models are not all ensemble files of one {what[:-1]}; "
              f"{flag} to choose)", file=log, flush=True)


def choose_average(average: str | None, files: Sequence[tuple[str, dict[str, Any]]],
                   n_models: int, log: TextIO | None) -> str:
    """The averaging space of ``n_models`` models of which ``files`` (``(name, checkpoint)``)
    are ensemble files: :func:`ensemble_average` of the files' own averages when every model is
    one, else of none (``neimsctl ensemble`` and ``predict -m A -m B`` decide alike). ``log`` is
    told when that overrules an ensemble file's own average and no ``average`` was asked for."""
    chosen = ensemble_average(average, [c for _, c in files] if len(files) == n_models else ())
    if average is None:
        _overruled("averages", f"the members are averaged {chosen}", "--average", chosen,
                   [(name, str(ckpt.get("average"))) for name, ckpt in files], log)
    return chosen


def choose_sharpen(sharpen: float | None, files: Sequence[tuple[str, dict[str, Any]]],
                   n_models: int, log: TextIO | None) -> float:
    """The power an ensemble of ``n_models`` models raises its average to, by the rule of
    :func:`choose_average`: ``sharpen`` when given, else the ensemble files' own when every
    model is one and they agree, else :data:`DEFAULT_SHARPEN`.

    Raises
    ------
    ConfigError
        A ``sharpen`` outside :data:`~neimsctl.models.checkpoint.SHARPEN_RANGE`.
    """
    if sharpen is not None:
        if (problem := sharpen_problem(sharpen)) is not None:
            raise ConfigError(f"--sharpen {problem}")
        return float(sharpen)
    own = [(name, ensemble_sharpen(ckpt)) for name, ckpt in files]
    values = {v for _, v in own}
    chosen = values.pop() if len(files) == n_models and len(values) == 1 else DEFAULT_SHARPEN
    _overruled("sharpen powers", f"the average is raised to the power {power_text(chosen)}", "--sharpen",
               chosen, own, log)
    return chosen


def average_spectra(spectra: np.ndarray, average: str) -> np.ndarray:
    """The mean of ``spectra`` ``(k, n, bins)`` (linear intensities >= 0) over its first axis,
    in ``average`` space, unnormalised: ``(n, bins)`` float64."""
    s = np.asarray(spectra, dtype=np.float64)
    if average == "linear":
        return s.mean(axis=0)
    if average == "sqrt":
        return np.square(np.sqrt(np.clip(s, 0.0, None)).mean(axis=0))
    raise ConfigError(f"average {average!r}: choose one of {', '.join(AVERAGES)}")


def sharpen_spectra(mean: np.ndarray, std: np.ndarray | None, power: float
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """``mean ** power`` (an averaged spectrum, intensities >= 0, any scale) and its spread
    carried through the power's derivative, ``power * mean ** (power - 1) * std`` (0 where the
    mean is 0). ``power == 1`` gives both back unchanged."""
    if power == 1.0:
        return mean, std
    out = np.power(mean, power)
    if std is None:
        return out, None
    slope = np.divide(power * out, mean, out=np.zeros_like(out), where=mean > 0)
    return out, slope * std


@dataclass
class LoadedEnsemble:
    """Several :class:`~neimsctl.predict.model.LoadedModel` that predict as one.

    It answers what ``predict``, ``eval`` and the API ask of a loaded model (``arch``,
    ``mode``, ``describe()``, ``device``, ``n_bins``...) and predicts with :meth:`predict`
    (``predict_block`` calls it).

    Attributes
    ----------
    members
        The loaded members, in the order given (ensemble files flattened).
    average
        ``linear`` or ``sqrt`` (:func:`average_spectra`).
    sharpen
        The power the average is raised to (:func:`sharpen_spectra`; 1 = as averaged).
    label
        What ``--model`` said (``A+B`` for several).
    path, sha, card
        The ensemble file, its sha256 (12 digits) and model card, when one file was given.
    """

    members: list[LoadedModel]
    average: str
    label: str
    device: torch.device
    path: Path | None = None
    sha: str = ""
    card: dict[str, Any] = field(default_factory=dict)
    file_bytes: int = 0
    sharpen: float = DEFAULT_SHARPEN
    #: (the members' identities, modes, dtypes; the stacks built for them), see _stacks
    _stack_cache: tuple[list, list[tuple[list[int], StudentStack]]] | None = field(
        default=None, repr=False, compare=False)

    arch = "ensemble"

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a spawned worker) without its stacks: copies of weights it already holds."""
        return {**self.__dict__, "_stack_cache": None}

    def __post_init__(self) -> None:
        bins = {m.n_bins for m in self.members}
        if len(bins) != 1:
            raise ConfigError("ensemble members must predict the same bins: "
                              + ", ".join(f"{m.label} ({m.path}): {m.n_bins}" for m in self.members))

    @property
    def needs(self) -> set[str]:
        return {m.needs for m in self.members}

    @property
    def mode(self) -> str:
        """The featurizer mode whose blocks hold every member's inputs: ``teacher`` when a
        member is a GNN teacher (its blocks hold the fingerprints too), else ``v1`` when a
        NEIMS v1 member reads Morgan counts, else ``student``."""
        needs = self.needs
        return "teacher" if "teacher" in needs else "v1" if "v1" in needs else "student"

    @property
    def extra_v1(self) -> bool:
        """Teacher blocks need the Morgan counts too (a teacher and a Morgan NEIMS v1 member)."""
        return self.mode == "teacher" and "v1" in self.needs

    @property
    def reads_fragments(self) -> bool:
        """Some member reads the fragment masses."""
        return any(m.reads_fragments for m in self.members)

    @property
    def n_bins(self) -> int:
        return self.members[0].n_bins

    @property
    def n_parameters(self) -> int:
        return sum(m.n_parameters for m in self.members)

    @property
    def precision(self) -> str:
        return "+".join(dict.fromkeys(m.precision for m in self.members))

    @property
    def featurizer_hash(self) -> str | None:
        return self.members[0].featurizer_hash

    @property
    def supports_uncertainty(self) -> bool:
        """Member disagreement needs two members; one teacher has its MC dropout."""
        return len(self.members) > 1 or self.members[0].arch == "teacher"

    def describe(self) -> str:
        """One line for MSP comments and logs, e.g. ``ensemble.pt sha256:0123abcd4567 sqrt of 4``
        (``linear^1.1 of 3`` when sharpened) or ``ensemble sqrt of a.pt sha256:... fp32 + b.pt
        sha256:... bf16``."""
        how = self.average + (f"^{power_text(self.sharpen)}" if self.sharpen != 1.0 else "")
        if self.path is not None:
            version = self.card.get("version")
            return " ".join(x for x in (self.path.name, f"v{version}" if version else "",
                                        f"sha256:{self.sha}", f"{how} of "
                                        f"{len(self.members)}") if x)
        return f"ensemble {how} of " + " + ".join(m.describe() for m in self.members)

    def _stacks(self) -> list[tuple[list[int], StudentStack]]:
        """The members that run as one on a single molecule: students with one configuration
        (:class:`~neimsctl.models.student_stack.StudentStack`), by their positions. Built on
        first use, and again (declined groups retried) when the members, their train modes or
        dtypes changed, or a stack went stale (:meth:`StudentStack.fresh`)."""
        key = [(id(m.model), m.model.training, next(m.model.parameters()).dtype) for m in self.members]
        cache = self._stack_cache
        if cache is None or cache[0] != key or not all(st.fresh() for _, st in cache[1]):
            groups: dict[str, list[int]] = {}
            for i, m in enumerate(self.members):
                if m.arch == "student":
                    groups.setdefault(repr(m.model.config), []).append(i)
            stacks = []
            for group in groups.values():
                stack = StudentStack.build([self.members[i].model for i in group])
                if stack is not None:
                    stacks.append((group, stack))
            self._stack_cache = cache = (key, stacks)
        return cache[1]

    def predict(self, block: dict[str, np.ndarray], *, batch_size: int = 1024,
                uncertainty: bool = False, mc_samples: int = 30
                ) -> tuple[np.ndarray, np.ndarray | None, None]:
        """``(spectra, std, None)`` of one feature block (see ``predict_block``): every
        member's spectra averaged (and sharpened), base peak 1; ``std`` with ``uncertainty``."""
        specs: list[np.ndarray | None] = [None] * len(self.members)
        if len(block["ordinal"]) == 1:                  # the latency path: stacked students
            for group, stack in self._stacks():
                x, mw, frags = student_rows(self.members[group[0]].model, block, 0, 1, self.device)
                pred = stack(x, mw, frags)
                for j, i in enumerate(group):
                    specs[i] = linear_base_one(self.members[i].model, pred[j:j + 1])
        # the other students that read the same inputs: each batch's rows made once for them
        groups: dict[tuple, list[int]] = {}
        for i, m in enumerate(self.members):
            if m.arch == "student" and specs[i] is None:
                groups.setdefault(student_input_key(m.model), []).append(i)
        for group in (g for g in groups.values() if len(g) > 1):
            got = student_spectra([self.members[i].model for i in group], block, batch_size,
                                  self.device)
            for i, (spectra, _, _) in zip(group, got):
                specs[i] = spectra
        mc_var = []
        for i, m in enumerate(self.members):
            if specs[i] is not None:
                continue
            mc = uncertainty and m.arch == "teacher"
            s, std, _ = predict_block(m, block, batch_size=batch_size, uncertainty=mc,
                                      mc_samples=mc_samples)
            specs[i] = s
            if std is not None:
                mc_var.append(np.square(std.astype(np.float64)))
        # each member's spectrum as it predicts alone (no peak below m/z 2), then averaged
        stack = np.stack([below_min_mz_cleared(s, None)[0] for s in specs]).astype(np.float64)
        mean = average_spectra(stack, self.average)
        std = None
        if uncertainty:
            k = len(specs)
            var = stack.var(axis=0, ddof=1) if k > 1 else np.zeros_like(mean)
            if mc_var:
                var = var + np.sum(mc_var, axis=0) / k
            std = np.sqrt(var)
        mean, std = sharpen_spectra(mean, std, self.sharpen)
        scale = 1.0 / np.maximum(mean.max(axis=1, keepdims=True), 1e-12)
        out = (mean * scale).astype(np.float32)
        return out, None if std is None else (std * scale).astype(np.float32), None


def _label(path: Path) -> str:
    """A member's label: its file name, with the run's directory for a training run's
    ``RUN/checkpoints/best.pt`` (``RUN/best.pt``: every run's file has the same name)."""
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def include_problem(include: str | Path, out: str | Path) -> str | None:
    """Why ``include`` cannot be an include of the ensemble file ``out`` (None when it can): it
    must be a regular file, the file of its name in the directory of ``out``, where a reader of
    ``out`` will look for it (the ensemble records only its name)."""
    path, out = Path(include), Path(out)
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a regular file"
    beside = out.parent / path.name
    if not beside.is_file() or not os.path.samefile(beside, path):
        return (f"must be the file {path.name!r} in the directory of the output ({out.parent}): "
                "the ensemble records only its name")
    return None


def write_ensemble(specs: Sequence[str | Path], out: str | Path, *, average: str | None = None,
                   sharpen: float | None = None, weights: str = "fp16", include: Sequence[str | Path] = (),
                   log: TextIO | None = None) -> dict[str, Any]:
    """Write one ensemble file (``neimsctl.ensemble/1``; ``/2`` with int8 weights) of the
    models ``specs`` names, their weights stored as ``weights`` (``fp32``: as trained, ``fp16``
    or ``int8``: :func:`~neimsctl.models.checkpoint.slim_member`).

    Each spec is what ``--model`` takes (``student``/``teacher``, a checkpoint, or an ensemble
    file, whose members are taken over). Every member is built and its weights loaded before
    anything is written (a member that would not load, or members that predict different
    bins, are refused here, not at predict time); the file is written to a temporary name and
    renamed. ``average`` None: the ensemble files' own when the members come from ensemble
    files that agree, else :data:`DEFAULT_AVERAGE`; ``sharpen`` None: by the same rule
    (:func:`choose_sharpen`).

    ``include``: files (checkpoints or ensemble files) that must lie beside ``out``, whose
    members the file takes over when it is loaded without holding a copy (format ``/3``: the
    file name and sha256 of each; the shipped teacher includes the shipped student this way).
    ``log`` is told when the ensemble files' own averages are not used (:func:`choose_average`).

    Returns
    -------
    dict
        ``{"members": [{"label", "arch", "n_parameters", "sha256"}...], "average", "sharpen",
        "bytes"}``.

    Raises
    ------
    CheckpointError
        A member that cannot be read or built.
    ConfigError
        An unknown ``average``, a ``sharpen`` out of range; no member.
    """
    from neimsctl.models.checkpoint import (MAX_MEMBERS, build_ensemble, include_name_ok,
                                            is_ensemble, load_checkpoint, member_source,
                                            save_checkpoint, slim_member)
    from neimsctl.predict.model import _model_with_weights, file_sha, resolve_model

    if not specs:
        raise ConfigError("an ensemble needs at least one --model")
    members, summary, files, bins = [], [], [], {}
    for spec in specs:
        path = resolve_model(spec)
        ckpt = load_checkpoint(path, map_location="cpu", ensemble=True)
        sha = file_sha(path, full=True)
        if is_ensemble(ckpt):
            files.append((path.name, ckpt))
        given = ckpt["members"] if is_ensemble(ckpt) else [ckpt]
        for i, one in enumerate(given, 1):
            where = member_source(one, path, i) if len(given) > 1 or one is not ckpt else path
            model, arch = _model_with_weights(one, where)     # refuses what would not load
            label = str(one.get("label") or (spec if str(spec) in ("student", "teacher")
                                             else _label(path)))
            member_sha = str(one.get("sha256") or sha)
            members.append(slim_member(one, label=label, sha256=member_sha, weights=weights))
            summary.append({"label": label, "arch": arch, "sha256": member_sha[:12],
                            "n_parameters": sum(p.numel() for p in model.parameters())})
            bins[str(where)] = int(model.config.n_bins)
    refs = []
    for one in include:
        path = Path(one)
        if not include_name_ok(path.name):
            raise ConfigError(f"--include {path}: {path.name!r} is not a plain file name")
        problem = include_problem(path, out)
        if problem is not None:
            raise ConfigError(f"--include {path}: {problem}")
        ckpt = load_checkpoint(path, map_location="cpu", ensemble=True)
        if ckpt.get("include"):
            raise ConfigError(f"--include {path}: includes files itself (one level only)")
        sha = file_sha(path, full=True)
        given = ckpt["members"] if is_ensemble(ckpt) else [ckpt]
        for i, one_ in enumerate(given, 1):
            where = Path(f"{path}#{i}")
            model, arch = _model_with_weights(one_, where)
            label = str(one_.get("label") or path.name)
            summary.append({"label": f"{label} (in {path.name})", "arch": arch,
                            "sha256": str(one_.get("sha256") or sha)[:12],
                            "n_parameters": sum(p.numel() for p in model.parameters())})
            bins[str(where)] = int(model.config.n_bins)
        refs.append({"file": path.name, "sha256": sha})
    if len(set(bins.values())) > 1:
        raise CheckpointError("ensemble members must predict the same bins: "
                              + ", ".join(f"{w}: {n}" for w, n in bins.items()))
    if len(summary) > MAX_MEMBERS:                  # what a reader would refuse
        raise ConfigError(f"{len(summary)} members (with the included files' members): an "
                          f"ensemble holds at most {MAX_MEMBERS}")
    average = choose_average(average, files, len(specs), log)
    sharpen = choose_sharpen(sharpen, files, len(specs), log)
    save_checkpoint(out, build_ensemble(members, average=average, sharpen=sharpen, include=refs))
    return {"members": summary, "average": average, "sharpen": sharpen,
            "bytes": Path(out).stat().st_size}
