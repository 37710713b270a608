"""A fork-safe h5py file handle: opened lazily in the process that reads, never pickled.

An HDF5 file id belongs to the process that opened it: a forked DataLoader worker must not read
through its parent's handle (the library state behind it was copied, not shared), and a handle
cannot be pickled into a spawned worker at all. :class:`H5Handle` therefore holds only the path
and the open options. :attr:`H5Handle.file` opens the file on first use and again whenever the
process id differs from the one that opened it (a forked child drops the parent's handle without
closing it); pickling keeps the path and options and drops the open file. Things derived from
an open file (dataset objects, per-dataset readers) are cached per open by :meth:`H5Handle.get`.

The shard reader (:class:`neimsctl.io.h5shard.ShardReader`, and through it the torch datasets
of :mod:`neimsctl.data.dataset`) and the soft-label reader
(:class:`neimsctl.io.softlabel_shard.SoftLabelReader`) read through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import h5py

from neimsctl.errors import InputError

T = TypeVar("T")


class H5Handle:
    """Read-only h5py file of ``path``, (re)opened on demand in the calling process.

    Parameters
    ----------
    path
        The HDF5 file.
    **open_kwargs
        Further ``h5py.File`` arguments, e.g. ``rdcc_nbytes`` (chunk cache per dataset).
    """

    def __init__(self, path: str | os.PathLike, **open_kwargs: Any) -> None:
        self.path = Path(path)
        self.open_kwargs = open_kwargs
        self._f: h5py.File | None = None
        self._pid = -1
        self._memo: dict[Any, Any] = {}

    @property
    def file(self) -> h5py.File:
        """The open file of this process.

        Raises
        ------
        InputError
            The file does not exist or is not HDF5.
        """
        if self._f is None or self._pid != os.getpid():
            try:
                f = h5py.File(self.path, "r", **self.open_kwargs)
            except OSError as exc:
                raise InputError(f"{self.path}: cannot open as HDF5: {exc}") from exc
            self._f, self._pid, self._memo = f, os.getpid(), {}
        return self._f

    @property
    def is_open(self) -> bool:
        """Whether this process holds an open file (no file is opened to answer)."""
        return self._f is not None and self._pid == os.getpid() and bool(self._f.id.valid)

    def get(self, key: Any, make: Callable[[h5py.File], T]) -> T:
        """``make(file)``, computed once per opened file (again after a reopen)."""
        f = self.file
        try:
            return self._memo[key]
        except KeyError:
            out = self._memo[key] = make(f)
            return out

    def __getitem__(self, name: str) -> h5py.Dataset:
        """The dataset ``name``, looked up once per opened file."""
        return self.get(("dataset", name), lambda f: f[name])

    def close(self) -> None:
        """Close the file if this process opened it (a forked child's copy is only dropped)."""
        if self._f is not None and self._pid == os.getpid():
            self._f.close()
        self._f, self._pid, self._memo = None, -1, {}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "open_kwargs": self.open_kwargs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], **state["open_kwargs"])  # type: ignore[misc]
