"""Every recipe in recipes/ loads, applies step by step to torchvision's resnet18 (CIFAR size: 10 classes,
32x32 inputs, batch 4) as the file says, and trains one iteration per step with the chef's optimizer,
schedule, loss and gradient clipping.

What each step should build is read from the YAML here with yaml.safe_load, independently of bnn's schema:
the layers the recipe leaves real (ignore_layer_names, `layers: {selector: null}`) must be plain float
layers, the others fake-binarized with the named binarizers and arguments.
"""
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
import yaml

from bnn import BinaryChef
from bnn.engine import BINARIZERS
from bnn.layers import BinarizedLayer

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
#: Binarizer names that keep their side real-valued (32 bits).
REAL = {"Identity", "nn.Identity", "identity", "ScaledStandardizedWeight", "scaled_ws"}
#: resnet18 layers whose expected state every step checks: stem, a block's convs, a shortcut, classifier.
PROBES = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.downsample.0", "layer3.1.conv2", "fc"]


def test_the_papers_recipes_are_shipped():
    names = {p.name for p in RECIPES}
    assert {"abbnn.yaml", "reactnet.yaml", "bireal.yaml", "xnor-net.yaml"} <= names


def _binarizer(value):
    """(name, args) of a pre_activation / post_activation / weight entry as a recipe writes it."""
    if value is None:
        return "Identity", {}
    if isinstance(value, str):
        return value, {}
    return value["name"], value.get("args") or {}


def _selects(selector, layer, first, last):
    if selector == "_first_":
        return layer == first
    if selector == "_last_":
        return layer == last
    if len(selector) >= 2 and selector[0] == selector[-1] == "$":
        return re.search(selector[1:-1], layer) is not None
    return layer == selector or layer.startswith(selector + ".")


def _stays_real(step, layer):
    ignored = step.get("ignore_layer_names") or []
    nulls = [sel for sel, cfg in (step.get("layers") or {}).items() if cfg is None]
    return any(_selects(sel, layer, "conv1", "fc") for sel in list(ignored) + nulls)


def _check_layer(module, layer, role_spec, role):
    name, args = role_spec
    binarizer = getattr(module, role)
    assert type(binarizer) is BINARIZERS[name], (layer, role, type(binarizer))
    for arg, value in args.items():
        if hasattr(binarizer, arg):
            assert getattr(binarizer, arg) == value, (layer, role, arg)


def _check_step(model, step):
    modules = dict(model.named_modules())
    for layer in PROBES:
        module = modules[layer]
        # a partial override (layers: {selector: {role: ...}}) replaces the step's entries for that layer
        entries = {role: step.get(role) for role in ("pre_activation", "weight", "post_activation")}
        for selector, override in (step.get("layers") or {}).items():
            if override is not None and _selects(selector, layer, "conv1", "fc"):
                entries.update(override)
        pre, weight = _binarizer(entries["pre_activation"]), _binarizer(entries["weight"])
        post = _binarizer(entries["post_activation"])
        if _stays_real(step, layer):
            assert not isinstance(module, BinarizedLayer), f"{layer} should stay real"
            assert type(module) in (nn.Conv2d, nn.Linear)
            continue
        assert isinstance(module, BinarizedLayer), f"{layer} should be binarized"
        assert module.weight_precision == (32 if weight[0] in REAL else 1), layer
        assert module.activation_precision == (32 if pre[0] in REAL else 1), layer
        _check_layer(module, layer, pre, "activation_pre_process")
        _check_layer(module, layer, weight, "weight_pre_process")
        _check_layer(module, layer, post, "activation_post_process")


def _teacher():
    torch.manual_seed(1)
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 10))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_applies_step_by_step_and_trains(path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    chef = BinaryChef(path)
    assert len(chef) == len(raw) >= 1
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))

    for index, (step_name, step) in enumerate(raw.items()):
        model = chef.next(model)
        assert chef.current_step == index + 1 and chef.step.name == step_name
        _check_step(model, step)
        assert any(isinstance(m, BinarizedLayer) and m.activation_precision == 1 for m in model.modules())

        training = step.get("training") or {}
        if "epochs" in training:
            assert chef.settings.epochs == training["epochs"]
        optimizer = chef.optimizer(model)
        assert type(optimizer).__name__ == training.get("optimizer", {}).get("name", "Adam")
        scheduler = chef.scheduler(optimizer, steps_per_epoch=10, epochs=1)
        distils = chef.settings.loss == "distillation"
        assert distils == (training.get("loss", {}).get("name") == "distillation")
        criterion = chef.criterion(teacher=_teacher()) if distils else chef.criterion()

        model.train()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = criterion(model(x), y, x)
        assert torch.isfinite(loss), (path.name, step_name)
        optimizer.zero_grad()
        loss.backward()
        chef.clip_gradients(model)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        scheduler.step()

        params = dict(model.named_parameters())
        for name in ("layer1.0.conv1.weight", "layer3.1.conv2.weight", "fc.weight", "conv1.weight"):
            assert not torch.equal(params[name], before[name]), f"{step_name}: {name} did not train"
        learned = [n for n in params if ".activation_pre_process." in n or ".weight_pre_process." in n]
        assert all(not torch.equal(params[n], before[n]) for n in learned), learned
        assert all(torch.isfinite(p).all() for p in params.values())


@pytest.mark.parametrize("recipe, estimator, weight_binarizer", [
    ("abbnn.yaml", "mask", "ScaledWSWeightBinarizer"),
    ("reactnet.yaml", "approx_sign", "MagnitudeAwareWeightBinarizer"),
])
def test_two_step_recipes_by_hand(recipe, estimator, weight_binarizer):
    """The same facts written out: step 1 binary activations with real weights, step 2 both binary."""
    chef = BinaryChef(Path(__file__).resolve().parents[2] / "recipes" / recipe)
    model = torchvision.models.resnet18(num_classes=10)
    for weight_bits, binarizer in [(32, "Identity"), (1, weight_binarizer)]:
        model = chef.next(model)
        layer = model.layer1[0].conv1
        assert (layer.weight_precision, layer.activation_precision) == (weight_bits, 1)
        assert type(layer.weight_pre_process).__name__ == binarizer
        assert type(layer.activation_pre_process).__name__ == "RSign"
        assert layer.activation_pre_process.estimator == estimator
        assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear


def test_reactnet_keeps_the_shortcuts_real():
    chef = BinaryChef(Path(__file__).resolve().parents[2] / "recipes" / "reactnet.yaml")
    model = torchvision.models.resnet18(num_classes=10)
    for _ in range(len(chef)):
        model = chef.next(model)
        assert all(type(model.get_submodule(f"layer{i}.0.downsample.0")) is nn.Conv2d for i in (2, 3, 4))


def test_xnor_net_binarizes_the_shortcuts():
    """xnor-net.yaml has no `$downsample$: null`: the 1x1 shortcut convs are binarized too."""
    chef = BinaryChef(Path(__file__).resolve().parents[2] / "recipes" / "xnor-net.yaml")
    model = chef.next(torchvision.models.resnet18(num_classes=10))
    shortcut = model.layer2[0].downsample[0]
    assert isinstance(shortcut, BinarizedLayer) and shortcut.weight_precision == 1
    assert shortcut.weight_pre_process.center_weights is True
