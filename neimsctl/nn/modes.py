"""Train/eval modes for MC dropout: everything in eval mode except the stochastic layers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from torch import nn

__all__ = ["only_training"]


@contextlib.contextmanager
def only_training(root: nn.Module, stochastic: Iterable[nn.Module]) -> Iterator[nn.Module]:
    """Put ``root`` in eval mode and only the ``stochastic`` modules in training mode.

    The train/eval state of every module of ``root`` is restored on exit.

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    >>> with only_training(m, [m[1]]):
    ...     [x.training for x in m]
    [False, True]
    >>> [x.training for x in m]
    [True, True]
    """
    saved = {m: m.training for m in root.modules()}
    root.eval()
    for m in stochastic:
        m.train()
    try:
        yield root
    finally:
        for m, mode in saved.items():
            m.training = mode
