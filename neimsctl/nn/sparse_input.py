"""A Linear layer that reads only the weight rows of the inputs that are non-zero.

The student's input is a fingerprint: of its 6144 slots a molecule sets ~50-300. A dense
``Linear(6144, 512)`` reads all 3.1M weights (12.6 MB in fp32) per call, which makes single-
molecule inference memory-bound; gathering the rows of the active slots reads ~2 % of that.

:class:`SparseInputLinear` is a drop-in :class:`torch.nn.Linear` (same parameters, same state
dict): in training, with autograd on, or for inputs that are not sparse enough it is the dense
layer; otherwise it sums, per row, the rows of a cached contiguous ``W.T`` (rebuilt whenever the
weight changes) selected by the non-zero inputs and scaled by their values
(``torch.nn.functional.embedding_bag``): ~2 % of the dense work for fingerprints, at any batch size.

Its input may also be a :class:`SparseRows`, the same matrix given by its non-zero entries
row by row (CSR): then the layer reads them as given instead of finding them with
``x.nonzero()``. ``predict`` builds them straight from the uint8 fingerprints
(:func:`neimsctl.chem.features.student_nonzero`): the dense ``(B, 6144)`` input, its bf16 copy and
the two ``nonzero`` passes of the student's two sparse-input layers cost ~0.03 ms per molecule,
as much as a tenth of the molecule's RDKit work. The results are the same bits: the same
columns, values and offsets reach ``embedding_bag`` in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class SparseRows:
    """A ``(B, n_cols)`` matrix given by its non-zero entries, row by row (CSR).

    Row ``i`` holds ``values[offsets[i]:offsets[i + 1]]`` at columns
    ``cols[offsets[i]:offsets[i + 1]]`` (ascending), everything else is zero: the order
    ``x.nonzero()`` finds them in. It stands in for the dense matrix wherever a model reads its
    input only through :class:`SparseInputLinear` layers (the student: ``StudentModel.forward``
    densifies it otherwise).

    Attributes
    ----------
    offsets : Tensor
        int64, shape ``(B + 1,)``, ``offsets[0] == 0``, non-decreasing.
    cols : Tensor
        int64, shape ``(nnz,)``.
    values : Tensor
        shape ``(nnz,)``, non-zero, the matrix's dtype.
    n_cols : int
        The matrix's width.

    Examples
    --------
    >>> x = SparseRows(torch.tensor([0, 2, 2, 3]), torch.tensor([1, 3, 0]),
    ...                torch.tensor([1.0, 2.0, 3.0]), 4)
    >>> x.dense()
    tensor([[0., 1., 0., 2.],
            [0., 0., 0., 0.],
            [3., 0., 0., 0.]])
    """

    offsets: Tensor
    cols: Tensor
    values: Tensor
    n_cols: int

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.offsets.shape[0] - 1, self.n_cols))

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def dim(self) -> int:
        return 2

    def to(self, target: Any) -> "SparseRows":
        """The same matrix with its values in another dtype, or all of it on another device."""
        if isinstance(target, torch.dtype):
            return self if target == self.values.dtype else \
                SparseRows(self.offsets, self.cols, self.values.to(target), self.n_cols)
        return SparseRows(self.offsets.to(target), self.cols.to(target), self.values.to(target),
                          self.n_cols)

    def dense(self) -> Tensor:
        """The ``(B, n_cols)`` dense matrix."""
        b = self.shape[0]
        out = self.values.new_zeros(b, self.n_cols)
        rows = torch.repeat_interleave(torch.arange(b, device=self.cols.device),
                                       self.offsets.diff())
        out[rows, self.cols] = self.values
        return out


class SparseInputLinear(nn.Linear):
    """:class:`torch.nn.Linear` with a sparse-input inference path (see the module docstring).

    Parameters
    ----------
    in_features, out_features, bias
        As :class:`torch.nn.Linear`.
    max_density
        Largest share of active input columns (over the batch) that takes the sparse path.

    Examples
    --------
    >>> lin = SparseInputLinear(100, 4)
    >>> x = torch.zeros(1, 100); x[0, [3, 50]] = 1.0
    >>> with torch.inference_mode():
    ...     bool(torch.allclose(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias), atol=1e-6))
    True
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 max_density: float = 0.15) -> None:
        super().__init__(in_features, out_features, bias)
        self.max_density = max_density
        self._wt: Tensor | None = None
        self._wt_key: tuple | None = None

    def _transposed(self) -> Tensor:
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._wt is None or self._wt_key != key:
            self._wt, self._wt_key = w.detach().t().contiguous(), key
        return self._wt

    def reads_rows(self, x: SparseRows) -> bool:
        """True when :meth:`forward` takes the rows ``x`` through its sparse path (eval mode,
        autograd off, at least one row, few enough non-zero entries), else it densifies them."""
        return not (self.training or torch.is_grad_enabled() or x.shape[0] == 0
                    or x.cols.shape[0] > self.max_density * x.shape[0] * x.shape[1])

    def forward(self, x: Tensor | SparseRows) -> Tensor:
        if isinstance(x, SparseRows):
            if not self.reads_rows(x):
                return super().forward(x.dense())
            cols, values, offsets = x.cols, x.values, x.offsets[:-1]
        elif self.training or torch.is_grad_enabled() or x.dim() != 2 or x.shape[0] == 0:
            return super().forward(x)
        else:
            nz = x.nonzero()
            if nz.shape[0] > self.max_density * x.numel():
                return super().forward(x)
            rows, cols = nz[:, 0], nz[:, 1]
            offsets = torch.searchsorted(rows, torch.arange(x.shape[0], device=x.device))
            values = x[rows, cols]
        wt = self._transposed()
        out = F.embedding_bag(cols, wt, offsets, mode="sum", per_sample_weights=values.to(wt.dtype))
        return out if self.bias is None else out + self.bias.to(out.dtype)
