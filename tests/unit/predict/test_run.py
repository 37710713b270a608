"""predict_run: workers that featurize, predict and format give the same bytes as one process."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from neimsctl.chem.featurize_run import run_settings
from neimsctl.chem.rowbuild import RowOptions
from neimsctl.errors import FormatError
from neimsctl.io.rejects import Tally
from neimsctl.models.student import StudentConfig, StudentModel
from neimsctl.models.checkpoint import save_checkpoint
from neimsctl.errors import StrictStop
from neimsctl.io.inputs import iter_items
from neimsctl.predict.run import ChunkPredictor, PredictOptions, predicted, run_predict
from neimsctl.predict.model import load_model

TINY = StudentConfig(gate_hidden=(16,), expert_depth=1, expert_bottleneck=8, head_hidden=(32,),
                     hidden_dim=16)
LINES = ["CCO ethanol", "c1ccccc1 benzene", "xyz", "CC(=O)O acetic", "CCN", "C1CC",
         "c1ccccc1O phenol", "CCCCCC hexane", "O=C=O", "CC(C)O", "ClCCl"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("pr") / "tiny.pt"
    torch.manual_seed(0)
    save_checkpoint(path, model=StudentModel(TINY),
                    config={"model": {"name": "student", **TINY.to_dict()}},
                    featurizer_hash=run_settings(RowOptions(mode="student"))[1])
    return load_model(path, precision="fp32")


@pytest.fixture()
def smi(tmp_path: Path) -> Path:
    p = tmp_path / "in.smi"
    p.write_text("\n".join(LINES) + "\n")
    return p


def _run(lm, smi: Path, jobs: int, fmt: str = "msp", strict: bool = False,
         model_in_workers: bool | None = None):
    stage = ChunkPredictor(lm, PredictOptions(fmt=fmt, strict=strict))
    out, tally = io.BytesIO(), Tally()
    shown: list[str] = []
    stopped = None
    try:
        run_predict(predicted(iter_items([smi]), stage, jobs=jobs, chunk=3,
                              model_in_workers=model_in_workers), out, tally,
                    strict=strict, show=shown.append)
    except StrictStop as exc:
        stopped = str(exc)
    return out.getvalue(), (tally.read, tally.written, tally.rejected), shown, stopped


@pytest.mark.parametrize("fmt", ["msp", "jsonl"])
def test_workers_match_one_process(lm, smi, fmt):
    one = _run(lm, smi, 1, fmt)
    two = _run(lm, smi, 2, fmt)
    gpu_way = _run(lm, smi, 2, fmt, model_in_workers=False)  # workers featurize, model here
    assert one == two == gpu_way
    data, counts, shown, _ = one
    assert counts == (11, 9, 2)
    assert shown == [f"{smi}:3: cannot parse SMILES 'xyz'", f"{smi}:6: cannot parse SMILES 'C1CC'"]
    assert data.count(b"Name: " if fmt == "msp" else b'"schema"') == 9


def test_strict_in_workers_writes_rows_before_the_first_reject(lm, smi):
    one = _run(lm, smi, 1, strict=True)
    two = _run(lm, smi, 2, strict=True)
    assert one == two == _run(lm, smi, 2, strict=True, model_in_workers=False)
    data, counts, _, stopped = two
    assert counts == (3, 2, 1) and stopped == f"{smi}:3: cannot parse SMILES 'xyz'"
    assert [ln for ln in data.splitlines() if ln.startswith(b"Name: ")] == \
        [b"Name: ethanol", b"Name: benzene"]


def test_non_finite_predictions_are_rejects_with_file_and_line(lm, smi, monkeypatch):
    """A molecule whose predicted spectrum holds NaN is refused (a reject naming it), never
    written as an empty spectrum; the other molecules are written, in every worker layout."""
    import numpy as np

    from neimsctl.predict import run

    real = run.predict_block

    def nan_for_benzene(lm_, block, **kw):
        spectra, std, experts = real(lm_, block, **kw)
        spectra[np.asarray([s == "c1ccccc1" for s in block["smiles"]])] = np.nan
        return spectra, std, experts

    monkeypatch.setattr(run, "predict_block", nan_for_benzene)
    one = _run(lm, smi, 1, "jsonl")
    assert one == _run(lm, smi, 2, "jsonl") == _run(lm, smi, 2, "jsonl", model_in_workers=False)
    data, counts, shown, _ = one
    assert counts == (11, 8, 3) and b"benzene" not in data
    assert f"{smi}:2: non_finite_prediction: the model predicted NaN or inf intensities " \
           "for this molecule" in shown
    data, counts, _, stopped = _run(lm, smi, 1, strict=True)
    assert counts == (2, 1, 1) and stopped.startswith(f"{smi}:2: non_finite_prediction")
    from neimsctl.api import SpectrumPredictor

    api = SpectrumPredictor({"precision": "fp32"}, checkpoint=lm.path)
    out = api.predict_batch(["CCO", "c1ccccc1"], errors="nan")
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()
    with pytest.raises(FormatError, match="non_finite_prediction"):
        api.predict_from_smiles("c1ccccc1")


@pytest.mark.parametrize("model_in_workers", [True, False])
def test_a_worker_that_dies_on_a_record_rejects_it_and_loses_nothing(lm, smi, monkeypatch,
                                                                    model_in_workers):
    import faulthandler
    import os
    import signal

    from neimsctl.chem.rowbuild import RowBuilder

    build = RowBuilder.build

    def crashing_build(self, items):  # RDKit segfaulting on one record, in a worker
        if any(b"CRASH" in it.raw for it in items):
            faulthandler.disable()
            os.kill(os.getpid(), signal.SIGSEGV)
        return build(self, items)

    monkeypatch.setattr(RowBuilder, "build", crashing_build)
    lines = LINES[:4] + ["CCCCO CRASH"] + LINES[4:]
    smi.write_text("\n".join(lines) + "\n")
    data, counts, shown, _ = _run(lm, smi, 2, model_in_workers=model_in_workers)
    assert counts == (12, 9, 3)                        # read = written + rejected
    assert f"{smi}:5: worker_crashed: the worker process was killed by SIGSEGV while working " \
           "on this record" in shown
    names = [ln[6:].decode() for ln in data.splitlines() if ln.startswith(b"Name: ")]
    assert names == ["ethanol", "benzene", "acetic", "in:6", "phenol", "hexane", "in:10", "in:11",
                     "in:12"]



def test_no_predicted_peak_below_mz_2():
    """No measured EI spectrum has a peak at m/z 0 or 1: the bins are cleared, and a spectrum
    whose base peak was there is scaled to base peak 1 again (its spread by the same factor)."""
    import numpy as np

    from neimsctl.predict.model import MIN_PREDICTED_MZ, below_min_mz_cleared

    assert MIN_PREDICTED_MZ == 2
    spectra = np.array([[0.5, 0.2, 1.0, 0.1], [2.0, 0.0, 0.5, 0.25], [0.0, 0.0, 1.0, 0.5]],
                       np.float32)
    got, std = below_min_mz_cleared(spectra.copy(), np.full_like(spectra, 0.1))
    assert np.allclose(got, [[0, 0, 1.0, 0.1], [0, 0, 1.0, 0.5], [0, 0, 1.0, 0.5]], atol=0)
    assert np.allclose(std, [[0, 0, 0.1, 0.1], [0, 0, 0.2, 0.2], [0, 0, 0.1, 0.1]])
    empty = np.zeros((0, 4), np.float32)
    assert below_min_mz_cleared(empty, None)[0] is empty


def test_a_model_that_predicts_mz_0_and_1_writes_neither(lm, smi):
    """The tiny model made to put its largest intensities at m/z 0 and 1: every spectrum
    predict writes starts at m/z 2 or above and keeps base peak 999."""
    import orjson

    out = lm.model.out
    biases = [out.bias] if isinstance(out, torch.nn.Linear) else \
        [out.forward_head.bias, out.reverse_head.bias]
    saved = [b.detach().clone() for b in biases]
    with torch.no_grad():
        for b in biases:
            b[:2] = 50.0
    try:
        data, counts, _, _ = _run(lm, smi, 1, "jsonl")
    finally:
        with torch.no_grad():
            for b, s in zip(biases, saved):
                b.copy_(s)
    rows = [orjson.loads(line) for line in data.splitlines() if b'"mz"' in line]
    assert len(rows) == counts[1] == 9
    assert all(min(r["mz"]) >= 2 and max(r["intensity"]) == 999 for r in rows)
