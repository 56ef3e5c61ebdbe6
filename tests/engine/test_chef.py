"""BinaryChef's API: number of steps, next / run_step and their limits, the current step and its settings,
and resuming from a checkpoint (chef.state_dict + model.state_dict, saved with torch.save)."""
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from bnn import BinaryChef, RecipeError
from bnn.ops import RSign, ScaledWSWeightBinarizer

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ABBNN = RECIPES / "abbnn.yaml"


def _resnet(seed=0):
    torch.manual_seed(seed)
    return torchvision.models.resnet18(num_classes=10)


@torch.no_grad()
def _pretend_training(model, seed):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=g))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=g))


def test_len_and_current_step():
    chef = BinaryChef(ABBNN)
    assert len(chef) == chef.get_num_steps() == 2
    assert chef.current_step == 0 and chef.step is None
    with pytest.raises(RuntimeError, match=r"chef.next\(model\) first"):
        chef.settings
    model = chef.next(_resnet())
    assert chef.current_step == 1 and chef.step.name == "step1"
    model = chef.next(model)
    assert chef.current_step == 2 and chef.step.name == "step2"
    assert "current_step=2" in repr(chef)


def test_next_past_the_last_step():
    chef = BinaryChef(ABBNN)
    model = chef.next(chef.next(_resnet()))
    with pytest.raises(RuntimeError, match="no next step") as info:
        chef.next(model)
    assert "2 step(s) are done" in str(info.value) and str(ABBNN) in str(info.value)
    assert chef.current_step == 2


@pytest.mark.parametrize("index", [-1, 2, 10])
def test_run_step_out_of_range(index):
    chef = BinaryChef(ABBNN)
    with pytest.raises(IndexError, match=f"asked for step {index}"):
        chef.run_step(_resnet(), index)


def test_run_step_does_not_advance():
    chef = BinaryChef(ABBNN)
    model = chef.run_step(_resnet(), 1)
    assert chef.current_step == 0
    assert isinstance(model.layer1[0].conv1.weight_pre_process, ScaledWSWeightBinarizer)


def test_step_and_settings_are_the_files():
    raw = yaml.safe_load(ABBNN.read_text(encoding="utf-8"))
    chef = BinaryChef(ABBNN)
    model = _resnet()
    for index, (name, step) in enumerate(raw.items()):
        model = chef.next(model)
        training, s = step["training"], chef.settings
        assert chef.step.name == name and chef.step.index == index and s is chef.step.training
        assert s.epochs == training["epochs"]
        assert s.optimizer == training["optimizer"]["name"]
        assert dict(s.optimizer_args) == training["optimizer"]["args"]
        assert s.weight_decay == training["weight_decay"]["value"]
        assert s.weight_decay_params == training["weight_decay"].get("params", "weights")
        assert s.scheduler == training["scheduler"]["name"]
        assert s.agc_clipping == training["agc"]["clipping"]
        assert s.agc_exclude == tuple(training["agc"].get("exclude", ["_last_"]))
        assert s.loss == training["loss"]["name"]
        assert s.start_from == training.get("start_from", "previous")
    # what ALGORITHMS.md says of A&B on CIFAR
    assert [s.training.weight_decay for s in chef.steps] == [5e-6, 0.0]
    assert chef.steps[1].training.start_from == "step1"


def test_teacher_name_is_carried():
    chef = BinaryChef(RECIPES / "reactnet.yaml")
    chef.next(_resnet())
    assert chef.settings.loss == "distillation" and dict(chef.settings.loss_args)["teacher"] == "resnet34"
    with pytest.raises(ValueError, match="resnet34"):
        chef.criterion()


