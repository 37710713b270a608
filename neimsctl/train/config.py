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
naming the key path and the valid keys; so is a value out of its range (:data:`RANGES`,
:func:`check_values`: ``train.epochs >= 1``, ``optim.lr > 0``, probabilities in [0, 1], ...),
named with where it came from (the file, the ``--set`` override or the environment variable). :func:`dataclass_from_dict` is the same strict
converter, reusable by model configs.

Examples
--------
>>> cfg = load_config("configs/finetune/teacher-cpu-small.yaml", ["train.epochs=2"])  # doctest: +SKIP
>>> cfg = resolve(cfg)                  # device/precision "auto" decided  # doctest: +SKIP
>>> save_config(cfg, out_dir / "config.yaml")                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from neimsctl.data.split import DEFAULT_FRACTIONS, SPLIT_SEED, parse_fold
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
            raise ConfigError("model.name: must be a string (a name in neimsctl.models.registry)",
                              key="model.name")
        check_values(cfg)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint safe)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Range:
    """The allowed values of a number in a config: ``lo``/``hi`` bounds (``None``: unbounded),
    each closed unless ``lo_open``/``hi_open``; always finite (no nan, no inf)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        return (f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}"
                f"{')' if self.hi_open else ']'}")


def _num(x: float | None) -> str:
    """A bound as written: ``1``, ``0.5``, ``4294967295`` (not ``4.29497e+09``)."""
    return str(int(x)) if x is not None and float(x).is_integer() else f"{x:g}"


POSITIVE, NON_NEGATIVE, AT_LEAST_1 = Range(0, lo_open=True), Range(0), Range(1)
#: The largest count (epochs, steps, batch size, records, ...) a config may give: beyond it
#: torch and itertools overflow with a traceback (``train.batch_size=1e20``, ``train.grad_accum``)
#: long after the data were read, and no run could ever finish such a budget anyway.
MAX_COUNT = 2**31 - 1
COUNT, COUNT_0 = Range(1, MAX_COUNT), Range(0, MAX_COUNT)
#: An exponent of a loss's m/z or intensity weighting (search's ``--mz-power`` range).
POWER = Range(0, 10)
_SHARE = Range(0, 1)                   # a probability or a fraction
#: The allowed values of the typed sections' numbers (``None``, where a field may be None, is
#: always allowed). :func:`check_values` applies them when a :class:`Config` is built.
RANGES: dict[str, Range] = {
    "data.max_records": COUNT, "data.max_val_records": COUNT,
    "data.mask_ratio": Range(0, 1, lo_open=True), "data.smoothing_sigma": NON_NEGATIVE,
    "data.isotope_prob": _SHARE, "data.transfer_fraction": Range(0, 1, lo_open=True),
    "optim.lr": POSITIVE, "optim.weight_decay": NON_NEGATIVE, "optim.eps": NON_NEGATIVE,
    "optim.momentum": Range(0, 1, hi_open=True), "optim.betas": Range(0, 1, hi_open=True),
    "schedule.t0": COUNT, "schedule.t_mult": COUNT, "schedule.eta_min": NON_NEGATIVE,
    "schedule.max_lr": POSITIVE, "schedule.pct_start": _SHARE, "schedule.div_factor": POSITIVE,
    "schedule.final_div_factor": POSITIVE, "schedule.total_steps": COUNT,
    "train.epochs": COUNT, "train.batch_size": COUNT, "train.grad_accum": COUNT,
    "train.clip_norm": NON_NEGATIVE, "train.seed": Range(0, 2**32 - 1),
    "data.split_seed": Range(0, 2**32 - 1),      # the split hash's key is its decimal text
    "train.num_workers": NON_NEGATIVE, "train.log_every": COUNT,   # workers, threads: PER_CORE
    "train.keep_every": COUNT_0, "train.threads": AT_LEAST_1,
    "train.steps_per_epoch": COUNT,
}
#: Processes and threads a config may ask for, at most this many per core of the machine (as
#: ``--jobs``, :func:`neimsctl.io.parallel.max_jobs`): ``train.num_workers=1e20`` forked loader
#: workers until the machine stalled, ``train.threads=100000`` was a MemoryError traceback.
PER_CORE = ("train.threads", "train.num_workers")


def check_ranges(obj: Any, ranges: Mapping[str, Range], section: str) -> None:
    """Refuse a field of the dataclass ``obj`` out of its :class:`Range` (``ranges`` by field
    name; a list field: each of its numbers): :class:`ConfigError` naming ``section.field`` (its
    ``key`` too) and the allowed values."""
    for name, allowed in ranges.items():
        value, key = getattr(obj, name), f"{section}.{name}"
        kind = ("numbers" if isinstance(value, list) else
                "an integer" if isinstance(value, int) else "a number")
        for one in value if isinstance(value, list) else [value]:
            if one is not None and one not in allowed:
                raise ConfigError(f"{key}: must be {kind} {allowed}, got {value!r}", key=key)


def check_values(cfg: Config) -> None:
    """Refuse numbers out of their range (:data:`RANGES`), a ``data.split`` that is not three
    shares summing to 1 and a malformed ``data.fold``, before anything is trained or written.

    Raises
    ------
    ConfigError
        Naming the key (its ``key`` attribute too) and the allowed values.
    """
    for key, allowed in RANGES.items():
        section, name = key.split(".")
        check_ranges(getattr(cfg, section), {name: allowed}, section)
    from neimsctl.io.parallel import max_jobs

    for key in PER_CORE:
        value, limit = getattr(cfg.train, key.split(".")[1]), max_jobs()
        if value is not None and value > limit:
            raise ConfigError(f"{key}: must be an integer <= {limit} (4 per core of this machine), "
                              f"got {value!r}", key=key)
    sch = cfg.schedule
    if sch.name in ("cosine", "cosine_warm_restarts") and sch.eta_min > cfg.optim.lr:
        # the cosine goes from optim.lr *down* to eta_min: above it, the rate grew each epoch
        # (schedule.eta_min=1e308: an overflow traceback in the optimizer after an epoch)
        raise ConfigError(f"schedule.eta_min: must be at most optim.lr ({_num(cfg.optim.lr)}), the "
                          f"rate the {sch.name} schedule decays from, got {sch.eta_min!r}",
                          key="schedule.eta_min")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas: must be 2 numbers in [0, 1), got {cfg.optim.betas!r}",
                          key="optim.betas")
    split = cfg.data.split
    if len(split) != 3 or not all(x in _SHARE for x in split) or abs(sum(split) - 1.0) > 1e-6:
        raise ConfigError(f"data.split: must be 3 shares in [0, 1] (train, val, test) summing to "
                          f"1, got {split!r}", key="data.split")
    try:
        parse_fold(cfg.data.fold)
    except ConfigError:
        raise ConfigError(f"data.fold: must be k/K with K >= 2 and 1 <= k <= K (e.g. 2/5), got "
                          f"{cfg.data.fold!r}", key="data.fold") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last one
    silently: a second ``train:`` section dropped every key of the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue                  # "<<: *anchor": its keys may be overridden here
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue                  # an unhashable key: the base class names it
            seen[key] = line
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice ("
                    + (f"lines {first} and {line}" if first != line else f"line {line}")
                    + "; YAML would keep only the last)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _fail(path: str, msg: str) -> typing.NoReturn:
    raise ConfigError(f"{path or '<config>'}: {msg}", key=path or None)


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


def _override_items(overrides: Sequence[str] | Mapping[str, Any],
                    origin: str) -> list[tuple[str, Any, str]]:
    """``(dotted key, value, the override as given)`` of ``key.sub=value`` strings (values
    parsed as YAML) or of a ``{dotted: value}`` mapping."""
    if isinstance(overrides, Mapping):
        return [(str(k), v, f"{k}={v}") for k, v in overrides.items()]
    items = []
    for text in overrides:
        key, sep, val = str(text).partition("=")
        if not sep:
            raise ConfigError(f"{origin}: {text!r} is not key.sub=value")
        items.append((key.strip(), _parse_value(val), str(text)))
    return items


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any],
                    origin: str = "override") -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) or a ``{dotted: value}`` mapping."""
    for key, value, _ in _override_items(overrides, origin):
        _set_dotted(tree, key, value, origin)
    return tree


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``NEIMSCTL_CFG__SECTION__KEY=value`` variables as ``{"section.key": value}``."""
    return {key: _parse_value(val) for key, (_, val) in _env_vars(env).items()}


def _env_vars(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``{"section.key": (variable name, its text)}`` of the ``NEIMSCTL_CFG__`` variables."""
    return {name[len(ENV_PREFIX):].lower().replace("__", "."): (name, val)
            for name, val in env.items() if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX)}


