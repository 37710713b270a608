"""Ensembles through the real CLI: neimsctl ensemble, predict --model A --model B, --average,
--uncertainty piped into eval, and bad input (exit codes, nothing overwritten)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.cli._tiny_ckpt import tiny_student_checkpoint

pytestmark = pytest.mark.cli
SMI = b"CC(=O)Oc1ccccc1C(=O)O aspirin\nc1ccccc1 benzene\nCCO ethanol\nxyz\nCCN(CC)CC triethylamine\n"


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch

    d = tmp_path_factory.mktemp("ens_cli")
    a = tiny_student_checkpoint(d / "a.pt")
    torch.manual_seed(1)                      # a second, differently initialised student
    from neimsctl.chem.featurize_run import run_settings
    from neimsctl.chem.rowbuild import RowOptions
    from neimsctl.models.checkpoint import load_checkpoint, save_checkpoint
    from neimsctl.models.student import StudentConfig, StudentModel

    cfg = load_checkpoint(a)["config"]
    model = StudentModel(StudentConfig.from_dict({k: v for k, v in cfg["model"].items()
                                                  if k != "name"}))
    b = save_checkpoint(d / "b.pt", model=model, config=cfg,
                        featurizer_hash=run_settings(RowOptions(mode="student"))[1])
    return a, b


def run(exe: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([exe, *args], input=stdin, capture_output=True, timeout=300)


def spectra(jsonl: bytes) -> list[dict]:
    return [orjson.loads(line) for line in jsonl.splitlines() if line.strip()]


def test_an_ensemble_file_predicts_as_its_members_given_as_several_models(
        neimsctl_exe: str, members: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = members
    ens = tmp_path / "ens.pt"
    made = run(neimsctl_exe, "ensemble", str(a), str(b), "-o", str(ens), "--fp32",
               "--average", "linear")
    assert made.returncode == 0, made.stderr
    assert b"2 members, linear average" in made.stderr and ens.is_file()
    common = ("-O", "jsonl", "--precision", "fp32", "--threads", "1", "-q")
    by_file = run(neimsctl_exe, "predict", "-m", str(ens), *common, stdin=SMI)
    by_list = run(neimsctl_exe, "predict", "-m", str(a), "-m", str(b), "--average", "linear",
                  *common, stdin=SMI)
    assert by_file.returncode == by_list.returncode == 1          # 'xyz' is rejected
    assert b"<stdin>:4: cannot parse SMILES 'xyz'" in by_file.stderr
    got, want = spectra(by_file.stdout), spectra(by_list.stdout)
    assert [r["name"] for r in got] == ["aspirin", "benzene", "ethanol", "triethylamine"]
    assert [(r["mz"], r["intensity"]) for r in got] == [(r["mz"], r["intensity"]) for r in want]
    single = spectra(run(neimsctl_exe, "predict", "-m", str(a), *common, stdin=SMI).stdout)
    assert [r["intensity"] for r in got] != [r["intensity"] for r in single]
    default = spectra(run(neimsctl_exe, "predict", "-m", str(a), "-m", str(b), *common,
                          stdin=SMI).stdout)       # default average: linear
    assert [r["intensity"] for r in default] == [r["intensity"] for r in want]
    sqrt = spectra(run(neimsctl_exe, "predict", "-m", str(a), "-m", str(b), "--average", "sqrt",
                       *common, stdin=SMI).stdout)
    assert [r["intensity"] for r in sqrt] != [r["intensity"] for r in want]
    msp = run(neimsctl_exe, "predict", "-m", str(ens), "-q", stdin=b"CCO ethanol\n")
    assert b"model=ens.pt sha256:" in msp.stdout and b"linear of 2" in msp.stdout


def test_a_sqrt_ensemble_beside_a_checkpoint_averages_as_their_bundle_does(
        neimsctl_exe: str, members: tuple[Path, Path], tmp_path: Path) -> None:
    # predict -m SQRT.pt -m b.pt averaged in sqrt (the file's own), while the bundle of the
    # same two (neimsctl ensemble SQRT.pt b.pt) averages linear: one set of models, two spectra
    a, b = members
    sq = tmp_path / "sq.pt"
    assert run(neimsctl_exe, "ensemble", str(a), "-o", str(sq), "--fp32", "--average",
               "sqrt", "-q").returncode == 0
    both = tmp_path / "both.pt"
    made = run(neimsctl_exe, "ensemble", str(sq), str(b), "-o", str(both), "--fp32")
    assert made.returncode == 0 and b"2 members, linear average" in made.stderr
    assert b"warning: the ensemble files' own averages (sq.pt: sqrt) are not used" in made.stderr
    common = ("-O", "jsonl", "--precision", "fp32", "--threads", "1")
    by_list = run(neimsctl_exe, "predict", "-m", str(sq), "-m", str(b), *common, stdin=SMI)
    by_file = run(neimsctl_exe, "predict", "-m", str(both), *common, stdin=SMI)
    assert b"(sq.pt: sqrt) are not used: the members are averaged linear" in by_list.stderr
    assert b"warning" not in by_file.stderr
    assert spectra(by_list.stdout) == spectra(by_file.stdout)
    asked = run(neimsctl_exe, "predict", "-m", str(sq), "-m", str(b), "--average", "sqrt",
                *common, stdin=SMI)
    assert b"warning" not in asked.stderr and spectra(asked.stdout) != spectra(by_file.stdout)


def test_a_sharpened_ensemble_file_predicts_as_its_models_given_with_sharpen(
        neimsctl_exe: str, members: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = members
    ens = tmp_path / "sharp.pt"
    made = run(neimsctl_exe, "ensemble", str(a), str(b), "-o", str(ens), "--fp32",
               "--sharpen", "1.5")
    assert made.returncode == 0, made.stderr
    assert b"2 members, linear average sharpened to the power 1.5" in made.stderr
    common = ("-O", "jsonl", "--precision", "fp32", "--threads", "1", "-q")
    by_file = run(neimsctl_exe, "predict", "-m", str(ens), *common, stdin=SMI)
    by_list = run(neimsctl_exe, "predict", "-m", str(a), "-m", str(b), "--sharpen", "1.5",
                  *common, stdin=SMI)
    plain = run(neimsctl_exe, "predict", "-m", str(a), "-m", str(b), *common, stdin=SMI)
    assert by_file.returncode == by_list.returncode == plain.returncode == 1   # 'xyz'
    got, want, flat = (spectra(r.stdout) for r in (by_file, by_list, plain))
    assert [(r["mz"], r["intensity"]) for r in got] == [(r["mz"], r["intensity"]) for r in want]
    assert len(got) == len(flat) == 4
    # the same peaks above the cut, each the plain one to the power 1.5 (within the digits kept)
    for g, f in zip(got, flat):
        base = dict(zip(f["mz"], f["intensity"]))
        for mz, inten in zip(g["mz"], g["intensity"]):
            assert abs(inten - 999 * (base[mz] / 999) ** 1.5) < 0.01
    undone = run(neimsctl_exe, "predict", "-m", str(ens), "--sharpen", "1", *common, stdin=SMI)
    assert spectra(undone.stdout) == flat
    msp = run(neimsctl_exe, "predict", "-m", str(ens), "-q", stdin=b"CCO ethanol\n")
    assert b"linear^1.5 of 2" in msp.stdout
    # refused with a usage error: no ensemble, out of range, not a number; nothing written
    for bad in (("-m", str(a), "--sharpen", "1.1"), ("-m", str(ens), "--sharpen", "5"),
                ("-m", str(ens), "--sharpen", "nan"), ("-m", str(ens), "--sharpen", "x")):
        r = run(neimsctl_exe, "predict", *bad, "-o", str(tmp_path / "out.msp"), stdin=SMI)
        assert r.returncode == 2 and b"--sharpen" in r.stderr, (bad, r.stderr)
        assert not (tmp_path / "out.msp").exists()
    r = run(neimsctl_exe, "ensemble", str(a), "--sharpen", "0.1", "-o", str(tmp_path / "e.pt"))
    assert r.returncode == 2 and not (tmp_path / "e.pt").exists()


def test_int8_ensemble_through_the_cli(neimsctl_exe: str, members: tuple[Path, Path],
                                       tmp_path: Path) -> None:
    """ensemble --int8 -> a neimsctl.ensemble/2 file a quarter of float32 that predict reads,
    with spectra close to the float32 file's."""
    a, b = members
    e32, e8 = tmp_path / "e32.pt", tmp_path / "e8.pt"
    for out, flag in ((e32, "--fp32"), (e8, "--int8")):
        made = run(neimsctl_exe, "ensemble", str(a), str(b), flag, "-o", str(out), "-q")
        assert made.returncode == 0, made.stderr
    assert e8.stat().st_size < 0.35 * e32.stat().st_size
    twice = run(neimsctl_exe, "ensemble", str(a), str(a), "-o", str(tmp_path / "aa.pt"))
    assert twice.returncode == 0 and b"warning: the same weights" in twice.stderr
    import torch

    assert torch.load(e8, weights_only=True)["format"] == "neimsctl.ensemble/2"
    common = ("-O", "jsonl", "--precision", "fp32", "--threads", "1", "-q")
    full, small = (spectra(run(neimsctl_exe, "predict", "-m", str(e), *common, stdin=SMI).stdout)
                   for e in (e32, e8))
    assert [r["name"] for r in small] == [r["name"] for r in full] and len(full) == 4
    for x, y in zip(full, small):
        u, v = np.zeros(501), np.zeros(501)
        u[x["mz"]], v[y["mz"]] = x["intensity"], y["intensity"]
        assert float(u @ v / np.linalg.norm(u) / np.linalg.norm(v)) > 0.999