def test_resume_after_step_one(tmp_path):
    chef = BinaryChef(ABBNN)
    model = chef.next(_resnet())
    _pretend_training(model, seed=1)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"chef": chef.state_dict(), "model": model.state_dict()}, checkpoint)

    saved = torch.load(checkpoint)  # weights_only: the chef's state is plain data
    chef2 = BinaryChef(ABBNN)
    chef2.load_state_dict(saved["chef"])
    assert chef2.current_step == 1 and chef2.step.name == "step1"
    model2 = chef2.restore(_resnet(seed=7))
    model2.load_state_dict(saved["model"], strict=True)
    x = torch.randn(2, 3, 32, 32)
    model.eval(), model2.eval()
    assert torch.equal(model(x), model2(x))

    model, model2 = chef.next(model), chef2.next(model2)
    assert chef2.current_step == 2 and chef2.step.name == "step2"
    assert isinstance(model2.layer1[0].conv1.weight_pre_process, ScaledWSWeightBinarizer)
    model.eval(), model2.eval()
    assert torch.equal(model(x), model2(x))
    with pytest.raises(RuntimeError, match="no next step"):
        chef2.next(model2)


def test_resume_keeps_the_snapshot_a_later_step_starts_from(tmp_path):
    steps = {"step1": {"pre_activation": "RSign", "weight": "Identity", "ignore_layer_names": ["_first_", "_last_"]},
             "step2": {"pre_activation": "RSign", "weight": "ScaledWSWeightBinarizer",
                       "ignore_layer_names": ["_first_", "_last_"]},
             "step3": {"pre_activation": "RSign", "weight": "ScaledWSWeightBinarizer",
                       "ignore_layer_names": ["_first_", "_last_"], "training": {"start_from": "step1"}}}
    chef = BinaryChef(steps)
    model = chef.next(_resnet())
    _pretend_training(model, seed=2)
    end_of_step1 = {k: v.clone() for k, v in model.state_dict().items()}
    model = chef.next(model)
    _pretend_training(model, seed=3)
    torch.save({"chef": chef.state_dict(), "model": model.state_dict()}, tmp_path / "ckpt.pt")

    saved = torch.load(tmp_path / "ckpt.pt")
    chef2 = BinaryChef(steps)
    chef2.load_state_dict(saved["chef"])
    model2 = chef2.restore(_resnet(seed=5))
    model2.load_state_dict(saved["model"])
    model2 = chef2.next(model2)
    state = model2.state_dict()
    for key, value in end_of_step1.items():
        assert torch.equal(state[key], value), key


def test_restore_before_any_step_is_a_no_op():
    chef = BinaryChef(ABBNN)
    model = _resnet()
    assert chef.restore(model) is model
    assert type(model.layer1[0].conv1) is torch.nn.Conv2d


@pytest.mark.parametrize("other", ["bireal.yaml", "reactnet.yaml", "abbnn-pow2.yaml"])
def test_state_of_another_recipe_is_refused(other):
    """reactnet.yaml and abbnn-pow2.yaml have the same step names as abbnn.yaml, not the same steps."""
    chef = BinaryChef(RECIPES / other)
    chef.next(_resnet())
    mine = BinaryChef(ABBNN)
    with pytest.raises(RecipeError) as info:
        mine.load_state_dict(chef.state_dict())
    assert str(ABBNN) in str(info.value)
    assert mine.current_step == 0


def test_state_of_the_same_recipe_as_a_dict_is_accepted():
    chef = BinaryChef(ABBNN)
    chef.next(_resnet())
    same = BinaryChef(yaml.safe_load(ABBNN.read_text(encoding="utf-8")))
    same.load_state_dict(chef.state_dict())
    assert same.current_step == 1


def test_rsign_is_built_per_layer_with_its_channels():
    chef = BinaryChef(ABBNN)
    model = chef.next(_resnet())
    rsign = model.layer2[0].conv1.activation_pre_process
    assert isinstance(rsign, RSign) and rsign.bias.shape == (64,)
    assert model.layer2[0].conv2.activation_pre_process.bias.shape == (128,)
    assert rsign is not model.layer2[0].conv2.activation_pre_process
