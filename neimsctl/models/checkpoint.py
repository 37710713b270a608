"""Checkpoints: atomic save, safe load (``weights_only=True``), exact RNG capture.

A checkpoint is a plain dict of tensors / str / int / float / bool / None / lists / dicts, so
it loads with ``torch.load(path, weights_only=True)`` and never runs pickled code:

=================  ==============================================================
``format``         ``"neimsctl.ckpt/1"``
``model``          ``model.state_dict()`` (unwrapped from DDP)
``optimizer``      optimizer state dict (or None); ``scheduler``, ``scaler`` likewise
``loss_state``     ``loss_fn.state_dict()`` when the loss is stateful (GradNorm weights)
``rng``            python / numpy / torch / cuda generator states (:func:`capture_rng`)
``epoch``          epochs fully done; ``batch`` = batches consumed in epoch ``epoch``
                   (0 at an epoch boundary, > 0 for a mid-epoch ``interrupted.pt``)
``step``           optimizer steps done
``config``         resolved config as a plain dict; ``featurizer_hash`` (str or None)
``best_metric``    best validation value so far; ``history`` per-epoch summaries
``versions``       ``{"neimsctl": ..., "torch": ...}``; ``extra`` free plain dict
=================  ==============================================================

An ensemble file (``neimsctl.ensemble/1``, or ``/2`` when a member stores int8 weights; written
by ``neimsctl ensemble``; formats/ensemble.v2.md) is a plain dict too: ``format``, ``average``
(``linear`` or ``sqrt``: the space the members' spectra are averaged in), optionally ``sharpen``
(the power the averaged spectrum is raised to, 1 when absent), ``members`` (a list of
slim checkpoints: ``format``, ``model``, ``config.model``, ``featurizer_hash``, ``versions``,
``quantized`` (int8 storage: the row scales of the weights stored as int8), plus ``label`` and
``sha256`` of the file each came from) and ``versions``. :func:`load_checkpoint` reads it with
``ensemble=True`` and checks every member as it checks a checkpoint; :func:`model_state` gives
any checkpoint's or member's weights in float32.

Examples
--------
>>> save_checkpoint(run / "last.pt", model=model, optimizer=opt, epoch=3, step=300,
...                 config=cfg.to_dict(), featurizer_hash=h)             # doctest: +SKIP
>>> ckpt = load_checkpoint(run / "last.pt", featurizer_hash=h)          # doctest: +SKIP
>>> model.load_state_dict(ckpt["model"])                                 # doctest: +SKIP
"""

from __future__ import annotations

import numbers
import os
import pickle
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neimsctl import __version__
from neimsctl.errors import CheckpointError, OutputError, shown_value
from neimsctl.io.streams import make_dirs, open_out

FORMAT = "neimsctl.ckpt/1"
ENSEMBLE_FORMAT = "neimsctl.ensemble/1"
#: An ensemble file whose members may hold int8-stored weights (``quantized``); written only
#: when some member does, so that a reader of ``/1`` refuses it by its format rather than
#: loading int8 codes as weights (formats/ensemble.v2.md).
ENSEMBLE_FORMAT_INT8 = "neimsctl.ensemble/2"
#: An ensemble file that also takes over the members of other files beside it (``include``:
#: file name + sha256, e.g. the shipped teacher = its GNN + the shipped student's members);
#: a reader of ``/1`` or ``/2`` refuses it by its format rather than silently dropping them.
ENSEMBLE_FORMAT_INCLUDE = "neimsctl.ensemble/3"
ENSEMBLE_FORMATS = (ENSEMBLE_FORMAT, ENSEMBLE_FORMAT_INT8, ENSEMBLE_FORMAT_INCLUDE)
#: How ``neimsctl ensemble`` stores the members' floating-point weights.
WEIGHT_STORAGE = ("fp32", "fp16", "int8")
#: An ensemble file holds at most this many members (each is built as its own model: a file
#: that lists one stored member many times would take memory without bound).
MAX_MEMBERS = 64
#: int8 storage quantizes the floating-point matrices (2-D) of at least this many values.
INT8_MIN_VALUES = 4096
#: The spaces an ensemble averages its members' spectra in: linear intensity, or square roots
#: (the mean of sqrt(I), squared).
AVERAGES = ("linear", "sqrt")
#: The powers an ensemble may raise its averaged spectrum to (``sharpen``; 1 = as averaged).
SHARPEN_RANGE = (0.25, 4.0)


