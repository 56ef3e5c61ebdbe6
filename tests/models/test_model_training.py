"""One optimizer step of every model under the recipe that trains it, through BinaryChef: all the recipe's
steps applied, then the step's optimizer, loss (distillation from a small real teacher where the recipe
distils) and gradient clipping. Stem and classifier stay real, so do the shortcut convolutions where the
recipe keeps "$downsample$" real; everything else is binary."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bnn import BinaryChef
from bnn.binarize import swappable_layers
from bnn.layers import BinarizedLayer
from bnn.models import create_model, list_models, model_entrypoint

REPO = Path(__file__).resolve().parents[2]
CASES = [(name, {}) for name in list_models()] + [("bcdnet_a", {"dynamic_threshold": True})]


def is_binary(layer):
    return isinstance(layer, BinarizedLayer) and layer.activation_precision == 1 and layer.weight_precision == 1


# ReActNet-A-like models have no shortcut conv for the recipes' "$downsample$" to keep real: the chef warns.
@pytest.mark.filterwarnings("ignore:custom_config_layers_name. the pattern")
@pytest.mark.parametrize("name, kwargs", CASES, ids=[n + ("-dynamic" if kw else "") for n, kw in CASES])
def test_one_step_under_the_default_recipe(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, stem="cifar", **kwargs)
    chef = BinaryChef(REPO / model_entrypoint(name).default_recipe)
    for _ in range(len(chef)):
        model = chef.next(model)

    layers = swappable_layers(model)
    assert layers[0][0] in ("conv1", "stem.conv") and layers[-1][0] == "fc"
    expected_real = {layers[0][0], layers[-1][0]}
    shortcuts = {n: layer for n, layer in layers if "downsample" in n}
    overrides = chef.step.layer_configs()
    if "$downsample$" in overrides and overrides["$downsample$"] is None:
        expected_real |= set(shortcuts)
    elif "$downsample$" in overrides:
        # A&B step 2, as the official code: binary weights on the real (pooled) input of the shortcut
        assert all((layer.weight_precision, layer.activation_precision) == (1, 32) for layer in shortcuts.values())
        expected_real |= set(shortcuts)
    assert {n for n, layer in layers if not is_binary(layer)} == expected_real

    model.train()
    optimizer = chef.optimizer(model)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    criterion = chef.criterion(teacher=teacher if chef.settings.loss == "distillation" else None)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    loss = criterion(model(x), y, x)
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    chef.clip_gradients(model)
    optimizer.step()

    params = dict(model.named_parameters())
    assert all(torch.isfinite(p.grad).all() for p in params.values() if p.grad is not None)
    moved = {n for n, p in params.items() if not torch.equal(p.detach(), before[n])}
    with_grad = {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad <= moved
    layer_weights = {f"{n}.weight" for n, _ in layers}
    assert layer_weights <= with_grad, sorted(layer_weights - with_grad)

    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
