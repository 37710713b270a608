"""Ensembles: averaging spaces by hand, ensemble files, mixed members, uncertainty, softlabel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neimsctl.chem.featurize_run import run_settings
from neimsctl.chem.rowbuild import Item, RowOptions
from neimsctl.errors import CheckpointError, ConfigError
from neimsctl.models.checkpoint import (ENSEMBLE_FORMAT, ENSEMBLE_FORMAT_INT8, build_ensemble,
                                        load_checkpoint, model_state, quantize_int8,
                                        save_checkpoint, slim_member)
from neimsctl.models.neims_v1 import NeimsV1, NeimsV1Config
from neimsctl.models.student import StudentConfig, StudentModel
from neimsctl.predict.ensemble import (LoadedEnsemble, average_spectra, choose_sharpen,
                                       sharpen_spectra, write_ensemble)
from neimsctl.predict.model import load_model, predict_block
from neimsctl.predict.run import Featurizer

TINY = StudentConfig(gate_hidden=(16,), expert_depth=1, expert_bottleneck=8, head_hidden=(32,),
                     hidden_dim=16)
TEACHER = {"name": "teacher", "hidden": 16, "num_layers": 2, "ecfp_hidden": [32], "ecfp_out": 16,
           "head_hidden": [32, 16], "dropout": 0.2}
SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCN(CC)CC", "ClC(Cl)Cl"]


def _student(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(path, model=StudentModel(TINY),
                           config={"model": {"name": "student", **TINY.to_dict()}},
                           featurizer_hash=run_settings(RowOptions(mode="student"))[1])


def _teacher(path: Path) -> Path:
    from neimsctl.train.finetune import build_teacher

    torch.manual_seed(5)
    model = build_teacher(TEACHER)
    return save_checkpoint(path, model=model,
                           config={"model": model.config.to_dict() | {"name": "teacher"}},
                           featurizer_hash=run_settings(RowOptions(mode="teacher"))[1])


def _v1(path: Path) -> Path:
    torch.manual_seed(7)
    cfg = NeimsV1Config(hidden_dim=32, n_blocks=1)     # 4096 Morgan counts
    return save_checkpoint(path, model=NeimsV1(cfg),
                           config={"model": {"name": "neims-v1", **cfg.to_dict()}})


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ens")
    return {"a": _student(d / "a.pt", 0), "b": _student(d / "b.pt", 1),
            "t": _teacher(d / "t.pt"), "v1": _v1(d / "v1.pt"), "dir": d}


def _block(mode: str, extra_v1: bool = False) -> dict[str, np.ndarray]:
    items = [Item(i, "<t>", i + 1, "smi", s.encode()) for i, s in enumerate(SMILES)]
    block, rejects = Featurizer(mode, extra_v1=extra_v1)(items)
    assert not rejects
    return block


def test_average_spectra_by_hand() -> None:
    s = np.array([[[1.0, 0.0, 0.25]], [[0.25, 1.0, 0.25]]])
    np.testing.assert_allclose(average_spectra(s, "linear"), [[0.625, 0.5, 0.25]])
    # sqrt: mean of (1, .5) = .75 -> .5625; (0, 1) -> .25; (.5, .5) -> .25
    np.testing.assert_allclose(average_spectra(s, "sqrt"), [[0.5625, 0.25, 0.25]])
    with pytest.raises(ConfigError, match="average 'log'"):
        average_spectra(s, "log")


@pytest.mark.parametrize("average", ["linear", "sqrt"])
def test_an_ensemble_predicts_the_average_of_its_members(ckpts: dict[str, Path],
                                                         average: str) -> None:
    a, b = (load_model(ckpts[k], device="cpu", precision="fp32") for k in "ab")
    ens = load_model([ckpts["a"], ckpts["b"]], device="cpu", precision="fp32", average=average)
    assert isinstance(ens, LoadedEnsemble) and ens.arch == "ensemble" and ens.mode == "student"
    assert ens.n_parameters == a.n_parameters + b.n_parameters
    block = _block("student")
    sa, sb = (predict_block(m, block)[0] for m in (a, b))
    want = average_spectra(np.stack([sa, sb]), average)
    want /= want.max(axis=1, keepdims=True)
    got, std, experts = predict_block(ens, block)
    assert std is None and experts is None
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.allclose(got.max(axis=1), 1.0)
    # uncertainty = the members' standard deviation, on the scale of the averaged spectrum
    got2, std = predict_block(ens, block, uncertainty=True)[:2]
    np.testing.assert_array_equal(got2, got)
    scale = 1 / average_spectra(np.stack([sa, sb]), average).max(axis=1, keepdims=True)
    np.testing.assert_allclose(std, np.stack([sa, sb]).std(axis=0, ddof=1) * scale,
                               rtol=1e-5, atol=1e-7)
    assert (std > 0).any()


def test_an_ensemble_file_predicts_as_its_members_given_one_by_one(ckpts: dict[str, Path]) -> None:
    out = ckpts["dir"] / "ab.pt"
    info = write_ensemble([ckpts["a"], ckpts["b"]], out, average="linear", weights="fp32")
    assert [m["arch"] for m in info["members"]] == ["student", "student"]
    raw = load_checkpoint(out, ensemble=True)
    assert raw["format"] == ENSEMBLE_FORMAT and raw["average"] == "linear"
    assert "optimizer" not in raw["members"][0] and raw["members"][0]["label"] == "a.pt"
    from_file = load_model(out, device="cpu", precision="fp32")
    given = load_model([ckpts["a"], ckpts["b"]], device="cpu", precision="fp32", average="linear")
    assert from_file.average == "linear" and "ab.pt" in from_file.describe()
    block = _block("student")
    np.testing.assert_array_equal(predict_block(from_file, block)[0],
                                  predict_block(given, block)[0])
    # an ensemble file among other models is flattened into its members
    three = load_model([out, ckpts["a"]], device="cpu", precision="fp32")
    assert len(three.members) == 3 and three.average == "linear"
    # fp16 weights (the default): half the size, spectra within fp16 rounding
    half = ckpts["dir"] / "ab16.pt"
    write_ensemble([ckpts["a"], ckpts["b"]], half, average="linear")
    assert half.stat().st_size < 0.7 * out.stat().st_size
    np.testing.assert_allclose(predict_block(load_model(half, device="cpu", precision="fp32"),
                                             block)[0], predict_block(given, block)[0], atol=2e-3)


def test_sharpen_spectra_by_hand() -> None:
    mean = np.array([[1.0, 0.5, 0.0, 0.25]])
    std = np.array([[0.1, 0.1, 0.0, 0.05]])
    got, spread = sharpen_spectra(mean, std, 2.0)
    np.testing.assert_allclose(got, [[1.0, 0.25, 0.0, 0.0625]])
    # the spread through the power's derivative: 2 * mean * std
    np.testing.assert_allclose(spread, [[0.2, 0.1, 0.0, 0.025]])
    # below 1 the derivative is infinite at 0: a bin all members put at 0 keeps no spread
    got, spread = sharpen_spectra(mean, std, 0.5)
    np.testing.assert_allclose(got, np.sqrt(mean))
    assert np.isfinite(spread).all() and spread[0, 2] == 0.0
    assert sharpen_spectra(mean, None, 1.0) == (mean, None)
    assert sharpen_spectra(mean, None, 3.0)[1] is None


def test_choose_sharpen_follows_the_rule_of_the_average() -> None:
    import io

    sharp, plain = {"sharpen": 1.1}, {}
    assert choose_sharpen(2.0, [("a.pt", sharp)], 1, None) == 2.0          # asked for
    assert choose_sharpen(None, [("a.pt", sharp), ("b.pt", {"sharpen": 1.1})], 2, None) == 1.1
    log = io.StringIO()
    assert choose_sharpen(None, [("a.pt", sharp), ("b.pt", plain)], 2, log) == 1.0
    assert "own sharpen powers (a.pt: 1.1, b.pt: 1.0) are not used: the average is raised " \
           "to the power 1" in log.getvalue()
    log = io.StringIO()                       # a checkpoint beside the file: not every model
    assert choose_sharpen(None, [("a.pt", sharp)], 2, log) == 1.0 and "--sharpen to choose" \
        in log.getvalue()
    log = io.StringIO()
    assert choose_sharpen(None, [("b.pt", plain)], 2, log) == 1.0 and log.getvalue() == ""
    for bad in (0.1, 4.5, float("nan"), float("inf"), True, np.bool_(True), "1.1",
                np.array([1.1])):
        with pytest.raises(ConfigError, match="--sharpen .* is not a number from 0.25 to 4"):
            choose_sharpen(bad, [], 2, None)
    for long in ("x" * 100_000, 10 ** 5000):           # a long value is shown shortened
        with pytest.raises(ConfigError) as err:           # (an int past repr's 4,300 digits too)
            choose_sharpen(long, [], 2, None)
        assert len(str(err.value)) < 100


def test_a_sharpened_ensemble_raises_its_average_to_the_power(ckpts: dict[str, Path]) -> None:
    block = _block("student")
    plain = load_model([ckpts["a"], ckpts["b"]], device="cpu", precision="fp32")
    sharp = load_model([ckpts["a"], ckpts["b"]], device="cpu", precision="fp32", sharpen=1.5)
    assert plain.sharpen == 1.0 and sharp.sharpen == 1.5
    assert "linear^1.5 of" in sharp.describe() and "^" not in plain.describe()
    odd = load_model([ckpts["a"], ckpts["b"]], device="cpu", precision="fp32", sharpen=1.0000001)
    assert "linear^1.0000001 of" in odd.describe()          # never rounded to look like 1
    p, p_std = predict_block(plain, block, uncertainty=True)[:2]
    s, s_std = predict_block(sharp, block, uncertainty=True)[:2]
    # base peak 1 both ways, so the power of the normalised average is the sharpened spectrum
    np.testing.assert_allclose(s, p ** 1.5, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s_std, 1.5 * np.sqrt(p) * p_std, rtol=1e-4, atol=1e-7)
    # a file keeps it (only when it is not 1) and predicts as the models given with it
    out = ckpts["dir"] / "sharp.pt"
    info = write_ensemble([ckpts["a"], ckpts["b"]], out, weights="fp32", sharpen=1.5)
    assert info["sharpen"] == 1.5 and load_checkpoint(out, ensemble=True)["sharpen"] == 1.5
    from_file = load_model(out, device="cpu", precision="fp32")
    assert from_file.sharpen == 1.5
    np.testing.assert_array_equal(predict_block(from_file, block)[0], s)
    flat = ckpts["dir"] / "flat.pt"
    write_ensemble([out], flat, weights="fp32", sharpen=1.0)      # asked for: as averaged
    assert "sharpen" not in load_checkpoint(flat, ensemble=True)
    np.testing.assert_array_equal(predict_block(load_model(flat, device="cpu",
                                                           precision="fp32"), block)[0], p)
    again = ckpts["dir"] / "again.pt"           # re-bundled without --sharpen: the file's own
    assert write_ensemble([out], again, weights="fp32")["sharpen"] == 1.5


def test_a_damaged_sharpen_is_refused(ckpts: dict[str, Path], tmp_path: Path) -> None:
    members = [slim_member(load_checkpoint(ckpts["a"]), label="a.pt", sha256="0" * 64)]
    with pytest.raises(CheckpointError, match="sharpen 9.0 is not a number"):
        build_ensemble(members, average="linear", sharpen=9.0)
    assert "sharpen" not in build_ensemble(members, average="linear")
    for bad in ("1.1", None, True, float("nan"), 0.0, 100):
        ens = build_ensemble(members, average="linear")
        ens["sharpen"] = bad
        path = tmp_path / "bad.pt"
        torch.save(ens, path)
        with pytest.raises(CheckpointError, match="damaged ensemble file: 'sharpen'"):
            load_model(path, device="cpu")


def test_int8_storage_quarter_size_rounding_within_half_a_step(ckpts: dict[str, Path]) -> None:
    """``--int8``: weight matrices as int8 codes with per-row scales (format /2), the rest
    float16; each weight within half a step of its float32 value; the members predict what
    their float32 weights predict to within that rounding; re-quantizing changes nothing."""
    out32, out8 = ckpts["dir"] / "ab32.pt", ckpts["dir"] / "ab8.pt"
    write_ensemble([ckpts["a"], ckpts["t"]], out32, average="linear", weights="fp32")
    write_ensemble([ckpts["a"], ckpts["t"]], out8, average="linear", weights="int8")
    assert out8.stat().st_size < 0.35 * out32.stat().st_size
    raw32, raw8 = (load_checkpoint(p, ensemble=True) for p in (out32, out8))
    assert raw8["format"] == ENSEMBLE_FORMAT_INT8 and raw32["format"] == ENSEMBLE_FORMAT
    for m32, m8 in zip(raw32["members"], raw8["members"]):
        scales = m8["quantized"]
        assert scales and all(m8["model"][k].dtype == torch.int8 for k in scales)
        assert all(v.dtype == torch.float16 for k, v in m8["model"].items()
                   if k not in scales and v.is_floating_point())
        want, got = model_state(m32), model_state(m8)
        for k in scales:
            step = scales[k].reshape(-1, *([1] * (want[k].dim() - 1)))
            assert bool(((got[k] - want[k]).abs() <= step / 2 + 1e-7).all()), k
        again, again_scales = quantize_int8(got)
        assert all(torch.equal(again[k], m8["model"][k]) for k in scales)
    for mode, member in (("student", ckpts["a"]), ("teacher", ckpts["t"])):
        block = _block(mode)
        full = predict_block(load_model(member, device="cpu", precision="fp32"), block, mc_samples=0)[0]
        one = ckpts["dir"] / f"{mode}8.pt"
        write_ensemble([member], one, weights="int8")
        small = predict_block(load_model(one, device="cpu", precision="fp32"), block, mc_samples=0)[0]
        cos = (full * small).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(small, axis=1)
        assert cos.min() > 0.999, (mode, cos)
    # a training run's checkpoint is labelled with its run's directory
    run = ckpts["dir"] / "run_s7" / "checkpoints"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(ckpts["a"].read_bytes())
    write_ensemble([run / "best.pt", ckpts["t"]], ckpts["dir"] / "lab.pt")
    assert [m["label"] for m in load_checkpoint(ckpts["dir"] / "lab.pt", ensemble=True)["members"]] \
        == ["run_s7/best.pt", "t.pt"]
    # an ensemble of the int8 file keeps its codes (fp16 of it: the dequantized weights)
    write_ensemble([out8], ckpts["dir"] / "ab8b.pt", weights="int8")
    re8 = load_checkpoint(ckpts["dir"] / "ab8b.pt", ensemble=True)
    for m, n in zip(raw8["members"], re8["members"]):
        assert all(torch.equal(m["model"][k], n["model"][k]) for k in m["quantized"])


def test_damaged_int8_members_are_refused(ckpts: dict[str, Path]) -> None:
    member = slim_member(load_checkpoint(ckpts["a"]), label="a", sha256="0" * 64, weights="int8")
    name = next(iter(member["quantized"]))
    d = ckpts["dir"]

    def save(tag: str, change, fmt: str = ENSEMBLE_FORMAT_INT8) -> Path:
        m = {**member, "model": dict(member["model"]), "quantized": dict(member["quantized"])}
        change(m)
        path = d / f"bad8_{tag}.pt"
        torch.save({"format": fmt, "average": "linear", "members": [m]}, path)
        return path

    cases = [
        ("noscale", lambda m: m["quantized"].pop(name), "is int8 without its scales"),
        ("shape", lambda m: m["quantized"].update({name: m["quantized"][name][:-1]}),
         "int8 scales of .* are not"),
        ("nan", lambda m: m["quantized"].update({name: m["quantized"][name] * float("nan")}),
         "int8 scales of .* are not"),
        ("neg", lambda m: m["quantized"].update({name: -m["quantized"][name]}),
         "int8 scales of .* are not"),
        ("zero", lambda m: m["quantized"].update({name: m["quantized"][name] * 0}),
         "int8 scales of .* are not"),
        # finite, but inf once widened: every molecule was a non_finite_prediction reject
        ("huge", lambda m: m["quantized"].update({name: torch.full_like(m["quantized"][name], 1e38)}),
         "int8 scales of .* are not .* finite in float32"),
        ("huge64", lambda m: m["quantized"].update({name: m["quantized"][name].double() * 1e300}),
         "int8 scales of .* are not .* finite in float32"),
        ("meta", lambda m: m["quantized"].update({name: torch.empty(len(m["quantized"][name]),
                                                                    device="meta")}),
         "the int8 scales of .* is a meta tensor"),
        ("sparse", lambda m: m["quantized"].update({name: m["quantized"][name].to_sparse()}),
         "is a torch.sparse_coo tensor"),
        ("metaw", lambda m: m["model"].update({name: torch.empty(m["model"][name].shape,
                                                                 dtype=torch.int8, device="meta")}),
         f"model entry '{name}' is a meta tensor"),
        ("int16", lambda m: (m["model"].update({name: m["model"][name].to(torch.int16)}),
                             m["quantized"].pop(name)),
         f"weight '{name}' is torch.int16, expected floating point"),
        ("float", lambda m: m["model"].update({name: m["model"][name].float()}),
         "which is not an int8 weight"),
        ("ghost", lambda m: m["quantized"].update({"nothing": torch.ones(3)}),
         "which is not an int8 weight"),
    ]
    for tag, change, msg in cases:
        with pytest.raises(CheckpointError, match=f"(member 1|#1): damaged checkpoint: .*{msg}"):
            load_model(save(tag, change), device="cpu")
    with pytest.raises(CheckpointError, match="int8 weights in a neimsctl.ensemble/1 file"):
        load_model(save("v1", lambda m: None, ENSEMBLE_FORMAT), device="cpu")
    # the writers refuse too: an ensemble of a damaged file, int8 of non-finite weights
    with pytest.raises(CheckpointError, match="finite in float32"):
        write_ensemble([save("huge_w", cases[4][1])], d / "never.pt", weights="int8")
    assert not (d / "never.pt").exists()
    with pytest.raises(CheckpointError, match="not finite in float32: not stored"):
        quantize_int8({"w": torch.full((64, 64), 1e300, dtype=torch.float64)})
    many = d / "many.pt"
    torch.save({"format": ENSEMBLE_FORMAT_INT8, "average": "linear", "members": [member] * 65}, many)
    with pytest.raises(CheckpointError, match="65 members"):
        load_model(many, device="cpu")


def test_int8_weights_reach_training_dequantized(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """finetune --init, restore() and tools/export_model.py read int8-stored weights as their
    values, not as their codes."""
    from neimsctl.models.checkpoint import restore
    from neimsctl.train.finetune import build_teacher, load_init

    member = slim_member(load_checkpoint(ckpts["t"]), label="t", sha256="0" * 64, weights="int8")
    plain = {k: v for k, v in member.items() if k not in ("label", "sha256")}
    path = tmp_path / "t8.pt"
    torch.save(plain, path)
    want = model_state(plain)
    model = build_teacher(TEACHER)
    load_init(model, path, featurizer_hash=None)
    got = model.state_dict()
    k = next(iter(plain["quantized"]))
    assert torch.allclose(got[k], want[k]) and float(got[k].abs().max()) < 10
    fresh = build_teacher(TEACHER)
    restore(load_checkpoint(path), model=fresh, rng=False)
    assert torch.allclose(fresh.state_dict()[k], want[k])
    import subprocess
    import sys

    out = tmp_path / "exp" / "t.pt"
    tool = Path(__file__).resolve().parents[3] / "tools" / "export_model.py"
    proc = subprocess.run([sys.executable, str(tool), str(path), str(out)], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    exported = load_checkpoint(out)
    assert exported["model"][k].dtype == torch.float16 and "quantized" not in exported
    assert torch.allclose(exported["model"][k].float(), want[k], atol=1e-3)


def test_teacher_runs_at_int8_precision(ckpts: dict[str, Path]) -> None:
    """--precision int8 quantizes the teacher's Linear layers (its atom encoder's weight becomes
    a method: the graph inputs took their dtype from it, an AttributeError)."""
    block = _block("teacher")
    full = predict_block(load_model(ckpts["t"], device="cpu", precision="fp32"), block)[0]
    small = predict_block(load_model(ckpts["t"], device="cpu", precision="int8"), block)[0]
    cos = (full * small).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(small, axis=1)
    assert np.isfinite(small).all() and cos.min() > 0.95


def test_an_interrupt_while_saving_is_an_interrupt(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C inside torch's zip writer surfaces as a RuntimeError whose context is the
    KeyboardInterrupt: it must stay an interrupt (exit 130), with no temporary file left."""
    import neimsctl.models.checkpoint as ck

    def interrupted(obj, fh):
        fh.write(b"PK\x03\x04partial")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")

    monkeypatch.setattr(ck.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path / "x.pt", {"format": ck.FORMAT, "model": {}})
    assert list(tmp_path.iterdir()) == []


