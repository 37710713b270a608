"""TeacherModel: sizes per config, contract-3 shapes, invariances, MC dropout, pretraining head.

Molecules and spectra are real: the bundled MassBank sample (and ../shared/data when present),
featurized with the project's own teacher featurizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rdkit import Chem
from torch_geometric.data import Batch, Data

from neimsctl.chem.features import TeacherFeaturizer, log1p_counts
from neimsctl.io.spectrum import preprocess_spectrum
from neimsctl.errors import ConfigError
from neimsctl.io.msp import read_msp
from neimsctl.models import registry
from neimsctl.models.teacher import TeacherConfig, TeacherModel
from neimsctl.nn.bond_masking import BondMaskingHead

TINY = TeacherConfig(hidden=16, num_layers=2, attention_hidden=8, pool_gate_hidden=8,
                     ecfp_hidden=(32,), ecfp_out=16, head_hidden=(32, 16), dropout=0.1)
FEATURIZER = TeacherFeaturizer()


def to_data(smiles: str, spectrum: np.ndarray | None = None, perm: np.ndarray | None = None) -> Data:
    """Contract-3 ``Data`` of one molecule; ``perm`` reorders its atoms (new atom k = old perm[k])."""
    f = FEATURIZER(Chem.MolFromSmiles(smiles))
    x, ei = f.atom_x, f.edge_index.astype(np.int64)
    if perm is not None:
        x, ei = x[perm], np.argsort(perm)[ei]
    d = Data(x=torch.from_numpy(x), edge_index=torch.from_numpy(ei.T.copy()),
             edge_attr=torch.from_numpy(f.edge_attr),
             ecfp=torch.from_numpy(np.unpackbits(f.ecfp, bitorder="big")[None].astype(np.float32)),
             counts=torch.from_numpy(log1p_counts(f.counts)[None]))
    if spectrum is not None:
        d.y = torch.from_numpy(spectrum[None])
    return d


def msp_molecules(path: Path, n: int) -> list[tuple[str, np.ndarray]]:
    out = []
    with open(path, "rb") as fh:
        for rec in read_msp(fh, str(path)):
            smi = rec.fields.get("smiles")
            if rec.reason is None and smi and Chem.MolFromSmiles(smi) is not None:
                out.append((smi, preprocess_spectrum(rec.mz, rec.intensity)))
            if len(out) == n:
                break
    return out


@pytest.fixture(scope="module")
def molecules(sample_msp) -> list[tuple[str, np.ndarray]]:
    mols = msp_molecules(sample_msp, 8)
    assert len(mols) == 8
    return mols


@pytest.fixture(scope="module")
def batch(molecules) -> Batch:
    return Batch.from_data_list([to_data(s, y) for s, y in molecules])


def expected_parameters(c: TeacherConfig) -> int:
    def mlp(*dims: int) -> int:
        return sum(a * b + b for a, b in zip(dims, dims[1:]))
    h, a, n_out = c.hidden, c.attention_hidden, (3 if c.mass_aware else 1)
    layer = mlp(h, h, h) + mlp(c.bond_dim, h) + 1 + mlp(3 * h, a, 1)
    return (mlp(c.atom_dim, h) + c.num_layers * layer + mlp(h, c.pool_gate_hidden, 1)
            + mlp(c.ecfp_dim + c.counts_dim, *c.ecfp_hidden, c.ecfp_out) + 2 * c.fusion_dim
            + mlp(c.fusion_dim, *c.head_hidden) + mlp(c.hidden_dim, n_out * c.n_bins))


@pytest.mark.parametrize("cfg", [TeacherConfig(), TINY, TeacherConfig(mass_aware=True, num_layers=3),
                                 TeacherConfig(counts_dim=2048, num_layers=2)],
                         ids=["defaults", "tiny", "mass-aware", "with-counts"])
def test_parameter_count_per_config(cfg):
    assert TeacherModel(cfg).n_parameters() == expected_parameters(cfg)


def test_defaults_are_the_spec(batch):
    cfg = TeacherConfig()
    assert (cfg.hidden, cfg.num_layers, cfg.drop_edge, cfg.pooled_dim, cfg.ecfp_out, cfg.fusion_dim,
            cfg.head_hidden, cfg.n_bins) == (256, 8, 0.2, 768, 512, 1280, (1024, 512), 501)
    model = TeacherModel().eval()
    assert model.n_parameters() == 14_616_582            # "~15M" (SPEC.md)
    two = Batch.from_data_list(batch.to_data_list()[:2])
    pred, hidden = model(two, return_hidden=True)
    assert pred.shape == (2, 501) and hidden.shape == (2, 512) and (pred >= 0).all()
    assert model(two).shape == (2, 501)
    text = repr(model)
    assert "8 x GINEBlock" in text and "PairNorm()" in text and "DropEdge(p=0.2)" in text
    assert "GraphPooling(256, out=768)" in text and "MLP(4096, [2048, 1024], 512)" in text


def test_registry_names_the_teacher():
    assert registry.get("teacher") is TeacherModel
    assert "teacher" in registry.names()
    assert TeacherModel.config_class is TeacherConfig


def test_predict_spectrum_is_linear_and_max_normalised(batch):
    model = TeacherModel(TINY).train()
    spec = model.predict_spectrum(batch)
    assert spec.shape == (8, 501) and spec.dtype == torch.float32
    assert torch.allclose(spec.amax(dim=1), torch.ones(8))
    raw = model.eval()(batch)
    assert torch.allclose(spec, raw.square() / raw.square().amax(1, keepdim=True), atol=1e-6)
    assert model.training is False
    model.train()
    model.predict_spectrum(batch)
    assert model.training is True                         # state restored


def test_one_optimizer_step_lowers_the_loss(batch):
    torch.manual_seed(0)
    model = TeacherModel(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    target = model.from_linear(batch.y)

    def eval_loss() -> float:
        with torch.no_grad():
            return F.mse_loss(model.eval()(batch), target).item()

    before = eval_loss()
    model.train()
    loss = F.mse_loss(model(batch), target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert eval_loss() < before


def test_atom_order_does_not_change_the_prediction(molecules):
    torch.manual_seed(0)
    model = TeacherModel(TINY).eval()
    rng = np.random.default_rng(0)
    plain, shuffled = [], []
    for smi, _ in molecules:
        n = Chem.MolFromSmiles(smi).GetNumAtoms()
        plain.append(to_data(smi))
        shuffled.append(to_data(smi, perm=rng.permutation(n)))
    a, b = model(Batch.from_data_list(plain)), model(Batch.from_data_list(shuffled))
    assert torch.allclose(a, b, atol=1e-5)
    # and a molecule's prediction does not depend on its batch mates (PairNorm is per molecule)
    assert torch.allclose(model(Batch.from_data_list(plain[:1])), a[:1], atol=1e-5)


def test_dropout_and_dropedge_off_in_eval_on_under_mc_dropout(batch):
    torch.manual_seed(0)
    model = TeacherModel(TINY).eval()
    assert torch.equal(model(batch), model(batch))
    with model.mc_dropout():
        assert all(m.training for m in model.stochastic_modules())
        assert not any(m.training for m in model.modules() if m not in model.stochastic_modules())
        assert not torch.equal(model(batch), model(batch))
    assert model.training is False and not model.drop_edge.training
    with model.mc_dropout(enabled=False):
        assert torch.equal(model(batch), model(batch))
    # DropEdge alone (no dropout) also makes MC samples differ
    only_edges = TeacherModel(TeacherConfig(**{**TINY.to_dict(), "dropout": 0.0})).eval()
    with only_edges.mc_dropout():
        outs = [only_edges(batch) for _ in range(3)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_mc_predict_mean_and_variance(batch):
    torch.manual_seed(0)
    model = TeacherModel(TINY).eval()
    mean, var = model.mc_predict(batch, n_samples=6)
    assert mean.shape == var.shape == (8, 501)
    assert torch.allclose(mean.amax(1), torch.ones(8)) and (var >= 0).all() and var.sum() > 0
    assert model.training is False
    with pytest.raises(ValueError, match="n_samples >= 2"):
        model.mc_predict(batch, n_samples=1)


def test_bond_scores_are_symmetric_gates(molecules):
    model = TeacherModel(TINY)
    b = Batch.from_data_list([to_data(molecules[0][0])])
    edge_index, gates = model.bond_scores(b)
    assert gates.shape == (edge_index.size(1), TINY.num_layers)
    assert ((gates > 0) & (gates < 1)).all()
    assert torch.allclose(gates[0::2], gates[1::2], atol=1e-6)     # featurizer: rows 2k, 2k+1


def test_bond_masking_pretraining_on_real_molecules(batch):
    torch.manual_seed(0)
    model = TeacherModel(TINY)
    head = BondMaskingHead(TINY.hidden, 32)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    n_bonds = batch.edge_index.size(1) // 2
    losses = []
    for _ in range(8):
        masked, info = head.mask(batch, 0.15, g)
        assert info.src.numel() == round(0.15 * n_bonds)
        res = head.loss(model.encode_nodes(masked), info)
        opt.zero_grad()
        res.loss.backward()
        opt.step()
        assert 0.0 <= res.accuracy.item() <= 1.0
        losses.append(res.loss.item())
    assert head.mask_token.grad is not None                # the token is learned
    assert np.mean(losses[-2:]) < np.mean(losses[:2])


def test_mass_aware_head_needs_mw(batch):
    cfg = TeacherConfig(**{**TINY.to_dict(), "mass_aware": True})
    model = TeacherModel(cfg).eval()
    with pytest.raises(ValueError, match="batch.mw"):
        model(batch)
    b = batch.clone()
    b.mw = torch.tensor([60, 120, 150, 200, 250, 300, 350, 600])
    out = model(b)
    assert out.shape == (8, 501) and (out >= 0).all()


def test_bad_inputs_name_the_fix(batch):
    model = TeacherModel(TINY).eval()
    b = batch.clone()
    b.x = b.x[:, :47]
    with pytest.raises(ValueError, match="--mode teacher"):
        model(b)
    b = batch.clone()
    b.ecfp = b.ecfp[:, :100]
    with pytest.raises(ValueError, match="batch.ecfp must be"):
        model(b)


def test_bf16_autocast_forward_backward(batch):
    model = TeacherModel(TINY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    out.float().sum().backward()
    assert out.shape == (8, 501) and torch.isfinite(out.float()).all()


def test_config_from_dict_round_trip_and_unknown_keys():
    cfg = TeacherConfig.from_dict({"name": "teacher", "hidden": 32, "ecfp_hidden": [64, 32]})
    assert cfg.hidden == 32 and cfg.ecfp_hidden == (64, 32)
    assert TeacherConfig.from_dict(cfg.to_dict()) == cfg
    assert TeacherConfig.from_dict(None) == TeacherConfig()
    with pytest.raises(ConfigError, match="unknown key.*hiden"):
        TeacherConfig.from_dict({"hiden": 32})
    for bad in ({"num_layers": 0}, {"dropout": 1.5}, {"output_space": "log"}, {"head_hidden": []},
                {"ecfp_hidden": 5}, {"pair_norm": "yes"}, {"name": "student"}):
        with pytest.raises(ConfigError):
            TeacherConfig.from_dict(bad)


@pytest.mark.shared
def test_trains_on_shared_massbank_subset(shared_data):
    """A few steps on real spectra from ../shared/data lower the loss on those spectra."""
    mols = msp_molecules(shared_data / "massbank_ei_tiny.msp", 16)
    b = Batch.from_data_list([to_data(s, y) for s, y in mols])
    torch.manual_seed(0)
    model = TeacherModel(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    target = model.from_linear(b.y)
    losses = []
    for _ in range(5):
        loss = F.mse_loss(model(b), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert len(mols) == 16 and losses[-1] < losses[0]


def test_counts_branch_reads_the_atom_pair_counts_and_needs_them():
    torch.manual_seed(0)
    cfg = TeacherConfig(**{**TINY.to_dict(), "counts_dim": 2048})
    model = TeacherModel(cfg).eval()
    batch = Batch.from_data_list([to_data("CCCCCCCCCC"), to_data("CCCCCCCCCCCC")])
    out = model(batch)
    assert out.shape == (2, 501) and torch.isfinite(out).all()
    zeroed = batch.clone()
    zeroed.counts = torch.zeros_like(batch.counts)
    assert not torch.allclose(model(zeroed), out)      # the counts change the prediction
    del batch.counts
    with pytest.raises(ValueError, match="counts"):
        model(batch)


def test_fragments_branch_reads_the_fragment_masses_and_needs_them():
    from neimsctl.chem.fragments import fragment_counts

    torch.manual_seed(0)
    cfg = TeacherConfig(**{**TINY.to_dict(), "counts_dim": 2048, "fragments": True})
    model = TeacherModel(cfg).eval()
    smiles = ["CCCCC(=O)c1ccccc1", "CCCCCC(=O)c1ccccc1"]
    data = [to_data(s) for s in smiles]
    for d, s in zip(data, smiles):
        d.frags = torch.from_numpy(log1p_counts(fragment_counts(Chem.MolFromSmiles(s)))[None])
    batch = Batch.from_data_list(data)
    out = model(batch)
    assert out.shape == (2, 501) and torch.isfinite(out).all()
    zeroed = batch.clone()
    zeroed.frags = torch.zeros_like(batch.frags)
    assert not torch.allclose(model(zeroed), out)      # the fragment masses change the prediction
    del batch.frags
    with pytest.raises(ValueError, match="frags"):
        model(batch)
    with pytest.raises(ConfigError, match="fragments"):
        TeacherConfig(fragments="yes")
