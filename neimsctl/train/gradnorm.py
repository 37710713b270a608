"""GradNorm: adaptive weights for the main distillation losses (Chen et al. 2018).

Reference: Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks", ICML 2018, https://arxiv.org/abs/1711.02257.

For task losses :math:`L_i` with weights :math:`w_i` and a shared layer :math:`W`:

.. math::
    G_i = w_i \\lVert \\nabla_W L_i \\rVert_2,\\quad
    \\tilde L_i = L_i / L_i(0),\\quad r_i = \\tilde L_i / \\overline{\\tilde L},\\quad
    L_{grad} = \\sum_i \\lvert G_i - \\bar G\\, r_i^{\\alpha} \\rvert

with the target :math:`\\bar G\\, r_i^\\alpha` held constant. Only the weights are updated from
:math:`L_{grad}` (by Adam), then clamped positive and renormalised so that they sum to their
initial sum. Since :math:`G_i` is linear in :math:`w_i`, :math:`\\partial L_{grad}/\\partial w_i =
\\mathrm{sign}(G_i - \\bar G r_i^\\alpha)\\,\\lVert\\nabla_W L_i\\rVert`: no second-order gradients.

During the first ``warmup_epochs`` epochs the weights stay at their initial values (SPEC.md:
0.3 / 0.5 / 0.2 for L_hard / L_soft / L_feature over a 15-epoch warm-up); :math:`L_i(0)` is the
mean of the first ``init_steps`` values seen, i.e. measured at the start of training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class GradNorm:
    """Keeps and adapts the task weights; call :meth:`update` once per training step.

    Parameters
    ----------
    initial
        Initial weights, one per task (their sum is preserved).
    alpha
        Asymmetry: larger values pull harder on tasks that train slower.
    warmup_epochs
        Epochs (0-based epoch < warmup_epochs) during which the weights are frozen.
    lr
        Adam learning rate for the weights.
    min_weight
        Floor applied before renormalisation (keeps every weight positive).
    init_steps
        Number of first calls averaged into :math:`L_i(0)`.
    """

    def __init__(self, initial: Sequence[float] = (0.3, 0.5, 0.2), *, alpha: float = 1.5,
                 warmup_epochs: int = 15, lr: float = 0.025, min_weight: float = 1e-3,
                 init_steps: int = 10) -> None:
        if len(initial) < 1 or min(initial) < 0 or sum(initial) <= 0:
            raise ValueError(f"GradNorm needs non-negative initial weights with a positive sum, "
                             f"got {tuple(initial)}")
        self.initial = torch.tensor([float(v) for v in initial])
        self.alpha, self.warmup_epochs, self.min_weight = float(alpha), int(warmup_epochs), min_weight
        self.init_steps, self.lr = int(init_steps), float(lr)
        self._w = self.initial.clone().requires_grad_(True)
        self._opt = torch.optim.Adam([self._w], lr=lr)
        self.loss0_sum = torch.zeros(len(initial), dtype=torch.float64)
        self.loss0_n = torch.zeros(len(initial), dtype=torch.long)
        self.epoch = 0
        self.updates = 0

    @property
    def weights(self) -> Tensor:
        """Current weights (a detached float32 copy)."""
        return self._w.detach().clone()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _record_initial(self, values: Tensor, active: list[int]) -> None:
        for i in active:
            if self.loss0_n[i] < self.init_steps:
                self.loss0_sum[i] += float(values[i])
                self.loss0_n[i] += 1

    def update(self, losses: Sequence[Tensor | None], shared: Sequence[Tensor]) -> bool:
        """Record initial losses; after the warm-up, take one GradNorm step on the weights.

        Parameters
        ----------
        losses
            The task losses of this step (scalar tensors attached to the graph), ``None`` for a
            task absent this step (its weight is left alone).
        shared
            Parameters of the shared layer (e.g. ``model.shared_parameters()``).

        Returns
        -------
        bool
            Whether the weights were changed.
        """
        if len(losses) != len(self.initial):
            raise ValueError(f"GradNorm was built for {len(self.initial)} losses, got {len(losses)}")
        active = [i for i, l in enumerate(losses) if l is not None and l.requires_grad]
        if not active or not torch.is_grad_enabled():
            return False
        values = torch.tensor([float(l.detach()) if l is not None else 0.0 for l in losses])
        device = shared[0].device
        values = _all_reduce_mean(values, device)
        self._record_initial(values, active)
        if self.epoch < self.warmup_epochs:
            return False
        norms = torch.zeros(len(losses))
        for i in active:
            grads = torch.autograd.grad(losses[i], list(shared), retain_graph=True, allow_unused=True)
            sq = sum(float(g.detach().float().square().sum()) for g in grads if g is not None)
            norms[i] = sq ** 0.5
        norms = _all_reduce_mean(norms, device)
        idx = torch.tensor(active)
        loss0 = (self.loss0_sum / self.loss0_n.clamp_min(1)).float()
        ratio = values[idx] / loss0[idx].clamp_min(1e-12)
        r = ratio / ratio.mean().clamp_min(1e-12)
        w = self._w.detach()
        g_w = w[idx] * norms[idx]
        target = g_w.mean() * r.pow(self.alpha)
        grad = torch.zeros_like(w)
        grad[idx] = torch.sign(g_w - target) * norms[idx]
        self._opt.zero_grad(set_to_none=False)
        self._w.grad = grad
        self._opt.step()
        with torch.no_grad():
            new = w.clone()
            new[idx] = self._w[idx].clamp_min(self.min_weight)
            new[idx] *= self.initial[idx].sum() / new[idx].sum()
            self._w.copy_(new)
        self.updates += 1
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "optimizer": self._opt.state_dict(),
                "loss0_sum": self.loss0_sum.clone(), "loss0_n": self.loss0_n.clone(),
                "epoch": self.epoch, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self._w.copy_(torch.as_tensor(state["weights"], dtype=torch.float32))
        self._opt.load_state_dict(state["optimizer"])
        self.loss0_sum = torch.as_tensor(state["loss0_sum"], dtype=torch.float64).clone()
        self.loss0_n = torch.as_tensor(state["loss0_n"], dtype=torch.long).clone()
        self.epoch, self.updates = int(state["epoch"]), int(state["updates"])

    def __repr__(self) -> str:
        w = ", ".join(f"{v:.3f}" for v in self._w.detach().tolist())
        return f"GradNorm(weights=[{w}], alpha={self.alpha}, warmup_epochs={self.warmup_epochs})"


def _all_reduce_mean(t: Tensor, device: torch.device) -> Tensor:
    """Average over DDP ranks (a no-op in one process), so every rank keeps the same weights."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        t = t.to(device, copy=True)
        dist.all_reduce(t)
        t = (t / dist.get_world_size()).cpu()
    return t
