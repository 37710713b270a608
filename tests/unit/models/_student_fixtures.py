"""Shared fixture for the tiny student / MoE / distillation-loss tests.

``from _student_fixtures import _one_thread  # noqa: F401`` in a test module makes the
autouse fixture apply to every test of that module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: these tiny models only lose to thread start-up on a busy 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