def test_a_stale_model_card_is_ignored(ckpts: dict[str, Path], tmp_path: Path, capsys) -> None:
    """A card beside other weights (the .pt replaced) would give the old sha256 and precision."""
    import json

    path = tmp_path / "m.pt"
    path.write_bytes(ckpts["a"].read_bytes())
    (tmp_path / "m.json").write_text(json.dumps({"sha256": "f" * 64, "file_bytes": 12,
                                                 "precision": "int8"}))
    m = load_model(path, device="cpu")
    assert m.sha != "f" * 12 and m.precision != "int8"
    assert "m.json describes a file of 12 bytes" in capsys.readouterr().err


def test_a_single_checkpoint_refuses_an_ensemble_file_where_one_model_is_needed(
        ckpts: dict[str, Path]) -> None:
    out = ckpts["dir"] / "refuse.pt"
    write_ensemble([ckpts["a"], ckpts["b"]], out)
    with pytest.raises(CheckpointError, match="an ensemble of 2 models where one checkpoint"):
        load_checkpoint(out)


def _damaged(path: Path, members: list, average: str = "sqrt") -> Path:
    torch.save({"format": ENSEMBLE_FORMAT, "average": average, "members": members}, path)
    return path


def test_damaged_ensemble_files_are_refused_naming_the_member(ckpts: dict[str, Path]) -> None:
    good = slim_member(load_checkpoint(ckpts["a"]), label="a", sha256="0" * 64)
    bad = slim_member(load_checkpoint(ckpts["b"]), label="b", sha256="1" * 64)
    bad["model"] = dict(bad["model"])
    key = next(iter(bad["model"]))
    bad["model"][key] = torch.full_like(bad["model"][key], float("nan"))
    d = ckpts["dir"]
    with pytest.raises(CheckpointError, match=r"member 2: refused: weight .* non-finite"):
        load_model(_damaged(d / "nan.pt", [good, bad]), device="cpu")
    with pytest.raises(CheckpointError, match="'members' is not a non-empty list"):
        load_model(_damaged(d / "empty.pt", []), device="cpu")
    with pytest.raises(CheckpointError, match="'average' is 'mean'"):
        load_model(_damaged(d / "avg.pt", [good], "mean"), device="cpu")
    with pytest.raises(CheckpointError, match="member 1: not a neimsctl.ckpt/1"):
        load_model(_damaged(d / "fmt.pt", [{"model": {}}]), device="cpu")
    with pytest.raises(CheckpointError, match="at least one member"):
        build_ensemble([], average="sqrt")
    with pytest.raises(ConfigError, match="--average 'mean'"):
        load_model([ckpts["a"], ckpts["b"]], device="cpu", average="mean")


