"""End to end: the installed ``neimsctl msp2jsonl`` through real pipes (subprocess)."""

from __future__ import annotations

import gzip
import os
import shlex
import subprocess

import orjson
import pytest
import zstandard

pytestmark = pytest.mark.cli

BAD = (b"Name: good one\nSMILES: Oc1ccccc1\nNum Peaks: 2\n66 300\n94 999\n\n"
       b"Name: bad peak\nSMILES: CCCO\nNum Peaks: 2\n31 999\n60 x\n\n"
       b"Name: bad smiles\nSMILES: C1CC((\nNum Peaks: 1\n31 999\n\n"
       b"Name: no structure\nNum Peaks: 1\n31 999\n\n"
       b"Name: too light\nSMILES: C\nNum Peaks: 1\n16 999\n\n"
       b"Name: truncated\nSMILES: CCCCO\nNum Peaks: 3\n31 999\n")
BAD_REASONS = {"non_numeric_peak": 1, "unparsable_structure": 1, "no_structure": 1,
               "mw_out_of_range": 1, "truncated_record": 1}


def sh(cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=300, **kw)


def jsonl(data: bytes) -> list[dict]:
    return [orjson.loads(line) for line in data.splitlines()]


def test_pipe_in_and_out_on_the_sample(neimsctl_exe, sample_msp):
    q = shlex.quote
    proc = sh(f"cat {q(str(sample_msp))} | {q(neimsctl_exe)} msp2jsonl - | head -n 5")
    assert proc.returncode == 0, proc.stderr
    recs = jsonl(proc.stdout)
    assert len(recs) == 5 and all(r["schema"] == "neimsctl.record/1" for r in recs)
    assert recs[0]["source"] == {"file": "<stdin>", "line": 1, "ordinal": 1}
    full = sh(f"{q(neimsctl_exe)} msp2jsonl {q(str(sample_msp))}")
    assert full.returncode == 0
    assert full.stderr.decode().strip().endswith("read 300, written 300, rejected 0; 1 process")
    assert jsonl(full.stdout)[0]["smiles"] == recs[0]["smiles"]


def test_compressed_input_gz_file_and_zst_pipe(neimsctl_exe, sample_msp, tmp_path):
    raw = sample_msp.read_bytes()
    gz, zst = tmp_path / "s.msp.gz", tmp_path / "s.msp.zst"
    gz.write_bytes(gzip.compress(raw))
    zst.write_bytes(zstandard.ZstdCompressor().compress(raw))
    by_file = sh(f"{neimsctl_exe} msp2jsonl --no-structure {gz}")
    by_pipe = sh(f"cat {zst} | {neimsctl_exe} msp2jsonl --no-structure - {sample_msp}")
    assert by_file.returncode == by_pipe.returncode == 0
    strip = lambda out: [{**r, "source": r["source"]["line"]} for r in jsonl(out)]  # noqa: E731
    piped = strip(by_pipe.stdout)
    assert len(piped) == 600 and strip(by_file.stdout) == piped[:300] == piped[300:]
    assert jsonl(by_pipe.stdout)[0]["source"]["file"] == "<stdin>"


def test_rejects_exit_1_and_rejects_file(neimsctl_exe, tmp_path):
    src, rej = tmp_path / "bad.msp", tmp_path / "rej.jsonl"
    src.write_bytes(BAD)
    proc = sh(f"{neimsctl_exe} msp2jsonl {src} --rejects {rej}")
    assert proc.returncode == 1
    assert [r["name"] for r in jsonl(proc.stdout)] == ["good one"]
    lines = jsonl(rej.read_bytes())
    assert {r["reason"]: 1 for r in lines} == BAD_REASONS
    assert [r["record"] for r in lines] == ["bad peak", "bad smiles", "no structure", "too light", "truncated"]
    assert lines[0]["file"] == str(src) and lines[0]["line"] == 7 and lines[0]["id"] == "bad:2"
    assert set(lines[0]) == {"file", "line", "record", "id", "reason", "detail"}
    summary = proc.stderr.decode().strip().splitlines()[-1]
    assert summary.startswith("neimsctl msp2jsonl: read 6, written 1, rejected 5 (")


