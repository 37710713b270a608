"""streams: every line-end convention, outputs that clash with inputs, outputs that cannot be written."""

from __future__ import annotations

import errno
import io
import os
import sys
from pathlib import Path

import pytest

from neimsctl.errors import OutputError
from neimsctl.io.jsonl import read_jsonl
from neimsctl.io.streams import (atomic_path, find_clash, iter_lines, lf_chunks, make_dirs,
                                 names_open_fd, open_out, resumable_out)

TEXTS = [b"a\nb\nc\n", b"a\r\nb\r\nc\r\n", b"a\rb\rc\r", b"a\r\nb\rc\n", b"a\rb\r\n\r\nc",
         b"", b"\r", b"\r\n", b"x", b"\n\n\r\r\r\n", b"long" * 5000 + b"\rend"]


def reference(data: bytes) -> list[bytes]:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").splitlines(keepends=True)


@pytest.mark.parametrize("data", TEXTS)
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 16])
def test_iter_lines_reads_every_line_end_convention_at_any_chunking(data: bytes, chunk: int) -> None:
    assert list(iter_lines(io.BytesIO(data), chunk)) == reference(data)
    assert b"".join(lf_chunks(io.BytesIO(data), chunk)) == data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def test_crlf_split_between_two_chunks_is_one_line_end() -> None:
    # 'a\r' | '\nb': the CR is held back until the next chunk shows the LF
    assert list(lf_chunks(io.BytesIO(b"a\r\nb"), 2)) == [b"a", b"\nb"]
    assert list(iter_lines(io.BytesIO(b"a\r\nb"), 2)) == [b"a\n", b"b"]


def test_read_jsonl_with_cr_and_mixed_line_ends() -> None:
    lines = [b'{"a": 1}', b'{"a": 2}', b'{"a": 3}']
    for eol in (b"\r", b"\r\n", b"\n"):
        assert [r["a"] for r in read_jsonl(io.BytesIO(eol.join(lines) + eol))] == [1, 2, 3]
    assert [r["a"] for r in read_jsonl(io.BytesIO(b'{"a": 1}\r{"a": 2}\r\n{"a": 3}'))] == [1, 2, 3]


# -- outputs that are inputs --------------------------------------------------------------------

def test_find_clash_same_file_by_inode_link_and_spelling(tmp_path: Path) -> None:
    src = tmp_path / "x.msp"
    src.write_bytes(b"data")
    os.link(src, tmp_path / "hard.msp")
    (tmp_path / "soft.msp").symlink_to(src)
    for out in (src, tmp_path / "hard.msp", tmp_path / "soft.msp", tmp_path / "." / "x.msp"):
        clash = find_clash([("input x.msp", src)], [("-o", out)])
        assert clash is not None and clash.other == "input x.msp" and clash.other_is_input
    assert find_clash([("input x.msp", src)], [("-o", tmp_path / "y.jsonl")]) is None


def test_find_clash_between_outputs_not_yet_there(tmp_path: Path) -> None:
    a = tmp_path / "out.jsonl"
    clash = find_clash([], [("-o", a), ("--rejects", tmp_path / "sub" / ".." / "out.jsonl")])
    assert clash is not None and (clash.output, clash.other, clash.other_is_input) == (
        "--rejects", "-o", False)
    assert find_clash([], [("-o", a), ("--rejects", tmp_path / "rej.jsonl")]) is None


def test_find_clash_ignores_devices_and_compares_stdin_stdout_by_what_they_are(tmp_path: Path) -> None:
    assert find_clash([("input", "/dev/null")], [("-o", "/dev/null"), ("--rejects", "/dev/null")]) is None
    src = tmp_path / "x.smi"
    src.write_bytes(b"CCO\n")
    saved = os.dup(1)
    try:
        with open(src, "ab") as fh:  # `>> x.smi`
            os.dup2(fh.fileno(), 1)
        clash = find_clash([("input x.smi", src)], [("stdout", "-")])
        assert clash is not None and clash.other == "input x.smi"
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert src.read_bytes() == b"CCO\n"


