"""Prediction: load a checkpoint for inference, featurize input blocks, predict spectra.

- :func:`resolve_model` maps ``student`` / ``teacher`` to the model shipped in
  ``neimsctl/resources/models/<arch>-default.pt`` (with a ``.json`` model card) and anything
  else to a checkpoint path.
- :func:`load_model` reads a ``neimsctl.ckpt/1`` checkpoint with ``weights_only=True``, builds
  the architecture named by its ``config.model.name`` (registry), loads the weights (fp16
  shipped weights are widened), and applies the inference precision
  (:mod:`neimsctl.models.quantize`). Several models, or an ensemble file, load as a
  :class:`neimsctl.predict.ensemble.LoadedEnsemble`.
- :func:`predict_block` turns one feature block (:class:`neimsctl.chem.rowbuild.RowBuilder`
  rows) into linear, base-peak-1 spectra, with MC-dropout standard deviations for the teacher
  on request. The student path never imports ``torch_geometric``.
"""

from __future__ import annotations

import collections
import importlib
import json
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TextIO

import numpy as np
import torch

from neimsctl.errors import CheckpointError, ConfigError, FormatError
from neimsctl.models import registry
from neimsctl.models.quantize import apply_precision, resolve_precision
from neimsctl.models.checkpoint import (file_sha256, is_ensemble, load_checkpoint, load_problem,
                                        member_source, model_state, require_spectrum_model)
from neimsctl.nn.rowgemm import available as rowgemm_available, set_int8_source

if TYPE_CHECKING:
    from neimsctl.predict.ensemble import LoadedEnsemble

__all__ = ["MODELS_DIR", "LoadedModel", "resolve_model", "load_model", "predict_block",
           "resolve_device", "file_sha"]

MODELS_DIR = Path(__file__).resolve().parents[1] / "resources" / "models"
ARCHS = ("student", "teacher", "neims-v1")
#: The featurizer mode (``neimsctl featurize --mode``) each architecture reads.
MODE_OF = {"student": "student", "teacher": "teacher", "neims-v1": "v1"}
#: Seed of the teacher's MC-dropout masks (``--uncertainty``): each batch is seeded from it and
#: the ordinal of its first record, so the spreads are reproducible.
MC_SEED = 0
#: Held around every teacher model call. MC dropout switches the model's dropout modules on and
#: seeds torch's global generator: two threads sharing a predictor (``neimsctl.api``) made each
#: other's plain predictions stochastic and overwrote each other's seeds. Uncontended (the CLI's
#: one thread per process) it costs one acquire per batch.
_TEACHER_LOCK = threading.Lock()


