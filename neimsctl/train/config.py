"""Training configs: YAML files into typed dataclasses, with environment and dotted overrides.

A config file (``configs/<stage>/<name>.yaml``) has the sections

``model``     free-form mapping with a ``name`` key; the model's own ``Config.from_dict``
              validates the rest (look the name up in ``neimsctl.models.registry``).
``loss``      free-form mapping validated by the stage's loss (teacher MSE + bond CE, distill KD).
``data``      :class:`DataConfig`;  ``optim`` :class:`OptimConfig`;
``schedule``  :class:`ScheduleConfig`;  ``train`` :class:`TrainConfig`.

Precedence: file < environment (``NEIMSCTL_CFG__TRAIN__EPOCHS=3`` means ``train.epochs=3``)
< overrides (``--set train.epochs=3``, passed here as strings ``"train.epochs=3"``).
An unknown key anywhere in the typed sections is a :class:`~neimsctl.errors.ConfigError`
naming the key path and the valid keys. :func:`dataclass_from_dict` is the same strict
converter, reusable by model configs.

Examples
--------
>>> cfg = load_config("configs/finetune/teacher-cpu-small.yaml", ["train.epochs=2"])  # doctest: +SKIP
>>> cfg = resolve(cfg)                  # device/precision "auto" decided  # doctest: +SKIP
>>> save_config(cfg, out_dir / "config.yaml")                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from neimsctl.data.split import DEFAULT_FRACTIONS, SPLIT_SEED
from neimsctl.errors import ConfigError
from neimsctl.io.streams import make_dirs, open_out

ENV_PREFIX = "NEIMSCTL_CFG__"
Precision = Literal["auto", "fp32", "bf16", "fp16"]
#: Hook: set True (or pass ``cpu_bf16=True`` to :func:`resolve_precision`) once a benchmark in
#: tools/bench/ shows bf16 autocast speeds CPU training up without hurting validation metrics.
AUTO_CPU_BF16 = False
_EXP_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")  # "1e-4": a str to YAML 1.1


@dataclass
class DataConfig:
    """Where the training data are and how they are split/augmented."""
    train: str | None = None          # features (HDF5 shard) / SMILES stream for pretrain
    val: str | None = None            # separate validation file; None = split ``train``
    split: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    split_seed: int = SPLIT_SEED
    fold: str | None = None           # "k/K": train without the training compounds of fold k
    lazy: bool = True                 # memory-efficient mode (spec default)
    max_records: int | None = None    # cap for quick runs
    max_val_records: int | None = None  # pretrain: cap on validation molecules (None = all)
    mask_ratio: float = 0.15          # pretrain bond masking
    smoothing_sigma: float = 0.0      # Gaussian label smoothing over m/z (spec: 1.5)
    isotope_prob: float = 0.0         # 12C->13C substitution share (spec: 0.05)
    soft_labels: str | None = None    # distill: precomputed teacher soft labels
    transfer: list[str] = field(default_factory=list)  # distill: student shards without spectra
    transfer_fraction: float = 1.0    # distill: share of the transfer rows drawn each epoch


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9             # sgd only


@dataclass
class ScheduleConfig:
    """LR schedule; ``t0`` counts ``interval`` units (epochs or optimizer steps)."""
    name: Literal["none", "cosine_warm_restarts", "onecycle", "cosine"] = "none"
    interval: Literal["step", "epoch"] = "epoch"
    t0: int = 10
    t_mult: int = 1
    eta_min: float = 0.0
    max_lr: float | None = None       # onecycle; None = optim.lr
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    total_steps: int | None = None    # onecycle when the loader has no len()


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    grad_accum: int = 1
    clip_norm: float | None = 1.0     # None/0 = no clipping (norm still recorded)
    precision: Precision = "auto"
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    seed: int = 42
    num_workers: int = 0
    log_every: int = 10
    ckpt_dir: str | None = None       # None = <out_dir>/checkpoints
    keep_every: int = 0               # also keep epoch_NNNN.pt every k epochs (0 = never)
    best_metric: str = "val_loss"
    best_mode: Literal["min", "max"] = "min"
    drop_last: bool = False
    threads: int | None = None        # torch.set_num_threads; None = leave as is
    steps_per_epoch: int | None = None  # streamed data (pretrain): an epoch = this many steps


@dataclass
class Config:
    model: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage: str = ""
    description: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        """Strictly convert a plain mapping (unknown keys raise :class:`ConfigError`)."""
        cfg = dataclass_from_dict(cls, data)
        if not isinstance(cfg.model.get("name", ""), str):
            raise ConfigError("model.name: must be a string (a name in neimsctl.models.registry)")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint safe)."""
        return dataclasses.asdict(self)