def sharpen_problem(value: Any) -> str | None:
    """Why ``value`` is not a ``sharpen`` power (None when it is one): a real number (not a
    bool; numpy's count) within :data:`SHARPEN_RANGE`. The value is shown shortened."""
    lo, hi = SHARPEN_RANGE
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not lo <= value <= hi:
        return f"{shown_value(value, 30)} is not a number from {lo:g} to {hi:g}"
    return None


def power_text(power: float) -> str:
    """``power`` as logs and MSP comments show it: short, yet never rounded (``1.1``, ``2``,
    ``1.0000001``)."""
    short = f"{power:g}"
    return short if float(short) == power else repr(float(power))


def ensemble_sharpen(ens: dict[str, Any]) -> float:
    """An ensemble file's ``sharpen`` power (1.0 when it has none)."""
    return float(ens.get("sharpen", 1.0))


def capture_rng() -> dict[str, Any]:
    """All generator states as weights-only-loadable values."""
    version, state, gauss = random.getstate()
    npst = np.random.get_state(legacy=False)
    return {
        "python": {"version": int(version), "state": list(state), "gauss": gauss},
        "numpy": {"key": torch.from_numpy(np.asarray(npst["state"]["key"], dtype=np.int64)),
                  "pos": int(npst["state"]["pos"]), "has_gauss": int(npst["has_gauss"]),
                  "gauss": float(npst["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = rng["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = rng["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]},
                         "has_gauss": npst["has_gauss"], "gauss": npst["gauss"]})
    torch.set_rng_state(rng["torch"].cpu())
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP/DataParallel (or ``model`` itself)."""
    return getattr(model, "module", model)


def _state(obj: Any) -> Any:
    return None if obj is None else obj.state_dict()


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` as types ``torch.load(weights_only=True)`` accepts, or a CheckpointError.

    str/int/float subclasses (``torch.__version__``, numpy scalars, enums) become plain values,
    ``Path`` becomes str; anything else that is not a tensor/container is refused here, at save
    time, rather than producing a checkpoint that cannot be loaded.
    """
    if obj is None or type(obj) in (bool, int, float, str, torch.Tensor, torch.device,
                                    torch.dtype, torch.Size):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {plain(k, where): plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return out if isinstance(obj, list) else tuple(out)
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.item() if isinstance(obj, np.generic) else torch.from_numpy(np.array(obj))
    for cls in (bool, int, float, str):
        if isinstance(obj, cls):
            return cls(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise CheckpointError(f"{where}: {type(obj).__name__} cannot be stored in a weights-only "
                          "checkpoint; use plain dict/list/str/int/float/tensor values")


def build_checkpoint(*, model: torch.nn.Module, optimizer: Any = None, scheduler: Any = None,
                     scaler: Any = None, loss_state: Any = None, epoch: int = 0, batch: int = 0,
                     step: int = 0, config: dict | None = None, featurizer_hash: str | None = None,
                     best_metric: float | None = None, history: list | None = None,
                     extra: dict | None = None, rng: dict | None = None) -> dict[str, Any]:
    """The checkpoint dict (see the module docstring for the fields)."""
    return plain({
        "format": FORMAT, "model": unwrap(model).state_dict(), "optimizer": _state(optimizer),
        "scheduler": _state(scheduler), "scaler": _state(scaler), "loss_state": loss_state,
        "rng": capture_rng() if rng is None else rng, "epoch": int(epoch), "batch": int(batch),
        "step": int(step), "config": config or {}, "featurizer_hash": featurizer_hash,
        "best_metric": None if best_metric is None else float(best_metric),
        "history": history or [], "extra": extra or {},
        "versions": {"neimsctl": __version__, "torch": str(torch.__version__)},
    })


def save_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any] | None = None,
                    **fields: Any) -> Path:
    """Write ``ckpt`` (or ``build_checkpoint(**fields)``) atomically: temp file + ``os.replace``.

    A crash while writing leaves the previous file intact and no partial file behind.

    Raises
    ------
    OutputError
        The file cannot be written (no such directory, read-only file system, disk full).
    """
    path = Path(path)
    make_dirs(path.parent)
    ckpt = build_checkpoint(**fields) if ckpt is None else ckpt
    with open_out(path) as fh:  # a full disk: OutputError naming the path, temp file removed
        try:
            torch.save(ckpt, fh)
        except RuntimeError as exc:  # torch's zip writer hides the failed write behind its own
            if isinstance(exc.__context__, (OutputError, KeyboardInterrupt)):
                raise exc.__context__ from None
            raise
    return path


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Atomically copy a finished checkpoint (``last.pt`` -> ``best.pt``)."""
    with open(src, "rb") as fin, open_out(dst) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    return Path(dst)


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu",
                    featurizer_hash: str | None = None, ensemble: bool = False,
                    _included: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and check what it is.

    Parameters
    ----------
    path
        The ``.pt`` file.
    map_location
        Passed to :func:`torch.load`.
    featurizer_hash
        When given, the checkpoint's ``featurizer_hash`` must equal it.
    ensemble
        Accept an ensemble file too (``neimsctl.ensemble/1``: returned as read, every member
        checked by :func:`check_fields`); otherwise an ensemble file is refused with a message
        that says what it is. An ensemble file with ``include`` (format ``/3``) comes back with
        the included files' members appended (:func:`_with_included`).
    _included
        Internal: the file is being read as another file's include; its own includes are not
        followed (the caller refuses them: one level only).

    Raises
    ------
    CheckpointError
        Missing/unreadable file, a pickle payload or other non-weights content (refused without
        running it), not a neimsctl checkpoint, or a featurizer hash mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint: {exc.strerror}") from None
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise CheckpointError(f"{path}: not a checkpoint file (neither a torch zip archive "
                              "nor a pickle)")
    if magic.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: truncated or damaged checkpoint: its zip archive has no "
                              "end (the file was cut short, e.g. by a copy or a write that did "
                              "not finish)")
    if magic.startswith(b"PK\x03\x04"):
        _check_crcs(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except KeyError:        # torch.load of a damaged pickle: "invalid load key"
        raise CheckpointError(f"{path}: not a readable checkpoint (damaged)") from None
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "GLOBAL" in ln or "nsupported" in ln),
                     type(exc).__name__)
        raise CheckpointError(f"{path}: refused: contains non-weights (pickled) objects that "
                              f"weights_only loading does not allow ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        why = (exc.strerror if isinstance(exc, OSError) and exc.strerror else
               " ".join(str(exc).split()) or type(exc).__name__)
        raise CheckpointError(f"{path}: not a readable checkpoint: truncated or damaged "
                              f"({why})") from None
    except Exception as exc:  # noqa: BLE001  (torch on damaged bytes: IndexError, struct.error, ...)
        raise CheckpointError(f"{path}: not a readable checkpoint (damaged: "
                              f"{type(exc).__name__})") from None
    if is_ensemble(ckpt):
        check_ensemble(ckpt, path)
        if not ensemble:
            n = len(ckpt["members"]) + len(ckpt.get("include") or ())
            raise CheckpointError(f"{path}: an ensemble of {'at least ' * bool(ckpt.get('include'))}"
                                  f"{n} model{'s' * (n != 1)} where one checkpoint is needed here")
        if ckpt.get("include") and not _included:   # an included file's own includes: refused
            ckpt = _with_included(ckpt, path, map_location)      # by the caller, not followed
        return ckpt
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if isinstance(fmt, str) and fmt.startswith("neimsctl.") and fmt not in (FORMAT, *ENSEMBLE_FORMATS):
        raise CheckpointError(f"{path}: format {fmt!r} is not supported by this neimsctl "
                              f"(it reads {FORMAT} and {', '.join(ENSEMBLE_FORMATS)}): a newer "
                              "version wrote it?")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    check_fields(ckpt, path)
    have = ckpt.get("featurizer_hash")
    if featurizer_hash is not None and have != featurizer_hash:
        raise CheckpointError(f"{path}: featurizer mismatch: checkpoint was trained on features "
                              f"with settings hash {have}, these features have {featurizer_hash}; "
                              "re-featurize with the checkpoint's settings or train anew")
    return ckpt


#: The fields a checkpoint must or may hold, and the types each may have (None = may be absent).
FIELDS: dict[str, tuple[type, ...]] = {
    "model": (dict,), "config": (dict, type(None)), "featurizer_hash": (str, type(None)),
    "optimizer": (dict, type(None)), "scheduler": (dict, type(None)), "scaler": (dict, type(None)),
    "loss_state": (dict, type(None)), "rng": (dict, type(None)), "epoch": (int, type(None)),
    "batch": (int, type(None)), "step": (int, type(None)), "history": (list, type(None)),
    "versions": (dict, type(None)), "extra": (dict, type(None)),
    "best_metric": (float, int, type(None)), "quantized": (dict, type(None))}
REQUIRED = ("model",)


def check_fields(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Check a loaded checkpoint's schema and weights before anything reads them.

    Every required field present; every known field of its type; ``config.model`` a dict;
    ``model`` a non-empty mapping of names to tensors whose floating-point values are all
    finite (a checkpoint of a run that diverged predicts NaN for every molecule).

    Raises
    ------
    CheckpointError
        Naming the file and the first field that is missing, mistyped or not finite.
    """
    for key in REQUIRED:
        if key not in ckpt:
            raise CheckpointError(f"{path}: damaged checkpoint: no {key!r} field")
    for key, types in FIELDS.items():
        if key in ckpt and not isinstance(ckpt[key], types) or \
                (key in ckpt and isinstance(ckpt[key], bool) and bool not in types):
            raise CheckpointError(f"{path}: damaged checkpoint: field {key!r} is a "
                                  f"{type(ckpt[key]).__name__}, expected "
                                  f"{' or '.join(t.__name__ for t in types)}")
    for part in ("model", "data"):
        sub = (ckpt.get("config") or {}).get(part)
        if sub is not None and not isinstance(sub, dict):
            raise CheckpointError(f"{path}: damaged checkpoint: config.{part} is a "
                                  f"{type(sub).__name__}, expected dict")
    data = (ckpt.get("config") or {}).get("data") or {}
    if not isinstance(data.get("split_seed", 0), int) or isinstance(data.get("split_seed"), bool):
        raise CheckpointError(f"{path}: damaged checkpoint: config.data.split_seed is not an "
                              "integer")
    if data.get("fold") is not None:
        from neimsctl.data.split import parse_fold

        try:
            parse_fold(data["fold"])
        except Exception as exc:  # noqa: BLE001  (ConfigError, or a non-string value)
            raise CheckpointError(f"{path}: damaged checkpoint: config.{exc}") from None
    state = ckpt["model"]
    if not state:
        raise CheckpointError(f"{path}: damaged checkpoint: no weights in 'model'")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: damaged checkpoint: model entry {name!r} is a "
                                  f"{type(value).__name__}, expected a tensor")
        _check_plain_tensor(value, f"model entry {name!r}", path)
        if value.is_floating_point() and not _all_finite(value):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{path}: refused: weight {name!r} holds {bad} non-finite "
                                  f"value(s) (NaN/inf: a training run that diverged?)")
    _check_quantized(ckpt, path)


def _check_plain_tensor(value: torch.Tensor, what: str, path: str | os.PathLike) -> None:
    """A dense tensor with data (``weights_only`` also loads ``meta`` and sparse tensors, which
    no model of ours stores and which fail deep inside torch)."""
    if value.is_meta or value.layout != torch.strided or value.is_quantized:
        kind = "meta" if value.is_meta else "quantized" if value.is_quantized else str(value.layout)
        raise CheckpointError(f"{path}: damaged checkpoint: {what} is a {kind} tensor, expected "
                              "a dense one")


def _check_quantized(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """int8 storage: every int8 tensor of ``model`` has its row scales in ``quantized`` (a
    floating-point vector of one positive value per row, finite even times 127 in float32, the
    largest weight it gives) and every scale vector its tensor."""
    state, scales = ckpt["model"], ckpt.get("quantized") or {}
    for name, value in state.items():
        if value.dtype == torch.int8 and name not in scales:
            raise CheckpointError(f"{path}: damaged checkpoint: model entry {name!r} is int8 "
                                  "without its scales in 'quantized'")
    for name, scale in scales.items():
        value = state.get(name) if isinstance(name, str) else None
        if value is None or value.dtype != torch.int8 or value.dim() < 1:
            raise CheckpointError(f"{path}: damaged checkpoint: 'quantized' names {name!r}, "
                                  "which is not an int8 weight of 'model'")
        if isinstance(scale, torch.Tensor):
            _check_plain_tensor(scale, f"the int8 scales of {name!r}", path)
        # positive, and finite once widened (127 * scale in float32: the largest weight)
        if not isinstance(scale, torch.Tensor) or not scale.is_floating_point() \
                or tuple(scale.shape) != (value.shape[0],) \
                or not _all_finite(scale.float() * 127) or not bool((scale > 0).all()):
            raise CheckpointError(f"{path}: damaged checkpoint: the int8 scales of {name!r} are "
                                  f"not {value.shape[0]} positive values finite in float32")


def check_ensemble(ens: dict[str, Any], path: str | os.PathLike) -> None:
    """Check an ensemble file's fields and every member (as :func:`check_fields`).

    Raises
    ------
    CheckpointError
        Naming the file (and the member, 1-based) of the first field that is wrong.
    """
    if ens.get("format") not in ENSEMBLE_FORMATS:
        raise CheckpointError(f"{path}: not an ensemble file")
    members = ens.get("members")
    if not isinstance(members, list) or not members:
        raise CheckpointError(f"{path}: damaged ensemble file: 'members' is not a non-empty list")
    if len(members) > MAX_MEMBERS:
        raise CheckpointError(f"{path}: damaged ensemble file: {len(members)} members (at most "
                              f"{MAX_MEMBERS})")
    if ens.get("average") not in AVERAGES:
        raise CheckpointError(f"{path}: damaged ensemble file: 'average' is "
                              f"{shown_value(ens.get('average'), 40)}, expected one of "
                              f"{', '.join(AVERAGES)}")
    if "sharpen" in ens and (problem := sharpen_problem(ens["sharpen"])) is not None:
        raise CheckpointError(f"{path}: damaged ensemble file: 'sharpen' {problem}")
    for i, member in enumerate(members, 1):
        where = f"{path} member {i}"
        if not isinstance(member, dict) or member.get("format") != FORMAT:
            raise CheckpointError(f"{where}: not a {FORMAT} checkpoint")
        check_fields(member, where)
        if member.get("quantized") and ens["format"] == ENSEMBLE_FORMAT:
            raise CheckpointError(f"{where}: damaged ensemble file: int8 weights in a "
                                  f"{ens['format']} file (they need {ENSEMBLE_FORMAT_INT8})")
        if not isinstance(member.get("label", ""), str):
            raise CheckpointError(f"{where}: damaged ensemble file: 'label' is not a string")
    _check_include(ens, path)


def _check_include(ens: dict[str, Any], path: str | os.PathLike) -> None:
    """``include`` (format ``/3`` only): a non-empty list of ``{"file": NAME, "sha256": HEX}``,
    NAME a plain file name (no directory part: the file lies beside the including one)."""
    inc = ens.get("include")
    if ens["format"] != ENSEMBLE_FORMAT_INCLUDE:
        if inc is not None:
            raise CheckpointError(f"{path}: damaged ensemble file: 'include' in a {ens['format']} "
                                  f"file (it needs {ENSEMBLE_FORMAT_INCLUDE})")
        return
    if not isinstance(inc, list) or not inc or len(inc) > MAX_MEMBERS:
        raise CheckpointError(f"{path}: damaged ensemble file: 'include' is not a list of 1 to "
                              f"{MAX_MEMBERS} files")
    seen = set()
    for i, one in enumerate(inc, 1):
        name = one.get("file") if isinstance(one, dict) else None
        sha = one.get("sha256") if isinstance(one, dict) else None
        if not include_name_ok(name) or not isinstance(sha, str) or len(sha) != 64 \
                or any(c not in "0123456789abcdef" for c in sha):
            raise CheckpointError(f"{path}: damaged ensemble file: include {i} is not a plain "
                                  "file name with the 64 hex digits of its sha256")
        if name in seen:
            raise CheckpointError(f"{path}: damaged ensemble file: include {i} names {name!r} "
                                  "again")
        seen.add(name)


def include_name_ok(name: Any) -> bool:
    """Whether ``name`` can be an include's file name: a plain name of a file beside the
    including one (no directory part, no backslash, no control characters)."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name \
        and "\\" not in name and name.isprintable()


#: Internal key of a member taken from an included file: where it was read (``FILE`` or
#: ``FILE#k``), for messages; never written (:func:`slim_member` keeps the member fields only).
SOURCE = "_source"


def member_source(member: dict[str, Any], path: str | os.PathLike, i: int) -> Path:
    """How messages name member ``i`` (1-based) of the ensemble file ``path``: ``path#i``, or
    the included file it came from (``inner.pt#2``)."""
    return Path(member.get(SOURCE) or f"{path}#{i}")


def _with_included(ens: dict[str, Any], path: str | os.PathLike, map_location: Any) -> dict[str, Any]:
    """The ensemble with the members of every included file appended (in order), each file
    read from beside ``path`` and checked against its recorded sha256; an included file may be
    a checkpoint (one member) or an ensemble file without includes of its own. Each taken-over
    member records where it came from under :data:`SOURCE`."""
    import stat

    from neimsctl.io.streams import protect_input

    here, members = Path(path).parent, list(ens["members"])
    for one in ens["include"]:
        other = here / one["file"]
        where = f"{path}: include {one['file']!r}"
        try:
            st = os.stat(other)
        except OSError:
            raise CheckpointError(f"{where}: no such file beside it (the two files are shipped "
                                  "and copied together)") from None
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            raise CheckpointError(f"{where}: not a regular, non-empty file")
        try:        # its size as stat gives it: no endless read of a file that keeps growing
            sha = file_sha256(other, size=st.st_size)
        except OSError as exc:
            raise CheckpointError(f"{where}: cannot read it: {exc.strerror}") from None
        if sha != one["sha256"]:
            raise CheckpointError(f"{where}: its sha256 is {sha[:12]}, not the "
                                  f"{one['sha256'][:12]} this file was made with (replaced?)")
        try:
            got = load_checkpoint(other, map_location=map_location, ensemble=True, _included=True)
        except CheckpointError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        protect_input(other, f"included by {path}")
        if is_ensemble(got):
            if got.get("include"):
                raise CheckpointError(f"{where}: includes files itself (one level only)")
            members += [{**m, SOURCE: f"{other}#{j}"} for j, m in enumerate(got["members"], 1)]
        else:
            members.append({**_member_fields(got, label=one["file"], sha256=one["sha256"]),
                            "model": got["model"], **({"quantized": got["quantized"]}
                                                      if got.get("quantized") else {}),
                            SOURCE: str(other)})
        if len(members) > MAX_MEMBERS:      # checked as they come: no unbounded reading
            raise CheckpointError(f"{path}: {len(members)} members with its includes (at most "
                                  f"{MAX_MEMBERS})")
    return {**ens, "members": members}


def is_pretraining(ckpt: Any) -> bool:
    """True for a checkpoint of ``neimsctl pretrain`` (its config's ``stage`` is ``pretrain``,
    or its loss state holds the bond-masking head): a teacher whose graph encoder alone was
    trained, its spectrum head never."""
    if not isinstance(ckpt, dict):
        return False
    config, loss_state = ckpt.get("config"), ckpt.get("loss_state")
    return ((isinstance(config, dict) and config.get("stage") == "pretrain")
            or (isinstance(loss_state, dict) and "bond_head" in loss_state))


def require_spectrum_model(ckpt: dict[str, Any], where: str | os.PathLike) -> None:
    """Refuse a pretraining checkpoint (:func:`is_pretraining`) where a trained spectrum model
    is needed (predict, softlabel, ensemble): its spectra would be those of an untrained head.

    Raises
    ------
    CheckpointError
        Naming ``where`` and how to use it (``finetune --init``).
    """
    if is_pretraining(ckpt):
        raise CheckpointError(f"{where}: a pretraining checkpoint (bond masking: its spectrum head "
                              f"was never trained); finetune it first (neimsctl finetune --init "
                              f"{where})")


def is_ensemble(ckpt: Any) -> bool:
    """True for a loaded ensemble file (any version this neimsctl reads)."""
    return isinstance(ckpt, dict) and ckpt.get("format") in ENSEMBLE_FORMATS


def model_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A checkpoint's (or ensemble member's) weights as the model holds them: floating-point
    tensors in float32 (float16 widened; int8-stored weights times their row scales), the rest
    as stored."""
    scales = ckpt.get("quantized") or {}
    out = {}
    for name, value in ckpt["model"].items():
        if name in scales:
            shape = (-1,) + (1,) * (value.dim() - 1)
            out[name] = value.float() * scales[name].float().reshape(shape)
        else:
            out[name] = value.float() if value.is_floating_point() else value
    return out


def quantize_int8(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """int8 storage of a state dict: each floating-point matrix of at least
    :data:`INT8_MIN_VALUES` values as int8 codes, symmetric per row (``scale = max |row| / 127``,
    code ``round(w / scale)``; the error of a weight is at most half a step, ``scale / 2``); the
    rest (biases, norms, small tensors) in float16. Returns ``(state, scales)``;
    :func:`model_state` inverts it."""
    out, scales = {}, {}
    for name, value in state.items():
        if not value.is_floating_point():
            out[name] = value
            continue
        w = value.detach().float()
        if not _all_finite(w):
            raise CheckpointError(f"weight {name!r} is not finite in float32: not stored")
        if w.dim() != 2 or w.numel() < INT8_MIN_VALUES:
            out[name] = w.half()
            continue
        amax = w.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        out[name] = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        scales[name] = scale
    return out, scales


def slim_member(ckpt: dict[str, Any], *, label: str, sha256: str, weights: str = "fp32"
                ) -> dict[str, Any]:
    """What an ensemble file keeps of one checkpoint: the inference fields only (no optimizer
    or RNG state), the weights stored as ``weights`` (:data:`WEIGHT_STORAGE`: as trained,
    float16, or int8 matrices by :func:`quantize_int8`), and where it came from; of the data
    config, the split and fold it was trained on (``softlabel`` labels out of fold with it)."""
    if weights not in WEIGHT_STORAGE:
        raise CheckpointError(f"weights {weights!r}: choose one of {', '.join(WEIGHT_STORAGE)}")
    state, scales = model_state(ckpt), {}
    if weights == "int8":
        state, scales = quantize_int8(state)
    elif weights == "fp16":
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    return {**_member_fields(ckpt, label=label, sha256=sha256), "model": state,
            **({"quantized": scales} if scales else {})}


def _member_fields(ckpt: dict[str, Any], *, label: str, sha256: str) -> dict[str, Any]:
    """An ensemble member's fields other than its weights (:func:`slim_member`)."""
    cfg = ckpt.get("config") or {}
    data = {k: v for k, v in (cfg.get("data") or {}).items() if k in ("split", "split_seed", "fold")}
    return {"format": FORMAT,
            "config": {"model": dict(cfg.get("model") or {}), **({"data": data} if data else {})},
            "featurizer_hash": ckpt.get("featurizer_hash"), "versions": ckpt.get("versions") or {},
            "label": str(label), "sha256": str(sha256)}


def file_sha256(path: str | os.PathLike, *, size: int | None = None) -> str:
    """The hex sha256 of a file's bytes (of its first ``size`` bytes at most, when given)."""
    import hashlib

    h, left = hashlib.sha256(), -1 if size is None else size
    with open(path, "rb") as fh:
        while left != 0 and (chunk := fh.read(1 << 20 if left < 0 else min(left, 1 << 20))):
            h.update(chunk)
            left -= len(chunk) if left > 0 else 0
    return h.hexdigest()


def build_ensemble(members: list[dict[str, Any]], *, average: str, sharpen: float = 1.0,
                   extra: dict | None = None, include: list[dict[str, str]] | None = None
                   ) -> dict[str, Any]:
    """An ensemble file's dict from slim members (:func:`slim_member`), and the files whose
    members it takes over when loaded (``include``: ``{"file", "sha256"}`` each; format ``/3``).
    ``sharpen`` is stored only when it is not 1 (a file without it predicts as before it existed).

    Raises
    ------
    CheckpointError
        No members, an unknown ``average``, or a ``sharpen`` outside :data:`SHARPEN_RANGE`.
    """
    if not members:
        raise CheckpointError("an ensemble needs at least one member")
    if average not in AVERAGES:
        raise CheckpointError(f"average {average!r}: choose one of {', '.join(AVERAGES)}")
    if (problem := sharpen_problem(sharpen)) is not None:
        raise CheckpointError(f"sharpen {problem}")
    fmt = ENSEMBLE_FORMAT_INT8 if any(m.get("quantized") for m in members) else ENSEMBLE_FORMAT
    if include:
        fmt = ENSEMBLE_FORMAT_INCLUDE
    return plain({"format": fmt, "average": average,
                  **({"sharpen": float(sharpen)} if sharpen != 1.0 else {}), "members": members,
                  "versions": {"neimsctl": __version__, "torch": str(torch.__version__)},
                  "extra": extra or {}, **({"include": list(include)} if include else {})})


def _check_crcs(path: Path) -> None:
    """Every member of a torch zip archive against its CRC-32: ``torch.load`` does not check
    them, and a checkpoint damaged in the middle (4 KB of zeros in the shipped default's
    weights) loaded and predicted without a word. ~10-25 ms for the shipped models."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except Exception as exc:  # noqa: BLE001 - zipfile on damaged bytes: BadZipFile, zlib.error, ...
        raise CheckpointError(f"{path}: not a readable checkpoint: truncated or damaged "
                              f"({' '.join(str(exc).split()) or type(exc).__name__})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged checkpoint: its part {bad} does not match its "
                              "checksum (the file was changed after it was written: a bad copy, "
                              "disk or download)")


def load_problem(exc: BaseException, details: int = 3) -> str:
    """One line from ``load_state_dict``'s error: its first ``details`` findings (the missing,
    unexpected and mis-shaped tensors, by name), not the header line that names none."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    found = [ln for ln in lines if not ln.startswith("Error(s) in loading state_dict")] or lines
    text = "; ".join(ln if len(ln) <= 240 else ln[:237] + "..." for ln in found[:details])
    more = len(found) - details
    return text + (f" (+{more} more)" if more > 0 else "")


def _all_finite(t: torch.Tensor) -> bool:
    """True when every value of a floating-point tensor is finite.

    NaN and infinities propagate through a sum, so a finite float64 sum proves every value
    finite (no fp16/bf16/fp32 tensor can overflow it); only a sum that is not finite is looked
    at value by value. ``torch.isfinite(t).all()`` on the shipped model's 9.7M fp16 weights
    took 0.75-1.9 s of every ``predict`` start-up; the sum takes ~0.01 s.
    """
    if bool(torch.isfinite(t.sum(dtype=torch.float64))):
        return True
    return bool(torch.isfinite(t).all())


def restore(ckpt: dict[str, Any], *, model: torch.nn.Module, optimizer: Any = None,
            scheduler: Any = None, scaler: Any = None, loss_fn: Any = None,
            rng: bool = True) -> None:
    """Load the states of a checkpoint into live objects (and the RNGs when ``rng``)."""
    try:
        unwrap(model).load_state_dict(model_state(ckpt) if ckpt.get("quantized") else ckpt["model"])
        for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
            if obj is not None and ckpt.get(key) is not None:
                obj.load_state_dict(ckpt[key])
        if loss_fn is not None and ckpt.get("loss_state") is not None:
            loss_fn.load_state_dict(ckpt["loss_state"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint does not fit this model/optimizer: "
                              f"{load_problem(exc)}") from None
    if rng:
        restore_rng(ckpt["rng"])