# -- outputs that cannot be written ---------------------------------------------------------------

def test_open_out_missing_directory_and_path_under_a_file(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_bytes(b"")
    for bad, why in ((tmp_path / "nodir" / "x.jsonl", "No such file or directory"),
                     (plain / "sub.jsonl", "Not a directory")):
        with pytest.raises(OutputError, match=f"^{bad}: cannot write: {why}"):
            with open_out(bad) as fh:
                fh.write(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_open_out_full_disk_names_the_output() -> None:
    with pytest.raises(OutputError, match="^/dev/full: cannot write: No space left on device"):
        with open_out("/dev/full") as fh:
            fh.write(b"x" * (2 << 20))  # more than the buffer: the write itself fails


def test_open_out_full_disk_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    def full_disk_open(path, mode="r", *a, **k):  # a temp file on a disk that is full
        if "w" in mode and ".part-" in str(path):
            real_open(path, mode).close()
            return real_open("/dev/full", mode, *a, **k)
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full_disk_open)
    out = tmp_path / "x.jsonl"
    with pytest.raises(OutputError, match="x.jsonl: cannot write: No space left"):
        with open_out(out) as fh:
            fh.write(b"{}\n")  # buffered: the failure comes when the file is closed
    assert list(tmp_path.iterdir()) == []


def test_stdout_that_fails_is_named_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    class Full(io.BytesIO):
        def write(self, data):  # type: ignore[no-untyped-def]
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(Full()))
    with pytest.raises(OutputError, match="^<stdout>: cannot write: No space left on device"):
        with open_out("-") as fh:
            fh.write(b"x")