@pytest.mark.parametrize("n_bad", [10, 11])
def test_further_rejects_note_only_when_one_is_hidden(neimsctl_exe, tmp_path, n_bad):
    src = tmp_path / "bad.msp"
    src.write_bytes(b"".join(b"Name: bad %d\nSMILES: C1CC((\nNum Peaks: 1\n31 999\n\n" % i
                             for i in range(n_bad)))
    proc = sh(f"{neimsctl_exe} msp2jsonl {src} -o /dev/null")
    err = proc.stderr.decode()
    assert proc.returncode == 1
    assert err.count("record 'bad ") == 10        # the first ten, each named
    assert ("further rejects not shown" in err) == (n_bad > 10)


def test_usage_errors_exit_2(neimsctl_exe, sample_msp, tmp_path):
    for args in ("--min-mw 100 --max-mw 50", "--no-such-option", f"--mol-dir {tmp_path / 'nope'}",
                 "--jobs 0", str(tmp_path / "missing.msp")):
        proc = sh(f"{neimsctl_exe} msp2jsonl {args} {sample_msp} < /dev/null")
        assert proc.returncode == 2, (args, proc.stderr)


def test_strict_stops_at_first_reject_and_leaves_no_output(neimsctl_exe, tmp_path):
    src, out = tmp_path / "bad.msp", tmp_path / "out.jsonl"
    src.write_bytes(BAD)
    proc = sh(f"{neimsctl_exe} msp2jsonl --strict {src} -o {out}")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert f"{src}: line 7: record 'bad peak'" in err and "non_numeric_peak" in err
    # the stop line is worded as the reject line (it had the id after the detail:
    # "record 'bad peak': non_numeric_peak: line 11: '60 x': not a number (id bad:2): ...")
    assert err.splitlines()[-1] == (f"neimsctl msp2jsonl: {src}: line 7: record 'bad peak' "
                                    "(id bad:2): non_numeric_peak: line 11: '60 x': not a number: "
                                    "rejected under --strict")
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_atomic_output_file(neimsctl_exe, sample_msp, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = sh(f"{neimsctl_exe} msp2jsonl -q {sample_msp} -o {out}")
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b""
    assert len(out.read_bytes().splitlines()) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


@pytest.mark.parametrize("sig", ["INT", "TERM", "HUP"])   # HUP: the terminal was closed
def test_signal_leaves_no_output_and_exits_128_plus_signal(neimsctl_exe, sample_msp, tmp_path, sig):
    import signal
    import time

    big = tmp_path / "big.msp"
    big.write_bytes((sample_msp.read_bytes().rstrip(b"\n") + b"\n\n") * 400)  # 120,000 records
    # SIGHUP's default action even when the tests run under nohup (which msp2jsonl honours)
    proc = subprocess.Popen([neimsctl_exe, "msp2jsonl", "-q", "-j", "2", str(big), "-o", "out.jsonl"],
                            cwd=tmp_path, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.jsonl.part-*")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(getattr(signal, f"SIG{sig}"))
    assert proc.wait(timeout=60) == 128 + getattr(signal, f"SIG{sig}")
    assert b"interrupted" in proc.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.msp"]  # no output, no temporary


def test_nohup_run_goes_on_after_sighup(neimsctl_exe, sample_msp, tmp_path):
    """Under nohup (SIGHUP ignored) a closed terminal does not stop the run: it ends as usual."""
    import signal
    import time

    big = tmp_path / "big.msp"
    big.write_bytes((sample_msp.read_bytes().rstrip(b"\n") + b"\n\n") * 20)  # 6,000 records
    proc = subprocess.Popen([neimsctl_exe, "msp2jsonl", "-q", str(big), "-o", "out.jsonl"],
                            cwd=tmp_path, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.jsonl.part-*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=120) == 0 and proc.stderr.read() == b""
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 6000


def test_temporary_of_a_killed_run_is_removed_by_the_next(neimsctl_exe, sample_msp, tmp_path):
    """SIGKILL leaves the run's hidden temporary (nothing can remove it); the next run writing
    the same output removes it, saying so, and leaves a live run's temporary alone."""
    import signal
    import time

    big = tmp_path / "big.msp"
    big.write_bytes((sample_msp.read_bytes().rstrip(b"\n") + b"\n\n") * 400)
    proc = subprocess.Popen([neimsctl_exe, "msp2jsonl", "-q", str(big), "-o", "out.jsonl"],
                            cwd=tmp_path, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".out.jsonl.part-*")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    [left] = tmp_path.glob(".out.jsonl.part-*")
    assert left.name.startswith(f".out.jsonl.part-{proc.pid}-")
    live = tmp_path / left.name.replace(f"-{proc.pid}-", f"-{os.getpid()}-")   # this test's PID
    live.write_bytes(b"a live run's rows")
    again = sh(f"{neimsctl_exe} msp2jsonl {sample_msp} -o out.jsonl", cwd=tmp_path)
    assert again.returncode == 0
    assert f"removed {left.name} (" in again.stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "big.msp", "out.jsonl"])


