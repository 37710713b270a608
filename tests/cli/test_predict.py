"""neimsctl predict: formats, inputs, bad SMILES and exit codes, with tiny checkpoints built here."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
from typer.testing import CliRunner

import neimsctl.cli.predict  # noqa: F401  (registers the command)
from neimsctl.chem.featurize_run import run_settings
from neimsctl.chem.rowbuild import RowOptions
from neimsctl.cli import main as cli_main
from neimsctl.io.msp import read_msp
from neimsctl.models.student import StudentConfig, StudentModel
from neimsctl.models.checkpoint import save_checkpoint

pytestmark = pytest.mark.cli
runner = CliRunner()
TINY = StudentConfig(gate_hidden=(16,), expert_depth=1, expert_bottleneck=8, head_hidden=(32,),
                     hidden_dim=16)
SMI = b"CC(=O)Oc1ccccc1C(=O)O aspirin\nxyz\n\n# a comment\nc1ccccc1 benzene ring\nC1CC\n"
SDF = (b"ethanol\n  RDKit          2D\n\n  3  2  0  0  0  0  0  0  0  0999 V2000\n"
       b"    0.0000    0.0000    0.0000 C   0  0\n    1.2990    0.7500    0.0000 C   0  0\n"
       b"    2.5981   -0.0000    0.0000 O   0  0\n  1  2  1  0\n  2  3  1  0\nM  END\n$$$$\n"
       b"broken\n  x\n\n  1  0  0  0  0  0  0  0  0  0999 V2000\nM  END\n$$$$\n")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("predict") / "tiny.pt"
    torch.manual_seed(0)
    save_checkpoint(path, model=StudentModel(TINY), config={"model": {"name": "student", **TINY.to_dict()}},
                    featurizer_hash=run_settings(RowOptions(mode="student"))[1])
    return path


def invoke(*args: str, stdin: bytes = b""):
    return runner.invoke(cli_main.app, ["predict", *args], input=stdin)


def test_msp_output_round_trips_and_bad_smiles_continue(ckpt):
    res = invoke("-m", str(ckpt), "--precision", "fp32", stdin=SMI)
    assert res.exit_code == 1
    assert "neimsctl predict: <stdin>:2: cannot parse SMILES 'xyz'" in res.stderr
    assert "neimsctl predict: <stdin>:6: cannot parse SMILES 'C1CC'" in res.stderr
    assert "read 4, written 2, rejected 2 (unparsable_smiles: 2)" in res.stderr
    recs = list(read_msp(io.BytesIO(res.stdout_bytes), "out.msp"))
    assert [r.reason for r in recs] == [None, None]
    assert [r.name for r in recs] == ["aspirin", "benzene ring"]
    a = recs[0]
    assert a.fields["inchikey"] == "BSYNRYMUTXBXSQ-UHFFFAOYSA-N" and a.fields["formula"] == "C9H8O4"
    assert a.fields["mw"] == "180" and a.fields["smiles"] == "CC(=O)Oc1ccccc1C(=O)O"
    assert "model=tiny.pt sha256:" in a.fields["comments"] and "fp32" in a.fields["comments"]
    assert max(a.intensity) == 999 and min(a.intensity) >= 1 and a.num_peaks == len(a.mz)
    assert all(float(m).is_integer() and 0 <= m <= 500 for m in a.mz)


def test_matchms_reads_our_msp(ckpt, tmp_path):
    importing = pytest.importorskip("matchms.importing", reason="matchms not installed")
    out = tmp_path / "p.msp"
    assert invoke("-m", str(ckpt), "-o", str(out), stdin=b"CCO ethanol\nc1ccccc1\n").exit_code == 0
    spectra = list(importing.load_from_msp(str(out)))
    assert len(spectra) == 2 and spectra[0].get("inchikey") == "LFQSCWFLJHTTHZ-UHFFFAOYSA-N"


def test_strict_stops_at_first_bad_line(ckpt):
    res = invoke("-m", str(ckpt), "--strict", stdin=SMI)
    assert res.exit_code == 1
    assert "<stdin>:2: cannot parse SMILES 'xyz': stopped under --strict" in res.stderr
    recs = list(read_msp(io.BytesIO(res.stdout_bytes), "out.msp"))
    assert [r.name for r in recs] == ["aspirin"]  # rows before the bad one are written


def test_top_format(ckpt):
    res = invoke("-m", str(ckpt), "--top", "3", stdin=b"CCO ethanol\nc1ccccc1\n")
    assert res.exit_code == 0, res.stderr
    blocks = res.stdout.split("\n\n")
    assert blocks[0].startswith("# ethanol  CCO  (ethanol)\n")
    assert blocks[1].startswith("# <stdin>:2  c1ccccc1  (<stdin>:2)\n") or \
        blocks[1].startswith("# stdin:2  c1ccccc1  (stdin:2)\n")
    lines = blocks[0].splitlines()[1:]
    assert len(lines) == 3 and lines[0].endswith(": 1.0000")
    vals = []
    for ln in lines:
        head, val = ln.split(": ")
        assert head.startswith("m/z ") and head[4:].isdigit() and len(val) == 6
        vals.append(float(val))
    assert vals == sorted(vals, reverse=True)


def test_jsonl_shape_and_rejects_file(ckpt, tmp_path):
    rej = tmp_path / "rej.jsonl"
    res = invoke("-m", str(ckpt), "-O", "jsonl", "--rejects", str(rej), stdin=SMI)
    assert res.exit_code == 1
    lines = [orjson.loads(x) for x in res.stdout_bytes.splitlines()]
    assert len(lines) == 2
    rec = lines[0]
    assert set(rec) == {"schema", "id", "name", "smiles", "inchikey", "formula", "mw", "mz", "intensity",
                        "experts"}
    assert rec["schema"] == "neimsctl.prediction/1" and rec["id"] == "aspirin" and rec["mw"] == 180
    assert rec["formula"] == "C9H8O4"
    assert len(rec["mz"]) == len(rec["intensity"]) and max(rec["intensity"]) == 999
    assert rec["mz"] == sorted(rec["mz"]) and len(rec["experts"]["index"]) == 2
    bad = [orjson.loads(x) for x in rej.read_bytes().splitlines()]
    assert [(b["line"], b["reason"]) for b in bad] == [(2, "unparsable_smiles"), (6, "unparsable_smiles")]


def test_records_without_id_are_named_as_index_and_search_name_them(ckpt, tmp_path):
    # they were <stem>:<0-based ordinal across all inputs> here and in featurize, but
    # <stem>:<1-based place in the file> in index, search and eval: one record, two ids
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(b'{"smiles": "CCO"}\n\n{"smiles": "CCN"}\n')
    b.write_bytes(b'{"smiles": 5}\n{"smiles": "CCC"}\n')
    rej = tmp_path / "rej.jsonl"
    res = invoke("-m", str(ckpt), "-O", "jsonl", "--rejects", str(rej), str(a), str(b))
    assert res.exit_code == 1
    assert [orjson.loads(x)["id"] for x in res.stdout_bytes.splitlines()] == ["a:1", "a:2", "b:2"]
    assert [orjson.loads(x)["id"] for x in rej.read_bytes().splitlines()] == ["b:1"]
    from neimsctl.io.spectrum_records import read_spectrum_records

    assert [r.id for r in read_spectrum_records(a)] == ["a:1", "a:2"]


def test_sdf_input(ckpt, tmp_path):
    path = tmp_path / "m.sdf"
    path.write_bytes(SDF)
    res = invoke("-m", str(ckpt), "-O", "jsonl", str(path))
    assert res.exit_code == 1
    assert f"{path}:12: MOL block 'broken': RDKit cannot parse the MOL block" in res.stderr
    recs = [orjson.loads(x) for x in res.stdout_bytes.splitlines()]
    assert [(r["name"], r["smiles"], r["mw"]) for r in recs] == [("ethanol", "CCO", 46)]


def test_model_errors(ckpt, tmp_path, monkeypatch):
    from neimsctl.predict import model as predictor

    monkeypatch.setattr(predictor, "MODELS_DIR", tmp_path)
    res = invoke(stdin=b"CCO\n")
    assert res.exit_code == 1 and "no shipped default student model" in res.stderr
    assert "--model PATH" in res.stderr
    res = invoke("-m", str(tmp_path / "nope.pt"), stdin=b"CCO\n")
    assert res.exit_code == 2 and "nope.pt: no such file (a checkpoint file, or one of" in res.stderr
    res = invoke("-m", str(ckpt), "--uncertainty", "-O", "jsonl", stdin=b"CCO\n")
    assert res.exit_code == 1 and "needs the teacher" in res.stderr
    assert invoke("-m", str(ckpt), "--uncertainty", stdin=b"CCO\n").exit_code == 2
    assert invoke("-m", str(ckpt), "--precision", "fp8", stdin=b"CCO\n").exit_code == 2
    res = invoke("-m", str(ckpt), "-m", str(ckpt), stdin=b"CCO\n")   # an ensemble of one file twice
    assert res.exit_code == 0 and "warning: --model" in res.stderr and "the same file given 2 times" in res.stderr


def test_teacher_uncertainty(tmp_path):
    from neimsctl.models.teacher import TeacherConfig, TeacherModel

    cfg = TeacherConfig.from_dict({"hidden": 16, "num_layers": 2, "attention_hidden": 8,
                                   "pool_gate_hidden": 8, "ecfp_hidden": [32], "ecfp_out": 16,
                                   "head_hidden": [32, 16]})
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, model=TeacherModel(cfg), config={"model": {"name": "teacher", **cfg.to_dict()}},
                    featurizer_hash=run_settings(RowOptions(mode="teacher"))[1])
    res = invoke("-m", str(path), "--uncertainty", "--mc-samples", "4", "-O", "jsonl",
                 stdin=b"CCO ethanol\nxyz\nc1ccccc1O phenol\n")
    assert res.exit_code == 1 and "<stdin>:2: cannot parse SMILES 'xyz'" in res.stderr
    recs = [orjson.loads(x) for x in res.stdout_bytes.splitlines()]
    assert [r["name"] for r in recs] == ["ethanol", "phenol"]
    for r in recs:
        assert len(r["uncertainty"]) == len(r["mz"]) and min(r["uncertainty"]) >= 0
        assert max(r["intensity"]) == pytest.approx(999)
    # the MC-dropout masks are seeded: the same command gives the same spreads, whatever ran
    # before it in the process (the global generator is drawn from in between)
    torch.rand(1000)
    again = invoke("-m", str(path), "--uncertainty", "--mc-samples", "4", "-O", "jsonl",
                   stdin=b"CCO ethanol\nxyz\nc1ccccc1O phenol\n")
    assert again.stdout_bytes == res.stdout_bytes
    assert any(max(r["uncertainty"]) > 0 for r in recs)


def test_real_pipe_from_sample(ckpt, sample_msp, neimsctl_exe, tmp_path):
    """msp2jsonl on the bundled MassBank sample, then predict -O jsonl through the installed CLI."""
    cmd = (f"neimsctl msp2jsonl -q {sample_msp} | head -n 50 > recs.jsonl && "
           f"neimsctl predict -q -m {ckpt} -O jsonl --jobs 2 --batch-size 16 recs.jsonl")
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    recs = [orjson.loads(x) for x in p.stdout.splitlines()]
    src = [orjson.loads(x) for x in (tmp_path / "recs.jsonl").read_bytes().splitlines()]
    assert len(recs) == len(src) == 50 and all(r["inchikey"] and r["mz"] for r in recs)
    assert [r["id"] for r in recs] == [s["id"] for s in src]  # input order kept with 2 workers
    assert [r["smiles"] for r in recs] == [s["smiles"] for s in src]
    assert np.all([max(r["intensity"]) == 999 for r in recs])


def test_bad_checkpoints_are_one_line_errors(ckpt, tmp_path):
    """A text file, a dict without weights and NaN weights: one line naming the file, exit 1."""
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    state = torch.load(ckpt, weights_only=True)
    empty = tmp_path / "empty.pt"
    torch.save({k: v for k, v in state.items() if k != "model"}, empty)
    nan = tmp_path / "nan.pt"
    torch.save({**state, "model": {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v
                                   for k, v in state["model"].items()}}, nan)
    for path, why in ((text, "not a checkpoint file"), (empty, "no 'model' field"),
                      (nan, "non-finite value")):
        res = invoke("-m", str(path), stdin=b"CCO\n")
        assert res.exit_code == 1 and why in res.stderr and str(path) in res.stderr
        assert "Traceback" not in res.stderr and res.stdout == ""


def test_out_of_domain_molecules_are_flagged_or_rejected(ckpt, tmp_path):
    smi = (b"CCO ethanol\n[Na+].[Cl-] salt\n*CCCC star\n[2H]C([2H])([2H])CCO d3\nCC[Fe]CC ferro\n"
           b"C[N+](=O)[O-] nitromethane\n")
    res = invoke("-m", str(ckpt), "-O", "jsonl", stdin=smi)
    assert res.exit_code == 0
    flags = {r["name"]: r.get("flags") for r in map(orjson.loads, res.stdout_bytes.splitlines())}
    assert flags == {"ethanol": ["mass_below_50"], "salt": ["mixture", "charged", "element:Na"],
                     "star": ["dummy_atom"], "d3": ["isotope"], "ferro": ["element:Fe"],
                     "nitromethane": None}
    assert ("read 6, written 6, rejected 0; 5 flagged outside the model's domain (charged: 1, "
            "dummy_atom: 1, element: 2, isotope: 1, mass_below_50: 1, mixture: 1)") in res.stderr
    res = invoke("-m", str(ckpt), stdin=smi)
    recs = list(read_msp(io.BytesIO(res.stdout_bytes), "out.msp"))
    assert [r.fields["comments"].count("out_of_domain=") for r in recs] == [1, 1, 1, 1, 1, 0]
    assert '"out_of_domain=mixture,charged,element:Na"' in recs[1].fields["comments"]
    rej = tmp_path / "rej.jsonl"
    res = invoke("-m", str(ckpt), "--out-of-domain", "reject", "--rejects", str(rej), stdin=smi)
    assert res.exit_code == 1 and "read 6, written 1, rejected 5 (out_of_domain: 5)" in res.stderr
    got = [orjson.loads(x) for x in rej.read_bytes().splitlines()]
    assert [(r["line"], r["reason"], r["detail"]) for r in got] == [(1, "out_of_domain", "mass_below_50"),
        (2, "out_of_domain", "mixture, charged, element:Na"), (3, "out_of_domain", "dummy_atom"),
        (4, "out_of_domain", "isotope"), (5, "out_of_domain", "element:Fe")]


def test_progress_bar_only_on_a_terminal(ckpt, tmp_path, neimsctl_exe):
    """On a terminal: a bar with bytes, rate and the read/written/rejected counts, erased at the
    end; with -q or with stderr not a terminal: nothing but the summary."""
    from _pty import run_on_tty

    smi = tmp_path / "in.smi"
    smi.write_text("".join(f"{'C' * (3 + i % 30)}O mol{i}\n" for i in range(2500)) + "xyz\n")
    cmd = [neimsctl_exe, "predict", "-m", str(ckpt), "--precision", "fp32", str(smi),
           "-o", str(tmp_path / "out.msp")]
    every_chunk = {**os.environ, "TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}
    code, tty = run_on_tty(cmd, env=every_chunk)
    text = tty.decode("utf-8", "replace")
    assert code == 1 and "neimsctl predict: " in text and "%|" in text and "rec/s" in text
    assert "read 2,048 written 2,048 rejected 0" in text
    assert text.rstrip().endswith("read 2501, written 2500, rejected 1 (unparsable_smiles: 1); 1 process")
    code, tty = run_on_tty(cmd + ["-q"])
    assert code == 1 and b"%|" not in tty and b"read 2501" not in tty
    res = subprocess.run(cmd, capture_output=True, check=False)
    assert res.returncode == 1 and b"%|" not in res.stderr and b"\r" not in res.stderr


def test_jobs_auto_uses_the_cores_for_large_inputs_and_says_so(ckpt, neimsctl_exe, tmp_path):
    from neimsctl.io.parallel import AUTO_MIN_RECORDS, available_cores

    small = subprocess.run([neimsctl_exe, "predict", "-m", str(ckpt)], input=b"CCCO\nCCCN\n",
                           capture_output=True, check=True)
    assert small.stderr.decode().rstrip().endswith("read 2, written 2, rejected 0; 1 process")
    lines = b"".join(b"C" * (3 + i % 20) + b"O\n" for i in range(AUTO_MIN_RECORDS + 1))
    big = subprocess.run([neimsctl_exe, "predict", "-m", str(ckpt), "-O", "jsonl"], input=lines,
                         capture_output=True, check=True)
    used = f"{available_cores()} workers" if available_cores() > 1 else "1 process"
    assert big.stderr.decode().rstrip().endswith(f"rejected 0; {used}")
    one = subprocess.run([neimsctl_exe, "predict", "-m", str(ckpt), "-O", "jsonl", "-j", "1"],
                         input=lines, capture_output=True, check=True)
    assert one.stdout == big.stdout and one.stderr.decode().rstrip().endswith("; 1 process")
    bad = subprocess.run([neimsctl_exe, "predict", "-m", str(ckpt), "-j", "0"], input=b"CCO\n",
                         capture_output=True, check=False)
    assert bad.returncode == 2 and b"--jobs '0'" in bad.stderr


def test_shards_together_are_the_library_of_one_run(ckpt, tmp_path):
    """--shard K/N for K = 1..N: every molecule in exactly one part, predicted as in one run;
    the parts concatenated hold the records of the single run (in another order)."""
    smi = b"".join(b"C" * (1 + i % 9) + b"O mol%d\n" % i for i in range(23)) + b"xyz\n"

    def records(stdout: bytes) -> list[bytes]:
        return [r for r in stdout.split(b"\n\n") if r.strip()]
    one = invoke("-m", str(ckpt), stdin=smi)
    parts = [invoke("-m", str(ckpt), "--shard", f"{k}/3", stdin=smi) for k in (1, 2, 3)]
    assert sorted(sum((records(p.stdout_bytes) for p in parts), [])) == \
        sorted(records(one.stdout_bytes))
    assert [len(records(p.stdout_bytes)) for p in parts] == [8, 8, 7]
    assert [p.exit_code for p in parts] == [0, 0, 1]          # xyz (ordinal 23) is in part 3
    assert invoke("-m", str(ckpt), "--shard", "0/3", stdin=smi).exit_code == 2


def test_mc_samples_without_uncertainty_is_warned(ckpt):
    res = invoke("-m", str(ckpt), "--mc-samples", "5", stdin=b"CCO\n")
    assert res.exit_code == 0
    assert "neimsctl predict: warning: --mc-samples counts only with --uncertainty: ignored" \
        in res.stderr
    assert "--mc-samples" not in invoke("-m", str(ckpt), stdin=b"CCO\n").stderr


@pytest.mark.parametrize("threads", ["100000", "99999999999999999999"])
def test_threads_beyond_4_per_core_are_a_usage_error(ckpt, threads):
    """-t 5000 spawned 5000 torch threads (200 molecules: 42 s instead of 4); a value beyond
    2**63 was torch's "Overflow when unpacking long long" traceback. As --jobs: at most 4 per core."""
    from neimsctl.io.parallel import max_jobs

    res = invoke("-m", str(ckpt), "-t", threads, stdin=b"CCO\n")
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"neimsctl predict: --threads {threads}: at most {max_jobs()} (4 per core of this machine)"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA")
@pytest.mark.parametrize("device, why", [
    ("cuda", "CUDA is not available (a torch without CUDA, or no GPU visible): use --device cpu or auto"),
    ("cuda:3", "CUDA is not available (a torch without CUDA, or no GPU visible): use --device cpu or auto"),
    ("mps", "not auto, cpu, cuda or cuda:N"),
    ("meta", "not auto, cpu, cuda or cuda:N")])
