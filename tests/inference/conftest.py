"""Fixtures of the inference-converter tests: one intra-op thread per test (two busy cores), resnet18 under
a recipe built once per session."""
import copy

import pytest
import torch

from inference_helpers import REPO, resnet18_under


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_CACHE = {}


@pytest.fixture
def resnet18_recipe():
    """``resnet18_recipe(name)``: a fresh copy of resnet18 under ``recipes/<name>.yaml`` (built once)."""
    def get(name: str):
        if name not in _CACHE:
            _CACHE[name] = resnet18_under(REPO / "recipes" / f"{name}.yaml")
        return copy.deepcopy(_CACHE[name])
    return get
