"""StudentStack: several students run as one on a single molecule, bit for bit as one by one."""

from __future__ import annotations

import pytest
import torch

from _student_fixtures import _one_thread  # noqa: F401
from neimsctl.io.featblock import FRAG_BINS, STUDENT_FRAG_DIM
from neimsctl.models.quantize import apply_precision
from neimsctl.models.student import StudentConfig, StudentModel
from neimsctl.models.student_stack import StudentStack
from neimsctl.nn import rowgemm
from neimsctl.nn.sparse_input import SparseRows
from torch import nn

# widths where fp32 BLAS sums a batched product in nn.Linear's order (for some narrow shapes,
# e.g. 128 -> 3 or 64 -> 4, it does not, and the stack's probe refuses to build: see
# test_a_stack_whose_probe_differs...); the shipped shapes are all of the agreeing kind
SMALL = dict(gate_hidden=(64, 128), expert_depth=2, expert_bottleneck=32, head_hidden=(128,),
             hidden_dim=128, n_experts=4, top_k=2)
CONFIGS = {
    # the shipped layout: shared projection, mass-aware head with the fragment path
    "fragments": StudentConfig(fragments=True, mass_aware=True, fragment_channels=4,
                               expert_width=32, **SMALL),
    "mass_aware": StudentConfig(input_dim=64, mass_aware=True, expert_width=32, **SMALL),
    "plain_head": StudentConfig(input_dim=64, expert_width=32, output_activation="softplus", **SMALL),
    "full_width": StudentConfig(input_dim=64, mass_aware=True, **SMALL),   # no projection
}


def _members(cfg: StudentConfig, k: int = 3) -> list[StudentModel]:
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        m = StudentModel(cfg)
        with torch.no_grad():              # zero-initialised up projections: give them weights
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05)
            m.gate.expert_bias.copy_(torch.randn(cfg.n_experts) * 0.1)
        out.append(m.eval())
    return out


def _molecule(cfg: StudentConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(1, cfg.input_dim, generator=g) < 0.1).float()
    if cfg.fragments:
        x[:, -2 * FRAG_BINS:] *= torch.rand(1, 2 * FRAG_BINS, generator=g) * 3
    mw = torch.randint(40, 400, (1,), generator=g)
    frags = x[:, -2 * FRAG_BINS:].reshape(1, 2, FRAG_BINS) if cfg.fragment_channels else None
    return x, mw, frags


def _sparse(x: torch.Tensor) -> SparseRows:
    nz = x.nonzero()
    offsets = torch.tensor([0, nz.shape[0]])
    return SparseRows(offsets, nz[:, 1], x[0, nz[:, 1]], x.shape[1])


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stack_computes_what_the_members_compute(name: str, dtype: torch.dtype) -> None:
    """fp32: bit for bit the members' own forward passes (where the probe lets a stack be
    built). bf16: the same up to the last bits of a few values (a batched product rounds a
    value near a bf16 midpoint the other way now and then), and exactly on most molecules."""
    cfg = CONFIGS[name]
    members = [m.to(dtype) for m in _members(cfg)]
    molecules = [_molecule(cfg, seed) for seed in range(12)]
    exact = 0
    with torch.inference_mode():
        before = [torch.cat([m(x, mw, frags).pred for m in members]) for x, mw, frags in molecules]
        stack = StudentStack.build(members)
        assert stack is not None and stack.fresh()
        for (x, mw, frags), want in zip(molecules, before):
            for given in (x, _sparse(x)):
                got = stack(given, mw, frags)
                assert got.dtype == want.dtype and got.shape == want.shape
                if dtype is torch.float32:
                    assert torch.equal(got, want), name
                else:
                    torch.testing.assert_close(got, want, rtol=2 ** -6, atol=2 ** -8)
                exact += torch.equal(got, want)
            # the members predict as before (the stack holds copies of their weights)
            assert torch.equal(torch.cat([m(x, mw, frags).pred for m in members]), want)
    assert exact >= 0.75 * 2 * len(molecules)


@pytest.mark.skipif(not rowgemm.available(), reason="no AVX512-BF16 kernel on this machine")
@pytest.mark.parametrize("name", ["fragments", "full_width"])
def test_bf16_layers_run_on_the_native_kernel_with_baddbmms_bits(name: str, monkeypatch) -> None:
    """Where the kernel sums a layer's shape in oneDNN's order (rowgemm.agrees), the stack packs
    it, and the fragment path runs natively where its sums are torch's (rowgemm.frag_agrees);
    a stack with all of it native and one with none give the same bits."""
    import neimsctl.models.student_stack as mod

    cfg = CONFIGS[name]
    members = [m.to(torch.bfloat16) for m in _members(cfg)]
    with torch.inference_mode():
        packed = StudentStack.build(members)
        layers = [st for _, a, b in packed.blocks for st in (a, b)] + packed.trunk + packed.heads
        for st in layers:
            w = st.layers[0].weight
            assert (st.packed is not None) == rowgemm.agrees(len(st.layers), w.shape[1], w.shape[0])
        assert any(st.packed is not None for st in layers)
        if cfg.fragment_channels:
            assert (packed.frag_native is not None) == rowgemm.frag_agrees(3, 4, 7, FRAG_BINS)
        gate = members[0].gate.body[0]
        assert (packed.gate_first_native is not None) == \
            rowgemm.sparse_agrees(3, gate.in_features, gate.out_features)
        monkeypatch.setattr(mod, "agrees", lambda *shape: False)
        monkeypatch.setattr(mod.FragMix, "build", classmethod(lambda cls, convs, length: None))
        monkeypatch.setattr(mod.SparseLayers, "build", classmethod(lambda cls, layers: None))
        plain = StudentStack.build(members)
        assert all(st.packed is None for st in plain.trunk) and plain.frag_native is None
        assert plain.proj_native is None and plain.gate_first_native is None
        for seed in range(12):
            x, mw, frags = _molecule(cfg, seed)
            for given in (x, _sparse(x)):
                assert torch.equal(packed(given, mw, frags), plain(given, mw, frags))


