"""The values the options of a search may take: one source for ``neimsctl search`` and the API.

``neimsctl search`` declares its typer options from these constants (typer refuses a value out of
range with exit 2); :meth:`neimsctl.api.SpectralLibrary.search` checks its keyword arguments
with :func:`check_search_args` (:class:`~neimsctl.errors.ConfigError`). Both cap ``top`` with
:func:`cap_top`. This module imports nothing heavy: ``neimsctl search --help`` reads it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from neimsctl.errors import ConfigError

__all__ = ["SOURCES", "POWER_MIN", "POWER_MAX", "MZ_POWER", "INTENSITY_POWER", "powers_misused",
           "cap_top", "check_search_args"]

#: ``--source`` / ``source=``: only measured or only predicted library entries.
SOURCES = ("measured", "predicted")
#: The range of the cosine's exponents (``--mz-power``, ``--intensity-power``).
POWER_MIN, POWER_MAX = 0.0, 10.0
#: The cosine's default exponents ``m/z**a * I**b``.
MZ_POWER, INTENSITY_POWER = 1.0, 0.5


def powers_misused(score: str | None, mz_power: float, intensity_power: float) -> bool:
    """True when exponents other than the defaults are given with a score other than cosine
    (they weigh the cosine only; ``score`` None is the default, cosine)."""
    return (mz_power != MZ_POWER or intensity_power != INTENSITY_POWER) and score not in (None, "cosine")


def cap_top(top: int, n_entries: int) -> int:
    """``top`` hits per query, at most the libraries' size (no query has more hits than there are
    entries: ``top=10**11`` costs what ``top=n_entries`` does), at least 1."""
    return max(1, min(top, n_entries))


def _number(name: str, value: Any, lo: float, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < lo or (hi is not None and value > hi):
        allowed = f"{lo:g}..{hi:g}" if hi is not None else f">= {lo:g}"
        raise ConfigError(f"{name} must be a finite number {allowed}, got {value!r}")
    return float(value)


def check_search_args(*, top: Any, score: Any, reverse: Any, mass_filter: Any, source: Any,
                      mz_power: Any, intensity_power: Any) -> None:
    """Refuse what ``neimsctl search`` refuses (exit 2 there), as the API's keywords name them.

    Raises
    ------
    neimsctl.errors.ConfigError
        ``top`` not an integer >= 1; ``score`` not one of the scores; ``reverse`` not a bool;
        ``mass_filter`` not None nor a finite number >= 0; ``source`` not None nor one of
        :data:`SOURCES`; ``mz_power`` or ``intensity_power`` not a finite number in
        ``POWER_MIN..POWER_MAX`` (0..10), or either changed with a score other than cosine.
    """
    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1:
        raise ConfigError(f"top must be an integer >= 1, got {top!r}")
    if score is not None:
        from neimsctl.evaluate.matching import SCORES

        if score not in SCORES:
            raise ConfigError(f"unknown score {score!r}: use one of {', '.join(SCORES)}")
    if not (isinstance(reverse, bool) or getattr(getattr(reverse, "dtype", None), "kind", "") == "b"):
        raise ConfigError(f"reverse must be True or False, got {reverse!r}")
    if mass_filter is not None:
        _number("mass_filter", mass_filter, 0.0)
    if source is not None and source not in SOURCES:
        raise ConfigError(f"source must be None or one of {', '.join(map(repr, SOURCES))}, got {source!r}")
    _number("mz_power", mz_power, POWER_MIN, POWER_MAX)
    _number("intensity_power", intensity_power, POWER_MIN, POWER_MAX)
    if powers_misused(score, mz_power, intensity_power):
        raise ConfigError("mz_power/intensity_power apply to score='cosine' only")