def test_a_device_this_machine_has_not_is_one_line(ckpt, device, why):
    """--device cuda on a machine without CUDA was a traceback ("Torch not compiled with CUDA
    enabled", an AssertionError from the first tensor moved there); mps a RuntimeError's."""
    res = invoke("-m", str(ckpt), "--device", device, stdin=b"CCO\n")
    assert res.exit_code == 1, res.output
    assert res.stderr.strip().splitlines() == [f"neimsctl predict: --device {device!r}: {why}"]


def test_mol_files_concatenated_without_separator_are_each_a_record(ckpt, tmp_path):
    """`cat a.mol b.mol > all.sdf` has no $$$$ between the blocks: the second block was read as
    the first record's data and silently lost (read 1, written 1, rejected 0). A counts line
    after "M  END" starts a record of its own (line numbers kept); a data item is still data."""
    from rdkit import Chem

    def block(smiles: str, name: str, v3000: bool = False) -> str:
        m = Chem.MolFromSmiles(smiles)
        m.SetProp("_Name", name)
        return Chem.MolToV3KMolBlock(m) if v3000 else Chem.MolToMolBlock(m)
    eth, benz = block("CCO", "ethanol"), block("c1ccccc1", "benzene", v3000=True)
    sdf = tmp_path / "all.sdf"
    sdf.write_text(eth + benz + block("CCN", "ethylamine") + ">  <note>\nV2000 said the vendor\n\n$$$$\n"
                   + "broken\n\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\nM  END\n")
    res = invoke("-m", str(ckpt), "-O", "jsonl", str(sdf), "--rejects", str(tmp_path / "rej.jsonl"))
    names = [orjson.loads(x)["name"] for x in res.stdout_bytes.splitlines()]
    assert names == ["ethanol", "benzene", "ethylamine"], res.stderr
    rej = [orjson.loads(x) for x in (tmp_path / "rej.jsonl").read_bytes().splitlines()]
    start = 1 + eth.count("\n") + benz.count("\n") + block("CCN", "x").count("\n") + 4
    assert [(r["line"], r["record"]) for r in rej] == [(start, "broken")]
    assert "read 4, written 3, rejected 1" in res.stderr


