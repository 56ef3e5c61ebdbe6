"""bnn.models registry: names, errors, the recipe and paper each model records, kwargs pass-through."""
from pathlib import Path

import pytest
import torch.nn as nn

import bnn
from bnn.models import create_model, list_models, model_entrypoint, register_model

REPO = Path(__file__).resolve().parents[2]

EXPECTED = ["abbnn_reactnet18", "abbnn_reactnet34", "abbnn_reactnet_a", "bcdnet_a", "birealnet18", "birealnet34",
            "nf_reactnet_a", "reactnet18", "reactnet34", "reactnet_a"]


def test_list_models_names_every_model_of_the_zoo():
    assert list_models() == EXPECTED
    assert bnn.models.list_models is list_models


def test_unknown_name_is_a_value_error_with_the_close_match():
    with pytest.raises(ValueError, match="unknown model 'reactnet_18'.*did you mean 'reactnet18'"):
        create_model("reactnet_18")
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        create_model("resnet50")


@pytest.mark.parametrize("stem", ["ImageNet", "cifar10", "", None])
def test_bad_stem_is_a_value_error(stem):
    with pytest.raises(ValueError, match="stem must be one of"):
        create_model("reactnet18", stem=stem)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_bad_num_classes_is_a_value_error(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        create_model("birealnet18", num_classes=num_classes)


@pytest.mark.parametrize("name", EXPECTED)
def test_each_model_records_its_recipe_and_paper(name):
    fn = model_entrypoint(name)
    assert (REPO / fn.default_recipe).is_file(), fn.default_recipe
    assert fn.default_recipe.startswith("recipes/")
    assert fn.paper and fn.__doc__


def test_recipes_are_the_papers():
    recipe = {n: model_entrypoint(n).default_recipe for n in EXPECTED}
    assert recipe["reactnet18"] == recipe["reactnet_a"] == "recipes/reactnet.yaml"
    assert recipe["birealnet34"] == "recipes/bireal.yaml"
    assert recipe["abbnn_reactnet_a"] == "recipes/abbnn.yaml"
    assert recipe["nf_reactnet_a"] == "recipes/bnn-bn.yaml"
    assert recipe["bcdnet_a"] == "recipes/bcdnet.yaml"


def test_kwargs_reach_the_model_function():
    model = create_model("abbnn_reactnet18", num_classes=10, stem="cifar", alpha=0.5)
    assert {m.alpha for m in model.modules() if hasattr(m, "alpha")} == {0.5}
    with pytest.raises(TypeError):
        create_model("reactnet18", depth=50)


def test_register_model_refuses_a_second_function_under_a_taken_name():
    def reactnet18(num_classes=1000, stem="imagenet"):
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(paper="x", default_recipe="recipes/bireal.yaml")(reactnet18)
    assert model_entrypoint("reactnet18") is not reactnet18