@dataclass
class LoadedModel:
    """A model ready for inference and what identifies it.

    Attributes
    ----------
    model
        The ``torch.nn.Module`` in eval mode, at ``precision``.
    arch
        ``student``, ``teacher`` or ``neims-v1`` (the baseline); :attr:`mode` is its featurizer.
    label
        What ``--model`` said (``student``, ``teacher`` or the path).
    path
        The checkpoint file.
    sha
        First 12 hex digits of the file's sha256 (the model card's when it records one).
    precision, device
        The inference precision and device.
    n_parameters, file_bytes
        Parameter count and checkpoint size on disk.
    featurizer_hash
        The checkpoint's featurizer settings hash (``None`` when not recorded).
    card
        The model card (``<checkpoint>.json``) when there is one, else ``{}``.
    """

    model: torch.nn.Module
    arch: str
    label: str
    path: Path
    sha: str
    precision: str
    device: torch.device
    n_parameters: int
    file_bytes: int
    featurizer_hash: str | None = None
    card: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for MSP comments and logs: ``student sha256:0123abcd4567 int8``."""
        version = self.card.get("version")
        return " ".join(x for x in (self.label if self.label in ARCHS else self.path.name,
                                    f"v{version}" if version else "", f"sha256:{self.sha}",
                                    self.precision) if x)

    @property
    def mode(self) -> str:
        """Featurizer mode of the architecture (``student``, ``teacher`` or ``v1``)."""
        return MODE_OF[self.arch]

    @property
    def needs(self) -> str:
        """The featurizer mode whose blocks hold this model's inputs: :attr:`mode`, except a
        NEIMS v1 model trained on student vectors (``input_dim`` 6144), which reads a
        ``student`` block."""
        if self.arch == "neims-v1":
            from neimsctl.chem.features_v1 import MORGAN_COUNT_BITS

            if self.model.config.input_dim != MORGAN_COUNT_BITS:
                return "student"
        return self.mode

    #: A single model adds no features beyond :attr:`mode`'s (an ensemble may: see
    #: :attr:`neimsctl.predict.ensemble.LoadedEnsemble.extra_v1`).
    extra_v1 = False

    @property
    def reads_fragments(self) -> bool:
        """The model reads the fragment masses (a student or teacher with ``fragments: true``)."""
        return bool(getattr(self.model.config, "fragments", False))

    @property
    def n_bins(self) -> int:
        """Spectrum bins the model predicts (m/z 0 .. n_bins - 1)."""
        return int(self.model.config.n_bins)

    @property
    def supports_uncertainty(self) -> bool:
        """``--uncertainty`` works: MC dropout of the teacher."""
        return self.arch == "teacher"


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; other strings as torch reads them."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r}: {exc}") from None
    # checked here, not by the first tensor moved there (a traceback: "Torch not compiled with
    # CUDA enabled", "PyTorch is not linked with support for mps devices")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: not auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not n:
            raise ConfigError(f"--device {device!r}: CUDA is not available (a torch without CUDA, "
                              "or no GPU visible): use --device cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"--device {device!r}: this machine has {n} CUDA device(s) (cuda:0.."
                              f"cuda:{n - 1})")
    return dev


def resolve_model(spec: str | Path) -> Path:
    """The checkpoint file that ``--model spec`` means.

    Raises
    ------
    CheckpointError
        ``student``/``teacher`` without a shipped model, or a path that is not a file.
    """
    text = str(spec)
    if text in ARCHS:
        path = MODELS_DIR / f"{text}-default.pt"
        if not path.is_file():
            raise CheckpointError(
                f"no shipped default {text} model ({path} is missing); train one with the "
                f"project's pipeline (neimsctl featurize, then finetune/distill) and pass its "
                f"checkpoint with --model PATH, or install a release that ships {path.name}")
        return path
    path = Path(text)
    if not path.is_file():
        why = "is a directory" if path.is_dir() else "not a regular file" if path.exists() \
            else "no such checkpoint file (or use student/teacher)"
        raise CheckpointError(f"--model {text or repr(text)}: {why}")
    return path


def file_sha(path: Path, *, full: bool = False) -> str:
    """The file's sha256: its first 12 hex digits (how models are named in outputs), or all
    64 with ``full``."""
    sha = file_sha256(path)
    return sha if full else sha[:12]


def _read_card(path: Path) -> dict[str, Any]:
    card = path.with_suffix(".json")
    if not card.is_file():
        return {}
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{card}: unreadable model card: {exc}") from None
    if not isinstance(data, dict):
        return {}
    size = path.stat().st_size
    if isinstance(data.get("file_bytes"), int) and data["file_bytes"] != size:
        # the card of other weights (the .pt was replaced): its sha256 and precision would lie
        print(f"neimsctl: warning: {card} describes a file of {data['file_bytes']:,} bytes, not "
              f"{path} ({size:,} bytes): the card is ignored", file=sys.stderr)
        return {}
    return data


def build_model(model_cfg: dict[str, Any]) -> tuple[torch.nn.Module, str]:
    """The architecture a checkpoint's ``config.model`` names, and its ``arch``.

    Raises
    ------
    CheckpointError
        No ``model.name``, or an architecture ``predict`` cannot featurize for.
    """
    cfg = dict(model_cfg or {})
    name = cfg.pop("name", None)
    if not name:
        raise CheckpointError("checkpoint config has no model.name; cannot rebuild the model")
    try:  # import just this model's module: registry.get() alone imports every built-in
        importlib.import_module(f"neimsctl.models.{name}")  # model (the teacher: torch_geometric)
    except ModuleNotFoundError:
        pass
    try:
        cls = registry.get(name)
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(f"config.model.name: {exc}") from None
    arch = getattr(cls, "arch", name)
    if arch not in ARCHS:
        raise CheckpointError(f"model {name!r} (arch {arch!r}) is not supported by predict; "
                              f"supported: {', '.join(ARCHS)}")
    try:
        return cls(cls.config_class.from_dict(cfg)), arch
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint model config: {exc}") from None


def load_model(spec: str | Path | Sequence[str | Path] = "student", *, device: str = "auto",
               precision: str = "auto", average: str | None = None,
               sharpen: float | None = None, log: TextIO | None = None) -> "LoadedModel | LoadedEnsemble":
    """Load ``--model spec`` for inference (see the module docstring).

    ``spec`` may name several models (a list: ``predict --model A --model B``), or one ensemble
    file (``neimsctl ensemble``): the result is then a
    :class:`~neimsctl.predict.ensemble.LoadedEnsemble` of every member (ensemble files given
    among several models are flattened into their members), averaged in ``average``
    (``linear`` or ``sqrt``; default: the ensemble files' own when every model is one and
    they agree, as ``neimsctl ensemble`` decides, else
    :data:`~neimsctl.predict.ensemble.DEFAULT_AVERAGE`; a warning on ``log`` when that
    overrules an ensemble file's own), and raised to the power ``sharpen`` (by the same rule;
    default 1).
    ``precision="auto"`` resolves by :func:`neimsctl.models.quantize.resolve_precision`, for
    each member by its architecture.

    Raises
    ------
    CheckpointError
        Missing/unsafe/unreadable checkpoint, unknown architecture, or weights that do not fit.
    ConfigError
        Unknown device, precision or average; a sharpen power out of range; no model.
    """
    log = sys.stderr if log is None else log
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not specs:
        raise ConfigError("no model given")
    dev = resolve_device(device)
    members: list[LoadedModel] = []
    files: list[tuple[Path, dict[str, Any], dict[str, Any]]] = []   # ensemble files read
    paths = [resolve_model(one) for one in specs]
    origin: list[Path] = []                 # the given file each member came from
    for one, path in zip(specs, paths):
        ckpt = load_checkpoint(path, map_location="cpu", ensemble=True)
        card = _read_card(path)
        if is_ensemble(ckpt):
            files.append((path, ckpt, card))
            for i, member in enumerate(ckpt["members"], 1):
                members.append(_loaded(member, path, str(member.get("label") or
                                                         f"{path.name}#{i}"),
                                       dev, precision, card, log,
                                       where=member_source(member, path, i),
                                       sha=str(member.get("sha256") or "")[:12] or
                                       file_sha(path)))
        else:
            members.append(_loaded(ckpt, path, str(one), dev, precision, card, log))
        origin += [path] * (len(members) - len(origin))
    if len(specs) == 1 and not files:
        return members[0]
    if not _warn_included_twice(paths, files, log):
        _warn_same_weights(members, origin, paths, log)
    from neimsctl.predict.ensemble import LoadedEnsemble, choose_average, choose_sharpen

    # the rule of `neimsctl ensemble`, so `-m A -m B` predicts what the bundle of A and B predicts
    named = [(p.name, c) for p, c, _ in files]
    chosen = choose_average(average, named, len(specs), log)
    power = choose_sharpen(sharpen, named, len(specs), log)

    whole = files[0] if len(specs) == 1 else None
    return LoadedEnsemble(
        members=members, average=chosen, sharpen=power,
        label=str(specs[0]) if whole else "+".join(str(s) for s in specs),
        path=whole[0] if whole else None,
        sha=(str(whole[2].get("sha256", ""))[:12] or file_sha(whole[0])) if whole else "",
        device=dev, card=whole[2] if whole else {},
        file_bytes=sum(p.stat().st_size for p in paths))


def _warn_included_twice(paths: list[Path], files: list[tuple[Path, dict[str, Any], dict[str, Any]]],
                         log: TextIO) -> bool:
    """One warning line per file whose members an ensemble gets twice: given as a model and
    also included by an ensemble file given beside it (``-m teacher -m student``: the shipped
    teacher includes the student), or included by two of them. Files are compared by content
    (sha256: an include records it; a copy elsewhere counts as the same file). (A file given
    twice itself is the CLI's warning.)"""
    includes = [(path, one) for path, ckpt, _ in files for one in ckpt.get("include") or ()]
    if not includes:
        return False
    # a given file can be an included one only with its size: hash just those (loading the
    # teacher alone hashes nothing more; its include was hashed when it was verified)
    sizes = {(path.parent / str(one.get("file"))).stat().st_size for path, one in includes}
    given: dict[str, Path] = {}
    for p in paths:
        if p.stat().st_size in sizes:
            given.setdefault(file_sha256(p), p)
    seen: dict[str, tuple[str, list[str]]] = {}
    for path, one in includes:
        sha = str(one.get("sha256"))
        name, how = seen.setdefault(sha, (str(one.get("file")), [f"given as a model ({given[sha]})"]
                                          if sha in given else []))
        how.append(f"included by {path.name}")
    said = False
    for name, how in seen.values():
        if len(how) > 1:
            print(f"neimsctl: warning: the members of {name} count {len(how)} times in this "
                  f"ensemble ({'; '.join(how)}): its average weighs them that many times and "
                  "--uncertainty counts their agreement with themselves", file=log, flush=True)
            said = True
    return said


def _warn_same_weights(members: list[LoadedModel], origin: list[Path], paths: list[Path],
                       log: TextIO) -> None:
    """One warning line when members have the same weights (the sha256 of the checkpoint each
    was made from), e.g. ``-m A.pt -m AB.pt`` where the ensemble file AB.pt holds A, or an
    ensemble file holding one model twice; not when a file given twice explains it all (the
    CLI says that)."""
    given = collections.Counter(paths)
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(members):
        if m.sha:
            groups.setdefault(m.sha, []).append(i)
    repeated = [(sha, idx) for sha, idx in groups.items() if len(idx) > 1
                and not (len({origin[i] for i in idx}) == 1 and given[origin[idx[0]]] > 1)]
    if not repeated:
        return
    files = ", ".join(dict.fromkeys(str(origin[i]) for _, idx in repeated for i in idx))
    shas = ", ".join(f"{sha} x{len(idx)}" for sha, idx in repeated)
    print(f"neimsctl: warning: members of this ensemble share their weights (sha256: {shas}; "
          f"from {files}): its average weighs them that many times and --uncertainty counts "
          "their agreement with themselves", file=log, flush=True)


def _loaded(ckpt: dict[str, Any], path: Path, label: str, dev: torch.device, precision: str,
            card: dict[str, Any], log: TextIO, *, where: Path | None = None,
            sha: str | None = None) -> LoadedModel:
    """One checkpoint dict read from the file ``path`` as a :class:`LoadedModel` (``where``
    names it in messages: an ensemble member's is ``FILE#k``)."""
    where = path if where is None else where
    model, arch = _model_with_weights(ckpt, where)
    n_params = sum(p.numel() for p in model.parameters())
    fhash = ckpt.get("featurizer_hash")
    _check_featurizer(arch, fhash, where, log)
    prec = resolve_precision(precision, arch=arch, device=dev, card=card)
    model = apply_precision(model.to(dev), prec, arch=arch)
    if prec == "bf16" and dev.type == "cpu" and rowgemm_available():
        _remember_int8(model, ckpt)
    return LoadedModel(model=model, arch=arch, label=label, path=where,
                       sha=sha or str(card.get("sha256", ""))[:12] or file_sha(path),
                       precision=prec, device=dev, n_parameters=n_params,
                       file_bytes=path.stat().st_size, featurizer_hash=fhash, card=card)


def _remember_int8(model: torch.nn.Module, ckpt: dict[str, Any]) -> None:
    """On each dense ``nn.Linear`` whose weight the file stores as int8 codes, those codes and
    their row scales (the single-molecule stack then reads half the bytes for the same bf16
    weights: :class:`neimsctl.nn.rowgemm.PackedLayer`)."""
    scales = ckpt.get("quantized") or {}
    modules = dict(model.named_modules())
    for name, scale in scales.items():
        layer = modules.get(name.removesuffix(".weight")) if name.endswith(".weight") else None
        if type(layer) is torch.nn.Linear:
            set_int8_source(layer, ckpt["model"][name], scale)


def _model_with_weights(ckpt: dict[str, Any], path: Path) -> tuple[torch.nn.Module, str]:
    """Build the checkpoint's model and load its weights (fp16 widened to fp32).

    The module is first built on the ``meta`` device and the checkpoint's tensors are assigned
    to it, which skips the random initialisation of ~50M parameters (about a second); if any
    parameter or buffer is left on ``meta`` (not in the checkpoint), it is built normally.

    Raises
    ------
    CheckpointError
        Naming ``path``: a pretraining checkpoint (its spectrum head never trained), a config
        that builds no model, or weights that do not fit it.
    """
    require_spectrum_model(ckpt, path)
    cfg = (ckpt.get("config") or {}).get("model") or {}
    state = model_state(ckpt)
    try:
        with torch.device("meta"):
            model, arch = build_model(cfg)
        _check_float_parameters(state, model)
        model.load_state_dict(state, assign=True)
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            raise RuntimeError("tensors not in the checkpoint")
        return model, arch
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        pass
    try:
        model, arch = build_model(cfg)
        _check_float_parameters(state, model)
        model.load_state_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: "
                              f"{load_problem(exc)}") from None
    return model, arch


