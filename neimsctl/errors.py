"""Typed exceptions raised by the library; only ``neimsctl.cli`` turns them into exit codes."""

from __future__ import annotations

from typing import Any


def shown(text: Any, limit: int = 200) -> Any:
    """``text`` as a message shows it: cut to ``limit`` characters, with its length (a record
    name or id of 2 MB is not echoed on standard error; the rejects report keeps it whole);
    anything but a str (``None``) as it is."""
    if not isinstance(text, str) or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def shown_value(value: Any, limit: int = 80) -> str:
    """``repr(value)`` as a message shows it (:func:`shown`); an int too long for a repr
    (more than 4,300 digits: ``repr`` raises) is named as such."""
    try:
        return shown(repr(value), limit)
    except ValueError:
        return "(an integer too long to show)"


class NeimsError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(NeimsError):
    """Input that cannot be read at all (missing file, unreadable stream)."""


class StrictStop(InputError):
    """``--strict``: the first rejected record stops the run (records before it are written)."""


class FormatError(NeimsError):
    """Input that violates a file format; carries where it happened when known.

    Parameters
    ----------
    message
        What is wrong.
    file, line, record
        Where: source file name, 1-based line number and record name/ID, each optional.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 record: str | None = None) -> None:
        self.message, self.file, self.line, self.record = message, file, line, record
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if record is not None:
            where.append(f"record {shown(record)!r}")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class OutputError(NeimsError):
    """An output that cannot be written: missing directory, read-only file system, full disk.

    The message is ``<path>: <why>`` naming the path the user gave (never a temporary name).
    """


class OutputBusy(OutputError):
    """Another process is writing the same partial output (its lock is held): nothing of it
    may be touched."""


class ConfigError(NeimsError):
    """Invalid configuration: unknown key, wrong type, a value out of range, bad override.

    Parameters
    ----------
    message
        What is wrong.
    key
        The dotted config key the message is about (``train.epochs``), when it is about one:
        :func:`neimsctl.train.config.load_config` then names where that value came from (the
        file, a ``--set`` override or an environment variable).
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class CheckpointError(NeimsError):
    """A checkpoint that cannot be loaded safely or does not match the features."""