def _fail(path: str, msg: str) -> typing.NoReturn:
    raise ConfigError(f"{path or '<config>'}: {msg}")


def _numbers(value: Any) -> Any:
    """Turn YAML 1.1's exponent strings ("1e-4") into floats inside free-form mappings."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and _EXP_FLOAT.match(value):
        return float(value)
    return value


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return _numbers(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        _fail(path, f"cannot use {value!r} ({'; '.join(errors)})")
    if origin is Literal:
        if value not in args:
            _fail(path, f"{value!r} is not one of {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return dataclass_from_dict(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            _fail(path, f"expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            _fail(path, f"expected a mapping, got {type(value).__name__}")
        return {str(k): _numbers(v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        _fail(path, f"expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            _fail(path, f"expected {tp.__name__}, got {value!r}")
        try:
            out = tp(value) if not (tp is int and isinstance(value, float)) else None
        except (TypeError, ValueError):
            out = None
        if out is None and tp is int and isinstance(value, float) and value.is_integer():
            out = int(value)
        if out is None:
            _fail(path, f"expected {tp.__name__}, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (dict, list)):
            _fail(path, f"expected a string, got {value!r}")
        return str(value)
    return value


def dataclass_from_dict(cls: type, data: Mapping[str, Any] | None, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad types raise ConfigError.

    Parameters
    ----------
    cls
        A dataclass whose field annotations are int/float/bool/str, ``X | None``, ``list[X]``,
        ``dict``, ``Literal[...]`` or nested dataclasses.
    data
        The mapping (``None`` = all defaults).
    path
        Dotted prefix used in error messages (``"train"`` gives ``train.epochs: ...``).
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        _fail(path, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in names:
            _fail(sub, f"unknown key; valid keys: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], sub)
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    try:
        return _numbers(yaml.safe_load(text)) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict[str, Any], key: str, value: Any, origin: str) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{origin}: bad key {key!r} (expected section.key)")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any],
                    origin: str = "override") -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) or a ``{dotted: value}`` mapping."""
    items = overrides.items() if isinstance(overrides, Mapping) else None
    if items is None:
        items = []
        for text in overrides:
            key, sep, val = str(text).partition("=")
            if not sep:
                raise ConfigError(f"{origin}: {text!r} is not key.sub=value")
            items.append((key.strip(), _parse_value(val)))
    for key, value in items:
        _set_dotted(tree, key, value, origin)
    return tree


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``NEIMSCTL_CFG__SECTION__KEY=value`` variables as ``{"section.key": value}``."""
    out = {}
    for name, val in env.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            out[name[len(ENV_PREFIX):].lower().replace("__", ".")] = _parse_value(val)
    return out


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] | Mapping[str, Any] = (),
                env: Mapping[str, str] | None = None) -> Config:
    """Read a YAML config (``None`` = all defaults), apply env then overrides, validate.

    Raises
    ------
    ConfigError
        Unreadable/invalid YAML, unknown keys, bad types or malformed overrides.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    apply_overrides(tree, env_overrides(os.environ if env is None else env), "environment")
    apply_overrides(tree, overrides)
    try:
        return Config.from_dict(tree)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def resolve_precision(precision: str, device: Any, cpu_bf16: bool | None = None) -> str:
    """Decide ``auto``: CUDA -> bf16 if supported else fp16; CPU -> fp32 unless ``cpu_bf16``.

    fp16 on CPU is refused (no GradScaler there; use bf16).
    """
    dev_type = getattr(device, "type", str(device).split(":")[0])
    if precision == "auto":
        if dev_type == "cuda":
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if (AUTO_CPU_BF16 if cpu_bf16 is None else cpu_bf16) else "fp32"
    if precision == "fp16" and dev_type != "cuda":
        raise ConfigError("train.precision: fp16 needs CUDA; use bf16 or fp32 on CPU")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision: {precision!r} is not auto, fp32, bf16 or fp16")
    return precision


def resolve_device(spec: str = "auto") -> "Any":
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda`` without CUDA is a ConfigError."""
    import torch

    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"train.device: {spec!r} is not auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {spec!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device: {spec!r} is not auto, cpu, cuda or cuda:N")
    return dev


def resolve(cfg: Config, cpu_bf16: bool | None = None) -> Config:
    """A copy with ``train.device`` and ``train.precision`` decided (no ``auto`` left)."""
    device = resolve_device(cfg.train.device)
    train = dataclasses.replace(cfg.train, device=str(device),
                                precision=resolve_precision(cfg.train.precision, device, cpu_bf16))
    return dataclasses.replace(cfg, train=train)


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the (resolved) config as YAML, atomically; returns the path."""
    path = Path(path)
    make_dirs(path.parent)
    with open_out(path) as fh:
        fh.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode("utf-8"))
    return path
