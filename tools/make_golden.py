#!/usr/bin/env python3
"""Regenerate the golden files in tests/golden/ by running the real CLI, or check them.

A table of pipelines (``STEPS``) runs the installed ``neimsctl`` through subprocesses and real
pipes, in a scratch directory holding the inputs (derived here from the bundled sample) and a
``sample.msp`` link to the bundled sample (the eval library). Every file the pipelines write is
a golden file, after this normalisation and nothing else:

- HDF5 shards (``*.h5``, written with ``--no-provenance``) are not kept: each becomes a JSON dump
  (``dump_h5``) of its layout (root attributes, and for every dataset dtype, shape, chunks,
  compression, filters and attributes) and values: 1-D datasets in full; for 2-D datasets the
  sha256 of all their bytes (little-endian, C order) and the nonzero entries of the first and the
  last row. A float is written as the shortest decimal that reads back as the same value of the
  dataset's dtype (numpy's repr: exact, e.g. float16 ``0.001`` is 0x1419); NaN and infinities as
  the strings "nan", "inf", "-inf".
- The neimsctl version is replaced by ``<version>`` (the ``neimsctl_version`` shard attribute and
  the ``predicted=neimsctl X`` tag of predicted MSP records), so a version bump alone changes no
  golden file.
- ``log.txt`` records each pipeline, the exit status of each of its commands and their own
  stderr lines (those starting with ``neimsctl ``; warnings of other libraries are dropped).

Predictions use the shipped default model with default settings except ``--precision fp32`` (``auto``
is bf16 on CPUs with native bf16, fp32 elsewhere: the golden files must not depend on the machine)
and ``--threads 1``: the torch
thread count (by default the number of cores, and cores / N with ``--jobs N``) changes the order
of float sums and so the last digits of some JSONL intensities. With one thread per process the
output of ``--jobs 1`` and ``--jobs 2`` is the same, so the MSP run uses ``--jobs 2`` (the
worker path) and the JSONL run ``--jobs 1``.

    python tools/make_golden.py            # rewrite tests/golden/ (review the diff, then commit)
    python tools/make_golden.py --check    # regenerate into a temporary directory and compare
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SAMPLE = ROOT / "neimsctl" / "resources" / "sample" / "sample.msp"
KEEP = {"README.md"}  # files of tests/golden/ that are not generated
# records of the sample by position: the first five (three compounds, then two spectra of one
# compound) and the seventh (Canthaxanthin, MW 564: peaks above m/z 500 dropped and flagged)
RECORDS = (0, 1, 2, 3, 4, 6)

# Deliberately bad MSP records, inserted after the sample's third record (the last one is cut
# short at the end of the file): one of each msp2jsonl reject reason they name.
BAD_RECORDS = [
    "Name: bad peak\nSMILES: CCCO\nNum Peaks: 2\n31 999\n60 x",
    "Name: bad smiles\nSMILES: C1CC((\nNum Peaks: 1\n31 999",
    "Name: too light\nSMILES: C\nNum Peaks: 1\n16 999",
]
TRUNCATED = "Name: truncated\nSMILES: CCCCO\nNum Peaks: 3\n31 999\n"
# SMILES lines for featurize and predict: named and unnamed, a comment, a blank line, one
# unparsable line and one molecule below featurize's default --min-mw 50 (predict keeps it).
SMILES = """\
# golden molecules (featurize, predict)
CC(=O)Oc1ccccc1C(=O)O aspirin
c1ccccc1 benzene
C1CC(( broken ring

C[C@H](N)C(=O)O L-alanine
CCO ethanol
Cc1c(C)c2c(c(C)c1O)CCC(C)(CCCC(C)CCCC(C)CCCC(C)C)O2 alpha-Tocopherol
Cn1c(=O)c2c(ncn2C)n(C)c1=O
"""


@dataclass(frozen=True)
class Step:
    """One pipeline: its commands (``neimsctl`` = the console script), run in the scratch
    directory; ``stdout``: the file the last command's output goes to."""

    commands: tuple[tuple[str, ...], ...]
    stdout: str | None = None


NOPROV = ("--no-provenance",)
PREDICT = ("neimsctl", "predict", "--threads", "1", "--precision", "fp32")
FIRST = Step((("neimsctl", "msp2jsonl", "--rejects", "msp2jsonl/rejects.jsonl", "inputs/records.msp"),
              ("tee", "msp2jsonl/records.jsonl"),
              ("neimsctl", "featurize", "--mode", "student", *NOPROV, "-o", "featurize/student.h5")))
# these read FIRST's records and run two at a time
STEPS = [
    Step(((*PREDICT, "--format", "jsonl", "msp2jsonl/records.jsonl"),
          ("tee", "predict/records.jsonl"),
          ("neimsctl", "eval", "-", "msp2jsonl/records.jsonl", "--library", "sample.msp",
           "--mass-filter", "5")),
         stdout="eval/metrics.json"),
    Step(((*PREDICT, "--jobs", "2", "--rejects", "predict/rejects.jsonl", "inputs/molecules.smi"),),
         stdout="predict/molecules.msp"),
    Step((("neimsctl", "featurize", "--mode", "teacher", *NOPROV, "-o", "featurize/teacher.h5",
           "msp2jsonl/records.jsonl"),)),
    Step((("neimsctl", "featurize", "--mode", "v1", *NOPROV, "-o", "featurize/v1.h5",
           "msp2jsonl/records.jsonl"),)),
    Step((("neimsctl", "featurize", "--mode", "student", *NOPROV, "--rejects",
           "featurize/smiles-rejects.jsonl", "-o", "featurize/smiles-student.h5",
           "inputs/molecules.smi"),)),
]


def make_inputs(work: Path) -> None:
    """inputs/records.msp (sample records + bad ones) and inputs/molecules.smi."""
    sample = SAMPLE.read_text(encoding="utf-8").strip().split("\n\n")
    recs = [sample[i] for i in RECORDS]
    (work / "inputs").mkdir(parents=True, exist_ok=True)
    text = "\n\n".join(recs[:3] + BAD_RECORDS + recs[3:]) + "\n\n" + TRUNCATED
    (work / "inputs" / "records.msp").write_text(text, encoding="utf-8")
    (work / "inputs" / "molecules.smi").write_text(SMILES, encoding="utf-8")


def neimsctl_exe() -> str:
    """The installed console script: on PATH, else beside this Python."""
    exe = shutil.which("neimsctl") or str(Path(sys.executable).with_name("neimsctl"))
    if not Path(exe).is_file():
        sys.exit("make_golden: the neimsctl console script is not installed (pip install -e .)")
    return exe


def run_step(step: Step, work: Path, exe: str, env: dict[str, str]) -> list[str]:
    """Run one pipeline in ``work``; its log lines (command, exit statuses, neimsctl stderr)."""
    procs, errs = [], []
    out = open(work / step.stdout, "wb") if step.stdout else subprocess.DEVNULL
    try:
        for i, cmd in enumerate(step.commands):
            argv = [exe, *cmd[1:]] if cmd[0] == "neimsctl" else list(cmd)
            err = tempfile.TemporaryFile()
            last = i == len(step.commands) - 1
            procs.append(subprocess.Popen(argv, cwd=work, env=env, stderr=err,
                                          stdin=procs[-1].stdout if procs else subprocess.DEVNULL,
                                          stdout=out if last else subprocess.PIPE))
            if len(procs) > 1:
                procs[-2].stdout.close()  # the reader alone holds the pipe: SIGPIPE reaches the writer
            errs.append(err)
        codes = [p.wait(timeout=300) for p in procs]
    except BaseException:
        for p in procs:
            p.kill()
        raise
    finally:
        if step.stdout:
            out.close()
    log = ["$ " + " | ".join(" ".join(c) for c in step.commands)
           + (f" > {step.stdout}" if step.stdout else "")]
    for cmd, code, err in zip(step.commands, codes, errs):
        err.seek(0)
        own = [line for line in err.read().decode(errors="replace").splitlines()
               if line.startswith("neimsctl ")]
        err.close()
        log += [f"[{' '.join(cmd[:2])}] exit {code}", *own]
    return log


def exact(x: Any) -> Any:
    """A JSON-safe exact value: ints, floats (shortest repr round-trips), 'nan'/'inf', strings."""
    if isinstance(x, bytes):
        return x.decode()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def dump_h5(path: Path) -> dict[str, Any]:
    """Layout and values of an HDF5 shard (see the module docstring)."""
    import h5py
    import numpy as np

    def dtype(dt: np.dtype) -> str:
        info = h5py.check_string_dtype(dt)
        if info is None:
            return dt.str
        return f"str ({info.encoding}, {'vlen' if info.length is None else info.length})"

    def attr(attrs: h5py.AttributeManager, k: str) -> dict[str, Any]:
        v = np.asarray(attrs[k])
        return {"dtype": dtype(attrs.get_id(k).dtype), "shape": list(v.shape),
                "value": exact(v.item()) if v.ndim == 0 else [exact(x) for x in v.tolist()]}

    def values(a: np.ndarray) -> list[Any]:
        if a.dtype.kind != "f":
            return [exact(x) for x in a.tolist()]
        # numpy's str() of a float16/float32 is the shortest decimal that reads back as that value
        return [float(str(x)) if math.isfinite(x) else str(x) for x in a]

    out: dict[str, Any] = {"attrs": {}, "datasets": {}}
    with h5py.File(path, "r") as f:
        for k in sorted(f.attrs):
            out["attrs"][k] = attr(f.attrs, k)
            if k == "neimsctl_version":
                out["attrs"][k]["value"] = "<version>"
        names: list[str] = []
        f.visit(names.append)
        for name in sorted(names):
            ds = f[name]
            if not isinstance(ds, h5py.Dataset):
                out["datasets"][name] = {"group": True,
                                         "attrs": {k: attr(ds.attrs, k) for k in sorted(ds.attrs)}}
                continue
            info = h5py.check_string_dtype(ds.dtype)
            d: dict[str, Any] = {
                "dtype": dtype(ds.dtype),
                "shape": list(ds.shape), "maxshape": list(ds.maxshape),
                "chunks": list(ds.chunks) if ds.chunks else None,
                "compression": ds.compression, "compression_opts": ds.compression_opts,
                "shuffle": ds.shuffle, "fletcher32": ds.fletcher32, "scaleoffset": ds.scaleoffset,
                "attrs": {k: attr(ds.attrs, k) for k in sorted(ds.attrs)},
            }
            a = ds.asstr()[()] if info else ds[()]
            if a.ndim <= 1:
                d["values"] = values(a)
            else:
                flat = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
                d["sha256"] = hashlib.sha256(flat.tobytes()).hexdigest()
                d["rows"] = {str(i): {"nonzero_cols": np.flatnonzero(a[i]).tolist(),
                                      "nonzero_values": values(a[i][a[i] != 0])}
                             for i in sorted({0, len(a) - 1})}
            out["datasets"][name] = d
    return out


def to_text(obj: Any, indent: int = 0) -> str:
    """JSON with one key per line and every list of scalars on one line (diffable, stable)."""
    pad = " " * indent
    if isinstance(obj, dict) and obj:
        items = [f'{pad} {json.dumps(k)}: {to_text(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    return json.dumps(obj, allow_nan=False, ensure_ascii=False)


def normalise(work: Path) -> None:
    """Turn the scratch outputs into golden files (see the module docstring)."""
    for h5 in sorted(work.rglob("*.h5")):
        h5.with_suffix(".json").write_text(to_text(dump_h5(h5)) + "\n", encoding="utf-8")
        h5.unlink()
    for msp in (work / "predict").glob("*.msp"):
        text = msp.read_text(encoding="utf-8")
        msp.write_text(re.sub(r'"predicted=neimsctl [^"]*"', '"predicted=neimsctl <version>"', text),
                       encoding="utf-8")


def generate(work: Path, exe: str | None = None) -> dict[str, bytes]:
    """Run every step in the empty directory ``work``; the golden files by relative path.

    ``exe``: the neimsctl console script (default: :func:`neimsctl_exe`).
    """
    exe = exe or neimsctl_exe()
    # the user's NEIMSCTL_* settings (e.g. config overrides) must not reach the CLI
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEIMSCTL_")}
    make_inputs(work)
    for sub in ("msp2jsonl", "featurize", "predict", "eval"):
        (work / sub).mkdir()
    (work / "sample.msp").symlink_to(SAMPLE)
    log = run_step(FIRST, work, exe, env)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for lines in pool.map(lambda step: run_step(step, work, exe, env), STEPS):
            log += lines
    (work / "sample.msp").unlink()
    normalise(work)
    (work / "log.txt").write_text("\n".join(log) + "\n", encoding="utf-8")
    return {p.relative_to(work).as_posix(): p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()}


def checked_in() -> dict[str, bytes]:
    """The golden files of tests/golden/ (without README.md)."""
    return {p.relative_to(GOLDEN).as_posix(): p.read_bytes() for p in sorted(GOLDEN.rglob("*"))
            if p.is_file() and p.relative_to(GOLDEN).as_posix() not in KEEP}


def first_difference(old: bytes, new: bytes, width: int = 160) -> str:
    """Where ``new`` first differs from ``old``: line number and the two lines (clipped)."""
    a, b = old.decode(errors="replace").splitlines(), new.decode(errors="replace").splitlines()
    for n, (x, y) in enumerate(zip(a, b), 1):
        if x != y:
            col = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            lo = max(0, col - width // 2)
            return (f"line {n}, column {col + 1}:\n  - {x[lo:lo + width]}\n  + {y[lo:lo + width]}")
    if len(a) != len(b):
        n = min(len(a), len(b)) + 1
        return f"line {n}: {'only in the golden file' if len(a) > len(b) else 'only in the new output'}"
    return "line endings or trailing bytes differ"


#: Files whose numbers come from fp32 model arithmetic, with the absolute tolerance of their floats:
#: the same inputs give the same bytes on one machine, but another CPU's kernels (AVX2 vs AVX-512)
#: round fp32 sums differently in the last bits, which can flip the last printed digit (JSONL
#: intensities have 3 decimals) or the 7th digit of a mean. Everything else (keys, strings,
#: integers, the number of records) must be equal.
FLOAT_TOLERANCE = {"predict/records.jsonl": 1.01e-3, "eval/metrics.json": 1e-6}


def same(name: str, golden: bytes, fresh: bytes) -> bool:
    """Byte-equal, or for :data:`FLOAT_TOLERANCE` files equal JSON with floats within tolerance."""
    if golden == fresh:
        return True
    tol = FLOAT_TOLERANCE.get(name)
    if tol is None:
        return False
    try:
        if name.endswith(".jsonl"):
            a, b = golden.splitlines(), fresh.splitlines()
            return len(a) == len(b) and all(_close(json.loads(x), json.loads(y), tol) for x, y in zip(a, b))
        return _close(json.loads(golden), json.loads(fresh), tol)
    except ValueError:
        return False


def _close(x: object, y: object, tol: float) -> bool:
    if isinstance(x, bool) or isinstance(y, bool) or not (isinstance(x, float) or isinstance(y, float)):
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(_close(x[k], y[k], tol) for k in x)
        if isinstance(x, list) and isinstance(y, list):
            return len(x) == len(y) and all(_close(a, b, tol) for a, b in zip(x, y))
        return x == y and type(x) is type(y)
    return isinstance(x, (int, float)) and isinstance(y, (int, float)) and abs(x - y) <= tol


def compare(golden: dict[str, bytes], fresh: dict[str, bytes]) -> list[str]:
    """One message per golden file that is missing, extra or different."""
    msgs = []
    for name in sorted(golden.keys() | fresh.keys()):
        if name not in fresh:
            msgs.append(f"{name}: checked in but no longer generated")
        elif name not in golden:
            msgs.append(f"{name}: generated but not checked in")
        elif not same(name, golden[name], fresh[name]):
            msgs.append(f"{name}: differs at {first_difference(golden[name], fresh[name])}")
    return msgs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="regenerate into a temporary directory and "
                    "compare with tests/golden/ (exit 1 on a difference)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="neimsctl-golden-") as tmp:
        fresh = generate(Path(tmp))
    if args.check:
        msgs = compare(checked_in(), fresh)
        print("\n".join(msgs) if msgs else f"golden files ok ({len(fresh)})",
              file=sys.stderr if msgs else sys.stdout)
        return 1 if msgs else 0
    for name in checked_in().keys() - fresh.keys():
        (GOLDEN / name).unlink()
    for name, data in fresh.items():
        (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
        (GOLDEN / name).write_bytes(data)
    print(f"wrote {len(fresh)} golden files to {GOLDEN.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
