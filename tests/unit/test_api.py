"""SpectrumPredictor (neimsctl.api) with a tiny student saved through neimsctl.models.checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from neimsctl.chem.featurize_run import run_settings
from neimsctl.chem.rowbuild import RowOptions
from neimsctl.errors import CheckpointError, ConfigError, FormatError
from neimsctl.io.msp import read_msp
from neimsctl.models.student import StudentConfig, StudentModel
from neimsctl.models.checkpoint import save_checkpoint

TINY = StudentConfig(gate_hidden=(16,), expert_depth=1, expert_bottleneck=8, head_hidden=(32,),
                     hidden_dim=16)
SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "c1ccccc1", "CCO", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C"]


def tiny_student(path: Path) -> Path:
    torch.manual_seed(0)
    save_checkpoint(path, model=StudentModel(TINY), config={"model": {"name": "student", **TINY.to_dict()}},
                    featurizer_hash=run_settings(RowOptions(mode="student"))[1])
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_student(tmp_path_factory.mktemp("api") / "tiny.pt")


@pytest.fixture(scope="module")
def predictor(ckpt: Path):
    from neimsctl import SpectrumPredictor

    return SpectrumPredictor({"precision": "fp32"}, checkpoint=ckpt, device="cpu")


def test_single_prediction_is_linear_base_peak_one(predictor):
    spec = predictor.predict_from_smiles(SMILES[0])
    assert spec.shape == (501,) and spec.dtype == np.float32
    assert spec.min() >= 0 and spec.max() == pytest.approx(1.0)
    assert predictor.model_type == "student"


def test_batch_matches_single_and_list_input(predictor):
    batch = predictor.predict_batch(SMILES, batch_size=3)
    assert batch.shape == (4, 501)
    for i, s in enumerate(SMILES):
        assert np.allclose(batch[i], predictor.predict_from_smiles(s), atol=1e-5)
    assert np.allclose(predictor.predict_from_smiles(SMILES), batch, atol=1e-5)


def test_predict_batch_with_its_own_batch_size_changes_nothing_shared(ckpt):
    """predict_batch(batch_size=B) swapped the config's batch size for the call and put it
    back: two threads with their own sizes (7 and 5) left the predictor at 7 for good (every
    later call ran 7 molecules per model call instead of 1024)."""
    import threading

    from neimsctl import SpectrumPredictor

    pred = SpectrumPredictor({"precision": "fp32"}, checkpoint=ckpt, device="cpu")
    want = pred.predict_batch(SMILES * 5)
    got: list[np.ndarray] = []
    start = threading.Barrier(2)

    def run(size: int) -> None:
        start.wait()
        for _ in range(10):
            got.append(pred.predict_batch(SMILES * 5, batch_size=size))

    threads = [threading.Thread(target=run, args=(size,)) for size in (7, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pred.options["batch_size"] == 1024 and len(got) == 20
    assert all(np.allclose(g, want, atol=1e-5) for g in got)
    assert {key[-1] for key in pred._stages} == {1024}       # a call's own size is not kept


def test_invalid_smiles(predictor):
    with pytest.raises(FormatError, match="cannot parse SMILES 'xyz'"):
        predictor.predict_from_smiles("xyz")
    with pytest.raises(FormatError, match="line 2"):
        predictor.predict_batch(["CCO", "xyz"])
    out = predictor.predict_batch(["CCO", "xyz", "c1ccccc1"], errors="nan")
    assert np.isnan(out[1]).all() and not np.isnan(out[[0, 2]]).any()


@pytest.mark.parametrize("bad", [None, 5, b"CCO"])
def test_smiles_neither_a_string_nor_a_sequence_is_named(predictor, bad, tmp_path):
    """None, a number or bytes: a TypeError naming the method and the type (it was Python's
    "'NoneType' object is not iterable", or bytes read as a list of numbers)."""
    calls = {"predict_from_smiles": lambda: predictor.predict_from_smiles(bad),
             "predict_batch": lambda: predictor.predict_batch(bad),
             "export_msp": lambda: predictor.export_msp(bad, tmp_path / "x.msp")}
    for name, call in calls.items():
        with pytest.raises(TypeError, match=f"^{name}: expects a SMILES string or a sequence of them, "
                                            f"got {type(bad).__name__}$"):
            call()
    assert not (tmp_path / "x.msp").exists()


def test_a_numpy_scalar_string_is_one_smiles(predictor):
    """np.array("CCO") (a 0-d array, what indexing some array containers gives) raised numpy's
    bare "iteration over a 0-d array"; it is one SMILES, as np.str_ already was."""
    one = predictor.predict_from_smiles("CCO")
    assert np.array_equal(predictor.predict_from_smiles(np.array("CCO")), one)
    assert np.array_equal(predictor.predict_batch(np.array("CCO")), one[None])
    with pytest.raises(TypeError, match="^predict_batch: expects a SMILES string or a sequence of them, got int"):
        predictor.predict_batch(np.array(5))


def test_find_top_peaks(predictor):
    spec = np.zeros(501, np.float32)
    spec[[43, 120, 180, 200]] = [1.0, 0.5, 0.25, 0.005]
    assert predictor.find_top_peaks(spec, top_n=2) == [(43, 1.0), (120, 0.5)]
    assert predictor.find_top_peaks(spec, top_n=10) == [(43, 1.0), (120, 0.5), (180, 0.25)]
    assert [mz for mz, _ in predictor.find_top_peaks(spec, 10, threshold=0.001)] == [43, 120, 180, 200]


def test_export_msp_round_trip(predictor, tmp_path):
    path = tmp_path / "p.msp"
    assert predictor.export_msp(SMILES[:2], path, name=["aspirin", "benzene"]) == 2
    with open(path, "rb") as fh:
        recs = list(read_msp(fh, str(path)))
    assert [r.name for r in recs] == ["aspirin", "benzene"] and all(r.reason is None for r in recs)
    assert recs[0].fields["inchikey"] == "BSYNRYMUTXBXSQ-UHFFFAOYSA-N" and recs[0].fields["mw"] == "180"
    assert max(recs[0].intensity) == 999 and "model=tiny.pt" in recs[0].fields["comments"]
    spec = predictor.predict_from_smiles(SMILES[0])
    kept = np.flatnonzero(spec >= 0.001)
    assert recs[0].mz == kept.tolist()
    assert np.allclose(np.asarray(recs[0].intensity) / 999, spec[kept], atol=0.6 / 999 + 1e-6)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precisions_stay_close_to_fp32(ckpt, predictor, precision):
    from neimsctl import SpectrumPredictor

    other = SpectrumPredictor({"precision": precision}, checkpoint=ckpt, device="cpu")
    assert other.loaded.precision == precision
    a, b = predictor.predict_batch(SMILES), other.predict_batch(SMILES)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98


def test_auto_precision_and_bad_options(ckpt):
    from neimsctl import SpectrumPredictor

    from neimsctl.models.quantize import resolve_precision

    # the CLI's rule, whatever the batch size: neimsctl predict and the API resolve alike
    assert SpectrumPredictor(checkpoint=ckpt, device="cpu").loaded.precision == \
        resolve_precision("auto", arch="student", device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown precision"):
        SpectrumPredictor({"precision": "fp8"}, checkpoint=ckpt)
    with pytest.raises(ConfigError, match="unknown key"):
        SpectrumPredictor({"batchsize": 3}, checkpoint=ckpt)
    with pytest.raises(ConfigError, match="teacher"):
        SpectrumPredictor({"precision": "fp32"}, checkpoint=ckpt).predict_from_smiles(
            "CCO", return_uncertainty=True)


def test_missing_models(tmp_path, monkeypatch):
    from neimsctl import SpectrumPredictor
    from neimsctl.predict import model as pred

    monkeypatch.setattr(pred, "MODELS_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="no shipped default student model"):
        SpectrumPredictor()
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        SpectrumPredictor(checkpoint=tmp_path / "nope.pt")


def test_import_stays_light_and_student_needs_no_pyg(ckpt):
    code = ("import sys, neimsctl; assert 'torch' not in sys.modules; "
            f"p = neimsctl.SpectrumPredictor(checkpoint={str(ckpt)!r}, device='cpu'); "
            "p.predict_from_smiles('CCO'); p.export_msp('CCO', '-'); "
            "assert 'torch_geometric' not in sys.modules, 'student path imported torch_geometric'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True)


def test_a_single_smiles_in_predict_batch_is_one_molecule(predictor):
    """predict_batch("CCO") iterated the characters: 3 spectra of C, C and O."""
    one = predictor.predict_batch("CCO")
    assert one.shape == (1, 501)
    assert np.allclose(one[0], predictor.predict_from_smiles("CCO"), atol=1e-5)
    assert predictor.predict_batch("CCO", errors="nan").shape == (1, 501)


@pytest.mark.parametrize("config, match", [
    ({"batch_size": "abc"}, "batch_size must be an integer >= 1, got 'abc'"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"batch_size": -5}, "batch_size must be an integer >= 1"),
    ({"batch_size": 2.5}, "batch_size must be an integer >= 1"),
    ({"mc_samples": 1}, "mc_samples must be an integer >= 2"),
    ({"threads": "x"}, "threads must be an integer >= 0, got 'x'"),
    ({"threads": -1}, "threads must be an integer >= 0"),
])
def test_bad_config_values_fail_at_construction(ckpt, config, match):
    """They were accepted and failed at predict time with a ValueError."""
    from neimsctl import SpectrumPredictor

    with pytest.raises(ConfigError, match=match):
        SpectrumPredictor(config, checkpoint=ckpt, device="cpu")


def test_bad_predict_batch_arguments(predictor):
    for bad in (0, "2", 1.5):
        with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
            predictor.predict_batch(SMILES, batch_size=bad)
    with pytest.raises(ConfigError, match="errors must be 'raise' or 'nan'"):
        predictor.predict_batch(SMILES, errors="skip")
    with pytest.raises(ConfigError, match="export_msp: 2 SMILES but 1 names"):
        predictor.export_msp(["CCO", "CCN"], "-", name=["ethanol"])


def test_find_top_peaks_takes_one_spectrum(predictor):
    """A batch (2-D) gave an IndexError (or a wrong answer); top_n < 0 dropped peaks silently."""
    batch = np.random.default_rng(0).random((2, 501))
    with pytest.raises(FormatError, match=r"one spectrum \(1-D\) is needed, got shape \(2, 501\) \(a batch"):
        predictor.find_top_peaks(batch)
    assert len(predictor.find_top_peaks(batch[1], top_n=3)) == 3
    for spec in (np.array([1.0, np.nan]), np.array([1.0, -0.5]), ["a", "b"]):
        with pytest.raises(FormatError):
            predictor.find_top_peaks(spec)
    for kw in ({"top_n": -1}, {"top_n": 0}, {"top_n": 2.5}, {"threshold": float("nan")}, {"threshold": -1}):
        with pytest.raises(ConfigError):
            predictor.find_top_peaks(batch[0], **kw)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from neimsctl.models.teacher import TeacherConfig, TeacherModel

    cfg = TeacherConfig.from_dict({"hidden": 16, "num_layers": 2, "attention_hidden": 8,
                                   "pool_gate_hidden": 8, "ecfp_hidden": [32], "ecfp_out": 16,
                                   "head_hidden": [32, 16], "dropout": 0.5})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("api_teacher") / "teacher.pt"
    save_checkpoint(path, model=TeacherModel(cfg), config={"model": {"name": "teacher", **cfg.to_dict()}},
                    featurizer_hash=run_settings(RowOptions(mode="teacher"))[1])
    return path


def test_a_teacher_shared_by_threads_predicts_as_it_does_alone(teacher_ckpt):
    """The teacher's MC dropout switches its dropout modules on and seeds torch's global
    generator: a thread asking for uncertainty made another thread's plain prediction stochastic
    (up to 0.1 off on the shipped teacher) and the threads' seeds overwrote each other's (spreads
    that changed from call to call). Each thread now gets what a lone call gets, bit for bit."""
    import threading

    from neimsctl import SpectrumPredictor

    p = SpectrumPredictor({"mc_samples": 4}, checkpoint=teacher_ckpt, device="cpu")
    plain = [p.predict_from_smiles(s) for s in SMILES]
    unc = [p.predict_from_smiles(s, return_uncertainty=True) for s in SMILES]
    assert any(u[1].max() > 0 for u in unc)
    wrong: list[tuple[int, str, int]] = []

    def work(t: int) -> None:
        for r in range(6):
            for i, s in enumerate(SMILES):
                if (t + r) % 2:
                    mean, std = p.predict_from_smiles(s, return_uncertainty=True)
                    if not (np.array_equal(mean, unc[i][0]) and np.array_equal(std, unc[i][1])):
                        wrong.append((t, "uncertainty", i))
                elif not np.array_equal(p.predict_from_smiles(s), plain[i]):
                    wrong.append((t, "plain", i))
    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert wrong == []


def test_uncertainty_of_no_molecules_is_two_empty_arrays(teacher_ckpt):
    """An empty list gave ``(mean, None)``: ``std.shape`` of the documented ``(mean, std)`` failed."""
    from neimsctl import SpectrumPredictor

    p = SpectrumPredictor({"mc_samples": 4}, checkpoint=teacher_ckpt, device="cpu")
    mean, std = p.predict_from_smiles([], return_uncertainty=True)
    assert mean.shape == std.shape == (0, p.loaded.n_bins) and std.dtype == np.float32
    mean, std = p.predict_from_smiles(["CCO"], return_uncertainty=True)
    assert mean.shape == std.shape == (1, p.loaded.n_bins)


def test_threads_beyond_4_per_core_are_refused(ckpt):
    """threads=10**20 was torch's bare "Overflow when unpacking long long" ValueError."""
    from neimsctl import SpectrumPredictor
    from neimsctl.io.parallel import max_jobs

    for n in (max_jobs() + 1, 10 ** 20):
        with pytest.raises(ConfigError, match=f"threads must be at most {max_jobs()}"):
            SpectrumPredictor({"threads": n}, checkpoint=ckpt, device="cpu")