def _check_float_parameters(state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Every weight ``state`` holds for a parameter of ``model`` is floating-point: an integer
    tensor where a weight belongs (int16 codes without scales) would be cast silently into
    wrong weights."""
    for name, _ in model.named_parameters():
        value = state.get(name)
        if value is not None and not value.is_floating_point():
            raise CheckpointError(f"damaged checkpoint: weight {name!r} is {value.dtype}, "
                                  "expected floating point (int8 weights need their scales in "
                                  "'quantized')")


def _check_featurizer(arch: str, have: str | None, path: Path, log: TextIO) -> None:
    """Warn when the checkpoint's features were made with other settings (e.g. another RDKit)."""
    if have is None:
        return
    from neimsctl.chem.featurize_run import run_settings
    from neimsctl.chem.features import accepted_hashes, get_featurizer
    from neimsctl.chem.rowbuild import RowOptions

    mode = MODE_OF[arch]
    settings, made = run_settings(RowOptions(mode=mode))
    if have not in accepted_hashes(get_featurizer(mode).settings) | accepted_hashes(settings):
        print(f"neimsctl: warning: {path.name} was trained on features with settings hash "
              f"{have}; this installation makes {made} (another RDKit or featurizer version?): "
              "predictions may be off", file=log, flush=True)


@torch.inference_mode()
def predict_block(lm: "LoadedModel | LoadedEnsemble", block: dict[str, np.ndarray], *, batch_size: int = 1024,
                  uncertainty: bool = False, mc_samples: int = 30
                  ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray] | None]:
    """Spectra of one feature block.

    Returns
    -------
    (spectra, std, experts)
        ``spectra`` float32 ``(n, n_bins)`` linear, base peak 1; ``std`` the MC-dropout
        standard deviations on the same scale (teacher with ``uncertainty``; an ensemble's:
        member disagreement and its teachers' MC dropout) or ``None``;
        ``experts`` ``{"index": (n, k) int, "weight": (n, k) float}`` for the student, else None.

    Raises
    ------
    ConfigError
        ``uncertainty`` with a student or NEIMS v1 model alone.
    """
    if uncertainty and not lm.supports_uncertainty:
        raise ConfigError("--uncertainty needs the teacher (MC dropout) or an ensemble (member "
                          "disagreement): use --model teacher, a teacher checkpoint or several "
                          "--model")
    n = len(block["ordinal"])
    if lm.arch == "ensemble":
        spectra, std, experts = lm.predict(block, batch_size=batch_size, uncertainty=uncertainty,
                                           mc_samples=mc_samples)
    elif lm.arch == "student":
        spectra, std, experts = _student(lm, block, n, batch_size)
    elif lm.arch == "neims-v1":
        spectra, std, experts = _v1(lm, block, n, batch_size)
    else:
        spectra, std, experts = _teacher(lm, block, n, batch_size, uncertainty, mc_samples)
    return (*below_min_mz_cleared(spectra, std), experts)


