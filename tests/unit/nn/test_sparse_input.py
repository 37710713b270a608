"""SparseInputLinear: the same function as nn.Linear, computed from the active inputs only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neimsctl.nn.sparse_input import SparseInputLinear


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
