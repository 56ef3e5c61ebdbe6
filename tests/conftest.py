"""Shared by every test: one intra-op thread per test. The models under test are
small; on two CPU cores shared with other processes, two threads spin against each other and run several
times slower than one. Tests that measure thread counts set their own."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
