"""-o onto a special file (/dev/null, a named pipe) writes into it and never replaces it.

Outputs are normally written under a temporary name and renamed into place; renaming onto a
device or a FIFO would replace the device node or the pipe itself (as root, even /dev/null).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from neimsctl.io.streams import atomic_path, is_special_file, resumable_out


def test_atomic_and_resumable_outputs_leave_dev_null_alone() -> None:
    with atomic_path("/dev/null") as p:
        assert str(p) == "/dev/null"
        p.write_bytes(b"x")
    with resumable_out("/dev/null") as fh:
        fh.write(b"y")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert is_special_file("/dev/null") and not is_special_file(__file__)
    assert not any(n.startswith((".null.part", "null.partial")) for n in os.listdir("/dev"))


@pytest.mark.parametrize("cmd", [
    "msp2jsonl -q {sample} -o {out} --rejects {out2}",
    "featurize -q --mode student -O h5 {jsonl} -o {out} --rejects {out2}",
])
def test_commands_write_into_a_named_pipe(tmp_path: Path, sample_msp: Path, cmd: str) -> None:
    jsonl = tmp_path / "r.jsonl"
    subprocess.run(["neimsctl", "msp2jsonl", "-q", str(sample_msp), "-o", str(jsonl)], check=False)
    fifo, fifo2 = tmp_path / "out.fifo", tmp_path / "rej.fifo"
    os.mkfifo(fifo)
    os.mkfifo(fifo2)
    sinks = [open(tmp_path / n, "wb") for n in ("got", "got2")]  # cat must never block
    readers = [subprocess.Popen(["cat", str(f)], stdout=o) for f, o in zip((fifo, fifo2), sinks)]
    args = cmd.format(sample=sample_msp, jsonl=jsonl, out=fifo, out2=fifo2).split()
    p = subprocess.run(["neimsctl", *args], capture_output=True, timeout=120)
    for r, o in zip(readers, sinks):
        r.wait(timeout=60)
        o.close()
    data = (tmp_path / "got").read_bytes()
    assert p.returncode in (0, 1), p.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISFIFO(os.stat(fifo2).st_mode)
    if cmd.startswith("msp2jsonl"):
        assert data.count(b"\n") == jsonl.read_bytes().count(b"\n") > 0
    else:
        assert data.startswith(b"\x89HDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got", "got2", "out.fifo", "r.jsonl",
                                                          "rej.fifo"]


@pytest.mark.parametrize("cmd, redirect, expect", [
    ("msp2jsonl -", "<&-", "<stdin>: cannot read: Bad file descriptor"),
    ("index - -o {tmp}/x.h5", "<&-", "<stdin>: cannot read: Bad file descriptor"),
    ("msp2jsonl {sample}", ">&-", "<stdout>: cannot write: Bad file descriptor"),
    ("eval -q {sample} {sample}", ">&-", "<stdout>: cannot write: Bad file descriptor"),
])
def test_a_closed_standard_stream_is_one_line_and_nothing_is_written_in_its_place(
        tmp_path: Path, sample_msp: Path, cmd: str, redirect: str, expect: str) -> None:
    """The shell closed stdin or stdout: a read or write error naming the stream (Python left
    sys.stdin / sys.stdout None, a traceback at first use), and no file opened later takes the
    free descriptor in its place."""
    line = cmd.format(tmp=tmp_path, sample=sample_msp)
    p = subprocess.run(["bash", "-c", f"neimsctl {line} {redirect}"], capture_output=True, timeout=120)
    err = p.stderr.decode()
    assert p.returncode == 1 and expect in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
    # stderr closed: the run itself is unaffected
    out = tmp_path / "out.jsonl"
    p = subprocess.run(["bash", "-c", f"neimsctl msp2jsonl {sample_msp} -o {out} 2>&-"], timeout=120)
    assert p.returncode == 0 and out.stat().st_size > 0


def test_a_table_printed_into_a_closed_stdout_names_it(tmp_path: Path, sample_msp: Path) -> None:
    """`shards list` prints its table with the command's own printing, not an output stream:
    stdout closed (>&-) was 'I/O error: Bad file descriptor', naming no stream."""
    shard = tmp_path / "s.h5"
    p = subprocess.run(["bash", "-c", f"neimsctl msp2jsonl -q {sample_msp} | "
                        f"neimsctl featurize --mode student -q -o {shard}"], capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(["bash", "-c", f"neimsctl shards list {shard} >&-"], capture_output=True, timeout=120)
    err = p.stderr.decode()
    assert p.returncode == 1 and "<stdout>: cannot write: Bad file descriptor" in err and "Traceback" not in err, err


def test_rejects_into_the_pipe_of_the_data_are_refused(tmp_path: Path, sample_msp: Path) -> None:
    """`--rejects /dev/stdout | cat` (or /dev/stderr with 2>&1) put the rejects report into the
    data stream: refused when stdout was a file, but not when it was a pipe."""
    for rej, redirect in [("/dev/stdout", ""), ("/dev/stderr", "2>&1")]:
        p = subprocess.run(["bash", "-c", f"neimsctl msp2jsonl {sample_msp} --rejects {rej} {redirect} | cat; "
                            "exit ${PIPESTATUS[0]}"], capture_output=True, timeout=120)
        err = (p.stdout + p.stderr).decode()
        assert p.returncode == 2 and f"--rejects {rej} is the same file as stdout" in err, err
        assert b'"schema"' not in p.stdout          # no record went out before the refusal