def test_mixed_members_share_one_featurization(ckpts: dict[str, Path]) -> None:
    """A student, a GNN teacher and a Morgan-count NEIMS v1 model: one teacher block with the
    Morgan counts added; each member predicts what it predicts alone."""
    ens = load_model([ckpts["a"], ckpts["t"], ckpts["v1"]], device="cpu", precision="fp32",
                     average="linear")
    assert ens.mode == "teacher" and ens.extra_v1
    block = _block("teacher", extra_v1=True)
    np.testing.assert_array_equal(block["morgan_counts"], _block("v1")["morgan_counts"])
    alone = []
    for key, mode in (("a", "student"), ("t", "teacher"), ("v1", "v1")):
        m = load_model(ckpts[key], device="cpu", precision="fp32")
        alone.append(predict_block(m, _block(mode))[0])
    want = np.mean(alone, axis=0)
    want /= want.max(axis=1, keepdims=True)
    np.testing.assert_allclose(predict_block(ens, block)[0], want, rtol=1e-5, atol=1e-6)
    # --uncertainty: the members' spread (the teacher's spectrum is its MC mean) + the
    # teacher's MC-dropout variance / 3, on the averaged spectrum's scale
    torch.manual_seed(0)
    got, std = predict_block(ens, block, uncertainty=True, mc_samples=4)[:2]
    torch.manual_seed(0)
    teacher = load_model(ckpts["t"], device="cpu", precision="fp32")
    t_mean, t_std = predict_block(teacher, _block("teacher"), uncertainty=True, mc_samples=4)[:2]
    members = np.stack([alone[0], t_mean, alone[2]]).astype(np.float64)
    scale = 1 / members.mean(axis=0).max(axis=1, keepdims=True)
    np.testing.assert_allclose(got, members.mean(axis=0) * scale, rtol=1e-5, atol=1e-6)
    want_std = np.sqrt(members.var(axis=0, ddof=1) + np.square(t_std) / 3) * scale
    np.testing.assert_allclose(std, want_std, rtol=1e-4, atol=1e-6)
    assert (std > members.std(axis=0, ddof=1) * scale).any()