def test_ensemble_uncertainty_is_read_by_eval(neimsctl_exe: str, members: tuple[Path, Path],
                                              sample_msp: Path, tmp_path: Path) -> None:
    """predict --uncertainty (member spread) | eval: the calibration section is filled."""
    a, b = members
    recs = tmp_path / "recs.jsonl"
    assert run(neimsctl_exe, "msp2jsonl", str(sample_msp), "-q", "-o", str(recs)).returncode in (0, 1)
    smi = b"".join(f"{r['smiles']} {r['id']}\n".encode() for r in map(orjson.loads, recs.read_bytes().splitlines())
                   if r.get("smiles"))[:4000]
    pred = run(neimsctl_exe, "predict", "-m", str(a), "-m", str(b), "-O", "jsonl",
               "--uncertainty", "-q", stdin=smi)
    assert pred.returncode == 0, pred.stderr
    rows = spectra(pred.stdout)
    assert rows and all(len(r["uncertainty"]) == len(r["intensity"]) for r in rows)
    assert any(u > 0 for r in rows for u in r["uncertainty"])
    p = tmp_path / "pred.jsonl"
    p.write_bytes(pred.stdout)
    ev = run(neimsctl_exe, "eval", str(p), str(recs), "--json", "-q")
    assert ev.returncode == 0, ev.stderr
    metrics = orjson.loads(ev.stdout)
    cal = metrics["uncertainty"]
    assert cal["n_queries"] > 0 and np.isfinite(cal["spearman_bin"]) and cal["bins"]