#: The lowest m/z a predicted spectrum may hold a peak at. No spectrum of the 8,196 MassBank EI
#: records has a peak at m/z 0 or 1 (the lowest: one at m/z 2, seven at 4; EI scans start at
#: ~10-50), yet the shipped models put small intensities there (30 of the bundled sample's first
#: 200 molecules, up to 1.3 % of the base peak; the training losses give those bins almost no
#: weight: the m/z-weighted terms weight m/z 0 by 0).
MIN_PREDICTED_MZ = 2


def below_min_mz_cleared(spectra: np.ndarray, std: np.ndarray | None
                         ) -> tuple[np.ndarray, np.ndarray | None]:
    """``(spectra, std)`` with the bins below :data:`MIN_PREDICTED_MZ` set to zero, rows whose
    base peak was there scaled to base peak 1 again (``std`` by the same factor). In place when
    possible: the arrays are the caller's own."""
    low = spectra[:, :MIN_PREDICTED_MZ]
    if not len(spectra) or not low.any():
        return spectra, std
    rest = spectra[:, MIN_PREDICTED_MZ:].max(axis=1)
    fix = (low.max(axis=1) >= rest) & (rest > 0)       # the base peak was below the limit
    low[:] = 0
    if std is not None:
        std[:, :MIN_PREDICTED_MZ] = 0
    if fix.any():
        scale = (1.0 / rest[fix]).astype(spectra.dtype)[:, None]
        spectra[fix] *= scale
        if std is not None:
            std[fix] *= scale.astype(std.dtype)
    return spectra, std