def test_jobs_2_output_identical_to_jobs_1(neimsctl_exe, sample_msp):
    one = sh(f"{neimsctl_exe} msp2jsonl -j 1 {sample_msp} {sample_msp}")
    two = sh(f"{neimsctl_exe} msp2jsonl -j 2 {sample_msp} {sample_msp}")
    assert one.returncode == two.returncode == 0
    assert one.stdout == two.stdout and len(one.stdout.splitlines()) == 600


def test_nist_style_missing_mol_files_reported_by_id(neimsctl_exe, shared_data, tmp_path):
    nist, rej = shared_data / "nist_style", tmp_path / "rej.jsonl"
    proc = sh(f"{neimsctl_exe} msp2jsonl {nist / 'massbank_ei_nostruct.msp'} "
              f"--mol-dir {nist / 'mol_files'} --rejects {rej} -j 2")
    assert proc.returncode == 1
    lines = jsonl(rej.read_bytes())
    assert [(r["id"], r["reason"]) for r in lines] == [(i, "missing_mol_file") for i in ("350", "370", "432")]
    recs = jsonl(proc.stdout)
    assert len(recs) == 497 and all(r["structure_from"] == "mol" for r in recs)
    assert not any(f.endswith("_mismatch") for r in recs for f in r["flags"])
    assert "read 500, written 497, rejected 3 (missing_mol_file: 3)" in proc.stderr.decode()


def test_dev_file_parse_only_rejects_exactly_the_13_light_compounds(neimsctl_exe, shared_data):
    proc = sh(f"{neimsctl_exe} msp2jsonl --no-structure {shared_data / 'massbank_ei.msp'} | wc -l")
    assert proc.returncode == 1  # pipefail: msp2jsonl exits 1 because of the MW filter
    assert int(proc.stdout) == 8183
    assert "read 8196, written 8183, rejected 13 (mw_out_of_range: 13)" in proc.stderr.decode()


@pytest.mark.slow
def test_dev_file_full_conversion_agrees_with_msp_lines(neimsctl_exe, shared_data):
    proc = sh(f"{neimsctl_exe} msp2jsonl -j 2 {shared_data / 'massbank_ei.msp'}")
    assert "read 8196, written 8183, rejected 13 (mw_out_of_range: 13)" in proc.stderr.decode()
    flags = {f for r in jsonl(proc.stdout) for f in r["flags"]}
    assert flags <= {"peaks_above_max_mz"}


def test_jobs_auto_on_the_dev_file_same_output_as_one_process_and_a_bar_on_a_terminal(
        neimsctl_exe, shared_data, tmp_path):
    """massbank_ei.msp (8,196 records, past the 4,096 of --jobs auto): the default runs one
    worker per core and says so; records and rejects are byte for byte those of -j 1. On a
    terminal the bar runs over the file's bytes with the counts, the reject messages are lines
    above it; -q, or stderr not a terminal: no bar."""
    from _pty import run_on_tty
    from neimsctl.io.parallel import available_cores

    src = shared_data / "massbank_ei.msp"
    cmd = [neimsctl_exe, "msp2jsonl", str(src), "-o", str(tmp_path / "auto.jsonl"),
           "--rejects", str(tmp_path / "auto.rej")]
    code, tty = run_on_tty(cmd, env={**os.environ, "TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"})
    text = tty.decode("utf-8", "replace")
    used = f"{available_cores()} workers" if available_cores() > 1 else "1 process"
    assert code == 1 and "%|" in text and "rec/s" in text and "5.40M" in text
    assert "read 8,196 written 8,183 rejected 13" in text
    assert text.rstrip().endswith(f"read 8196, written 8183, rejected 13 (mw_out_of_range: 13); {used}")
    lines = text.replace("\r", "\n").split("\n")
    assert sum(ln.startswith("neimsctl msp2jsonl: ") and ": mw_out_of_range: " in ln for ln in lines) == 10
    one = sh(f"{neimsctl_exe} msp2jsonl -j 1 {src} -o {tmp_path / 'one.jsonl'} "
             f"--rejects {tmp_path / 'one.rej'}")
    assert one.returncode == 1 and b"%|" not in one.stderr and b"\r" not in one.stderr
    assert one.stderr.decode().rstrip().endswith("rejected 13 (mw_out_of_range: 13); 1 process")
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "auto.jsonl").read_bytes()
    assert (tmp_path / "one.rej").read_bytes() == (tmp_path / "auto.rej").read_bytes()
    code, tty = run_on_tty(cmd[:3] + ["-q", "--no-structure", "-o", os.devnull])
    assert code == 1 and tty == b""
    # the records themselves going to the terminal: they are the progress, no bar among them
    code, tty = run_on_tty(cmd[:3] + ["--no-structure"], stdout_too=True)
    assert code == 1 and b"%|" not in tty and tty.count(b'"schema":"neimsctl.record/1"') == 8183