def test_latin1_names_of_smiles_and_sdf_inputs_are_kept(ckpt, neimsctl_exe, tmp_path):
    """A SMILES list or SDF saved by a Windows tool holds its names in Windows-1252 / latin-1:
    they were decoded as UTF-8 with replacement, so 'éther' became U+FFFD in every output and
    reject line, silently (MSP and MOL files were read right)."""
    from rdkit import Chem

    smi = tmp_path / "names.smi"
    smi.write_bytes("CCOCC diethyl éther\nC1CC µ-bad\n".encode("cp1252"))
    m = Chem.MolFromSmiles("c1ccccc1")
    m.SetProp("_Name", "benzène – pur")
    sdf = tmp_path / "names.sdf"
    sdf.write_bytes((Chem.MolToMolBlock(m) + "$$$$\n").encode("cp1252"))
    rej = tmp_path / "rej.jsonl"
    p = subprocess.run([neimsctl_exe, "predict", "-m", str(ckpt), "-O", "jsonl", "--jobs", "1",
                        "--rejects", str(rej), str(smi), str(sdf)], capture_output=True, timeout=300)
    assert p.returncode == 1, p.stderr.decode()
    recs = [orjson.loads(x) for x in p.stdout.splitlines()]
    assert [r["name"] for r in recs] == ["diethyl éther", "benzène – pur"]
    assert [orjson.loads(x)["record"] for x in rej.read_bytes().splitlines()] == ["µ-bad"]


