"""tools/export_model.py: fp16 shipped weights + model card that predict loads unchanged."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from neimsctl.models.student import StudentConfig, StudentModel
from neimsctl.models.checkpoint import save_checkpoint
from neimsctl.predict.model import load_model, predict_block


def _tool(repo_root: Path):
    spec = importlib.util.spec_from_file_location("export_model", repo_root / "tools/export_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_export_halves_the_weights_and_predicts_like_the_original(repo_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = StudentConfig(gate_hidden=(16,), expert_width=32, expert_depth=2, expert_bottleneck=8,
                        head_hidden=(64,), hidden_dim=16, mass_aware=True)
    model = StudentModel(cfg)
    opt = torch.optim.AdamW(model.parameters())
    src = save_checkpoint(tmp_path / "best.pt", model=model, optimizer=opt,
                          config={"model": {"name": "student", **cfg.to_dict()}}, epoch=3)
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"recall@10": 0.9, "mean_cosine": 0.7, "counts": {"n_queries": 5},
                              "schema": "neimsctl.eval/1"}))
    dst = tmp_path / "models/student-default.pt"
    card = _tool(repo_root).export(src, dst, eval_json=ev, train_log=None, command="cmd", notes="")
    assert dst.stat().st_size < 0.6 * src.stat().st_size           # no optimizer, half precision
    assert card["test_metrics"] == {"recall@10": 0.9, "mean_cosine": 0.7, "counts": {"n_queries": 5}}
    assert "NON-COMMERCIAL" in card["license"] and card["n_parameters"] == model.n_parameters()
    assert json.loads(dst.with_suffix(".json").read_text())["sha256"] == card["sha256"]
    state = torch.load(dst, weights_only=True)["model"]
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    rng = np.random.default_rng(0)
    block = {"ordinal": np.arange(4), "ecfp": rng.integers(0, 256, (4, 512), dtype=np.uint8),
             "counts": rng.integers(0, 4, (4, 2048), dtype=np.uint8), "mw": np.array([78, 120, 200, 300])}
    a = predict_block(load_model(src, device="cpu", precision="fp32"), block)[0]
    b = predict_block(load_model(dst, device="cpu", precision="fp32"), block)[0]
    assert np.abs(a - b).max() < 2e-2                                # fp16 rounding only
    assert all((b[i, m + 6:] == 0).all() for i, m in enumerate(block["mw"]))


def test_int8_export_of_a_fragment_student_predicts_like_the_original(repo_root: Path, tmp_path: Path) -> None:
    """--weights int8 (the shipped default's storage): large matrices as int8 codes + row scales,
    the fragment convolution and the small tensors in float16; a quarter of fp32's bytes, and
    the spectra close to the fp32 model's."""
    torch.manual_seed(1)
    cfg = StudentConfig(gate_hidden=(32,), expert_width=128, expert_depth=2, expert_bottleneck=32,
                        head_hidden=(128,), hidden_dim=64, mass_aware=True, fragments=True,
                        fragment_channels=2)
    model = StudentModel(cfg)
    # written as a recipe's run writes it: the default width with fragments: true
    src = save_checkpoint(tmp_path / "best.pt", model=model,
                          config={"model": {"name": "student", **cfg.to_dict(), "input_dim": 6144}},
                          epoch=1)
    dst = tmp_path / "student-int8.pt"
    rep = [tmp_path / "student.query_rep.eval.json", tmp_path / "replicate.query_rep.eval.json"]
    for path, r1 in zip(rep, (0.46, 0.76)):
        path.write_text(json.dumps({"recall@1": r1, "schema": "neimsctl.eval/1", "counts": {"n_queries": 160}}))
    card = _tool(repo_root).export(src, dst, eval_json=None, train_log=None, command="cmd",
                                   notes="", weights="int8", replicate=tuple(rep))
    assert card["weights_dtype"] == "int8 matrices + float16"
    assert card["replicate_subset"]["model"] == {"recall@1": 0.46, "counts": {"n_queries": 160}}
    assert card["replicate_subset"]["measured_replicate"]["recall@1"] == 0.76
    assert card["n_parameters"] == model.n_parameters()
    ck = torch.load(dst, weights_only=True)
    int8 = {k for k, v in ck["model"].items() if v.dtype == torch.int8}
    assert int8 and int8 == set(ck["quantized"])
    assert not any("frag" in k for k in int8)                       # the conv stays float16
    fp32_bytes = sum(v.numel() * 4 for v in model.state_dict().values() if v.is_floating_point())
    assert dst.stat().st_size < 0.35 * fp32_bytes
    rng = np.random.default_rng(0)
    block = {"ordinal": np.arange(4), "ecfp": rng.integers(0, 256, (4, 512), dtype=np.uint8),
             "counts": rng.integers(0, 4, (4, 2048), dtype=np.uint8),
             "frags": rng.integers(0, 3, (4, 1002), dtype=np.uint8), "mw": np.array([78, 120, 200, 300])}
    a = predict_block(load_model(src, device="cpu", precision="fp32"), block)[0]
    b = predict_block(load_model(dst, device="cpu", precision="fp32"), block)[0]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99
    assert ck["config"]["model"]["input_dim"] == 7146 == card["model_config"]["input_dim"]


def test_refuses_to_overwrite_its_input_and_names_a_missing_checkpoint(repo_root: Path, tmp_path: Path) -> None:
    """The output equal to the input is a usage error (exit 2, the input untouched); a missing or
    damaged checkpoint is one line on stderr (exit 1), not a traceback."""
    import subprocess
    import sys

    tool = repo_root / "tools/export_model.py"
    src = tmp_path / "best.pt"
    src.write_bytes(b"not a checkpoint")
    same = subprocess.run([sys.executable, str(tool), str(src), str(tmp_path / "." / "best.pt")],
                          capture_output=True, text=True)
    assert same.returncode == 2 and "overwrite its input" in same.stderr
    assert src.read_bytes() == b"not a checkpoint"
    for path in (tmp_path / "missing.pt", src):
        proc = subprocess.run([sys.executable, str(tool), str(path), str(tmp_path / "out.pt")],
                              capture_output=True, text=True)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("export_model.py: ") and path.name in lines[0]
    assert not (tmp_path / "out.pt").exists()