def test_dummy_atom_structures_are_rejected_with_the_reason(neimsctl_exe, tmp_path):
    """A record whose structure holds a dummy atom ('*' in its SMILES line, an R-group atom in
    its MOL file) is a dummy_atom reject, like an unparsable structure (it was written silently,
    and featurize then learned from it); --no-structure keeps its spectrum."""
    from rdkit import Chem

    mols = tmp_path / "mols"
    mols.mkdir()
    block = Chem.MolToMolBlock(Chem.MolFromSmiles("CCCCc1ccccc1")).splitlines()
    block[4] = block[4][:31] + "R# " + block[4][34:]
    (mols / "ID2.MOL").write_text("\n".join(block) + "\n")
    src, rej = tmp_path / "lib.msp", tmp_path / "rej.jsonl"
    src.write_bytes(b"Name: good one\nSMILES: Oc1ccccc1\nNum Peaks: 2\n66 300\n94 999\n\n"
                    b"Name: star\nSMILES: *c1ccc(CCCC)cc1\nNum Peaks: 2\n91 999\n133 300\n\n"
                    b"Name: r-group\nID: 2\nNum Peaks: 2\n91 999\n133 300\n\n")
    proc = sh(f"{neimsctl_exe} msp2jsonl {src} --mol-dir {mols} --rejects {rej}")
    assert proc.returncode == 1
    assert [r["name"] for r in jsonl(proc.stdout)] == ["good one"]
    lines = jsonl(rej.read_bytes())
    assert [(r["record"], r["line"], r["reason"]) for r in lines] == [
        ("star", 7, "dummy_atom"), ("r-group", 13, "dummy_atom")]
    assert lines[1]["detail"].startswith(f"the MOL file of ID 2 in {mols}: SMILES '*")
    err = proc.stderr.decode()
    assert "record 'star' (id lib:2): dummy_atom: SMILES '*c1ccc(CCCC)cc1' has a dummy atom" in err
    assert err.strip().splitlines()[-1].endswith(
        "read 3, written 1, rejected 2 (dummy_atom: 2); 1 process")
    kept = sh(f"{neimsctl_exe} msp2jsonl --no-structure {src}")
    assert kept.returncode == 0 and len(jsonl(kept.stdout)) == 3


def test_a_huge_mol_file_is_too_large_naming_it_and_is_not_read(neimsctl_exe, tmp_path):
    """A 2 GB file named ID5.MOL in --mol-dir was read into memory whole (and then was an
    unparsable structure): it is a too_large reject naming the file, decided from its size
    (the address-space limit makes a whole read of it fail: bytes and text need over 4 GB)."""
    from rdkit import Chem

    mols = tmp_path / "mols"
    mols.mkdir()
    (mols / "ID1.MOL").write_text(Chem.MolToMolBlock(Chem.MolFromSmiles("CCCCc1ccccc1")))
    with open(mols / "ID5.MOL", "wb") as fh:                 # sparse: no disk used
        fh.truncate(2 * 2**30)
    src = tmp_path / "lib.msp"
    src.write_bytes(b"".join(b"Name: m%d\nID: %d\nNum Peaks: 1\n91 999\n\n" % (i, i) for i in (1, 5)))
    proc = sh(f"ulimit -v 4000000; {neimsctl_exe} msp2jsonl {src} --mol-dir {mols} "
              f"--rejects {tmp_path / 'rej.jsonl'}")
    assert proc.returncode == 1, proc.stderr
    assert [r["smiles"] for r in jsonl(proc.stdout)] == ["CCCCc1ccccc1"]
    rej = jsonl((tmp_path / "rej.jsonl").read_bytes())
    assert [(r["id"], r["reason"]) for r in rej] == [("5", "too_large")]
    assert rej[0]["detail"] == (f"{mols / 'ID5.MOL'}: a file of 2,147,483,648 bytes, not read "
                                "(limit 16 MiB: the MOL file of an EI-MS molecule is a few KB)")
    assert "read 2, written 1, rejected 1 (too_large: 1)" in proc.stderr.decode()


