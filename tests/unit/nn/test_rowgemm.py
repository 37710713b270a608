"""rowgemm: one row per stream through packed bf16 layers, summed in oneDNN's order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neimsctl.nn import rowgemm

native = pytest.mark.skipif(not rowgemm.available(), reason="no AVX512-BF16 kernel on this machine")

# the shipped default's stacked layer shapes (3 students x 4 experts; 1,024-wide trunk, 501 bins)
SHIPPED = [(12, 512, 128), (12, 128, 512), (3, 512, 1024), (3, 1024, 512), (3, 256, 64),
           (3, 512, 501), (3, 512, 4)]


def _bf16(a: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.asarray(a, np.float32)).bfloat16().float().numpy()


def _documented_order(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The kernel's sums as its header says, in numpy float32 one step at a time: per chunk of
    512 k from zero, pairs in order with the odd element first, chunks added in order, the bias
    last, rounded to bf16 (round to nearest even)."""
    S, K, N = w.shape
    out = np.zeros((S, 1, N), np.float32)
    for s in range(S):
        xs, ws = x[s, 0].float().numpy(), w[s].float().numpy()
        tot = None
        for c0 in range(0, K, 512):
            acc = np.zeros(N, np.float32)
            for p in range(c0, min(K, c0 + 512), 2):
                for k in (p + 1, p):
                    acc = (acc + np.float32(xs[k]) * ws[k]).astype(np.float32)
            tot = acc if tot is None else (tot + acc).astype(np.float32)
        out[s, 0] = _bf16(tot + bias[s, 0].float().numpy())
    return torch.from_numpy(out).bfloat16()


