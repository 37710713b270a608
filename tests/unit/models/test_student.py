"""Tests for neimsctl.models.student: config, shapes, routing, parameter counts, real molecules."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from _student_fixtures import _one_thread  # noqa: F401  (autouse: one torch thread)

from neimsctl.errors import ConfigError
from neimsctl.models import registry
from neimsctl.models.student import (StudentConfig, StudentModel, StudentOutput, spectrum_from_space,
                                     spectrum_to_space)


TINY = StudentConfig(input_dim=32, gate_hidden=(16, 8), expert_depth=2, expert_bottleneck=4,
                     head_hidden=(24, 20), hidden_dim=12, n_bins=30, dropout=0.0)


def expected_params(c: StudentConfig) -> int:
    """Parameter count from the architecture description (Linear = in*out + out, LayerNorm = 2*d)."""
    lin = lambda a, b: a * b + b  # noqa: E731
    d = c.input_dim
    widths = (d, *c.gate_hidden)
    gate = sum(lin(a, b) for a, b in zip(widths[:-1], widths[1:]))
    gate += 2 * lin(widths[-1], c.n_experts) if c.gate_noise else lin(widths[-1], c.n_experts)
    block = 2 * d + lin(d, c.expert_bottleneck) + lin(c.expert_bottleneck, d)
    head_w = (d, *c.head_hidden, c.hidden_dim)
    head = 2 * d + sum(lin(a, b) for a, b in zip(head_w[:-1], head_w[1:])) + lin(c.hidden_dim, c.n_bins)
    return gate + c.n_experts * c.expert_depth * block + head


def test_default_config_is_the_spec_and_has_about_50m_parameters() -> None:
    c = StudentConfig()
    assert (c.input_dim, c.gate_hidden, c.n_experts, c.top_k, c.expert_depth) == (6144, (512, 128), 4, 2, 6)
    assert (c.head_hidden, c.hidden_dim, c.n_bins) == ((2048, 1024), 512, 501)
    m = StudentModel()
    assert m.n_parameters() == expected_params(c) == 48_626_141


def test_tiny_config_parameter_count_matches_the_formula() -> None:
    assert StudentModel(TINY).n_parameters() == expected_params(TINY)
    no_noise = StudentConfig(**{**TINY.to_dict(), "gate_noise": False,
                                "gate_hidden": (16, 8), "head_hidden": (24, 20)})
    assert StudentModel(no_noise).n_parameters() == expected_params(no_noise)


def test_forward_contract_shapes_routing_and_non_negative_output() -> None:
    torch.manual_seed(0)
    m = StudentModel(TINY).eval()
    out = m(torch.rand(7, 32))
    assert isinstance(out, StudentOutput)
    assert out.pred.shape == (7, 30) and out.hidden.shape == (7, 12)
    assert out.gate_probs.shape == (7, 4) and out.gate_logits.shape == (7, 4)
    assert out.topk_idx.shape == (7, 2) and out.topk_idx.dtype == torch.long
    assert (out.topk_idx[:, 0] != out.topk_idx[:, 1]).all()
    assert torch.allclose(out.topk_weight.sum(1), torch.ones(7))
    assert (out.pred >= 0).all()
    with pytest.raises(ValueError, match="featurize with --mode student"):
        m(torch.rand(7, 31))


def test_sparse_rows_input_gives_the_same_bits_as_the_dense_input() -> None:
    from neimsctl.nn.sparse_input import SparseRows

    torch.manual_seed(3)
    x = (torch.rand(9, 32) < 0.2).float() * torch.rand(9, 32)
    x[4] = 0.0
    nz = x.nonzero()
    offsets = torch.cat([torch.zeros(1, dtype=torch.long),
                         torch.bincount(nz[:, 0], minlength=9).cumsum(0)])
    sx = SparseRows(offsets, nz[:, 1], x[nz[:, 0], nz[:, 1]], 32)
    narrow = StudentConfig(**{**TINY.to_dict(), "expert_width": 16})
    for cfg, reads in ((narrow, True), (TINY, False)):   # TINY: no projection, densified
        m = StudentModel(cfg).eval()
        assert m.reads_sparse() is reads
        with torch.inference_mode():
            for dt in (torch.float32, torch.bfloat16):
                m = m.to(dt)
                a, b = m(x), m(sx)
                assert torch.equal(a.pred, b.pred) and torch.equal(a.topk_idx, b.topk_idx)


def test_fragment_masses_widen_the_input_and_feed_the_head() -> None:
    """``fragments: true`` reads 7146 inputs (the default 6144 widened); ``fragment_channels``
    adds the fragment path to the mass-aware head; sparse and dense inputs agree through it; the
    path changes the prediction only through the fragment columns."""
    from neimsctl.chem.features import student_nonzero, student_vectors
    from neimsctl.chem.fragments import fragment_counts
    from neimsctl.nn.sparse_input import SparseRows
    from rdkit import Chem

    assert StudentConfig(fragments=True).input_dim == 7146
    with pytest.raises(ConfigError, match="7146"):
        StudentConfig(fragments=True, input_dim=100)
    with pytest.raises(ConfigError, match="fragments: true and mass_aware"):
        StudentConfig(fragment_channels=2)
    with pytest.raises(ConfigError, match="odd"):
        StudentConfig(fragments=True, mass_aware=True, fragment_channels=2, fragment_kernel=4)
    cfg = StudentConfig(fragments=True, gate_hidden=(16,), expert_depth=1, expert_bottleneck=4,
                        expert_width=16, head_hidden=(24,), hidden_dim=12, dropout=0.0,
                        mass_aware=True, fragment_channels=3)
    torch.manual_seed(0)
    m = StudentModel(cfg).eval()
    mols = [Chem.MolFromSmiles(s) for s in ("CCCCC(=O)c1ccccc1", "CCO", "c1ccccc1Cl")]
    rng = np.random.default_rng(0)
    ecfp = rng.integers(0, 256, (3, 512), dtype=np.uint8)
    counts = rng.integers(0, 4, (3, 2048), dtype=np.uint8)
    frags = np.stack([fragment_counts(x) for x in mols])
    mw = torch.tensor([162, 46, 112])
    dense = torch.from_numpy(student_vectors(ecfp, counts, frags))
    sparse = SparseRows(*map(torch.from_numpy, student_nonzero(ecfp, counts, frags)), 7146)
    assert dense.shape == (3, 7146) and m.reads_sparse()
    with torch.inference_mode():
        a, b = m(dense, mw), m(sparse, mw)
        assert torch.equal(a.pred, b.pred)
        given = m(sparse, mw, dense[:, 6144:].reshape(3, 2, 501))     # predict hands them dense
        assert torch.equal(a.pred, given.pred)
        torch.nn.init.constant_(m.frag_mix.bias, 1.0)
        moved = m(dense, mw).pred
        assert not torch.equal(moved, a.pred)
        m.frag_conv.weight.zero_()                      # a silent path: as if it were not there
        m.frag_conv.bias.zero_()
        silent = m(dense, mw).pred
        conv, m.frag_conv = m.frag_conv, None
        assert torch.equal(silent, m(dense, mw).pred)
        m.frag_conv = conv


def test_predict_spectrum_is_linear_and_max_normalised() -> None:
    torch.manual_seed(1)
    m = StudentModel(TINY).eval()
    torch.nn.init.constant_(m.out.bias, 0.5)                 # every bin positive
    x = torch.rand(5, 32)
    spec = m.predict_spectrum(x)
    sq = m(x).pred.square()
    assert spec.dtype == torch.float32
    assert torch.allclose(spec, sq / sq.amax(1, keepdim=True), atol=1e-6)
    assert torch.allclose(spec.amax(1), torch.ones(5))
    lin = StudentModel(StudentConfig(**{**TINY.to_dict(), "output_space": "linear",
                                        "gate_hidden": (16, 8), "head_hidden": (24, 20)})).eval()
    p = lin(x).pred
    assert torch.allclose(lin.predict_spectrum(x), p / p.amax(1, keepdim=True).clamp_min(1e-12))


def test_predict_spectrum_is_deterministic_and_restores_train_mode() -> None:
    torch.manual_seed(4)
    m = StudentModel(StudentConfig(**{**TINY.to_dict(), "dropout": 0.3, "gate_hidden": (16, 8),
                                      "head_hidden": (24, 20)}))
    torch.nn.init.constant_(m.gate.noise.bias, 2.0)            # strong gate noise in training
    torch.nn.init.constant_(m.out.bias, 0.5)
    x = torch.rand(6, 32)
    m.train()
    a, b = m.predict_spectrum(x), m.predict_spectrum(x)
    assert m.training and torch.equal(a, b)
    p = m.eval()(x).pred
    assert torch.allclose(m.from_linear(m.to_linear(p)), p, atol=1e-6)
    load = m.update_expert_bias(m.eval()(x).topk_idx, rate=0.1)
    assert torch.isclose(load.sum(), torch.tensor(1.0)) and m.gate.expert_bias.abs().sum() > 0


def test_space_round_trip() -> None:
    y = torch.tensor([[0.0, 0.25, 1.0]])
    for space in ("linear", "sqrt"):
        assert torch.allclose(spectrum_from_space(spectrum_to_space(y, space), space), y)
    with pytest.raises(ValueError, match="unknown spectrum space"):
        spectrum_to_space(y, "log")


def test_config_from_dict_is_strict() -> None:
    c = StudentConfig.from_dict({"expert_bottleneck": 64, "gate_hidden": [256, 64]})
    assert c.gate_hidden == (256, 64) and c.expert_bottleneck == 64
    assert StudentConfig.from_dict(c.to_dict()) == c
    assert StudentConfig.from_dict(None) == StudentConfig()
    with pytest.raises(ConfigError, match="unknown key.*expert_size"):
        StudentConfig.from_dict({"expert_size": 3})
    assert StudentConfig.from_dict({"expert_width": 512, "mass_aware": True}).expert_width == 512
    for bad in ({"top_k": 5}, {"n_experts": 0}, {"dropout": 1.5}, {"output_space": "log"},
                {"gate_hidden": "512"}, {"head_hidden": [0]}, {"expert_depth": True},
                {"expert_width": 0}, {"mass_aware": "yes"}, {"max_above_mw": -1}):
        with pytest.raises(ConfigError):
            StudentConfig.from_dict(bad)


def test_registered_as_student() -> None:
    assert registry.get("student") is StudentModel


def test_bf16_weights_run_and_track_fp32() -> None:
    torch.manual_seed(2)
    m = StudentModel(TINY).eval()
    torch.nn.init.constant_(m.out.bias, 0.3)
    x = torch.rand(4, 32)
    ref = m.predict_spectrum(x)
    got = m.to(torch.bfloat16).predict_spectrum(x)             # fp32 input is cast inside
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=0.05)


def test_shared_parameters_is_the_layer_producing_hidden() -> None:
    m = StudentModel(TINY)
    (w,) = m.shared_parameters()
    assert w.shape == (TINY.hidden_dim, TINY.head_hidden[-1])


def _real_batch(msp: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Student vectors and max-normalised spectra of the first ``n`` records with a SMILES."""
    from rdkit import Chem

    from neimsctl.chem.features import StudentFeaturizer, student_vectors
    from neimsctl.io.spectrum import preprocess_spectrum
    from neimsctl.io.msp import read_msp

    feat, xs, ys = StudentFeaturizer(), [], []
    with open(msp, "rb") as fh:
        for rec in read_msp(io.BufferedReader(fh), file=str(msp)):
            mol = Chem.MolFromSmiles(rec.fields.get("smiles", "") or "")
            if rec.reason or mol is None or not rec.mz:
                continue
            f = feat(mol)
            xs.append(student_vectors(f.ecfp[None], f.counts[None])[0])
            ys.append(preprocess_spectrum(rec.mz, rec.intensity))
            if len(xs) == n:
                break
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def test_real_molecules_from_the_bundled_sample_fit_a_few_steps(sample_msp: Path) -> None:
    from neimsctl.train.losses import DistillLoss, DistillLossConfig

    x, y = _real_batch(sample_msp, 24)
    assert x.shape == (24, 6144) and float(x[:, :4096].max()) == 1.0
    torch.manual_seed(0)
    cfg = StudentConfig(gate_hidden=(32, 16), expert_depth=2, expert_bottleneck=8,
                        head_hidden=(64, 64), hidden_dim=32, dropout=0.0)
    m = StudentModel(cfg)
    loss = DistillLoss(DistillLossConfig(epochs=5), space=cfg.output_space)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = last = None
    for _ in range(30):
        res = loss(m(x), y)                        # hard labels only: training without KD
        opt.zero_grad()
        res["total"].backward()
        opt.step()
        first = float(res["hard"].detach()) if first is None else first
        last = float(res["hard"].detach())
    assert last < 0.6 * first, (first, last)
    spec = m.eval().predict_spectrum(x)
    assert spec.shape == (24, 501) and torch.isfinite(spec).all()