@pytest.mark.skipif(not rowgemm.frag_agrees(3, 4, 7, FRAG_BINS), reason="no native fragment path here")
def test_a_stack_with_the_native_fragment_path_goes_stale_when_a_convolution_changes() -> None:
    members = [m.to(torch.bfloat16) for m in _members(CONFIGS["fragments"])]
    conv = members[1].frag_conv
    for change in (lambda: setattr(conv, "weight", nn.Parameter(conv.weight.detach().clone())),
                   lambda: conv.bias.add_(1.0)):
        stack = StudentStack.build(members)
        assert stack.frag_native is not None and stack.fresh()
        with torch.no_grad():
            change()
        assert not stack.fresh()


def test_the_fragment_rows_are_read_from_the_input_when_not_given() -> None:
    cfg = CONFIGS["fragments"]
    assert cfg.input_dim == STUDENT_FRAG_DIM
    members = _members(cfg, 2)
    with torch.inference_mode():
        stack = StudentStack.build(members)
        x, mw, frags = _molecule(cfg, 3)
        assert torch.equal(stack(x, mw), stack(x, mw, frags))


def test_build_refuses_what_it_cannot_stack() -> None:
    cfg = CONFIGS["mass_aware"]
    a, b = _members(cfg, 2)
    assert StudentStack.build([a]) is None                                   # one member
    assert StudentStack.build([a, _members(CONFIGS["full_width"], 1)[0]]) is None   # configs
    assert StudentStack.build([a, b.train()]) is None                        # training mode
    assert StudentStack.build([a, _members(cfg, 1)[0].to(torch.bfloat16)]) is None  # dtypes
    c, d = _members(cfg, 2)
    assert StudentStack.build([apply_precision(c, "int8"), d]) is None      # quantized layers


def test_a_stack_goes_stale_when_its_members_change() -> None:
    """.to(), a replaced parameter, an in-place update (an optimizer step), train mode: each
    makes fresh() False (the ensemble then builds a new stack)."""
    cfg = CONFIGS["mass_aware"]
    members = _members(cfg)
    x, mw, _ = _molecule(cfg, 0)

    def changed(change) -> bool:
        stack = StudentStack.build(members)
        assert stack is not None and stack.fresh()
        change()
        return not stack.fresh()

    assert changed(lambda: members[1].to(torch.float64).to(torch.float32))
    head = members[2].out.forward_head
    assert changed(lambda: setattr(head, "weight", nn.Parameter(head.weight.detach().clone())))
    opt = torch.optim.SGD(members[0].parameters(), lr=0.1)

    def step() -> None:
        members[0].train()
        members[0](x, mw).pred.sum().backward()
        opt.step()
        members[0].eval()
    assert changed(step)
    assert changed(lambda: members[1].train())
    members[1].eval()
    gone = members[2].trunk[1]                       # a bias removed: stale, not an AttributeError
    bias = gone.bias
    assert changed(lambda: setattr(gone, "bias", None))
    gone.bias = bias
    fresh = StudentStack.build(members)            # built again: the members' numbers now
    with torch.inference_mode():
        torch.testing.assert_close(fresh(x, mw), torch.cat([m(x, mw).pred for m in members]))
    assert StudentStack.build(members).fresh()


def test_a_gate_without_hidden_layers_is_not_stacked() -> None:
    cfg = StudentConfig(input_dim=64, mass_aware=True, expert_width=32,
                        **{**SMALL, "gate_hidden": ()})
    assert StudentStack.build(_members(cfg, 2)) is None


def test_a_stack_whose_probe_differs_from_its_members_is_not_built(monkeypatch) -> None:
    """Where the batched product would not give the members' numbers bit for bit (another
    BLAS kernel), build() returns None and the members run one by one."""
    import neimsctl.models.student_stack as mod

    members = _members(CONFIGS["mass_aware"], 2)
    assert StudentStack.build(members) is not None
    real = torch.baddbmm
    monkeypatch.setattr(mod.torch, "baddbmm", lambda b, x, w: real(b, x, w) * (1 + 2 ** -20))
    assert StudentStack.build(members) is None


def test_one_molecule_at_a_time() -> None:
    cfg = CONFIGS["mass_aware"]
    stack = StudentStack.build(_members(cfg, 2))
    with pytest.raises(ValueError, match="one molecule"):
        stack(torch.zeros(2, cfg.input_dim), torch.tensor([50, 60]))


def test_members_keep_training_after_a_stack_was_built() -> None:
    """A stack built under inference mode leaves its members' weights as they were: they can
    still be trained."""
    members = _members(CONFIGS["mass_aware"], 2)
    with torch.inference_mode():
        StudentStack.build(members)
    m = members[0].train()
    x, mw, _ = _molecule(CONFIGS["mass_aware"], 1)
    m(x, mw).pred.sum().backward()
    assert all(p.grad is not None for p in m.trunk.parameters())
