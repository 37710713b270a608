"""The fork-safe h5py handle: lazy, reopened after fork, never pickled, clear open errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from neimsctl.errors import InputError
from neimsctl.io.h5handle import H5Handle


@pytest.fixture()
def h5(tmp_path: Path) -> Path:
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(1000, dtype=np.int32), chunks=(64,), compression="gzip")
    return path


def test_opens_on_first_use_and_memoizes_per_open(h5: Path) -> None:
    h = H5Handle(h5, rdcc_nbytes=1 << 16)
    assert not h.is_open
    assert h["x"][5] == 5 and h.is_open
    assert h.file.id.get_access_plist().get_cache()[2] == 1 << 16
    calls = []
    assert h.get("n", lambda f: calls.append(1) or f["x"].shape[0]) == 1000
    assert h.get("n", lambda f: calls.append(1) or -1) == 1000 and calls == [1]
    assert h["x"] is h["x"]
    h.close()
    assert not h.is_open
    assert h.get("n", lambda f: calls.append(1) or 7) == 7 and calls == [1, 1]  # reopened: again


def test_forked_child_reopens_and_leaves_the_parent_handle_alone(h5: Path) -> None:
    h = H5Handle(h5)
    parent_id = h.file.id.id
    assert h["x"][10] == 10
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it read and whether it opened its own file
        try:
            ok = (not h.is_open and int(h["x"][999]) == 999 and h._pid == os.getpid()
                  and h.is_open)
            os.write(w, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(w)
    got = os.read(r, 16)
    os.waitpid(pid, 0)
    os.close(r)
    assert got == b"ok"
    assert h.is_open and h.file.id.id == parent_id and h["x"][999] == 999


def test_pickling_drops_the_open_file(h5: Path) -> None:
    h = H5Handle(h5, rdcc_nbytes=4096)
    h.get("twice", lambda f: 2)
    assert h.is_open
    copy = pickle.loads(pickle.dumps(h))
    assert not copy.is_open and copy.path == h5 and copy.open_kwargs == {"rdcc_nbytes": 4096}
    assert copy["x"][3] == 3 and copy.get("twice", lambda f: 3) == 3  # memo not carried over
    assert h.is_open


def test_open_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.h5: cannot open as HDF5"):
        H5Handle(tmp_path / "missing.h5").file
    (tmp_path / "text.h5").write_text("not hdf5\n")
    with pytest.raises(InputError, match="text.h5: cannot open as HDF5"):
        H5Handle(tmp_path / "text.h5").file
