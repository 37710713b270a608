"""Fuzzed inputs and the properties they must keep; shared by tests/fuzz and ``tools/fuzz.py``.

Strategies build hostile but fair inputs: MSP libraries (header values such as ``inf``,
``1e400`` or 500-digit counts, odd peaks, garbage blocks between records, LF/CRLF/CR line ends
per record, byte mutations), JSONL records (fields of every JSON type), SMILES lines and SDF
blocks (truncated, mixed line ends, control bytes).

Properties (each a plain function of the drawn input, raising ``AssertionError``):

- in-process (cheap, many examples): the MSP reader, ``convert_msp``, the line splitter, the
  featurize rows (:class:`RowBuilder` into a real HDF5 shard) and the predict inputs (SMILES,
  JSONL, SDF through the featurizer and the MSP/JSONL writer) never raise, never hang, and
  account for every record;
- command line (a process per example): ``msp2jsonl``, ``featurize`` and ``predict`` exit 0, 1
  or 2 only, print no traceback, finish within :data:`CLI_TIMEOUT`, report ``read = written +
  rejected``, write exactly ``written`` records and ``rejected`` rejects lines, leave no
  temporary file beside their outputs and do not change their input.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from hypothesis import strategies as st

#: Seconds an in-process property may take on one input, and a command on one input.
INPROC_TIMEOUT, CLI_TIMEOUT = 60, 180

SMILES = ["CCCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "Oc1ccccc1", "CCN(CC)CC", "O=C(O)CCCCC",
          "C[C@H](N)C(=O)O", "[2H]C(Cl)(Cl)Cl", "[Na+].[Cl-]", "*C", "C1CC", "xyz", "", "C" * 60,
          "c1ccccc1" * 8, "[Fe+2]", "CC\tO", "C(", "OCC ethanol"]
EDGE_NUMBERS = ["inf", "-inf", "nan", "NaN", "1e400", "-1e400", "1e-400", "9" * 400, "9" * 5000,
                "-1", "0", "180,5", "1e3", "0x10", "", " ", "12.5.6", "\u0661\u0662"]
KEYS = ["Synon", "Formula", "MW", "ExactMass", "ID", "DB#", "NIST#", "CAS#", "InChIKey",
        "Comments", "SMILES", "InChI", "Num Peaks", "Ion_mode", "NAME"]
EOLS = ["\n", "\r\n", "\r"]

ETHANOL_MOL = ("ethanol\n  RDKit          2D\n\n  3  2  0  0  0  0  0  0  0  0999 V2000\n"
               "    0.0000    0.0000    0.0000 C   0  0\n    1.2990    0.7500    0.0000 C   0  0\n"
               "    2.5981   -0.0000    0.0000 O   0  0\n  1  2  1  0\n  2  3  1  0\nM  END\n")


# -- strategies ----------------------------------------------------------------------------------

text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=12)
number = st.one_of(st.integers(-5, 700).map(str), st.floats(0, 1e4).map(lambda x: f"{x:.3f}"),
                   st.sampled_from(EDGE_NUMBERS))


@st.composite
def msp_record(draw, named: bool = True) -> str:
    """One MSP record as LF text (no blank line inside)."""
    lines = [f"Name: {draw(text)}"] if named else []
    for _ in range(draw(st.integers(0, 5))):
        key = draw(st.sampled_from(KEYS))
        if key == "SMILES":
            value = draw(st.sampled_from(SMILES))
        elif key in ("MW", "ExactMass", "Num Peaks"):
            value = draw(number)
        elif key == "Formula":
            value = draw(st.sampled_from(["C6H6O", "C" + "9" * 5000, "Xx2", "[13C]H4", "C6H6O;"]))
        elif key == "Comments":
            value = '"ionization_energy=' + draw(number) + '; license=CC BY"'
        else:
            value = draw(text)
        lines.append(f"{key}: {value}")
    peaks = draw(st.lists(st.tuples(number, number), max_size=6))
    declared = draw(st.sampled_from([str(len(peaks))] * 3 + [str(len(peaks) + 1), "0"] + EDGE_NUMBERS[:4]))
    if draw(st.booleans()) or peaks:
        lines.append(f"Num Peaks: {declared}")
    sep = draw(st.sampled_from(["\n", "; ", " ", "\t"]))
    if peaks:
        lines.append(sep.join(f"{m} {i}" for m, i in peaks))
    return "\n".join(lines)


garbage_block = st.one_of(
    st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\n\n", b"\n").strip(b"\r\n") or b"\x00"),
    st.sampled_from([b"# exported by LibX", b"\x89PNG\r\n\x1a\n\x00\x00", b"\x00" * 16, b"Num Peaks: 2\n1 2"]))


@st.composite
def msp_library(draw, mutate: bool = True) -> bytes:
    """Several records, garbage between some, each in its own line-end convention; maybe mutated."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 5)) == 0:
            parts.append(draw(garbage_block) + b"\n\n")
            continue
        rec = draw(msp_record()) + "\n\n"
        eol = draw(st.sampled_from(EOLS))
        parts.append(rec.replace("\n", eol).encode("utf-8", "surrogatepass"))
    data = bytearray(b"".join(parts))
    if mutate:
        for _ in range(draw(st.integers(0, 3))):
            if not data:
                break
            pos = draw(st.integers(0, len(data) - 1))
            op = draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
            if op == "flip":
                data[pos] = draw(st.integers(0, 255))
            elif op == "delete":
                del data[pos:pos + draw(st.integers(1, 20))]
            elif op == "insert":
                data[pos:pos] = draw(st.binary(max_size=8))
            else:
                del data[pos:]
    return bytes(data)


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), text)
json_value = st.recursive(json_scalar, lambda c: st.one_of(st.lists(c, max_size=3),
                                                           st.dictionaries(text, c, max_size=3)),
                          max_leaves=6)