def block_frags(block: dict[str, np.ndarray]) -> np.ndarray:
    """The block's fragment-mass counts, for a model that reads them (features made before
    them, by neimsctl 0.1, have none: a clear error)."""
    frags = block.get("frags")
    if frags is None:
        raise FormatError("this model reads fragment masses, which these features (made by "
                          "neimsctl 0.1) lack: featurize the records again")
    return frags


def student_rows(model: Any, block: dict[str, np.ndarray], a: int, b: int, device: torch.device
                 ) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
    """A student's inputs for rows ``a:b`` of a block: ``(x, mw, frags)`` as
    :meth:`~neimsctl.models.student.StudentModel.forward` takes them, on ``device``.

    ``x`` is the input by its non-zero entries (a ``SparseRows``: no dense ``(B, 6144)`` matrix,
    no nonzero() pass in the model; the same spectra, bit for bit); ``frags`` the fragment
    masses dense (the head's fragment path reads them dense: not out of the sparse rows), or
    None when the model has no fragment path.
    """
    from neimsctl.chem.features import log1p_counts, student_nonzero
    from neimsctl.io.featblock import FRAG_BINS
    from neimsctl.nn.sparse_input import SparseRows

    frags = block_frags(block)[a:b] if model.config.fragments else None
    x = SparseRows(*map(torch.from_numpy, student_nonzero(block["ecfp"][a:b], block["counts"][a:b], frags)),
                   model.config.input_dim)
    mw = torch.from_numpy(block["mw"][a:b].astype(np.int64))
    dense = None
    if frags is not None and model.frag_conv is not None:
        dense = torch.from_numpy(log1p_counts(frags)).view(-1, 2, FRAG_BINS).to(device)
    return x.to(device), mw.to(device), dense


