"""Value checks and the dict round trip shared by the model configs (torch-free)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Mapping, Sequence, TypeVar

from neimsctl.errors import ConfigError

__all__ = ["check_int", "config_from_dict", "config_to_dict"]

C = TypeVar("C")


def check_int(where: str, value: Any, *, minimum: int = 1, optional: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int (not a bool) ``>= minimum``
    (or ``None`` when ``optional``); ``where`` names it, e.g. ``student.top_k``.

    Examples
    --------
    >>> check_int("student.top_k", 2)
    >>> check_int("teacher.counts_dim", -1, minimum=0)
    Traceback (most recent call last):
    ...
    neimsctl.errors.ConfigError: teacher.counts_dim: expected an integer >= 0, got -1
    """
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{where}: expected {what}{' or null' if optional else ''}, got {value!r}")


def config_from_dict(cls: type[C], data: Mapping[str, Any] | None, where: str, *,
                     tuples: Sequence[str] = ()) -> C:
    """Build the config dataclass ``cls`` from a mapping (e.g. a YAML ``model`` section).

    Unknown keys raise :class:`ConfigError` (naming the known ones); the fields in ``tuples``
    (widths of layer stacks) accept a list and are stored as a tuple. ``cls`` checks the values.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Cfg:
    ...     widths: tuple[int, ...] = (8,)
    >>> config_from_dict(Cfg, {"widths": [4, 2]}, "toy", tuples=("widths",))
    Cfg(widths=(4, 2))
    >>> config_from_dict(Cfg, {"width": 4}, "toy")
    Traceback (most recent call last):
    ...
    neimsctl.errors.ConfigError: toy: unknown key(s) width; known keys: widths
    """
    data = dict(data or {})
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                          f"known keys: {', '.join(sorted(known))}")
    for name in tuples:
        if name in data:
            if not isinstance(data[name], (list, tuple)):
                raise ConfigError(f"{where}.{name}: expected a list of integers, got {data[name]!r}")
            data[name] = tuple(data[name])
    return cls(**data)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain-data form of a config dataclass (lists instead of tuples) for YAML and checkpoints."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