def test_a_huge_name_or_id_is_cut_on_stderr_and_whole_in_the_rejects(neimsctl_exe, tmp_path):
    """A reject's name (200,000 characters) and id were echoed whole: one 400 KB stderr line."""
    src, rej = tmp_path / "long.msp", tmp_path / "rej.jsonl"
    src.write_bytes(b"Name: " + b"X" * 200_000 + b"\nID: " + b"Y" * 100_000 + b"\nNum Peaks: 0\n")
    proc = sh(f"{neimsctl_exe} msp2jsonl {src} --rejects {rej}")
    assert proc.returncode == 1 and len(proc.stderr) < 1500, proc.stderr[:300]
    assert b"X" * 200 + b"... (200,000 characters)" in proc.stderr
    assert b"Y" * 200 + b"... (100,000 characters)" in proc.stderr
    assert jsonl(rej.read_bytes())[0]["record"] == "X" * 200_000
    proc = sh(f"{neimsctl_exe} msp2jsonl {src} --strict")
    assert proc.returncode == 1 and len(proc.stderr) < 1500, proc.stderr[:300]


def test_a_library_concatenated_by_windows_copy_loses_no_record(neimsctl_exe, tmp_path):
    """`copy /a lib1.msp + lib2.msp all.msp` ends the file with Ctrl-Z (DOS's end-of-file mark):
    the last record was rejected as binary_garbage; a SMILES list so ended lost its last line."""
    lib = tmp_path / "all.msp"
    lib.write_bytes(b"Name: phenol\r\nSMILES: Oc1ccccc1\r\nNum Peaks: 2\r\n66 300\r\n94 999\r\n\r\n"
                    b"Name: propanol\r\nSMILES: CCCO\r\nNum Peaks: 2\r\n31 999\r\n60 80\r\n\x1a")
    proc = subprocess.run([neimsctl_exe, "msp2jsonl", str(lib)], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert [(r["name"], r["mz"]) for r in jsonl(proc.stdout)] == [("phenol", [66, 94]), ("propanol", [31, 60])]
    smi = tmp_path / "all.smi"
    smi.write_bytes(b"Oc1ccccc1 phenol\r\nCCCO propanol\x1a")
    proc = subprocess.run([neimsctl_exe, "predict", "-q", "-O", "jsonl", str(smi)], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert [r["name"] for r in jsonl(proc.stdout)] == ["phenol", "propanol"]


def test_files_concatenated_after_a_windows_tool_wrote_them_lose_no_record(neimsctl_exe, tmp_path):
    """`cat a.msp b.msp` where b.msp starts with a UTF-8 byte-order mark: b's first record was
    rejected as text outside any record (malformed_record), b's first JSONL line as bad_json."""
    a, b = tmp_path / "a.msp", tmp_path / "b.msp"
    a.write_bytes(b"Name: phenol\r\nSMILES: Oc1ccccc1\r\nNum Peaks: 2\r\n66 300\r\n94 999\r\n\r\n")
    b.write_bytes(b"\xef\xbb\xbfName: propanol\r\nSMILES: CCCO\r\nNum Peaks: 2\r\n31 999\r\n60 80\r\n")
    proc = sh(f"cat {a} {b} | {neimsctl_exe} msp2jsonl - > all.jsonl && "
              f"(head -n 1 all.jsonl; printf '\\357\\273\\277'; tail -n 1 all.jsonl) | {neimsctl_exe} index - -o all.h5",
              cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert [r["name"] for r in jsonl((tmp_path / "all.jsonl").read_bytes())] == ["phenol", "propanol"]
    assert b"read 2, written 2, rejected 0" in proc.stderr