def linear_base_one(model: Any, pred: torch.Tensor) -> np.ndarray:
    """A student's output-space rows as linear spectra with base peak 1 (float32 numpy)."""
    lin = model.to_linear(pred)
    return (lin / lin.amax(dim=1, keepdim=True).clamp_min(1e-12)).cpu().numpy()


def student_input_key(model: Any) -> tuple[int, bool, bool]:
    """Students with equal keys read the same :func:`student_rows`."""
    return int(model.config.input_dim), bool(model.config.fragments), model.frag_conv is not None


def student_spectra(models: Sequence[Any], block: dict[str, np.ndarray], bs: int,
                    device: torch.device) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(spectra, expert index, expert weight)`` of each of ``models`` (students with one
    :func:`student_input_key`) on a block, batch by batch: the inputs of a batch are made once
    for all of them (an ensemble's students: ~14 % of their model time was the same sparse rows
    made again per member)."""
    n = len(block["ordinal"])
    parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in models]
    for a in range(0, n, bs):
        rows = student_rows(models[0], block, a, a + bs, device)
        for part, model in zip(parts, models):
            o = model(*rows)
            part.append((linear_base_one(model, o.pred), o.topk_idx.cpu().numpy(),
                         o.topk_weight.float().cpu().numpy()))
    return [tuple(np.concatenate(x) for x in zip(*part)) if part else  # type: ignore[misc]
            (np.zeros((0, model.config.n_bins), np.float32), np.zeros((0, model.config.top_k), np.int64),
             np.zeros((0, model.config.top_k), np.float32))
            for part, model in zip(parts, models)]


def _student(lm: LoadedModel, block: dict[str, np.ndarray], n: int, bs: int):  # type: ignore[no-untyped-def]
    spectra, index, weight = student_spectra([lm.model], block, bs, lm.device)[0]
    if not n:
        return spectra, None, None
    return spectra, None, {"index": index, "weight": weight}


def _v1(lm: LoadedModel, block: dict[str, np.ndarray], n: int, bs: int):  # type: ignore[no-untyped-def]
    """NEIMS v1 on raw Morgan counts (``featurize --mode v1`` blocks), or on the student vector
    when the checkpoint was trained on student shards (``input_dim`` 6144)."""
    from neimsctl.chem.features import student_vectors
    from neimsctl.chem.features_v1 import MORGAN_COUNT_BITS, v1_vectors

    model, outs = lm.model, []
    for a in range(0, n, bs):
        if model.config.input_dim == MORGAN_COUNT_BITS:
            x = v1_vectors(block["morgan_counts"][a:a + bs])
        else:
            x = student_vectors(block["ecfp"][a:a + bs], block["counts"][a:a + bs])
        mw = torch.from_numpy(block["mw"][a:a + bs].astype(np.int64)).to(lm.device)
        outs.append(model.predict_spectrum(torch.from_numpy(x).to(lm.device), mw).float().cpu().numpy())
    out = np.concatenate(outs) if outs else np.zeros((0, model.config.n_bins), np.float32)
    return out, None, None


def _teacher(lm: LoadedModel, block: dict[str, np.ndarray], n: int, bs: int, unc: bool,
             samples: int):  # type: ignore[no-untyped-def]
    from torch_geometric.data import Batch, Data

    atoms = np.concatenate([[0], np.cumsum(block["n_atoms"])])
    edges = np.concatenate([[0], np.cumsum(block["n_edges"])])
    from neimsctl.chem.features import log1p_counts

    ecfp = np.unpackbits(block["ecfp"], axis=1).astype(np.float32)
    counts = log1p_counts(block["counts"])
    frags = log1p_counts(block_frags(block)) if lm.reads_fragments else None
    outs, stds = [], []
    for a in range(0, n, bs):
        data = []
        for j in range(a, min(n, a + bs)):
            ei = block["edge_index"][edges[j]:edges[j + 1]].astype(np.int64).T.copy()
            data.append(Data(x=torch.from_numpy(block["atom_x"][atoms[j]:atoms[j + 1]].astype(np.float32)),
                             edge_index=torch.from_numpy(ei).reshape(2, -1),
                             edge_attr=torch.from_numpy(block["edge_attr"][edges[j]:edges[j + 1]].astype(np.float32)),
                             ecfp=torch.from_numpy(ecfp[j:j + 1]),
                             counts=torch.from_numpy(counts[j:j + 1]),
                             **({} if frags is None else {"frags": torch.from_numpy(frags[j:j + 1])}),
                             mw=torch.tensor([int(block["mw"][j])])))
        batch = Batch.from_data_list(data).to(lm.device)
        if unc:
            # the dropout masks of a batch depend only on its first record (the same command on
            # the same input gives the same spectra and spreads), not on what ran before
            with _TEACHER_LOCK, torch.random.fork_rng(
                    devices=[lm.device] if lm.device.type == "cuda" else []):
                torch.manual_seed(MC_SEED * 1_000_003 + int(block["ordinal"][a]))
                mean, var = lm.model.mc_predict(batch, n_samples=samples)
            outs.append(mean.float().cpu().numpy())
            stds.append(var.clamp_min(0).sqrt().float().cpu().numpy())
        else:
            with _TEACHER_LOCK:
                outs.append(lm.model.predict_spectrum(batch).float().cpu().numpy())
    if not outs:
        return np.zeros((0, lm.model.config.n_bins), np.float32), None, None
    return np.concatenate(outs), (np.concatenate(stds) if unc else None), None