def test_uncertainty_needs_a_teacher_or_two_members(ckpts: dict[str, Path]) -> None:
    one = load_model(ckpts["a"], device="cpu")
    with pytest.raises(ConfigError, match="member disagreement"):
        predict_block(one, _block("student"), uncertainty=True)
    solo = ckpts["dir"] / "solo.pt"
    write_ensemble([ckpts["a"]], solo)
    assert not load_model(solo, device="cpu").supports_uncertainty
    assert load_model([ckpts["a"], ckpts["a"]], device="cpu").supports_uncertainty


def test_softlabel_takes_an_ensemble_file_as_its_members(ckpts: dict[str, Path],
                                                         tmp_path: Path) -> None:
    from neimsctl.data.membench import build_sample_shard
    from neimsctl.io.softlabel_shard import SoftLabelReader
    from neimsctl.train import softlabel as sl

    shard = build_sample_shard(tmp_path / "teacher.h5", mode="teacher", limit=12)
    ens = tmp_path / "st.pt"
    write_ensemble([ckpts["a"], ckpts["t"]], ens, weights="fp32")   # student first: reordered
    sources = sl.teacher_sources([ens])
    assert [w for w, _, _ in sources] == [f"{ens}#2", f"{ens}#1"]
    settings = sl.SoftLabelSettings(samples=2, batch_size=8)
    sl.run_softlabel([ens], [shard], tmp_path / "e.h5", settings=settings, device="cpu")
    sl.run_softlabel([ckpts["t"], ckpts["a"]], [shard], tmp_path / "p.h5", settings=settings,
                     device="cpu")
    with SoftLabelReader(tmp_path / "e.h5") as r1, SoftLabelReader(tmp_path / "p.h5") as r2:
        a, b = r1.take(np.arange(len(r1))), r2.take(np.arange(len(r2)))
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["var"], b["var"], rtol=1e-4, atol=1e-7)