@pytest.mark.shared
def test_default_student_on_real_massbank_molecules(shared_data: Path) -> None:
    """Spec-size model on 48 real MassBank EI compounds: contract, routing, sparse == dense."""
    x, _ = _real_batch(shared_data / "massbank_ei_tiny.msp", 48)
    torch.manual_seed(5)
    m = StudentModel().eval()
    for e in m.experts:                                   # make the experts differ from identity
        for blk in e:
            torch.nn.init.normal_(blk.up.weight, std=0.01)
    torch.nn.init.normal_(m.gate.logit.weight, std=0.05)
    with torch.inference_mode():
        out = m(x)
        dense = torch.stack([ex(x) for ex in m.experts], 1)                    # (B, E, 6144)
        fused = (dense.gather(1, out.topk_idx[..., None].expand(-1, -1, 6144))
                 * out.topk_weight[..., None]).sum(1)
        ref = m.out(m.trunk(fused)).relu()
    assert out.pred.shape == (48, 501) and out.hidden.shape == (48, 512)
    assert (out.topk_idx[:, 0] != out.topk_idx[:, 1]).all()
    assert torch.allclose(out.topk_weight.sum(1), torch.ones(48))
    assert torch.allclose(out.pred, ref, atol=1e-5)
    assert len(out.topk_idx.unique()) > 1                 # real inputs do not all route alike
