"""SparseInputLinear: the same function as nn.Linear, computed from the active inputs only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neimsctl.nn.sparse_input import SparseInputLinear, SparseRows


def dense(lin: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, lin.weight, lin.bias)


def test_sparse_path_equals_dense_and_follows_weight_updates() -> None:
    torch.manual_seed(0)
    lin = SparseInputLinear(300, 7).eval()
    x = (torch.rand(3, 300) < 0.05).float() * torch.rand(3, 300)
    with torch.inference_mode():
        assert torch.allclose(lin(x), dense(lin, x), atol=1e-5)
    with torch.no_grad():
        lin.weight.mul_(2.0)                 # the cached transpose must be rebuilt
        assert torch.allclose(lin(x), dense(lin, x), atol=1e-5)
        assert torch.allclose(lin(torch.zeros(2, 300)), lin.bias.expand(2, 7))


def test_dense_inputs_and_training_take_the_dense_path_big_batches_stay_exact() -> None:
    torch.manual_seed(1)
    lin = SparseInputLinear(50, 3)
    x = torch.rand(2, 50)                    # not sparse
    with torch.no_grad():
        assert torch.allclose(lin(x), dense(lin, x))
        big = (torch.rand(300, 50) < 0.05).float()
        big[7] = 0.0                          # an all-zero row gets the bias only
        assert torch.allclose(lin(big), dense(lin, big), atol=1e-6)
        assert torch.allclose(lin(big)[7], lin.bias)
    y = lin((torch.rand(2, 50) < 0.1).float()).sum()   # autograd on: dense, gradients flow
    y.backward()
    assert lin.weight.grad is not None
    assert set(lin.state_dict()) == set(torch.nn.Linear(50, 3).state_dict())


def rows_of(x: torch.Tensor) -> SparseRows:
    nz = x.nonzero()
    offsets = torch.cat([torch.zeros(1, dtype=torch.long),
                         torch.bincount(nz[:, 0], minlength=x.shape[0]).cumsum(0)])
    return SparseRows(offsets, nz[:, 1], x[nz[:, 0], nz[:, 1]], x.shape[1])


def test_sparse_rows_input_gives_the_same_bits_as_the_dense_input() -> None:
    torch.manual_seed(2)
    lin = SparseInputLinear(300, 7).eval()
    x = (torch.rand(5, 300) < 0.05).float() * torch.rand(5, 300)
    x[3] = 0.0                                        # an empty row
    sx = rows_of(x)
    assert sx.shape == x.shape and sx.dim() == 2 and torch.equal(sx.dense(), x)
    others = [SparseInputLinear(300, 7).eval().to(dt) for dt in (torch.bfloat16, torch.float64)]
    for other in others:
        other.load_state_dict(lin.state_dict())
    with torch.inference_mode():
        assert torch.equal(lin(sx), lin(x))
        for other in others:
            dt = other.weight.dtype
            assert torch.equal(other(sx.to(dt)), other(x.to(dt)))
        full = torch.rand(4, 300) + 0.1               # too dense: the dense path, same result
        assert torch.equal(lin(rows_of(full)), lin(full))
    assert torch.allclose(lin(sx), dense(lin, x), atol=1e-5)   # autograd on: dense path