def test_ensemble_writing_refuses_what_would_not_predict_and_keeps_provenance(
        ckpts: dict[str, Path]) -> None:
    import hashlib

    d = ckpts["dir"]
    cfg = StudentConfig(**{**TINY.to_dict(), "n_bins": 300})
    torch.manual_seed(3)
    b300 = save_checkpoint(d / "b300.pt", model=StudentModel(cfg),
                           config={"model": {"name": "student", **cfg.to_dict()}})
    with pytest.raises(CheckpointError, match="same bins: .*a.pt: 501, .*b300.pt: 300"):
        write_ensemble([ckpts["a"], b300], d / "never.pt")
    assert not (d / "never.pt").exists()
    # the members' full sha256; a lone ensemble file re-bundled keeps its averaging space
    lin = d / "lin.pt"
    write_ensemble([ckpts["a"], ckpts["b"]], lin, average="linear")
    raw = load_checkpoint(lin, ensemble=True)
    assert raw["members"][0]["sha256"] == hashlib.sha256(ckpts["a"].read_bytes()).hexdigest()
    again = d / "again.pt"
    sq = d / "sq.pt"
    write_ensemble([ckpts["a"], ckpts["b"]], sq, average="sqrt")
    write_ensemble([sq], again)
    assert load_checkpoint(again, ensemble=True)["average"] == "sqrt"
    write_ensemble([sq, ckpts["a"]], again)      # not only ensemble files: the default
    assert load_checkpoint(again, ensemble=True)["average"] == "linear"


