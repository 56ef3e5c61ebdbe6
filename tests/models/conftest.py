"""The model tests run whole networks on the CPU: one intra-op thread each keeps them fast on shared,
busy cores (two threads spin against each other there, for several times the CPU time)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