def _origin_of(key: str | None, origins: Sequence[tuple[str, str]]) -> str | None:
    """Where the value of ``key`` came from: the last override (or environment variable) that
    set it, a section holding it or a key inside it; ``None``: from the file."""
    if key is None:
        return None
    for set_key, label in reversed(origins):
        if (set_key == key or key.startswith((set_key + ".", set_key + "["))
                or set_key.startswith(key + ".")):
            return label
    return None


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] | Mapping[str, Any] = (),
                env: Mapping[str, str] | None = None) -> Config:
    """Read a YAML config (``None`` = all defaults), apply env then overrides, validate.

    An error about one key names where its value came from: the ``--set`` override (``--set
    train.epochs=abc: expected int, got 'abc'``), the environment variable, else the file.

    Raises
    ------
    ConfigError
        Unreadable, non-UTF-8, empty or invalid YAML, unknown keys, bad types, values out of
        range (:func:`check_values`) or malformed overrides.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a YAML config: not UTF-8 text (byte {exc.start} "
                              "cannot be decoded)") from None
        try:
            tree = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
        if tree is None:
            raise ConfigError(f"{path}: the config is empty (no sections; see configs/ for "
                              "complete ones)")
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        _sections_as_mappings(tree, lambda name: str(path))
    origins: list[tuple[str, str]] = []
    env_vars = _env_vars(os.environ if env is None else env)
    apply_overrides(tree, {k: _parse_value(v) for k, (_, v) in env_vars.items()}, "environment")
    origins += [(k, f"environment {name}={v}") for k, (name, v) in env_vars.items()]
    _sections_as_mappings(tree, lambda name: _origin_of(name, origins) or str(path))
    items = _override_items(overrides, "--set")
    for key, value, _ in items:
        _set_dotted(tree, key, value, "--set")
    origins += [(key, f"--set {given}") for key, _, given in items]
    try:
        return Config.from_dict(tree)
    except ConfigError as exc:
        where = _origin_of(exc.key, origins)
        if where is None:
            raise ConfigError(f"{path}: {exc}" if path is not None else str(exc),
                              key=exc.key) from None
        msg = str(exc)
        if where.split(" ", 1)[1].split("=", 1)[0] == exc.key and msg.startswith(f"{exc.key}: "):
            msg = msg[len(exc.key) + 2:]       # "--set train.epochs=0: must be ..."
        raise ConfigError(f"{where}: {msg}", key=exc.key) from None


def _sections_as_mappings(tree: dict[str, Any], where: typing.Callable[[str], str]) -> None:
    """An empty section (``train:`` with nothing under it) becomes ``{}`` so that overrides can
    set keys in it; a section that is no mapping is named with ``where(section)`` (the file or
    the variable that made it so), not blamed on the override that sets a key in it."""
    for name in ("model", "loss", "data", "optim", "schedule", "train"):
        if name in tree and tree[name] is None:
            tree[name] = {}
        elif not isinstance(tree.get(name, {}), dict):
            raise ConfigError(f"{where(name)}: {name}: expected a mapping (a section of keys), "
                              f"got {tree[name]!r}", key=name)


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


def check_widths(model_config: Any, batch: Any, source: str,
                 keys: Sequence[str] = ("atom_dim", "bond_dim", "ecfp_dim", "counts_dim", "n_bins")
                 ) -> None:
    """Refuse a model whose input or output widths are not the data's (``model.n_bins=10``,
    ``model.ecfp_dim=10``: a shape traceback in the first training step), naming the key and
    the data's value. ``batch``: a teacher batch (attributes) or a student batch (a mapping).

    Raises
    ------
    ConfigError
        ``model.<key> is A but the <source> give B; set model.<key>=B`` (``source``: e.g.
        ``teacher shards``).
    """
    widths = {"input_dim": ("x", "-d inputs"), "atom_dim": ("x", "-d atom features"),
              "bond_dim": ("edge_attr", "-d bond features"), "ecfp_dim": ("ecfp", " ECFP bits"),
              "counts_dim": ("counts", " atom-pair counts"), "n_bins": ("y", " spectrum bins")}
    for key in keys:
        name, what = widths[key]
        want = getattr(model_config, key, None)
        have = batch.get(name) if isinstance(batch, Mapping) else getattr(batch, name, None)
        if want is None or have is None or (key == "counts_dim" and not want):
            continue
        got = int(have.shape[1])
        if int(want) != got:
            raise ConfigError(f"model.{key} is {want} but the {source} give {got}{what}; "
                              f"set model.{key}={got}")