def test_damaged_configs_and_future_formats_are_named(ckpts: dict[str, Path]) -> None:
    d = ckpts["dir"]
    good = load_checkpoint(ckpts["a"])
    for data, match in (("oops", r"config.data is a str"), ({"split_seed": "x"}, "split_seed"),
                        ({"fold": "7/3"}, r"data.fold '7/3'")):
        bad = {**good, "config": {**good["config"], "data": data}}
        torch.save(bad, d / "bad.pt")
        with pytest.raises(CheckpointError, match=match):
            write_ensemble([d / "bad.pt"], d / "never.pt")
    torch.save({"format": "neimsctl.ensemble/9", "members": []}, d / "v2.pt")
    with pytest.raises(CheckpointError, match="'neimsctl.ensemble/9' is not supported"):
        load_model(d / "v2.pt", device="cpu")
    odd = {**good, "config": {"model": {**good["config"]["model"], "name": "gpt"}}}
    torch.save(odd, d / "gpt.pt")
    with pytest.raises(CheckpointError, match=r"gpt.pt: config.model.name: .*gpt"):
        load_model(d / "gpt.pt", device="cpu")


def test_members_keep_the_split_and_fold_they_were_trained_on(ckpts: dict[str, Path]) -> None:
    """softlabel labels out of fold from an ensemble file: the members' folds travel with them."""
    from neimsctl.train.softlabel import member_fold

    d = ckpts["dir"]
    raw = load_checkpoint(ckpts["a"])
    folded = {**raw, "config": {**raw["config"], "data": {"fold": "2/3", "split": [0.7, 0.2, 0.1],
                                                          "split_seed": 7, "lazy": True}}}
    torch.save(folded, d / "fold2.pt")
    write_ensemble([d / "fold2.pt", ckpts["b"]], d / "folds.pt")
    members = load_checkpoint(d / "folds.pt", ensemble=True)["members"]
    assert members[0]["config"]["data"] == {"fold": "2/3", "split": [0.7, 0.2, 0.1], "split_seed": 7}
    assert member_fold(members[0]) == ((2, 3), (0.7, 0.2, 0.1), 7)
    assert member_fold(members[1])[0] is None


