"""Which feature shards a training stage may read together.

``finetune`` and ``softlabel`` read teacher-mode shards, ``distill`` student- or v1-mode shards;
every stage needs all its shards in one mode and made with one featurizer (the settings hash),
and records that hash in its checkpoints and soft labels. :func:`shard_settings` checks both and
returns them.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

from neimsctl.errors import FormatError, InputError

__all__ = ["ShardSettings", "shard_settings", "hash_matches", "shown"]


class ShardSettings(NamedTuple):
    """The feature mode and the featurizer settings hash that a set of shards shares, and the
    hashes of the models that can read them
    (:func:`neimsctl.chem.features.accepted_hashes`)."""

    mode: str
    settings_hash: str
    accepts: frozenset[str] = frozenset()


def _featurize_hint(modes: Sequence[str]) -> str:
    """```neimsctl featurize --mode a` (or `--mode b`)``: how to make shards of ``modes``."""
    hint = f"`neimsctl featurize --mode {modes[0]}`"
    return hint + "".join(f" (or `--mode {m}`)" for m in modes[1:])


def shard_settings(paths: Sequence[str | Path], modes: Sequence[str], *, stage: str) -> ShardSettings:
    """The mode and settings hash common to the shards ``paths``.

    Parameters
    ----------
    paths
        HDF5 feature shards.
    modes
        The modes ``stage`` reads (e.g. ``("teacher",)``, ``("student", "v1")``).
    stage
        The command, for messages (``finetune``, ``distill``, ...).

    Raises
    ------
    FormatError
        A shard of another mode, or shards that differ in mode or featurizer settings.
    InputError
        No shards given.
    """
    from neimsctl.chem.features import accepted_hashes
    from neimsctl.io.h5shard import ShardReader

    if not paths:
        raise InputError(f"{stage}: no feature shards given")
    found: dict[str, ShardSettings] = {}
    for p in paths:
        with ShardReader(p) as r:
            if r.mode not in modes:
                raise FormatError(f"shard mode is {r.mode!r}; {stage} needs {_featurize_hint(modes)} "
                                  "shards", file=str(p))
            found[str(p)] = ShardSettings(r.mode, r.settings_hash,
                                          accepted_hashes(r.settings) | {r.settings_hash})
    if len(set(found.values())) > 1:
        what = "mode or featurizer settings" if len(modes) > 1 else "featurizer settings"
        detail = {p: f"{s.mode} {s.settings_hash}" if len(modes) > 1 else s.settings_hash
                  for p, s in found.items()}
        raise FormatError(f"shards differ in {what}: {detail}")
    return next(iter(found.values()))


def hash_matches(have: str | None, wanted: str | frozenset[str]) -> bool:
    """A checkpoint's featurizer hash ``have`` is one the shards accept (``wanted``: a hash, or
    :attr:`ShardSettings.accepts`)."""
    return have == wanted if isinstance(wanted, str) else have in wanted


def shown(wanted: str | frozenset[str]) -> str:
    """``wanted`` for a message."""
    return wanted if isinstance(wanted, str) else " or ".join(sorted(wanted))
