"""Checkpoints of the official code load into the zoo's models: the key names of each official network
(written out below from its public code's module names) map one to one onto the model's entries."""
from pathlib import Path

import pytest
import torch

from bnn import BinaryChef
from bnn.models import create_model, load_official_state_dict, model_entrypoint
from bnn.models.official import official_to_bnn_keys

REPO = Path(__file__).resolve().parents[2]
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
A_CHANNELS = [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024] * 2
BCD_CHANNELS = [32, 64, 128, 128, 256, 256] + [512] * 4 + [1024]


def bn(prefix):
    return [f"{prefix}.{p}" for p in BN]


def reactnet_a_keys(channels, prelu="weight", norm=True, gain=False, weights="weights"):
    """ReActNet-A official names (``feature.0`` stem, ``feature.i`` blocks); A&B / BNN - BN drop the BNs
    and add ``gain``; their slope is ``L_alpha`` (A&B) or the PReLU ``weight``."""
    conv = ["conv1.weight"] + (["conv1.gain"] if gain else [])
    keys = [f"feature.0.{k}" for k in conv] + (bn("feature.0.bn1") if norm else [])
    for i in range(1, len(channels)):
        p = f"feature.{i}"
        pw = ["binary_pw"] if channels[i] == channels[i - 1] else ["binary_pw_down1", "binary_pw_down2"]
        bns = ["bn2"] if len(pw) == 1 else ["bn2_1", "bn2_2"]
        keys += [f"{p}.move11.bias", f"{p}.binary_3x3.{weights}", f"{p}.move12.bias", f"{p}.prelu1.{prelu}",
                 f"{p}.move13.bias", f"{p}.move21.bias", f"{p}.move22.bias", f"{p}.prelu2.{prelu}",
                 f"{p}.move23.bias"]
        keys += [f"{p}.{c}.{weights}" for c in pw]
        if gain:
            keys += [f"{p}.binary_3x3.gain"] + [f"{p}.{c}.gain" for c in pw]
        if norm:
            keys += bn(f"{p}.bn1") + [k for b in bns for k in bn(f"{p}.{b}")]
    return keys + ["fc.weight", "fc.bias"]


def resnet_keys(depths, block, stem_gain=False, shortcut=("1.weight",) + tuple(f"2.{p}" for p in BN)):
    keys = ["conv1.weight"] + (["conv1.gain"] if stem_gain else bn("bn1"))
    for stage, depth in enumerate(depths, start=1):
        for b in range(depth):
            p = f"layer{stage}.{b}"
            keys += [f"{p}.{k}" for k in block]
            if stage > 1 and b == 0:
                keys += [f"{p}.downsample.{k}" for k in shortcut]
    return keys + ["fc.weight", "fc.bias"]


REACTNET18 = resnet_keys([4] * 4, ["move0.bias", "binary_conv.weight", "move1.bias", "prelu.weight", "move2.bias"]
                         + [f"bn1.{p}" for p in BN])
BIREAL18 = resnet_keys([4] * 4, ["binary_conv.weights"] + [f"bn1.{p}" for p in BN])
ABBNN18 = resnet_keys([4] * 4, ["move0.bias", "conv1.weight", "conv1.gain", "move1.bias", "prelu.L_alpha",
                                "move2.bias"], stem_gain=True, shortcut=("1.weight", "1.gain"))
BCDNET = reactnet_a_keys(BCD_CHANNELS, weights="weight")[:-2] + [
    f"mlp_layer.{i}.mlp_layer.{j}.{k}" for i in range(3) for j in range(4)
    for k in ["move0.bias", "binary_conv.weight", "move1.bias", "prelu.weight", "move2.bias"] + bn("bn1")
    + (["binary_conv1.weight", "binary_conv2.weight"] if j < 3 else [])] + ["fc.weight", "fc.bias"]

CASES = [
    ("reactnet18", REACTNET18, False),
    ("birealnet18", BIREAL18, False),
    ("reactnet_a", reactnet_a_keys(A_CHANNELS), False),
    ("abbnn_reactnet18", ABBNN18, True),
    ("abbnn_reactnet_a", reactnet_a_keys(A_CHANNELS, prelu="L_alpha", norm=False, gain=True, weights="weight"), True),
    ("nf_reactnet_a", reactnet_a_keys(A_CHANNELS, norm=False, gain=True, weights="weight"), True),
    ("bcdnet_a", BCDNET, False),
]


@pytest.mark.filterwarnings("ignore:custom_config_layers_name. the pattern")
@pytest.mark.parametrize("name, keys, binarize", CASES, ids=[c[0] for c in CASES])
def test_every_official_key_lands_in_the_model(name, keys, binarize):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, stem="cifar")
    if binarize:   # the step-2 checkpoints of A&B / BNN - BN hold the binary convs' gains
        chef = BinaryChef(REPO / model_entrypoint(name).default_recipe)
        for _ in range(len(chef)):
            model = chef.next(model)
    own = model.state_dict()
    assert len(set(keys)) == len(keys)
    checkpoint = {}
    for key in keys:   # each value in the official layout: (1, C, 1, 1) biases, (C, 1, 1, 1) gains, flat weights
        target = own[official_to_bnn_keys(key)]
        if key.endswith(".gain"):
            shape = (target.numel(), 1, 1, 1)
        elif key.endswith(".bias") and ".move" in key:
            shape = (1, target.numel(), 1, 1)
        elif key.endswith(".weights"):
            shape = (target.numel(), 1)
        else:
            shape = target.shape
        checkpoint["module." + key] = torch.randint(0, 5, shape) if key.endswith("tracked") else torch.randn(shape)
    result = load_official_state_dict(model, {"state_dict": checkpoint})
    assert result.unexpected == []
    # what the official code has no counterpart of: the recipe's RSign thresholds (zero, as in the official
    # code, where the model's learnable bias is the only threshold)
    assert all(k.endswith("activation_pre_process.bias") for k in result.missing), result.missing
    assert binarize or result.missing == []
    loaded = model.state_dict()
    for key, value in checkpoint.items():
        assert torch.equal(loaded[official_to_bnn_keys(key)].flatten(), value.flatten()), key


def test_bcdnet_distillation_head_takes_fc_dist():
    model = create_model("bcdnet_a", num_classes=10, stem="cifar", distillation_head=True)
    state = {"fc.weight": torch.randn(10, 1024), "fc.bias": torch.randn(10),
             "fc_dist.weight": torch.randn(10, 1024), "fc_dist.bias": torch.randn(10)}
    result = load_official_state_dict(model, state)
    assert result.unexpected == []
    assert torch.equal(model.fc.weight[10:], state["fc_dist.weight"])
    assert torch.equal(model.fc.bias[:10], state["fc.bias"])
    plain = create_model("bcdnet_a", num_classes=10, stem="cifar")
    assert load_official_state_dict(plain, state).unexpected == ["fc_dist.weight", "fc_dist.bias"]


def test_a_value_that_does_not_fit_is_an_error():
    model = create_model("reactnet18", num_classes=10, stem="cifar")
    with pytest.raises(ValueError, match="'fc.weight'.*same architecture"):
        load_official_state_dict(model, {"fc.weight": torch.randn(1000, 512)})