def test_include_entries_are_checked_before_any_file_is_read(ckpts: dict[str, Path],
                                                             tmp_path: Path) -> None:
    """An include names a plain file beside the ensemble with its full sha256, only in a /3
    file; anything else is refused as a damaged file (never a path that leaves the directory)."""
    import hashlib

    from neimsctl.models.checkpoint import ENSEMBLE_FORMAT_INCLUDE

    member = slim_member(load_checkpoint(ckpts["a"]), label="a", sha256="0" * 64)
    inner = tmp_path / "inner.pt"
    inner.write_bytes(ckpts["b"].read_bytes())
    sha = hashlib.sha256(inner.read_bytes()).hexdigest()
    good = build_ensemble([member], average="linear", include=[{"file": "inner.pt", "sha256": sha}])
    assert good["format"] == ENSEMBLE_FORMAT_INCLUDE
    path = tmp_path / "outer.pt"
    torch.save(good, path)
    loaded = load_checkpoint(path, ensemble=True)
    assert [m["label"] for m in loaded["members"]] == ["a", "inner.pt"]
    assert loaded["members"][1]["sha256"] == sha
    bad = {"../inner.pt": sha, "sub/inner.pt": sha, "..": sha, "inner.pt": sha[:12],
           "inner.pt ": "G" * 64}
    for name, digest in bad.items():
        torch.save({**good, "include": [{"file": name, "sha256": digest}]}, path)
        with pytest.raises(CheckpointError, match="not a plain file name"):
            load_checkpoint(path, ensemble=True)
    torch.save({**good, "format": ENSEMBLE_FORMAT_INT8}, path)
    with pytest.raises(CheckpointError, match="'include' in a neimsctl.ensemble/2 file"):
        load_checkpoint(path, ensemble=True)
    torch.save({**good, "members": [member] * 64}, path)       # 64 of its own + 1 included
    with pytest.raises(CheckpointError, match="members with its includes"):
        load_checkpoint(path, ensemble=True)