peak_value = st.one_of(st.integers(-5, 600), st.floats(allow_nan=True, allow_infinity=True),
                       st.just(1e308), st.sampled_from(["12", None, True]))
record = st.fixed_dictionaries({"smiles": st.one_of(st.sampled_from(SMILES), json_value)}, optional={
    "schema": st.just("neimsctl.record/1"), "id": st.one_of(text, json_value),
    "name": st.one_of(text, st.sampled_from(["a\nb", "x\x00y", "Name: z\n\nName: w"]), json_value),
    "formula": st.one_of(st.sampled_from(["C2H6O", "Xx2", "C" + "9" * 5000, "[abc]", ""]), json_value),
    "mw": st.one_of(st.integers(-10, 2000), json_value), "inchikey": st.one_of(text, json_value),
    "comments": st.one_of(st.dictionaries(st.sampled_from(["ionization_energy", "license"]),
                                          st.one_of(st.sampled_from(EDGE_NUMBERS), json_value)), json_value),
    "mz": st.one_of(st.lists(peak_value, max_size=5), json_value),
    "intensity": st.one_of(st.lists(peak_value, max_size=5), json_value)})


def _json_line(rec: dict) -> bytes:
    try:
        return orjson.dumps(rec)
    except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits
        return b'{"smiles": "CCCO", "note": "unencodable"}'


