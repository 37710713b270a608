"""Value checks shared by the model configs (torch-free)."""

from __future__ import annotations

from typing import Any

from neimsctl.errors import ConfigError


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
