"""Shared by the recipe-engine tests: the repository root, and one intra-op thread per test (the models are
small; two CPU cores shared between two threads and other processes run slower than one)."""
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def repo() -> Path:
    return REPO
