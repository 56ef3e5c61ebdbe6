"""What a model learned survives the recipe's steps (DESIGN.md, "State survives recipe steps"): a step swaps
binarizers, keeps the weights (the same Parameter objects) and the learned thresholds, gains and scales;
`start_from` rewinds the weights to an earlier point and keeps the new step's binarizers."""
import copy
from pathlib import Path

import pytest
import torch
import torchvision

from bnn import BinaryChef, RecipeError
from bnn.ops import RSign, ScaledWSWeightBinarizer, XNORWeightBinarizer

ABBNN = Path(__file__).resolve().parents[2] / "recipes" / "abbnn.yaml"
ACTIVATIONS = {"pre_activation": {"name": "RSign"}, "weight": {"name": "Identity"},
               "ignore_layer_names": ["_first_", "_last_"]}
BOTH = {"pre_activation": {"name": "RSign"}, "weight": {"name": "ScaledWSWeightBinarizer"},
        "ignore_layer_names": ["_first_", "_last_"]}


def _resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def _binarizer_params(model, kind):
    return {n: p for n, p in model.named_parameters() if n.endswith(kind)}


@torch.no_grad()
def _learn(params, seed):
    """Stand-in for training: new random values, in place."""
    g = torch.Generator().manual_seed(seed)
    for p in params.values():
        p.copy_(torch.randn(p.shape, generator=g))
    return {n: p.detach().clone() for n, p in params.items()}


def _float_keys(state):
    return [k for k in state if "_process." not in k]


TWO_STEPS = {"step1": {**ACTIVATIONS, "layers": {"$downsample$": None}},
             "step2": {**BOTH, "layers": {"$downsample$": None}, "training": {"start_from": "step1"}}}


@pytest.mark.parametrize("recipe", [ABBNN, TWO_STEPS], ids=["abbnn.yaml", "dict"])
def test_rsign_biases_and_weights_survive_next(recipe):
    chef = BinaryChef(recipe)
    model = _resnet()
    weights = dict(model.named_parameters())
    model = chef.next(model)
    biases = _binarizer_params(model, "activation_pre_process.bias")
    assert len(biases) >= 16  # at least the 3x3 convs of the 8 blocks
    learned = _learn(biases, seed=1)

    model = chef.next(model)
    after = dict(model.named_parameters())
    for name, value in learned.items():
        assert torch.equal(after[name], value), name
    for name, param in weights.items():
        assert after[name] is param, f"{name} is a new Parameter after step 2"
    assert isinstance(model.layer1[0].conv1.weight_pre_process, ScaledWSWeightBinarizer)
    assert isinstance(model.layer1[0].conv1.activation_pre_process, RSign)


def test_scaled_ws_gains_survive_running_the_step_again():
    chef = BinaryChef(TWO_STEPS)
    model = chef.next(chef.next(_resnet()))
    gains = _binarizer_params(model, "weight_pre_process.gain")
    assert gains and all(torch.equal(g, torch.ones_like(g)) for g in gains.values())
    learned = _learn(gains, seed=2)
    model = chef.run_step(model, 1)
    assert chef.current_step == 2
    after = dict(model.named_parameters())
    for name, value in learned.items():
        assert torch.equal(after[name], value), name


def test_gains_and_biases_carry_into_a_third_step():
    chef = BinaryChef({"step1": ACTIVATIONS, "step2": BOTH,
                       "step3": {**BOTH, "pre_activation": {"name": "RSign", "args": {"estimator": "ste"}}}})
    model = chef.next(chef.next(_resnet()))
    learned = _learn({**_binarizer_params(model, ".gain"), **_binarizer_params(model, ".bias")}, seed=3)
    learned = {n: v for n, v in learned.items() if "_process." in n}
    model = chef.next(model)
    after = dict(model.named_parameters())
    assert model.layer1[0].conv1.activation_pre_process.estimator == "ste"
    for name, value in learned.items():
        assert torch.equal(after[name], value), name


def test_start_from_initial_restores_the_float_weights_and_keeps_the_new_binarizers():
    chef = BinaryChef({"step1": ACTIVATIONS,
                       "step2": {**ACTIVATIONS, "weight": {"name": "XNORWeightBinarizer"},
                                 "training": {"start_from": "initial"}}})
    model = _resnet()
    initial = copy.deepcopy(model.state_dict())
    params = dict(model.named_parameters())
    model = chef.next(model)
    _learn({n: p for n, p in model.named_parameters()}, seed=4)
    model.layer1[0].bn1.running_mean.add_(1.0)
    assert not torch.equal(model.layer1[0].conv1.weight, initial["layer1.0.conv1.weight"])

    model = chef.next(model)
    state = model.state_dict()
    for key in _float_keys(initial):
        assert torch.equal(state[key], initial[key]), key
    for name, param in params.items():
        assert dict(model.named_parameters())[name] is param
    conv = model.layer1[0].conv1
    assert isinstance(conv.weight_pre_process, XNORWeightBinarizer)
    assert isinstance(conv.activation_pre_process, RSign)
    assert conv.activation_pre_process.bias.shape == (64,)


def test_start_from_an_earlier_step_rewinds_to_the_end_of_that_step():
    chef = BinaryChef({"step1": ACTIVATIONS, "step2": BOTH,
                       "step3": {**BOTH, "training": {"start_from": "step1"}}})
    model = chef.next(_resnet())
    _learn(dict(model.named_parameters()), seed=5)
    end_of_step1 = copy.deepcopy(model.state_dict())
    model = chef.next(model)
    _learn(dict(model.named_parameters()), seed=6)
    model = chef.next(model)
    state = model.state_dict()
    for key, value in end_of_step1.items():
        assert torch.equal(state[key], value), key
    gains = _binarizer_params(model, ".gain")
    assert gains and isinstance(model.layer1[0].conv1.weight_pre_process, ScaledWSWeightBinarizer)


@pytest.mark.parametrize("steps", [
    {"step1": {**ACTIVATIONS, "training": {"start_from": "step1"}}},
    {"step1": {**ACTIVATIONS, "training": {"start_from": "step2"}}, "step2": BOTH},
    {"step1": ACTIVATIONS, "step2": {**BOTH, "training": {"start_from": "step0"}}},
], ids=["itself", "a later step", "no such step"])
def test_start_from_must_name_an_earlier_step(steps):
    with pytest.raises(RecipeError, match="training.start_from") as info:
        BinaryChef(steps)
    assert info.value.field == "training.start_from"