def test_an_included_file_is_not_followed_further(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """A include chain is refused at its first step, naming the file the user loaded (not
    followed file after file); a file listing one include twice is damaged; loading an
    including file where one checkpoint is needed does not read its includes."""
    import hashlib

    member = slim_member(load_checkpoint(ckpts["a"]), label="a", sha256="0" * 64)

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    last = tmp_path / "c0.pt"
    last.write_bytes(ckpts["b"].read_bytes())
    for i in range(1, 4):           # c3 includes c2 includes c1 includes c0
        nxt = tmp_path / f"c{i}.pt"
        torch.save(build_ensemble([member], average="linear",
                                  include=[{"file": last.name, "sha256": sha(last)}]), nxt)
        last = nxt
    with pytest.raises(CheckpointError, match=r"c3.pt: include 'c2.pt': includes files itself"):
        load_checkpoint(last, ensemble=True)
    twice = tmp_path / "twice.pt"
    torch.save(build_ensemble([member], average="linear",
                              include=[{"file": "c0.pt", "sha256": sha(tmp_path / "c0.pt")}] * 2), twice)
    with pytest.raises(CheckpointError, match="names 'c0.pt' again"):
        load_checkpoint(twice, ensemble=True)
    gone = tmp_path / "gone.pt"
    torch.save(build_ensemble([member], average="linear",
                              include=[{"file": "nothere.pt", "sha256": "0" * 64}]), gone)
    with pytest.raises(CheckpointError, match="an ensemble of at least 2 models where one"):
        load_checkpoint(gone)


#: Stackable students (widths where a batched product sums like nn.Linear; see
#: tests/unit/models/test_student_stack.py), with the fragment path of the shipped ones.
STACKABLE = StudentConfig(gate_hidden=(64, 128), expert_depth=2, expert_bottleneck=32,
                          head_hidden=(128,), hidden_dim=128, expert_width=128, fragments=True,
                          mass_aware=True, fragment_channels=4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_molecule_runs_the_students_stacked_with_the_same_spectra(tmp_path: Path,
                                                                      precision: str,
                                                                      monkeypatch) -> None:
    """A one-molecule block (the API's latency path) runs same-config students as one
    StudentStack: the spectra and spreads of the members run one by one (fp32: bit for bit;
    bf16: up to the last bits of a few values, see neimsctl.models.student_stack)."""
    import pickle

    from neimsctl.models.student_stack import StudentStack

    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = StudentModel(STACKABLE)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        paths.append(save_checkpoint(tmp_path / f"s{seed}.pt", model=model.eval(),
                                     config={"model": {"name": "student", **STACKABLE.to_dict()}},
                                     featurizer_hash=run_settings(RowOptions(mode="student",
                                                                             fragments=True))[1]))
    items = [Item(i, "<t>", i + 1, "smi", s.encode()) for i, s in enumerate(SMILES)]
    block, _ = Featurizer("student", fragments=True)(items)
    ones = [{k: v[i:i + 1] for k, v in block.items()} for i in range(len(SMILES))]

    with monkeypatch.context() as m:                     # the members one by one
        m.setattr(StudentStack, "build", classmethod(lambda cls, members: None))
        plain = load_model(paths, device="cpu", precision=precision)
        want = [predict_block(plain, one, uncertainty=True)[:2] for one in ones]
        assert plain._stack_cache[1] == []
    ens = load_model(paths, device="cpu", precision=precision)
    predict_block(ens, block)
    assert ens._stack_cache is None                      # a batch builds no stack
    for one, (spec, std) in zip(ones, want):
        got, got_std, _ = predict_block(ens, one, uncertainty=True)
        if precision == "fp32":
            np.testing.assert_array_equal(got, spec)
            np.testing.assert_array_equal(got_std, std)
        else:
            np.testing.assert_allclose(got, spec, rtol=2 ** -6, atol=2 ** -9)
            np.testing.assert_allclose(got_std, std, rtol=2 ** -5, atol=2 ** -9)
    assert [group for group, _ in ens._stack_cache[1]] == [[0, 1, 2]]
    stacks = ens._stack_cache[1]
    predict_block(ens, ones[0])
    assert ens._stack_cache[1] is stacks                 # reused while nothing changed
    ens.members[0].model.train()
    predict_block(ens, ones[0])                          # a member in train mode: not stacked
    assert [group for group, _ in ens._stack_cache[1]] == []
    ens.members[0].model.eval()
    predict_block(ens, ones[0])                          # back in eval mode: stacked again
    assert [group for group, _ in ens._stack_cache[1]] == [[0, 1, 2]]
    assert pickle.loads(pickle.dumps(ens))._stack_cache is None   # stacks are not pickled


def test_a_file_given_and_included_beside_it_is_named_in_a_warning(ckpts: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    """``-m teacher -m student`` (the shipped teacher includes the student): the student's
    members would count twice; loading says so on the log, once, naming the file."""
    import io
    import shutil

    inner = tmp_path / "inner.pt"
    shutil.copy(ckpts["b"], inner)
    outer = tmp_path / "outer.pt"
    write_ensemble([ckpts["a"]], outer, include=[inner])
    for specs, times in (([outer, inner], 2), ([outer, outer.parent / "." / "inner.pt", outer], 3)):
        log = io.StringIO()
        load_model(specs, device="cpu", precision="fp32", log=log)
        lines = [ln for ln in log.getvalue().splitlines() if "count" in ln]
        assert len(lines) == 1 and f"the members of inner.pt count {times} times" in lines[0]
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(inner, copy / "elsewhere.pt")          # the same bytes under another name
    log = io.StringIO()
    load_model([outer, copy / "elsewhere.pt"], device="cpu", precision="fp32", log=log)
    assert "the members of inner.pt count 2 times" in log.getvalue()
    log = io.StringIO()
    load_model([outer, ckpts["a"]], device="cpu", precision="fp32", log=log)
    # a given once and included by none, but outer holds a as its own member: said so
    assert "the members of" not in log.getvalue() and "share their weights" in log.getvalue()


def test_a_bad_member_of_an_included_file_is_named_after_that_file(ckpts: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """A member taken over from an included file whose weights do not fit its configuration is
    named as ``inner.pt#k`` (where it is), not as a position in the including file."""
    import hashlib

    good = slim_member(load_checkpoint(ckpts["a"]), label="a", sha256="0" * 64)
    misfit = slim_member(load_checkpoint(ckpts["b"]), label="b", sha256="1" * 64)
    misfit["config"] = {"model": {**misfit["config"]["model"], "hidden_dim": 24}}
    inner = tmp_path / "inner.pt"
    torch.save(build_ensemble([good, misfit], average="linear"), inner)
    sha = hashlib.sha256(inner.read_bytes()).hexdigest()
    outer = tmp_path / "outer.pt"
    torch.save(build_ensemble([good], average="linear",
                              include=[{"file": "inner.pt", "sha256": sha}]), outer)
    with pytest.raises(CheckpointError) as err:
        load_model(outer, device="cpu", precision="fp32")
    assert f"{inner}#2" in str(err.value) and "outer.pt#" not in str(err.value)
    members = load_checkpoint(outer, ensemble=True)["members"]
    assert [m.get("_source") for m in members] == [None, f"{inner}#1", f"{inner}#2"]
    # what an ensemble file written from them keeps: the member fields, not the source
    assert "_source" not in slim_member(members[1], label="x", sha256="2" * 64)


def test_members_that_share_their_weights_are_warned(ckpts: dict[str, Path]) -> None:
    """-m A -m AB.pt (an ensemble file holding A) counts A twice: one warning naming the
    weights and the files (it was silent; only a file given twice, or an include, was said).
    A file given twice is the CLI's warning, not repeated here; distinct members say nothing."""
    import io

    from neimsctl.predict.model import file_sha

    ab = ckpts["dir"] / "ab-shared.pt"
    write_ensemble([ckpts["a"], ckpts["b"]], ab, average="linear", weights="fp32")
    for models, said in (([ab, ckpts["a"]], True), ([ckpts["a"], ckpts["a"]], False),
                         ([ckpts["a"], ckpts["b"]], False), ([ab], False)):
        log = io.StringIO()
        load_model(models, device="cpu", precision="fp32", log=log)
        text = log.getvalue()
        assert ("share their weights" in text) == said, (models, text)
        if said:
            assert f"sha256: {file_sha(ckpts['a'])} x2; from {ab}, {ckpts['a']}" in text
