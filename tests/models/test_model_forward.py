"""Forward shapes of every model (float, as created) at 224 (ImageNet stem) and 32 (CIFAR stem); the layer
order the recipes rely on; BCDNet's shifts and options."""
import pytest
import torch
import torch.nn as nn

from bnn.binarize import swappable_layers
from bnn.models import create_model, list_models
from bnn.models.bcdnet import ContextualThreshold, Shift, ShiftBlock


@pytest.mark.parametrize("name", list_models())
def test_forward_224_imagenet_stem(name):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_forward_32_cifar_stem(name):
    model = create_model(name, num_classes=10, stem="cifar").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_stem_first_classifier_last_and_real_shortcuts_in_downsample(name):
    # The recipes keep `_first_`, `_last_` and `$downsample$` real: these must select the stem, the
    # classifier and the real shortcut convolutions (the Bi-Real layout's; ReActNet-A's shortcuts are pools).
    names = [n for n, _ in swappable_layers(create_model(name, num_classes=10, stem="cifar"))]
    assert names[0] in ("conv1", "stem.conv") and names[-1] == "fc"
    shortcuts = {n for n in names if "downsample" in n}
    if names[0] == "conv1":
        assert shortcuts == {f"layer{i}.0.downsample.1" for i in (2, 3, 4)}
    else:
        assert shortcuts == set()


def test_shift_rolls_four_channel_groups_with_wrap_around():
    x = torch.arange(4 * 5 * 5, dtype=torch.float32).reshape(1, 4, 5, 5)
    y = Shift(1)(x)
    assert torch.equal(y[0, 0, 1:], x[0, 0, :-1]) and torch.equal(y[0, 0, 0], x[0, 0, -1])   # down
    assert torch.equal(y[0, 1, :-1], x[0, 1, 1:]) and torch.equal(y[0, 1, -1], x[0, 1, 0])   # up
    assert torch.equal(y[0, 2, :, 1:], x[0, 2, :, :-1])                                      # right
    assert torch.equal(y[0, 3, :, :-1], x[0, 3, :, 1:])                                      # left
    assert torch.equal(Shift(3)(x)[0, 0, 3:], x[0, 0, :2])
    # commutes with the sign, so the recipe's sign inside the conv equals the official sign-then-shift
    assert torch.equal(Shift(3)(torch.sign(x - 50)), torch.sign(Shift(3)(x) - 50))
    with pytest.raises(ValueError, match="divide by 4"):
        ShiftBlock(6)


def test_contextual_threshold_starts_static_and_learns_a_per_image_term():
    torch.manual_seed(0)
    t = ContextualThreshold(16, reduction=4)
    with torch.no_grad():
        t.bias.normal_()
    x = torch.randn(3, 16, 5, 5)
    assert torch.allclose(t(x), x + t.bias.view(1, -1, 1, 1))
    t(x).square().sum().backward()
    assert t.weight2.grad.abs().sum() > 0
    with torch.no_grad():
        t.weight2.normal_()
    shift = t(x) - x
    assert not torch.allclose(shift[0], shift[1])                      # differs per image
    assert torch.allclose(shift[:, :, 0, 0, None, None].expand_as(shift), shift)  # constant over space


def test_bcdnet_dynamic_threshold_option():
    plain = create_model("bcdnet_a", num_classes=10, stem="cifar")
    dynamic = create_model("bcdnet_a", num_classes=10, stem="cifar", dynamic_threshold=True)
    thresholds = [m for m in dynamic.modules() if isinstance(m, ContextualThreshold)]
    assert len(thresholds) == 2 * len(dynamic.blocks)
    assert not any(isinstance(m, nn.Linear) for t in thresholds for m in t.modules())
    assert [n for n, _ in swappable_layers(dynamic)] == [n for n, _ in swappable_layers(plain)]
    with torch.no_grad():
        assert dynamic.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_bcdnet_distillation_head_returns_both_heads_in_training_and_their_mean_in_eval():
    torch.manual_seed(0)
    model = create_model("bcdnet_a", num_classes=10, stem="cifar", distillation_head=True)
    assert model.fc.out_features == 20
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        mean = model(x)
        model.train()
        model.apply(lambda m: m.eval() if isinstance(m, nn.BatchNorm2d) else None)
        logits, dist_logits = model(x)
    assert logits.shape == dist_logits.shape == (2, 10)
    assert torch.allclose(mean, (logits + dist_logits) / 2, atol=1e-5)