def test_pack_lays_pairs_side_by_side_in_tiles() -> None:
    S, K, N = 2, 6, 140                              # two tiles: 128 columns, then 16 (12 + padding)
    w = torch.arange(S * K * N, dtype=torch.float32).reshape(S, K, N).bfloat16()
    p = rowgemm.pack(w)
    assert p.shape == (S, 144 * K)
    for s in range(S):
        first = p[s, :128 * K].reshape(K // 2, 128, 2)
        last = p[s, 128 * K:].reshape(K // 2, 16, 2)
        for q in range(K // 2):
            assert torch.equal(first[q, :, 0], w[s, 2 * q, :128])
            assert torch.equal(first[q, :, 1], w[s, 2 * q + 1, :128])
            assert torch.equal(last[q, :12, 1], w[s, 2 * q + 1, 128:])
            assert not last[q, 12:].any()               # padded columns are zero


def test_pack_refuses_an_odd_input_width() -> None:
    with pytest.raises(ValueError, match="even"):
        rowgemm.pack(torch.zeros(1, 5, 16, dtype=torch.bfloat16))


@native
@pytest.mark.parametrize("shape", [(1, 2, 1), (2, 16, 10), (3, 64, 17), (2, 1024, 130),
                                   (1, 1536, 300), (12, 512, 128)])
def test_the_kernel_sums_in_its_documented_order(shape: tuple[int, int, int]) -> None:
    x, w, bias = rowgemm._probe(*shape, seed=3)           # large products that cancel
    assert torch.equal(rowgemm.PackedLayer(w, bias)(x), _documented_order(x, w, bias))


@native
def test_the_kernel_reads_views_and_leaves_its_inputs() -> None:
    x, w, bias = rowgemm._probe(3, 512, 501, seed=4)
    layer = rowgemm.PackedLayer(w, bias)
    wide = torch.zeros(3, 1, 1024, dtype=torch.bfloat16)
    wide[:, :, ::2] = x                                   # a strided view of the same values
    before = wide.clone()
    assert torch.equal(layer(wide[:, :, ::2]), layer(x))
    assert torch.equal(wide, before)


@native
@pytest.mark.parametrize("shape", SHIPPED)
def test_where_the_shapes_agree_the_kernel_gives_baddbmms_bits(shape: tuple[int, int, int]) -> None:
    """agrees() says whether oneDNN sums this shape in the kernel's order on this machine; where
    it does, real-looking rows give baddbmm's bits too."""
    S, K, N = shape
    ok = rowgemm.agrees(S, K, N)
    g = torch.Generator().manual_seed(5)
    w = (torch.randn(S, K, N, generator=g) * 0.05).bfloat16()
    bias = torch.randn(S, 1, N, generator=g).bfloat16()
    layer = rowgemm.PackedLayer(w, bias)
    same = [torch.equal(layer(x), torch.baddbmm(bias, x, w))
            for x in (torch.randn(S, 1, K, generator=g).bfloat16() for _ in range(20))]
    if ok:
        assert all(same)
    x, w, bias = rowgemm._probe(S, K, N, seed=0)
    assert ok == torch.equal(rowgemm.PackedLayer(w, bias)(x), torch.baddbmm(bias, x, w))


@native
def test_the_kernel_refuses_shapes_that_do_not_fit() -> None:
    x, w, bias = rowgemm._probe(2, 32, 20, seed=0)
    layer = rowgemm.PackedLayer(w, bias)
    with pytest.raises(ValueError, match="expected"):
        layer(torch.zeros(2, 1, 30, dtype=torch.bfloat16))
    bits = torch.zeros(2, 20, dtype=torch.bfloat16).view(torch.int16).numpy()
    with pytest.raises(ValueError, match="16-bit"):
        rowgemm._rowgemm.gemm(np.zeros((2, 32), np.float32), layer._w, layer._b, bits, 20)


def test_without_the_kernel_nothing_agrees(monkeypatch) -> None:
    monkeypatch.setattr(rowgemm, "_USABLE", False)
    assert not rowgemm.available()
    assert not rowgemm.agrees(12, 512, 128)


def test_neimsctl_native_0_turns_the_kernel_off() -> None:
    import subprocess
    import sys
    code = "from neimsctl.nn import rowgemm; print(rowgemm.available())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "NEIMSCTL_NATIVE": "0"}).stdout
    assert out.strip() == "False"


@native
def test_streams_pick_the_layers_rows_go_through() -> None:
    x, w, bias = rowgemm._probe(12, 512, 128, seed=6)
    layer = rowgemm.PackedLayer(w, bias)
    every = layer(x)
    pick = np.array([7, 2, 2, 11], dtype=np.int64)
    assert torch.equal(layer(x[pick], pick), every[pick])
    for bad in (np.array([12], np.int64), np.array([-1], np.int64)):
        with pytest.raises(ValueError, match="streams"):
            layer(x[:1], bad)
    with pytest.raises(ValueError, match="int64"):
        layer(x[:1], np.array([0], np.int32))


def _int8_layer(S: int, K: int, N: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """codes, scales, and the bf16 weights they make (as an int8-stored model file loads them)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-127, 128, (S, K, N), generator=g, dtype=torch.int8)
    scales = torch.rand(S, N, generator=g) * torch.exp2(torch.randint(-12, 2, (S, N), generator=g).float())
    return codes, scales, (codes.float() * scales[:, None, :]).bfloat16(), torch.randn(S, 1, N, generator=g).bfloat16()


@native
@pytest.mark.parametrize("shape", [(1, 2, 1), (3, 64, 17), (2, 1024, 130), (12, 512, 128), (3, 512, 501)])
def test_int8_codes_give_the_bits_of_their_bf16_weights(shape: tuple[int, int, int]) -> None:
    codes, scales, w, bias = _int8_layer(*shape, seed=7)
    bf16, int8 = rowgemm.PackedLayer(w, bias), rowgemm.PackedLayer(codes, bias, scales)
    assert int8.packed.dtype == torch.int8 and int8.packed.shape == bf16.packed.shape  # half the bytes
    g = torch.Generator().manual_seed(8)
    for _ in range(5):
        x = (torch.randn(shape[0], 1, shape[1], generator=g) * 4).bfloat16()
        assert torch.equal(int8(x), bf16(x))
    x = torch.randn(2, 1, shape[1], generator=g).bfloat16()
    pick = np.array([shape[0] - 1, 0], dtype=np.int64)
    assert torch.equal(int8(x, pick), bf16(x, pick))


def test_int8_source_is_only_what_the_weight_is() -> None:
    codes, scales, w, _ = _int8_layer(1, 32, 8, seed=9)
    lin = torch.nn.Linear(32, 8).bfloat16()
    assert rowgemm.int8_source(lin) is None                               # none remembered
    with torch.no_grad():
        lin.weight.copy_(w[0].t())
    rowgemm.set_int8_source(lin, codes[0].t().contiguous(), scales[0])
    got = rowgemm.int8_source(lin)
    assert got is not None and torch.equal(got[0], codes[0].t())
    with torch.no_grad():
        lin.weight[0, 0] += 1.0                                           # changed since
    assert rowgemm.int8_source(lin) is None
    rowgemm.set_int8_source(lin, codes[0].contiguous(), scales[0])        # the wrong shape
    assert rowgemm.int8_source(lin) is None
    assert rowgemm.int8_source(lin.float()) is None                       # not bf16 any more


def _torch_frag_mix(convs, frags, mix):
    return torch.stack([(conv(frags) * m.unsqueeze(-1)).sum(1) for conv, m in zip(convs, mix)])


@native
@pytest.mark.parametrize("k,C,KW,L", [(3, 4, 7, 501), (2, 3, 5, 40), (1, 1, 1, 9), (4, 8, 9, 100)])
def test_the_fragment_path_gives_torchs_bits(k: int, C: int, KW: int, L: int) -> None:
    if not rowgemm.frag_agrees(k, C, KW, L):
        pytest.skip("torch sums this shape in another order here")
    g = torch.Generator().manual_seed(10)
    convs = [torch.nn.Conv1d(2, C, KW, padding=KW // 2).to(torch.bfloat16).eval() for _ in range(k)]
    native_path = rowgemm.FragMix.build(convs, L)
    assert native_path is not None
    with torch.no_grad():
        for _ in range(5):
            frags = (torch.rand(1, 2, L, generator=g) * (torch.rand(1, 2, L, generator=g) < 0.2) * 3).bfloat16()
            mix = torch.randn(k, 1, C, generator=g).bfloat16()
            assert torch.equal(native_path(frags, mix), _torch_frag_mix(convs, frags, mix))


def test_the_fragment_path_takes_only_the_convolutions_it_computes() -> None:
    def conv(**kw):
        args = dict(in_channels=2, out_channels=4, kernel_size=7, padding=3) | kw
        return torch.nn.Conv1d(**args).to(torch.bfloat16)
    for bad in (conv(stride=2), conv(bias=False), conv(padding=2), conv(kernel_size=6, padding=3),
                conv(in_channels=3), conv(dilation=2, padding=6), conv(padding_mode="circular"),
                conv().float()):
        assert rowgemm.FragMix.build([conv(), bad], 50) is None
    assert rowgemm.FragMix.build([], 50) is None


@native
def test_the_fragment_kernel_refuses_shapes_that_do_not_fit() -> None:
    path = rowgemm.FragMix([torch.nn.Conv1d(2, 4, 7, padding=3).to(torch.bfloat16) for _ in range(2)])
    bits = lambda *shape: torch.zeros(*shape, dtype=torch.bfloat16).view(torch.int16).numpy()  # noqa: E731
    with pytest.raises(ValueError, match="expected"):
        rowgemm._rowgemm.frag_mix(bits(3, 50), path._w, path._b, bits(2, 4), bits(2, 50))
    with pytest.raises(ValueError, match="expected"):
        rowgemm._rowgemm.frag_mix(bits(2, 50), path._w, path._b, bits(2, 3), bits(2, 50))
    with pytest.raises(ValueError, match="bfloat16"):
        rowgemm._rowgemm.frag_mix(np.zeros((2, 50), np.float32), path._w, path._b, bits(2, 4), bits(2, 50))


def _sparse_layers(k: int, n_in: int, n_out: int, seed: int):
    from neimsctl.nn.sparse_input import SparseInputLinear
    torch.manual_seed(seed)
    layers = [SparseInputLinear(n_in, n_out).to(torch.bfloat16).eval() for _ in range(k)]
    with torch.no_grad():
        for lin in layers:
            lin.bias.normal_()
    return layers


def _rows(n_in: int, nnz: int, seed: int):
    from neimsctl.nn.sparse_input import SparseRows
    g = torch.Generator().manual_seed(seed)
    cols = torch.randperm(n_in, generator=g)[:nnz].sort().values
    return SparseRows(torch.tensor([0, nnz]), cols, (torch.rand(nnz, generator=g) * 4 + 0.1).bfloat16(), n_in)


@native
@pytest.mark.parametrize("k,n_in,n_out", [(3, 7146, 256), (3, 7146, 512), (2, 64, 20), (1, 10, 1)])
def test_the_sparse_layers_give_torchs_bits(k: int, n_in: int, n_out: int) -> None:
    if not rowgemm.sparse_agrees(k, n_in, n_out):
        pytest.skip("torch sums or rounds this shape otherwise here")
    layers = _sparse_layers(k, n_in, n_out, seed=11)
    native_path = rowgemm.SparseLayers.build(layers)
    assert native_path is not None
    with torch.no_grad():
        for seed in range(5):
            x = _rows(n_in, max(1, n_in // 40), seed)
            assert torch.equal(native_path(x), torch.stack([lin(x) for lin in layers]))
            dense = x.dense()                             # the members' own way, same numbers
            assert torch.equal(native_path(dense), torch.stack([lin(dense) for lin in layers]))
        crowded = _rows(n_in, n_in // 2, 0)               # past max_density: the dense path
        assert torch.equal(native_path(crowded), torch.stack([lin(crowded) for lin in layers]))


def test_the_sparse_layers_take_only_what_they_compute() -> None:
    layers = _sparse_layers(2, 64, 20, seed=12)
    assert rowgemm.SparseLayers.build([layers[0], torch.nn.Linear(64, 20).bfloat16()]) is None
    assert rowgemm.SparseLayers.build([layers[0], layers[1].float()]) is None
    assert rowgemm.SparseLayers.build([layers[0], _sparse_layers(1, 64, 21, 0)[0]]) is None
    assert rowgemm.SparseLayers.build([]) is None


@native
def test_the_sparse_kernel_refuses_what_does_not_fit() -> None:
    layers = _sparse_layers(2, 64, 20, seed=13)
    tables = tuple(lin._transposed().view(torch.int16).numpy() for lin in layers)
    biases = tuple(lin.bias.detach().view(torch.int16).numpy() for lin in layers)
    out = torch.zeros(2, 20, dtype=torch.bfloat16).view(torch.int16).numpy()
    vals = torch.ones(2, dtype=torch.bfloat16).view(torch.int16).numpy()
    for cols in (np.array([3, 64]), np.array([-1, 3])):        # outside the table
        with pytest.raises(ValueError, match="cols"):
            rowgemm._rowgemm.sparse(cols.astype(np.int64), vals, tables, biases, out)
    with pytest.raises(ValueError, match="tables"):
        rowgemm._rowgemm.sparse(np.array([1, 2]), vals, tables[:1], biases, out)
    with pytest.raises(ValueError, match="int64"):
        rowgemm._rowgemm.sparse(np.array([1, 2], np.int32), vals, tables, biases, out)
    with pytest.raises(TypeError):
        rowgemm._rowgemm.sparse(np.array([1, 2]), vals, list(tables), biases, out)


@native
def test_required_arguments_may_not_be_none_and_out_may_not_overlap() -> None:
    """(A hostile pass: None for bias read an uninitialised buffer and crashed the process; an
    out sharing memory with x gave wrong numbers silently.)"""
    x, w, bias = rowgemm._probe(2, 32, 20, seed=0)
    layer = rowgemm.PackedLayer(w, bias)
    xb = x.reshape(2, 32).contiguous().view(torch.int16).numpy()
    out = torch.zeros(2, 20, dtype=torch.bfloat16).view(torch.int16).numpy()
    args = [xb, layer._w, layer._b, out]
    for i in range(4):
        bad = list(args)
        bad[i] = None
        with pytest.raises((ValueError, TypeError)):
            rowgemm._rowgemm.gemm(*bad, 20)
    shared = np.zeros((2, 32), np.int16)
    view = shared.reshape(-1)[:40].reshape(2, 20)            # a C-contiguous view into x
    with pytest.raises(ValueError, match="share memory"):
        rowgemm._rowgemm.gemm(shared, layer._w, layer._b, view, 20)


def test_the_checks_say_no_to_shapes_they_cannot_take() -> None:
    assert not rowgemm.agrees(1, 4, 0) and not rowgemm.agrees(0, 4, 4) and not rowgemm.agrees(1, 3, 4)
    assert not rowgemm.frag_agrees(1, 4, 6, 501) and not rowgemm.frag_agrees(0, 4, 7, 501)
    assert not rowgemm.sparse_agrees(0, 10, 4) and not rowgemm.sparse_agrees(2, 10, 0)


@native
def test_subnormals_read_as_zero_where_torchs_kernel_reads_them_so() -> None:
    """AVX512-BF16 reads subnormal inputs as zero; oneDNN's one-row product of the shipped
    shapes does too, but not for every shape (1 x 2 -> 16: other kernels): agrees() tries them."""
    x, w, bias = rowgemm._subnormal_probe(1, 2, 16)
    assert rowgemm.PackedLayer(w, bias)(x)[0, 0, -1].item() == 0.0
    assert not rowgemm.agrees(1, 2, 16) or torch.baddbmm(bias, x, w)[0, 0, -1].item() == 0.0
    for shape in SHIPPED:
        if rowgemm.agrees(*shape):
            x, w, bias = rowgemm._subnormal_probe(*shape)
            assert torch.equal(rowgemm.PackedLayer(w, bias)(x), torch.baddbmm(bias, x, w))


@native
def test_the_fragment_path_reads_subnormals_as_the_convolution_does() -> None:
    if not rowgemm.frag_agrees(1, 4, 7, 50):
        pytest.skip("torch's convolution differs here")
    conv = torch.nn.Conv1d(2, 4, 7, padding=3).to(torch.bfloat16).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0 ** 100)
        conv.bias.zero_()
        frags = torch.zeros(1, 2, 50)
        frags[0, :, 10] = 2.0 ** -130
        frags, mix = frags.bfloat16(), torch.ones(1, 1, 4, dtype=torch.bfloat16)
        assert torch.equal(rowgemm.FragMix([conv])(frags, mix), _torch_frag_mix([conv], frags, mix))


@native
def test_the_fragment_path_refuses_rows_of_another_shape() -> None:
    path = rowgemm.FragMix([torch.nn.Conv1d(2, 4, 7, padding=3).to(torch.bfloat16) for _ in range(3)])
    mix = torch.ones(3, 1, 4, dtype=torch.bfloat16)
    for frags in (torch.zeros(1, 3, 500), torch.zeros(2, 2, 501), torch.zeros(2, 501)):
        with pytest.raises(ValueError, match="fragment rows"):
            path(frags.bfloat16(), mix)
    with pytest.raises(ValueError, match="mix"):
        path(torch.zeros(1, 2, 501, dtype=torch.bfloat16), mix[:2])
