"""Helpers of the inference-converter tests (fixtures in conftest.py): learned parameters set to random
values (a freshly initialised model has every RSign bias 0, every gain 1, every BN the identity, which would
hide folding and sign errors), torchvision's resnet18 binarized by a shipped recipe, and a switch between the
compiled kernels and the PyTorch reference of the packed layers."""
import contextlib
import os
from pathlib import Path

import torch
import torch.nn as nn

import bnn
from bnn.layers import LearnableBias, PowerOfTwoRPReLU, RPReLU
from bnn.ops import BasicScaleBinarizer, RSign, ScaledStandardizedWeight, ScaledWSWeightBinarizer

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
BACKENDS = ("default", "reference")


@contextlib.contextmanager
def kernels(backend: str):
    """Run the packed layers on the compiled kernels (``"default"``, when they build) or on the PyTorch
    reference (``"reference"``: ``BNN_KERNELS=reference``)."""
    before = os.environ.get("BNN_KERNELS")
    if backend == "reference":
        os.environ["BNN_KERNELS"] = "reference"
    else:
        os.environ.pop("BNN_KERNELS", None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("BNN_KERNELS", None)
        else:
            os.environ["BNN_KERNELS"] = before


def _signs(n, g, p_negative):
    return torch.where(torch.rand(n, generator=g) < p_negative, -1.0, 1.0)


@torch.no_grad()
def randomize_learned(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for everything a recipe learns besides the weights: BN affine and running statistics
    (about a quarter of the BN weights negative), RSign / learnable biases, weight-standardization gains
    (some negative), RPReLU slopes (some negative) and shifts, power-of-two RPReLU exponents (-5 to 1),
    output scales."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            if m.affine:
                m.weight.copy_((0.5 + torch.rand(c, generator=g)) * _signs(c, g, 0.25))
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
            if m.track_running_stats:
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
        elif isinstance(m, (RSign, LearnableBias)) and m.bias is not None:
            m.bias.copy_(0.6 * torch.rand(m.bias.shape, generator=g) - 0.3)
        elif isinstance(m, (ScaledWSWeightBinarizer, ScaledStandardizedWeight)) and m.gain is not None:
            c = m.gain.numel()
            m.gain.copy_((0.25 + 2 * torch.rand(c, generator=g)) * _signs(c, g, 0.2))
        elif isinstance(m, RPReLU):
            c = m.slope.numel()
            m.shift_in.copy_(torch.rand(c, generator=g) - 0.5)
            m.slope.copy_(torch.rand(c, generator=g) - 0.3)
            m.shift_out.copy_(torch.rand(c, generator=g) - 0.5)
        elif isinstance(m, PowerOfTwoRPReLU):
            c = m.log2_slope.numel()
            m.shift_in.copy_(torch.rand(c, generator=g) - 0.5)
            m.log2_slope.copy_(-5 + 6 * torch.rand(c, generator=g))
            m.shift_out.copy_(torch.rand(c, generator=g) - 0.5)
        elif isinstance(m, BasicScaleBinarizer) and m.alpha is not None:
            m.alpha.copy_(0.25 + torch.rand(m.alpha.shape, generator=g))
    return model


def resnet18_under(recipe: Path, seed: int = 0) -> nn.Module:
    """torchvision resnet18 (10 classes) through every step of ``recipe``, learned parameters randomized,
    BN statistics set by a few train-mode forwards at 32x32, in eval mode."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    chef = bnn.BinaryChef(str(recipe))
    for _ in range(len(chef)):
        model = chef.next(model)
    randomize_learned(model, seed)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 32, 32))
    return model.eval()
