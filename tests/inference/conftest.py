"""Fixtures of the inference-converter tests: resnet18 under a recipe, built once per session (the thread
setting is tests/conftest.py's)."""
import copy

import pytest

from inference_helpers import REPO, resnet18_under


_CACHE = {}


@pytest.fixture
def resnet18_recipe():
    """``resnet18_recipe(name)``: a fresh copy of resnet18 under ``recipes/<name>.yaml`` (built once)."""
    def get(name: str):
        if name not in _CACHE:
            _CACHE[name] = resnet18_under(REPO / "recipes" / f"{name}.yaml")
        return copy.deepcopy(_CACHE[name])
    return get