jsonl_line = st.one_of(record.map(_json_line), record.map(_json_line), record.map(_json_line),
                       st.sampled_from([b"", b"   ", b"[1, 2]", b"42", b'"x"', b'{"smiles": "CC', b"{}",
                                        b"null", b"\x00\xff"]),
                       st.binary(max_size=20).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")))
smiles_line = st.one_of(
    st.tuples(st.sampled_from(SMILES), text).map(lambda t: f"{t[0]} {t[1]}".encode("utf-8", "surrogatepass")),
    st.sampled_from([b"", b"# a comment", b"   ", b"\x00\x01", b"C" * 300, b"smiles", b"\tCCO\t x"]),
    st.binary(max_size=20).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")))


@st.composite
def lines_file(draw, line) -> bytes:  # type: ignore[no-untyped-def]
    """Lines drawn from ``line``, each ended by its own LF, CRLF or CR (or none at the end)."""
    out = b""
    items = draw(st.lists(line, max_size=8))
    for i, ln in enumerate(items):
        eol = draw(st.sampled_from(EOLS)).encode()
        if out.endswith(b"\r") and (not ln and eol == b"\n"):
            eol = b"\r"  # CR + an empty LF line would be one CRLF line end: not what we meant
        out += ln + (eol if i < len(items) - 1 or draw(st.booleans()) else b"")
    return out


@st.composite
def sdf_file(draw) -> bytes:
    """MOL blocks (good, truncated, garbled), ``$$$$`` separators, line ends mixed per block."""
    blocks = []
    for _ in range(draw(st.integers(1, 4))):
        mol = ETHANOL_MOL
        kind = draw(st.sampled_from(["good", "good", "cut", "counts", "junk", "title"]))
        if kind == "cut":
            mol = mol[:draw(st.integers(0, len(mol)))]
        elif kind == "counts":
            mol = mol.replace("  3  2  0", draw(st.sampled_from([" 99  2  0", "  a  b  c", "999999999"])))
        elif kind == "junk":
            mol = mol + draw(text) + "\n"
        elif kind == "title":
            mol = draw(text) + mol[len("ethanol"):]
        blocks.append((mol + "$$$$\n").replace("\n", draw(st.sampled_from(EOLS))))
    return "".join(blocks).encode("utf-8", "surrogatepass")


# -- helpers ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise ``TimeoutError`` (a hang) when the block runs longer than ``seconds``."""
    def alarm(signum, frame):  # type: ignore[no-untyped-def]
        raise TimeoutError(f"no result after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


_CKPT: Path | None = None


def tiny_checkpoint() -> Path:
    """A tiny student checkpoint, made once per process (removed at exit)."""
    global _CKPT
    if _CKPT is None:
        from _tiny_ckpt import tiny_student_checkpoint

        d = Path(tempfile.mkdtemp(prefix="neimsctl-fuzz-"))
        atexit.register(shutil.rmtree, d, True)
        _CKPT = tiny_student_checkpoint(d / "tiny.pt")
    return _CKPT


def compressed(data: bytes) -> bool:
    """``data`` starts with gzip or zstd magic: it is decoded, and corrupt or truncated data
    is one :class:`~neimsctl.errors.InputError` for the whole input (not a record reject)."""
    return data.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd"))


@contextlib.contextmanager
def whole_input_error_if_compressed(data: bytes) -> Iterator[list]:
    """Let a corrupt-compressed-data :class:`InputError` through (and say so), and the refusal of
    an input that is no molecules (an HDF5 file, a zblock stream, an MSP library:
    :func:`neimsctl.io.inputs.iter_items`; bzip2, xz, ZIP: :func:`neimsctl.io.streams.open_in`),
    nothing else."""
    from neimsctl.errors import InputError

    failed: list = []
    try:
        yield failed
    except InputError as exc:
        assert (compressed(data) and ("corrupt" in str(exc) or "truncated" in str(exc))) \
            or ", not molecules (" in str(exc) or "an MSP spectral library" in str(exc) \
            or "which neimsctl does not read" in str(exc), exc
        failed.append(exc)


# -- in-process properties -------------------------------------------------------------------------

def prop_msp_reader(data: bytes, chunk_size: int = 1 << 20) -> None:
    from neimsctl.io.msp import read_msp

    with time_limit(INPROC_TIMEOUT):  # (read_msp takes a decoded stream: no decompression)
        recs = list(read_msp(io.BytesIO(data), "f.msp", chunk_size=chunk_size))
    records = [r for r in recs if r.is_record]
    assert [r.ordinal for r in records] == list(range(1, len(records) + 1))
    assert all(r.reason for r in recs if not r.is_record)
    assert [r.line for r in recs] == sorted(r.line for r in recs)
    assert all(r.reason or (r.mz and len(r.mz) == len(r.intensity)) for r in recs)


def prop_msp_line_ends(records: list[str], eols: list[str]) -> None:
    """The same records read alike with LF, CRLF, CR or one convention per record."""
    from neimsctl.io.msp import read_msp

    def read(data: bytes) -> list[str]:  # repr: NaN peaks compare equal
        return [repr((r.name, r.line, r.ordinal, r.mz, r.intensity, r.reason, r.fields))
                for r in read_msp(io.BytesIO(data), "f.msp", chunk_size=7)]

    lf = "".join(r + "\n\n" for r in records)
    want = read(lf.encode())
    for eol in EOLS:
        assert read(lf.replace("\n", eol).encode()) == want, repr(eol)
    mixed = "".join((r + "\n\n").replace("\n", e) for r, e in zip(records, eols))
    assert read(mixed.encode()) == want, eols


def prop_convert_msp(data: bytes, structure: bool) -> None:
    from neimsctl.chem.convert import ConvertOptions, convert_msp
    from neimsctl.io.rejects import Tally

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "f.msp"
        src.write_bytes(data)
        out, rej = io.BytesIO(), io.BytesIO()
        tally = Tally(sink=rej)
        with time_limit(INPROC_TIMEOUT), whole_input_error_if_compressed(data) as failed:
            convert_msp([src], out, tally, ConvertOptions(structure=structure, min_mw=0))
    if failed:
        return
    assert tally.balanced and out.getvalue().count(b"\n") == tally.written
    assert rej.getvalue().count(b"\n") == tally.rejected
    for line in out.getvalue().splitlines():
        orjson.loads(line)


def prop_iter_lines(data: bytes, chunk: int) -> None:
    from neimsctl.io.streams import iter_lines

    text = data.rstrip(b"\x1a")   # Ctrl-Z ending the input: DOS's end-of-file mark, dropped
    text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    text = re.sub(rb"(^|\n)(?:\xef\xbb\xbf)+", rb"\1", text)   # byte-order marks starting a line
    want = text.splitlines(keepends=True)
    assert list(iter_lines(io.BytesIO(data), chunk)) == want


def prop_featurize_rows(data: bytes, mode: str, in_fmt: str | None) -> None:
    """Input lines -> rows -> a real HDF5 shard; every item a row or a reject."""
    from neimsctl.chem.featurize_run import FEATURIZE_FORMATS, run_featurize, run_settings
    from neimsctl.io.inputs import iter_items
    from neimsctl.chem.rowbuild import RowOptions
    from neimsctl.io.h5shard import ShardReader, ShardWriter
    from neimsctl.io.rejects import Tally

    opts = RowOptions(mode=mode, min_mw=0)
    settings, digest = run_settings(opts)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.txt", Path(tmp) / "out.h5"
        src.write_bytes(data)
        with whole_input_error_if_compressed(data) as failed:
            n_items = sum(1 for _ in iter_items([src], in_fmt, formats=FEATURIZE_FORMATS))
        if failed:
            return
        tally = Tally(sink=io.BytesIO())
        with time_limit(INPROC_TIMEOUT), ShardWriter(out, mode, settings, digest) as sink:
            run_featurize(iter_items([src], in_fmt, formats=FEATURIZE_FORMATS), sink, tally, opts=opts, chunk=3)
        assert tally.read == n_items and tally.balanced
        with ShardReader(out) as r:
            assert r.n_rows == tally.written


def prop_predict_inputs(data: bytes, in_fmt: str | None, out_fmt: str) -> None:
    """Inputs -> featurized chunks -> formatted predictions (random spectra, no model)."""
    from neimsctl.io.inputs import iter_items as iter_inputs
    from neimsctl.io.prediction_write import PredictionWriter
    from neimsctl.predict.run import Featurizer

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.txt"
        src.write_bytes(data)
        with whole_input_error_if_compressed(data) as failed:
            items = list(iter_inputs([src], in_fmt))
        if failed:
            return
        with time_limit(INPROC_TIMEOUT):
            block, rejects = Featurizer("student")(items)
            n = len(block["ordinal"])
            spectra = np.random.default_rng(0).random((n, 501)).astype(np.float32)
            text = PredictionWriter(None, out_fmt, model_desc="fuzz").format(block, spectra)
    assert n + len(rejects) == len(items)
    if out_fmt == "jsonl":
        assert [orjson.loads(x)["id"] for x in text.splitlines()] == [str(x) for x in block["id"]]
    else:
        from neimsctl.io.msp import read_msp

        back = list(read_msp(io.BytesIO(text), "p.msp"))
        assert len(back) == n and all(r.reason is None for r in back), back


# -- command-line properties -----------------------------------------------------------------------

SUMMARY = re.compile(rb"read (\d+), written (\d+), rejected (\d+)")


@dataclass
class CliCase:
    """One command on one input: what to run and how to count its output records."""

    args: list[str]            # after 'neimsctl'; {inp}, {out} and {rej} are filled in
    out_name: str
    count: Callable[[Path], int]


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines())


def _h5_rows(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        return int(f.attrs["n_rows"])


def run_cli(case: CliCase, data: bytes, in_name: str = "in.txt") -> None:
    """Run ``case`` on ``data`` in a fresh directory and check every command-line property."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src, outdir = work / in_name, work / "out"
        src.write_bytes(data)
        outdir.mkdir()
        before = hashlib.sha256(data).hexdigest()
        args = [a.format(inp=src, out=outdir / case.out_name, rej=outdir / "rej.jsonl")
                for a in case.args]
        try:
            proc = subprocess.run(["neimsctl", *args], capture_output=True, timeout=CLI_TIMEOUT,
                                  cwd=work, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"neimsctl {' '.join(args)}: no exit after {CLI_TIMEOUT} s (hang)") from None
        err = proc.stderr.decode("utf-8", "replace")
        where = f"neimsctl {' '.join(args)} -> exit {proc.returncode}\n{err[-3000:]}"
        assert proc.returncode in (0, 1, 2), where
        assert "Traceback" not in err and "Exception ignored" not in err, where
        assert hashlib.sha256(src.read_bytes()).hexdigest() == before, "input changed: " + where
        left = sorted(p.name for p in outdir.iterdir())
        assert set(left) <= {case.out_name, "rej.jsonl"}, f"left behind: {left}: {where}"
        if proc.returncode == 2:
            return
        if compressed(data) and proc.returncode == 1 and re.search(
                rb": (corrupt|truncated)[a-z ]* (gzip|zstd) data", proc.stderr):
            assert not (outdir / case.out_name).exists(), where  # the whole input failed
            return
        m = SUMMARY.findall(proc.stderr)
        assert m, "no summary: " + where
        read, written, rejected = map(int, m[-1])
        assert read == written + rejected, where
        assert (proc.returncode == 1) == (rejected > 0), where
        assert case.count(outdir / case.out_name) == written, where
        rej = outdir / "rej.jsonl"
        assert (_lines(rej) if rej.exists() else 0) == rejected, where


def msp2jsonl_case(jobs: int) -> CliCase:
    return CliCase(["msp2jsonl", "{inp}", "-o", "{out}", "--rejects", "{rej}", "-j", str(jobs)],
                   "out.jsonl", _lines)


def featurize_case(mode: str) -> CliCase:
    return CliCase(["featurize", "--mode", mode, "{inp}", "-o", "{out}", "--rejects", "{rej}",
                    "--min-mw", "0"], "out.h5", _h5_rows)


def predict_case(in_fmt: str, out_fmt: str) -> CliCase:
    if out_fmt == "jsonl":
        count: Callable[[Path], int] = _lines
    else:
        def count(path: Path) -> int:
            from neimsctl.io.msp import read_msp

            with open(path, "rb") as fh:
                return sum(1 for r in read_msp(fh, "p.msp") if r.reason is None)
    return CliCase(["predict", "-m", str(tiny_checkpoint()), "-I", in_fmt, "-O", out_fmt,
                    "{inp}", "-o", "{out}", "--rejects", "{rej}"], "out." + out_fmt, count)


# -- the registry: what tests/fuzz runs in CI and tools/fuzz.py runs for longer ---------------------

@dataclass(frozen=True)
class Property:
    """A strategy, the property it feeds (called with the drawn value) and its CI budget."""

    strategy: st.SearchStrategy
    check: Callable[[object], None]
    ci_examples: int
    cli: bool = False


def _tagged(strategy: st.SearchStrategy, tag: str | None) -> st.SearchStrategy:
    return strategy.map(lambda d: (d, tag))


line_files = st.one_of(_tagged(lines_file(jsonl_line), "jsonl"), _tagged(lines_file(smiles_line), "smi"),
                       _tagged(lines_file(st.one_of(jsonl_line, smiles_line)), None))
predict_files = st.one_of(_tagged(lines_file(smiles_line), "smi"), _tagged(lines_file(jsonl_line), "jsonl"),
                          _tagged(sdf_file(), "sdf"), _tagged(sdf_file(), None))
records_and_eols = st.lists(msp_record(), min_size=1, max_size=4).flatmap(
    lambda recs: st.tuples(st.just(recs), st.lists(st.sampled_from(EOLS), min_size=len(recs),
                                                   max_size=len(recs))))

PROPERTIES: dict[str, Property] = {
    "msp_reader": Property(st.tuples(msp_library(), st.sampled_from([1 << 20, 1, 7, 64])),
                           lambda v: prop_msp_reader(*v), 150),
    "msp_line_ends": Property(records_and_eols, lambda v: prop_msp_line_ends(*v), 60),
    "convert_msp": Property(msp_library(), lambda v: prop_convert_msp(v, structure=False), 80),
    "convert_msp_rdkit": Property(msp_library(mutate=False), lambda v: prop_convert_msp(v, structure=True), 25),
    "iter_lines": Property(st.tuples(st.binary(max_size=60).map(
        lambda b: b.replace(b"a", b"\r").replace(b"b", b"\n")), st.integers(1, 9)),
        lambda v: prop_iter_lines(*v), 150),
    "featurize_rows": Property(st.tuples(line_files, st.sampled_from(["student", "teacher", "v1"])),
                               lambda v: prop_featurize_rows(v[0][0], v[1], v[0][1]), 30),
    "predict_inputs": Property(st.tuples(predict_files, st.sampled_from(["msp", "jsonl"])),
                               lambda v: prop_predict_inputs(v[0][0], v[0][1], v[1]), 30),
    "cli_msp2jsonl": Property(st.tuples(msp_library(), st.sampled_from([1, 1, 2])),
                              lambda v: run_cli(msp2jsonl_case(v[1]), v[0], "in.msp"), 8, cli=True),
    "cli_featurize": Property(st.tuples(st.one_of(lines_file(jsonl_line), lines_file(smiles_line)),
                                        st.sampled_from(["student", "teacher"])),
                              lambda v: run_cli(featurize_case(v[1]), v[0]), 6, cli=True),
    "cli_predict": Property(st.tuples(st.one_of(_tagged(lines_file(smiles_line), "smi"),
                                                _tagged(lines_file(jsonl_line), "jsonl"),
                                                _tagged(sdf_file(), "sdf")),
                                      st.sampled_from(["msp", "jsonl"])),
                            lambda v: run_cli(predict_case(v[0][1], v[1]), v[0][0]), 6, cli=True),
}
