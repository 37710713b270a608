"""Name -> model class registry, so configs and CLI choices name architectures as data.

Modules register their class with ``@register("student")``; :func:`get` looks a name up and
imports the built-in model modules on first use (they self-register on import).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from neimsctl.errors import ConfigError

T = TypeVar("T")

_REGISTRY: dict[str, type] = {}
# Built-in model modules, imported lazily by get()/names(); missing ones are skipped.
BUILTIN_MODULES = ("neimsctl.models.student", "neimsctl.models.teacher", "neimsctl.models.neims_v1")


def register(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: make ``cls`` available as ``get(name)``.

    Raises
    ------
    ValueError
        If another class is already registered under ``name``.
    """

    def deco(cls: type[T]) -> type[T]:
        old = _REGISTRY.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"model name {name!r} already registered by "
                             f"{old.__module__}.{old.__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtins() -> None:
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # a real missing dependency inside the module: surface it
                raise


def names() -> list[str]:
    """Sorted names of every registered model."""
    _load_builtins()
    return sorted(_REGISTRY)


def get(name: str) -> type:
    """The class registered under ``name``.

    Raises
    ------
    ConfigError
        If no model has that name.
    """
    if name not in _REGISTRY:
        _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ConfigError(f"unknown model {name!r}; known: {known}") from None


def config_from_section(cls: type, section: dict[str, Any]) -> Any:
    """``cls.config_class.from_dict(section)`` for a training config's ``model`` section: a
    problem is named as that file names it (``model.expert_width``, not the class's own
    ``student.expert_width``)."""
    try:
        return cls.config_class.from_dict(section)
    except ConfigError as exc:
        text = str(exc)
        for own in ("student", "teacher"):
            if text.startswith((own + ".", own + ":")):
                raise ConfigError("model" + text[len(own):]) from None
        raise
