"""The recipe formats the chef accepts: upstream bnn 0.1.2's (its own test recipe, verbatim), shorthand
names and aliases, per-layer overrides, YAML's `1e-3`, and the user's own binarizers (user_modules)."""
import pytest
import torch
import torch.nn as nn
import torchvision
import yaml

from bnn import BinaryChef, RecipeError
from bnn.layers import BinarizedLayer
from bnn.ops import (BasicInputBinarizer, BasicScaleBinarizer, Identity, MagnitudeAwareWeightBinarizer, RSign,
                     XNORWeightBinarizer)

# upstream bnn 0.1.2, test/assets/test.yaml
UPSTREAM_TEST = """\
# Define a list of steps that should be followed
step0:
  pre_activation:
    name: "BasicInputBinarizer"
  post_activation:
    name: "BasicScaleBinarizer"
  weight:
    name: "nn.Identity"
  # Either provide the layers name, or use one of the reserved keyword as shown bellow
  ignore_layer_names:
    - "_last_"
    - "_first_"
step1:
  pre_activation:
    name: "BasicInputBinarizer"
  post_activation:
    name: "BasicScaleBinarizer"
  weight:
    name: "XNORWeightBinarizer"
    args:
      compute_alpha: True
      center_weights: True
  ignore_layer_names:
    - "_last_"
    - "_first_"
step2:
  pre_activation:
    name: "BasicInputBinarizer"
  post_activation:
    name: "BasicScaleBinarizer"
  weight:
    name: "XNORWeightBinarizer"
    args:
      compute_alpha: True
      center_weights: False
"""


def test_upstream_test_recipe_on_resnet18(tmp_path):
    path = tmp_path / "test.yaml"
    path.write_text(UPSTREAM_TEST, encoding="utf-8")
    chef = BinaryChef(path)
    assert len(chef) == chef.get_num_steps() == 3
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)

    model = chef.next(model)
    conv = model.layer1[0].conv1
    assert type(conv.activation_pre_process) is BasicInputBinarizer
    assert type(conv.activation_post_process) is BasicScaleBinarizer
    assert type(conv.weight_pre_process) is Identity and conv.weight_precision == 32
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    assert isinstance(model.layer2[0].downsample[0], BinarizedLayer)
    with torch.no_grad():
        conv.activation_post_process.alpha.uniform_(0.5, 1.5)
    alpha = conv.activation_post_process.alpha.detach().clone()

    model = chef.next(model)
    conv = model.layer1[0].conv1
    assert type(conv.weight_pre_process) is XNORWeightBinarizer and conv.weight_precision == 1
    assert conv.weight_pre_process.center_weights is True and conv.weight_pre_process.compute_alpha is True
    assert torch.equal(conv.activation_post_process.alpha, alpha)

    model = chef.next(model)
    conv = model.layer1[0].conv1
    assert conv.weight_pre_process.center_weights is False
    assert torch.equal(conv.activation_post_process.alpha, alpha)
    # step2 has no ignore_layer_names: the stem and the classifier are binarized too
    assert isinstance(model.conv1, BinarizedLayer) and isinstance(model.fc, BinarizedLayer)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_shorthand_names_and_aliases():
    chef = BinaryChef({"step1": {"pre_activation": "rsign", "weight": "magnitude_aware_sign",
                                 "post_activation": "identity", "ignore_layer_names": ["_first_"]}})
    model = chef.next(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)))
    assert type(model[1].activation_pre_process) is RSign
    assert type(model[1].weight_pre_process) is MagnitudeAwareWeightBinarizer
    assert type(model[0]) is nn.Conv2d


def test_layer_overrides_merge_with_the_step():
    chef = BinaryChef({"step1": {
        "pre_activation": {"name": "RSign", "args": {"estimator": "ste"}},
        "weight": {"name": "MagnitudeAwareWeightBinarizer"},
        "ignore_layer_names": ["_first_"],
        "layers": {"2": {"weight": {"name": "XNORWeightBinarizer", "args": {"center_weights": True}}},
                   "$^1$": None}}})
    model = chef.next(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3)))
    assert type(model[0]) is nn.Conv2d and type(model[1]) is nn.Conv2d
    assert type(model[2].weight_pre_process) is XNORWeightBinarizer and model[2].weight_pre_process.center_weights
    assert model[2].activation_pre_process.estimator == "ste"
    assert type(model[3].weight_pre_process) is MagnitudeAwareWeightBinarizer


def test_exponent_without_a_dot_is_a_number(tmp_path):
    text = ("step1:\n  pre_activation: RSign\n  weight: Identity\n"
            "  training:\n    optimizer: {name: Adam, args: {lr: 1e-3, eps: 1e-8}}\n"
            "    weight_decay: 5e-6\n    agc: 1e-3\n")
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    assert yaml.safe_load(text)["step1"]["training"]["optimizer"]["args"]["lr"] == "1e-3"  # YAML 1.1 reads a string
    chef = BinaryChef(path)
    chef.next(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)))
    settings = chef.settings
    assert dict(settings.optimizer_args) == {"lr": 1e-3, "eps": 1e-8}
    assert settings.weight_decay == 5e-6 and settings.agc_clipping == 1e-3
    optimizer = chef.optimizer(nn.Conv2d(3, 4, 3))
    assert optimizer.param_groups[0]["lr"] == 1e-3 and isinstance(optimizer.param_groups[0]["lr"], float)


def test_a_string_that_is_no_number_is_still_refused():
    with pytest.raises(RecipeError, match="training.optimizer.args.lr"):
        BinaryChef({"step1": {"pre_activation": "RSign", "weight": "Identity",
                              "training": {"optimizer": {"name": "Adam", "args": {"lr": "fast"}}}}})


class Halve(nn.Module):
    """A user's activation 'binarizer': x / 2, with one argument."""

    def __init__(self, factor: float = 0.5):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


@pytest.mark.parametrize("user_modules, name", [([Halve], "Halve"), ({"halve": Halve}, "halve")],
                         ids=["list", "dict"])
def test_user_modules_are_usable_by_name(user_modules, name):
    recipe = {"step1": {"pre_activation": {"name": name, "args": {"factor": 0.25}}, "weight": "Identity"}}
    chef = BinaryChef(recipe, user_modules=user_modules)
    model = chef.next(nn.Sequential(nn.Linear(3, 2, bias=False)))
    assert type(model[0].activation_pre_process) is Halve and model[0].activation_pre_process.factor == 0.25
    x = torch.randn(4, 3)
    assert torch.allclose(model(x), 0.25 * x @ model[0].weight.T)
    with pytest.raises(RecipeError, match="has no argument 'factr'; did you mean 'factor'"):
        BinaryChef({"step1": {**recipe["step1"], "pre_activation": {"name": name, "args": {"factr": 1}}}},
                   user_modules=user_modules)
    with pytest.raises(RecipeError, match="unknown binarizer"):
        BinaryChef(recipe)


@pytest.mark.parametrize("user_modules", [[Halve()], {"halve": Halve()}, [len], {"halve": "Halve"}, [int]],
                         ids=["instance", "instance in dict", "function", "string", "non-module class"])
def test_user_modules_must_be_module_classes(user_modules):
    with pytest.raises(ValueError, match="nn.Module classes"):
        BinaryChef({"step1": {"pre_activation": "RSign", "weight": "Identity"}}, user_modules=user_modules)