def test_bad_ensemble_usage(neimsctl_exe: str, members: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = members
    before = a.read_bytes()
    clobber = run(neimsctl_exe, "ensemble", str(a), str(b), "-o", str(a))
    assert clobber.returncode == 2 and a.read_bytes() == before
    assert run(neimsctl_exe, "ensemble", str(a), "-o", "-").returncode == 2
    both = run(neimsctl_exe, "ensemble", str(a), "--fp32", "--int8", "-o", str(tmp_path / "e.pt"))
    assert both.returncode == 2 and b"exclude each other" in both.stderr
    assert not (tmp_path / "e.pt").exists()
    missing = run(neimsctl_exe, "ensemble", str(a), str(tmp_path / "nope.pt"), "-o",
                  str(tmp_path / "e.pt"))
    assert missing.returncode == 2 and b"nope.pt: no such file" in missing.stderr
    assert not (tmp_path / "e.pt").exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 not a zip")
    bad = run(neimsctl_exe, "ensemble", str(a), str(junk), "-o", str(tmp_path / "e.pt"))
    assert bad.returncode == 1 and b"junk.pt" in bad.stderr and b"Traceback" not in bad.stderr
    assert not (tmp_path / "e.pt").exists()
    avg = run(neimsctl_exe, "predict", "-m", str(a), "--average", "linear", stdin=b"CCO\n")
    assert avg.returncode == 2 and b"--average needs an ensemble" in avg.stderr
    unc = run(neimsctl_exe, "predict", "-m", str(a), "-O", "jsonl", "--uncertainty", stdin=b"CCO\n")
    assert unc.returncode == 1 and b"member disagreement" in unc.stderr
    # an ensemble file where one checkpoint is needed (a training --init) is named as such
    ens = tmp_path / "ab.pt"
    assert run(neimsctl_exe, "ensemble", str(a), str(b), "-o", str(ens), "-q").returncode == 0
    from neimsctl.errors import CheckpointError
    from neimsctl.models.checkpoint import load_checkpoint

    with pytest.raises(CheckpointError, match="an ensemble of 2 models"):
        load_checkpoint(ens)


def test_api_takes_a_list_of_checkpoints(members: tuple[Path, Path]) -> None:
    from neimsctl.api import SpectrumPredictor

    a, b = members
    p = SpectrumPredictor({"precision": "fp32", "average": "linear"}, checkpoint=[a, b],
                          device="cpu")
    assert p.model_type == "ensemble"
    mean, std = p.predict_from_smiles(["CCO", "c1ccccc1"], return_uncertainty=True)
    assert mean.shape == std.shape == (2, 501) and np.allclose(mean.max(axis=1), 1.0)
    assert (std > 0).any()
    sharp = SpectrumPredictor({"precision": "fp32", "sharpen": 2.0}, checkpoint=[a, b],
                              device="cpu")
    # the power, then the cut above M+2 (neimsctl.chem.isotopes, which a power does not
    # commute with): compared up to M+2 of ethanol (46) and benzene (78)
    upto = np.arange(501)[None, :] <= np.array([[46 + 2], [78 + 2]])

    def squared(got: np.ndarray) -> None:
        np.testing.assert_allclose(np.where(upto, got, 0), np.where(upto, mean ** 2, 0),
                                   rtol=1e-5, atol=1e-7)

    squared(sharp.predict_from_smiles(["CCO", "c1ccccc1"]))
    from neimsctl.errors import ConfigError

    with pytest.raises(ConfigError, match="'sharpen' needs an ensemble"):
        SpectrumPredictor({"sharpen": 1.1}, checkpoint=a, device="cpu")
    with pytest.raises(ConfigError, match="config: sharpen 'x' is not a number"):
        SpectrumPredictor({"sharpen": "x"}, checkpoint=[a, b], device="cpu")
    for given in (np.float32(2.0), np.int64(2)):        # numpy's numbers are numbers
        squared(SpectrumPredictor({"precision": "fp32", "sharpen": given}, checkpoint=[a, b],
                                  device="cpu").predict_from_smiles(["CCO", "c1ccccc1"]))


def test_an_output_naming_a_shipped_model_is_refused(neimsctl_exe: str, members: tuple[Path, Path],
                                                     repo_root: Path) -> None:
    shipped = repo_root / "neimsctl/resources/models/student-default.pt"
    before = shipped.stat().st_mtime_ns
    a, _ = members
    for args in (["ensemble", "student", str(a), "-o", str(shipped)],
                 ["predict", "-m", "student", "-m", str(a), "-o", str(shipped)],
                 ["predict", "-m", "teacher", "-o", str(shipped)]):     # the teacher includes it
        res = run(neimsctl_exe, *args, stdin=b"CCO\n")
        assert res.returncode == 2, (args, res.stderr)
    assert shipped.stat().st_mtime_ns == before


def test_the_cli_knows_the_shipped_models_where_predict_loads_them() -> None:
    from neimsctl.cli import predict as cli_predict
    from neimsctl.predict.model import ARCHS, MODELS_DIR

    assert cli_predict._MODELS_DIR == MODELS_DIR and cli_predict._SHIPPED_NAMES == ARCHS


def test_include_takes_over_the_members_of_a_file_beside_it(
        neimsctl_exe: str, members: tuple[Path, Path], tmp_path: Path) -> None:
    """ensemble A --include B.pt (the shipped teacher = its GNN + the shipped student's members):
    the file holds A only, predicts as A + B's members, and refuses to load when B is missing,
    replaced, or the include would point outside the output's directory."""
    import shutil

    a, b = members
    d = tmp_path / "models"
    d.mkdir()
    inner = d / "inner.pt"
    assert run(neimsctl_exe, "ensemble", str(b), str(a), "-o", str(inner), "--fp32").returncode == 0
    outer = d / "outer.pt"
    made = run(neimsctl_exe, "ensemble", str(a), "--include", str(inner), "-o", str(outer),
               "--fp32", "--average", "linear")
    assert made.returncode == 0, made.stderr
    assert b"3 members" in made.stderr and b"(in inner.pt)" in made.stderr
    import torch

    raw = torch.load(outer, weights_only=True)
    assert raw["format"] == "neimsctl.ensemble/3" and len(raw["members"]) == 1
    assert raw["include"][0]["file"] == "inner.pt"
    assert outer.stat().st_size < 0.6 * inner.stat().st_size           # no copy of inner's members
    common = ("-O", "jsonl", "--precision", "fp32", "--threads", "1", "-q")
    by_file = run(neimsctl_exe, "predict", "-m", str(outer), *common, stdin=SMI)
    by_list = run(neimsctl_exe, "predict", "-m", str(a), "-m", str(b), "-m", str(a),
                  "--average", "linear", *common, stdin=SMI)
    assert by_file.returncode == by_list.returncode == 1
    for x, y in zip(spectra(by_file.stdout), spectra(by_list.stdout)):
        assert x["mz"] == y["mz"] and np.allclose(x["intensity"], y["intensity"], atol=1)
    # copied together elsewhere: still loads; missing or replaced: one clear line, exit 1 (as
    # for a damaged checkpoint)
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(outer, moved / "outer.pt")
    lost = run(neimsctl_exe, "predict", "-m", str(moved / "outer.pt"), *common, stdin=b"CCO\n")
    assert lost.returncode == 1 and b"include 'inner.pt': no such file beside it" in lost.stderr
    assert b"Traceback" not in lost.stderr
    shutil.copy(a, moved / "inner.pt")
    swapped = run(neimsctl_exe, "predict", "-m", str(moved / "outer.pt"), *common, stdin=b"CCO\n")
    assert swapped.returncode == 1 and b"(replaced?)" in swapped.stderr
    shutil.copy(inner, moved / "inner.pt")
    ok = run(neimsctl_exe, "predict", "-m", str(moved / "outer.pt"), *common, stdin=b"CCO\n")
    assert ok.returncode == 0, ok.stderr
    away = run(neimsctl_exe, "ensemble", str(a), "--include", str(inner), "-o",
               str(tmp_path / "outer2.pt"))
    assert away.returncode == 2 and b"in the directory of the output" in away.stderr
    nested = run(neimsctl_exe, "ensemble", str(a), "--include", str(outer), "-o", str(d / "x.pt"))
    assert nested.returncode == 1 and b"includes files itself" in nested.stderr


def test_include_hostile_cases(neimsctl_exe: str, members: tuple[Path, Path], tmp_path: Path,
                               repo_root: Path) -> None:
    """Found by a hostile pass: no output replaces a file an ensemble includes (predict -o,
    ensemble -o of a flattened copy, export_model); the writer refuses what a reader could not
    load (an alias from another directory, a name with a backslash); export_model leaves nothing
    behind when an include is not at the destination."""
    import shutil
    import sys

    a, b = members
    d = tmp_path / "d"
    d.mkdir()
    inner = d / "b.pt"
    shutil.copy(b, inner)
    before = inner.read_bytes()
    inc = d / "inc.pt"
    assert run(neimsctl_exe, "ensemble", str(a), "--include", str(inner), "-o", str(inc)).returncode == 0
    flat = run(neimsctl_exe, "ensemble", str(inc), "-o", str(inner))
    assert flat.returncode == 1 and b"is the input" in flat.stderr and b"included by" in flat.stderr
    pred = run(neimsctl_exe, "predict", "-m", str(inc), "-q", "-o", str(inner), stdin=b"CCO\n")
    assert pred.returncode == 1 and b"refusing to write over it" in pred.stderr
    assert inner.read_bytes() == before and sorted(p.name for p in d.iterdir()) == ["b.pt", "inc.pt"]
    # an alias in another directory, or a name a reader refuses: refused when writing (exit 2)
    other = tmp_path / "other"
    other.mkdir()
    (other / "alias.pt").symlink_to(inner)
    alias = run(neimsctl_exe, "ensemble", str(a), "--include", str(other / "alias.pt"),
                "-o", str(d / "x.pt"))
    assert alias.returncode == 2 and b"must be the file 'alias.pt'" in alias.stderr
    odd = d / "b\\x.pt"
    shutil.copy(b, odd)
    bs = run(neimsctl_exe, "ensemble", str(a), "--include", str(odd), "-o", str(d / "y.pt"))
    assert bs.returncode == 1 and b"not a plain file name" in bs.stderr
    assert not (d / "x.pt").exists() and not (d / "y.pt").exists()
    # export_model: under the included file's name, or without the include at the destination
    tool = [sys.executable, str(repo_root / "tools/export_model.py")]
    over = subprocess.run([*tool, str(inc), str(inner)], capture_output=True)
    assert over.returncode == 1 and inner.read_bytes() == before
    prev = tmp_path / "dst" / "inc.pt"
    prev.parent.mkdir()
    prev.write_bytes(b"PREVIOUS")
    lost = subprocess.run([*tool, str(inc), str(prev)], capture_output=True)
    assert lost.returncode == 1 and b"export that file into" in lost.stderr
    assert prev.read_bytes() == b"PREVIOUS" and not prev.with_suffix(".json").exists()
    fresh = subprocess.run([*tool, str(inc), str(tmp_path / "new" / "deeper" / "inc.pt")],
                           capture_output=True)
    assert fresh.returncode == 1 and not (tmp_path / "new").exists()
