"""The NEIMS v1 training loss: m/z-weighted mean squared error on sqrt-intensity spectra.

As in the reference implementation (``generalized_mse`` of deep-molecular-massspec): with targets
``t = (I / base peak * 999) ** 0.5`` and predictions ``p`` in the same space,

.. math::
    L = \\frac{1}{B\\,N} \\sum_{b,j} w_j (t_{bj} - p_{bj})^2, \\qquad
    w_j = \\frac{(j + 1)^{a}}{\\sum_k (k + 1)^{a}}

where bin ``j`` is m/z ``j`` and ``a = mz_power`` (1). Weighting high masses matches the m/z^1
weighted cosine used for library matching.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neimsctl.models.neims_v1 import NeimsV1, NeimsV1Config


def mz_weights(n_bins: int, mz_power: float = 1.0, device: torch.device | None = None) -> Tensor:
    """Per-bin loss weights ``(j + 1) ** mz_power`` normalised to sum 1, float32 ``(n_bins,)``."""
    w = torch.arange(1, n_bins + 1, dtype=torch.float32, device=device).pow(mz_power)
    return w / w.sum()


def neims_v1_loss(pred: Tensor, target: Tensor, mz_power: float = 1.0) -> Tensor:
    """m/z-weighted MSE between prediction and target, both ``(B, n_bins)`` in target space."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
    w = mz_weights(pred.shape[1], mz_power, pred.device).to(pred.dtype)
    return (w * (pred - target).square()).mean()


class NeimsV1Loss(nn.Module):
    """Loss of a :class:`~neimsctl.models.neims_v1.NeimsV1`, taking *linear* target spectra.

    Parameters
    ----------
    config
        The model's config (``intensity_power``, ``target_scale``, ``mz_power``, ``n_bins``).

    Examples
    --------
    >>> from neimsctl.models.neims_v1 import NeimsV1Config
    >>> loss = NeimsV1Loss(NeimsV1Config())
    >>> y = torch.zeros(1, 501); y[0, 77] = 1.0
    >>> float(loss(loss.transform_target(y), y))
    0.0
    """

    def __init__(self, config: NeimsV1Config) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("weights", mz_weights(config.n_bins, config.mz_power), persistent=False)

    def transform_target(self, spectra: Tensor) -> Tensor:
        """Linear spectra (any scale) -> ``(I / max * target_scale) ** intensity_power``."""
        return NeimsV1.transform_target_with(spectra, self.config)

    def forward(self, pred: Tensor, spectra: Tensor) -> Tensor:
        """Loss of ``pred`` (target space) against linear ``spectra``, both ``(B, n_bins)``."""
        target = self.transform_target(spectra)
        if pred.shape != target.shape:
            raise ValueError(f"pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
        return (self.weights.to(pred.dtype) * (pred - target).square()).mean()