def test_resumable_out_and_make_dirs_name_their_path(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_bytes(b"")
    with pytest.raises(OutputError, match="cannot write: Not a directory"):
        with resumable_out(plain / "r.jsonl"):
            pass
    with pytest.raises(OutputError, match=f"^{plain}/run: cannot create the directory"):
        make_dirs(plain / "run")
    with pytest.raises(OutputError, match="not a directory"):
        make_dirs(plain)
    assert make_dirs(tmp_path / "a" / "b").is_dir()


def test_symlinked_output_keeps_the_link_and_fd_names_are_written_through(tmp_path: Path) -> None:
    link = tmp_path / "link.jsonl"
    link.symlink_to("real.jsonl")
    with open_out(link) as fh:
        fh.write(b"x\n")
    assert link.is_symlink() and (tmp_path / "real.jsonl").read_bytes() == b"x\n"
    assert names_open_fd("/dev/stderr") and names_open_fd("/dev/fd/1") and names_open_fd("/proc/self/fd/2")
    assert not names_open_fd(link) and not names_open_fd("/dev/null")
    was_link = os.path.islink("/dev/stderr")
    with atomic_path("/dev/stderr") as p:  # never a temp file renamed onto /dev/stderr
        assert str(p) == "/dev/stderr"
    assert os.path.islink("/dev/stderr") == was_link


def test_iter_lines_passes_on_lines_as_a_pipe_delivers_them() -> None:
    import threading
    import time

    r, w = os.pipe()
    got: list[tuple[bytes, float]] = []
    writer = threading.Thread(target=lambda: (os.write(w, b"first\n"), time.sleep(1.0),
                                              os.write(w, b"second\n"), os.close(w)))
    with os.fdopen(r, "rb", buffering=1 << 20) as fh:
        start = time.monotonic()
        writer.start()
        for line in iter_lines(fh):
            got.append((line, time.monotonic() - start))
    writer.join()
    assert [g[0] for g in got] == [b"first\n", b"second\n"]
    assert got[0][1] < 0.8 <= got[1][1]  # the first line did not wait for 64 KB or the end


# -- compressed input that ends early (found by tools/fuzz.py) -------------------------------------

def _read_all(path: Path) -> bytes:
    from neimsctl.io.streams import open_in

    with open_in(path) as fh:
        return fh.read()


def test_truncated_or_corrupt_compressed_input_is_an_input_error(tmp_path: Path) -> None:
    import gzip

    import zstandard

    from neimsctl.errors import InputError

    data = b"".join(b"Name: r%d\nNum Peaks: 1\n15 999\n\n" % i for i in range(20000))
    zc = zstandard.ZstdCompressor()
    cases = {"cut.gz": gzip.compress(data)[:-10], "cut.zst": zc.compress(data)[:-1],
             "cut2.zst": zc.compress(data) + zc.compress(data)[:100],
             "bad.gz": b"\x1f\x8b\nc1ccccc1 ", "bad.zst": zstandard.FRAME_HEADER + b"\xff" * 40}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(InputError, match=f"{name}: (corrupt|truncated)"):
            _read_all(tmp_path / name)
    (tmp_path / "two.gz").write_bytes(gzip.compress(data) + gzip.compress(data))
    (tmp_path / "two.zst").write_bytes(zc.compress(data) + zc.compress(data))
    (tmp_path / "empty.zst").write_bytes(zc.compress(b""))
    assert _read_all(tmp_path / "two.gz") == _read_all(tmp_path / "two.zst") == data * 2
    assert _read_all(tmp_path / "empty.zst") == b""


@pytest.mark.parametrize("name", ["", ".", "/", "adir"])
def test_a_directory_or_empty_name_is_no_output_file(tmp_path, monkeypatch, name) -> None:
    """-o '' / . / / / an existing directory: one OutputError before any work (a ValueError
    traceback for the first three; softlabel found out only at its final rename, after the job)."""
    from neimsctl.errors import OutputError
    from neimsctl.io.streams import atomic_path, partial_path, temp_path_for

    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    for make in (partial_path, temp_path_for):
        with pytest.raises(OutputError, match="cannot write: (is a directory|not a file name)"):
            make(name)
    with pytest.raises(OutputError):
        with atomic_path(name):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_text_is_read_as_utf8(tmp_path, encoding) -> None:
    """Windows programs export "Unicode" (UTF-16) text: read as UTF-8 when it carries its
    byte-order mark (it was one binary_garbage reject for the whole file)."""
    from neimsctl.io.streams import open_in

    text = "Name: café\r\nNum Peaks: 1\r\n84 999\r\n\r\n" * 3000        # several read chunks
    data = text.encode(encoding)
    if encoding != "utf-16":
        data = ("\ufeff" + text).encode(encoding)
    (tmp_path / "u.msp").write_bytes(data)
    with open_in(tmp_path / "u.msp") as fh:
        assert fh.read() == text.encode("utf-8")


@pytest.mark.parametrize("wrap", ["plain", "gzip", "zstd"])
@pytest.mark.parametrize("bom", [b"\xef\xbb\xbf", "utf-16"])
def test_byte_order_marks_under_compression(tmp_path, wrap, bom) -> None:
    """A UTF-8 byte-order mark is skipped (a JSONL file starting with one was read as MSP: every
    record lost) and UTF-16 is decoded inside gzip and zstd too."""
    import gzip

    import zstandard

    from neimsctl.io.streams import open_in

    text = '{"id": "a"}\n{"id": "b"}\n'
    data = bom + text.encode() if isinstance(bom, bytes) else text.encode(bom)
    data = {"plain": lambda d: d, "gzip": gzip.compress,
            "zstd": lambda d: zstandard.ZstdCompressor().compress(d)}[wrap](data)
    (tmp_path / "x.jsonl").write_bytes(data)
    with open_in(tmp_path / "x.jsonl") as fh:
        assert fh.read() == text.encode()


def test_an_hdf5_output_in_a_missing_directory_is_named_by_its_final_name(tmp_path) -> None:
    """HDF5's own message names the temporary file; the error names the output asked for."""
    import h5py

    from neimsctl.errors import OutputError
    from neimsctl.io.streams import atomic_path

    final = tmp_path / "missing" / "x.h5"
    with pytest.raises(OutputError) as info:
        with atomic_path(final) as tmp:
            h5py.File(tmp, "w")
    msg = str(info.value)
    assert msg.startswith(f"{final}: cannot write: No such file or directory (no directory ")
    assert ".part-" not in msg


def test_soft_label_output_errors_name_the_output_and_a_damaged_partial(tmp_path) -> None:
    from neimsctl.errors import FormatError, OutputError
    from neimsctl.io.softlabel_shard import SoftLabelWriter

    with pytest.raises(OutputError, match=r"s\.h5: cannot write: No such file or directory") as info:
        SoftLabelWriter(tmp_path / "missing" / "s.h5", {}, n_bins=4, hidden_dim=2)
    assert ".partial" not in str(info.value)
    (tmp_path / "s.h5.partial").write_bytes(b"\x00" * 5000)          # cut by the interruption
    with pytest.raises(FormatError, match="cannot be read .*rerun without --resume") as info:
        SoftLabelWriter(tmp_path / "s.h5", {}, n_bins=4, hidden_dim=2, resume=True)
    assert "s.h5.partial" in str(info.value)


def test_soft_labels_on_a_full_disk_stop_before_hdf5_writes_and_resume(tmp_path, monkeypatch) -> None:
    """The disk fills up between two blocks: the writer stops with the output's full-disk
    error before HDF5 writes (HDF5 finding it full crashed softlabel, SIGSEGV), the partial
    file keeps the blocks before it and --resume goes on from them."""
    from types import SimpleNamespace

    import numpy as np

    from neimsctl.io import streams
    from neimsctl.io.softlabel_shard import SoftLabelReader, SoftLabelWriter

    free = {"bytes": 1 << 40}
    monkeypatch.setattr(streams.os, "statvfs", lambda path: SimpleNamespace(
        f_bfree=free["bytes"] // 4096, f_bavail=free["bytes"] // 4096, f_frsize=4096))
    rng = np.random.default_rng(0)

    def block(k: int):  # type: ignore[no-untyped-def]
        return ([f"r{k}-{i}" for i in range(64)], rng.random((64, 501), dtype=np.float32),
                rng.random((64, 501), dtype=np.float32), rng.random((64, 8), dtype=np.float32))

    out = tmp_path / "soft.h5"
    w = SoftLabelWriter(out, {"x": 1}, n_bins=501, hidden_dim=8)
    w.append(*block(0), positions_done=64)
    free["bytes"] = streams.ROOM_BYTES + 1000
    with pytest.raises(OutputError, match=rf"^{out}: cannot write: No space left on device$"):
        with w:
            w.append(*block(1), positions_done=128)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["soft.h5.partial"]
    free["bytes"] = 1 << 40
    with SoftLabelWriter(out, {"x": 1}, n_bins=501, hidden_dim=8, resume=True) as again:
        assert (again.n_rows, again.positions_done) == (64, 64)
        again.append(*block(1), positions_done=128)
    assert SoftLabelReader(out).n_rows == 128


def test_an_interrupt_a_callback_swallowed_stops_the_rename(tmp_path, monkeypatch) -> None:
    """A Ctrl-C/SIGTERM whose KeyboardInterrupt was raised inside an h5py callback is lost
    ('Exception ignored'); only interrupts.check() sees it. An atomic output is not put in
    place after one (shards merge ran to the end and exited 0 after SIGTERM)."""
    from neimsctl import interrupts
    from neimsctl.io.streams import resumable_out

    monkeypatch.setattr(interrupts, "_PENDING", None)
    (tmp_path / "out.txt").write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_bytes(b"new")
            try:
                interrupts._on_signal(15, None)                  # raised in a callback ...
            except KeyboardInterrupt:
                pass                                             # ... and swallowed there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    assert (tmp_path / "out.txt").read_bytes() == b"previous"
    with pytest.raises(KeyboardInterrupt):
        with resumable_out(tmp_path / "rej.jsonl") as fh:
            fh.write(b"{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "rej.jsonl.partial"]


def test_stale_temporaries_removed_only_when_their_run_is_known_dead(tmp_path: Path) -> None:
    """Only a temporary of this machine's boot and PID namespace whose process no longer runs
    is removed; another machine's or container's (other tag), one from before the tag, a live
    process's, another output's and a directory of the same name stay."""
    import subprocess

    from neimsctl.io.streams import _process_space, remove_stale_temps, temp_path_for

    tag = _process_space()
    if not tag:
        pytest.skip("no /proc: the tag is unknown and nothing is ever removed")
    child = subprocess.Popen(["true"])
    child.wait()
    dead, live = child.pid, os.getppid()
    out = tmp_path / "out.h5"
    stale = tmp_path / f".out.h5.part-{dead}-{tag}"
    kept = [tmp_path / f".out.h5.part-{dead}-0badc0de", tmp_path / f".out.h5.part-{dead}",
            tmp_path / f".out.h5.part-{live}-{tag}", tmp_path / f".other.h5.part-{dead}-{tag}"]
    for p in [stale, *kept]:
        p.write_bytes(b"rows")
    (tmp_path / f".out.h5.part-{dead + 1}-{tag}").mkdir()
    assert temp_path_for(out).name == f".out.h5.part-{os.getpid()}-{tag}"
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new" and not stale.exists()
    assert all(p.read_bytes() == b"rows" for p in kept)
    assert (tmp_path / f".out.h5.part-{dead + 1}-{tag}").is_dir()
    assert remove_stale_temps(out) == []


@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 16])
def test_ctrl_z_that_ends_the_input_is_dropped_and_nowhere_else(chunk: int) -> None:
    """DOS's end-of-file mark, which `copy /a a.msp + b.msp all.msp` still appends."""
    for data, lines in [(b"a\r\nb\r\n\x1a", [b"a\n", b"b\n"]), (b"a\rb\x1a\x1a", [b"a\n", b"b"]),
                        (b"a\r\x1a", [b"a\n"]), (b"\x1a", []),
                        (b"a\x1a\nb", [b"a\x1a\n", b"b"]), (b"a\r\x1ab\r", [b"a\n", b"\x1ab\n"])]:
        assert list(iter_lines(io.BytesIO(data), chunk)) == lines, data


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 1 << 16])
def test_byte_order_marks_that_start_a_line_are_dropped_at_any_chunking(chunk: int) -> None:
    """`cat a.msp b.msp` of files a Windows tool wrote: b's byte-order mark starts a line."""
    bom = b"\xef\xbb\xbf"
    for data, lines in [(b"a\n" + bom + b"b\n", [b"a\n", b"b\n"]),
                        (b"a\r\n" + bom + bom + b"b\r\n" + bom, [b"a\n", b"b\n"]),
                        (bom + b"a\r" + bom + b"\r", [b"a\n", b"\n"]),
                        (b"a" + bom + b"b\n\xef\xbb", [b"a" + bom + b"b\n", b"\xef\xbb"]),
                        (b"a\n\xef\xbc\x88b\n\xef\xbb\x1a", [b"a\n", b"\xef\xbc\x88b\n", b"\xef\xbb"])]:
        assert list(iter_lines(io.BytesIO(data), chunk)) == lines, data


def test_spool_of_a_killed_run_is_removed_by_the_next_spool(tmp_path: Path, monkeypatch) -> None:
    """featurize's HDF5 for stdout and pretrain's stdin are spooled in the temporary directory;
    a run killed (SIGKILL) before it removed its spool left it there for ever (as big as the
    output or input). The next spool removes those of dead runs of this machine, not a live
    run's."""
    import subprocess
    import tempfile

    from neimsctl.io.streams import _process_space, spool_path

    tag = _process_space()
    if not tag:
        pytest.skip("no /proc: the tag is unknown and nothing is ever removed")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    child = subprocess.Popen(["true"])
    child.wait()
    stale = tmp_path / f".neimsctl-spool.h5.part-{child.pid}-{tag}-k1ll3d_x"
    live = tmp_path / f".neimsctl-spool.h5.part-{os.getppid()}-{tag}-al1ve_xx"
    for p in (stale, live):
        p.write_bytes(b"a spooled shard")
    with spool_path(".h5") as spool:
        assert spool.parent == tmp_path and spool.name.startswith(f".neimsctl-spool.h5.part-{os.getpid()}-{tag}-")
        spool.write_bytes(b"rows")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
