"""Shared fixtures of the trainer tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The trainer tests' models are tiny: one thread is as fast, and immune to a busy machine
    (two OpenMP threads on two shared cores slow small matmuls down ~10x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
