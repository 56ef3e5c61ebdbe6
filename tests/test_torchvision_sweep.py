r"""Binarize every torchvision classification model and run one training step through it.

For each model of ``torchvision.models.list_models(module=torchvision.models)`` (weights=None, 10 classes):
``prepare_binary_model`` with a sign / XNOR config, first and last layer left real, then forward + backward
on a batch of 2 at the cheapest input size the model accepts, and check

* which layers were swapped: every Conv / ConvTranspose / Linear except the first, the last and those inside
  an ``nn.MultiheadAttention`` (which uses its children's weights without calling them, so bnn leaves
  them real and says so with a UserWarning; of torchvision's classifiers only the ViTs have one);
* the output: (2, 10) and finite (each of googlenet's auxiliary heads too: train mode);
* the gradient: every binarized weight gets one, finite, and it is not zero everywhere.

Batch-norm layers run on their running statistics (model in train mode, BN modules in eval mode). Sign of
a ReLU / ReLU6 output is +1 everywhere, so a 1x1 conv fed with it gives the same value at every position
of the batch: a batch variance of exactly 0, and every such BN multiplies the gradient by
1 / sqrt(eps) ~ 316. In mobilenet_v2 and mnasnet that happens in nearly every block and the gradient
overflows to inf / nan in float32 (in inception_v3, in 2-3 layers): a property of that naive config on those
networks, not of bnn.

Cost: about 2 min of CPU time for the 80 models, peak memory ~9 GB (regnet_y_128gf). The largest are
regnet_y_128gf (~13 s of CPU: 640M weights to initialize, binarize and differentiate, whatever the input
size), vit_h_14 (~6 s) and convnext_large (~4 s), everything else under 3.5 s.
"""
import warnings

import pytest
import torch
import torch.nn as nn

import bnn
from bnn.binarize import DEFAULT_MODULE_MAPPING
from bnn.layers import BinarizedLayer
from bnn.ops import BasicInputBinarizer, XNORWeightBinarizer

torchvision = pytest.importorskip("torchvision")

MODELS = torchvision.models.list_models(module=torchvision.models)
NUM_CLASSES = 10
BATCH = 2

BCONFIG = bnn.BConfig(activation_pre_process=BasicInputBinarizer, activation_post_process=bnn.Identity,
                      weight_pre_process=XNORWeightBinarizer)
SWAPPABLE = tuple(DEFAULT_MODULE_MAPPING)
MHA_WARNING = "MultiheadAttention"


def _setting(name):
    """(builder kwargs, input side): the cheapest input each family accepts."""
    if name.startswith("vit_"):
        # image_size is fixed at construction and must be a multiple of the patch size: a single patch.
        patch = int(name.rsplit("_", 1)[1])
        return {"image_size": patch}, patch
    if name == "maxvit_t":
        # The builder fixes partition_size=7 and each of the 4 blocks' grid (input / 4, / 8, / 16, / 32)
        # must be divisible by it: 224 is the smallest input.
        return {}, 224
    if name == "inception_v3":
        # The aux head needs Mixed_6e at 17x17, i.e. a 299 input; without it 75 is the smallest.
        return {"aux_logits": False, "init_weights": True}, 75
    if name == "googlenet":
        return {"init_weights": True}, 32  # init_weights given: no FutureWarning
    if name == "alexnet":
        return {}, 63  # 11x11/4 conv and three 3x3/2 max-pools: below 63 the last pool sees a 2x2 map
    return {}, 32  # stride-32 networks with adaptive pooling: 32 leaves a 1x1 map


def _expected_swaps(model):
    """(number of layers bnn should swap, number left real inside nn.MultiheadAttention)."""
    modules = dict(model.named_modules())
    candidates = [n for n, m in modules.items() if n and isinstance(m, SWAPPABLE)]

    def in_mha(name):
        parts = name.split(".")
        return any(isinstance(modules[".".join(parts[:i])], nn.MultiheadAttention) for i in range(1, len(parts)))

    n_mha = sum(map(in_mha, candidates))
    return len(candidates) - n_mha - 2, n_mha  # - 2: _first_ and _last_


@pytest.mark.parametrize("name", MODELS)
def test_binarize_train_step(name):
    torch.manual_seed(0)
    kwargs, side = _setting(name)
    model = torchvision.models.get_model(name, weights=None, num_classes=NUM_CLASSES, **kwargs)
    # ViTs zero-initialize their head, which would zero every gradient upstream: give it some weight.
    for m in model.modules():
        if isinstance(m, SWAPPABLE) and not m.weight.any():
            nn.init.normal_(m.weight, std=0.02)
    expected, n_mha = _expected_swaps(model)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = bnn.prepare_binary_model(model, BCONFIG, ignore_layers_name=["_first_", "_last_"])
    mha_warnings = [w for w in caught if issubclass(w.category, UserWarning) and MHA_WARNING in str(w.message)]
    assert n_mha == 0 or name.startswith("vit_"), f"{name} has an nn.MultiheadAttention: update the docstring"
    if n_mha:
        assert len(mha_warnings) == 1, [str(w.message) for w in caught]
        assert f"left {n_mha} layer(s) real" in str(mha_warnings[0].message)
    else:
        assert not mha_warnings, [str(w.message) for w in mha_warnings]

    binarized = [(n, m) for n, m in model.named_modules() if isinstance(m, BinarizedLayer)]
    assert binarized, f"{name}: no layer was binarized"
    assert len(binarized) == expected
    for mha in (m for m in model.modules() if isinstance(m, nn.MultiheadAttention)):
        assert not any(isinstance(m, BinarizedLayer) for m in mha.modules())

    model.train()
    for m in model.modules():  # running statistics: see the module docstring
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    out = model(torch.randn(BATCH, 3, side, side))
    outputs = [o for o in out if o is not None] if isinstance(out, tuple) else [out]  # googlenet: aux heads
    for o in outputs:
        assert o.shape == (BATCH, NUM_CLASSES)
        assert torch.isfinite(o).all()
    sum(o.sum() for o in outputs).backward()

    no_grad = [n for n, m in binarized if m.weight.grad is None]
    assert not no_grad, f"{name}: binarized weights without a gradient: {no_grad[:5]}"
    not_finite = [n for n, m in binarized if not torch.isfinite(m.weight.grad).all()]
    assert not not_finite, f"{name}: non-finite weight gradients: {not_finite[:5]}"
    # Some layers may get an exact zero (stochastic depth drops whole blocks, STE masks), not all of them.
    assert any(m.weight.grad.any() for _, m in binarized), f"{name}: every binarized weight gradient is zero"
