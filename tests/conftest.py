"""Shared test setup: one torch thread (the machine is shared) and a fixed-seed helper."""

from __future__ import annotations

import random

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def seeded() -> int:
    """Seed python's and torch's global generators; returns the seed."""
    random.seed(0)
    torch.manual_seed(0)
    return 0