def test_a_cxsmiles_extension_is_no_part_of_the_name(ckpt, neimsctl_exe, tmp_path):
    """ChemAxon and RDKit write CXSMILES ('SMILES |ext| name'): the extension became the start
    of every name and id ('|&1:1| alanine'), silently."""
    smi = tmp_path / "cx.smi"
    smi.write_text("C[C@H](N)C(=O)O |&1:1| alanine\nCCO |(-1.3,-0.25,;0,0.5,;1.3,-0.25,)|\tethanol\n"
                   "CCN |&1:1|\n")
    p = subprocess.run([neimsctl_exe, "predict", "-q", "-m", str(ckpt), "-O", "jsonl", str(smi)],
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    recs = [orjson.loads(x) for x in p.stdout.splitlines()]
    assert [(r["id"], r["name"], r["smiles"]) for r in recs] == [
        ("alanine", "alanine", "C[C@H](N)C(=O)O"), ("ethanol", "ethanol", "CCO"), ("cx:3", "", "CCN")]


def test_the_header_rdkit_s_smiles_writer_writes_is_no_molecule(ckpt, neimsctl_exe, tmp_path):
    """Chem.SmilesWriter starts every file with 'SMILES Name': predict rejected it as an
    unparsable SMILES and exited 1 on a file nothing was wrong with (pretrain skipped it)."""
    from rdkit import Chem

    smi = tmp_path / "rdkit.smi"
    writer = Chem.SmilesWriter(str(smi), delimiter="\t")
    for smiles, name in (("CCO", "ethanol"), ("c1ccccc1", "benzene")):
        mol = Chem.MolFromSmiles(smiles)
        mol.SetProp("_Name", name)
        writer.write(mol)
    writer.close()
    assert smi.read_text().startswith("SMILES\tName")
    p = subprocess.run([neimsctl_exe, "predict", "-m", str(ckpt), "-O", "jsonl", str(smi)],
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    assert [orjson.loads(x)["name"] for x in p.stdout.splitlines()] == ["ethanol", "benzene"]
    assert b"read 2, written 2, rejected 0" in p.stderr


def test_rejected_molecules_are_shown_ten_at_most_unless_verbose(neimsctl_exe, tmp_path) -> None:
    """30 unparsable SMILES: ten lines and one saying more are not shown (every one with -v;
    with -q too, which drops only the bar and the summary); all 30 in --rejects, exit 1."""
    import subprocess

    smi = tmp_path / "bad.smi"
    smi.write_text("".join(f"bad{i} x{i}\n" for i in range(30)))
    lines = {}
    for flag in ("", "-v", "-q"):
        p = subprocess.run([neimsctl_exe, "predict", str(smi), "-o", str(tmp_path / "out.msp"),
                            "--rejects", str(tmp_path / f"rej{flag}.jsonl"), *([flag] if flag else [])],
                           capture_output=True, timeout=300)
        assert p.returncode == 1
        lines[flag] = [ln for ln in p.stderr.decode().splitlines() if "cannot parse SMILES" in ln]
        assert len((tmp_path / f"rej{flag}.jsonl").read_text().splitlines()) == 30
        if flag != "-v":
            assert p.stderr.decode().count("further rejects not shown (see --rejects FILE, or -v)") == 1
    assert len(lines[""]) == len(lines["-q"]) == 10 and len(lines["-v"]) == 30
