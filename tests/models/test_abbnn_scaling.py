r"""Normalizer-free scaling of the A&B BNN and BNN - BN = ? models: the beta of every sign against the table
of the official code's values, alpha everywhere, and where beta and alpha act in the forward pass.

beta = 1 / sqrt(expected_var); expected_var starts at 1 after the stem, grows by alpha^2 per residual add and
is 1 again after a transition (strided) block. The tables give k with expected_var = 1 + k alpha^2.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from bnn.models import create_model

# Bi-Real layout, one beta per block, per stage. The official _make_layer counts the residual add of every
# block but the first of a stage; after a transition block the count restarts at 0. In the first stage
# (no transition) that leaves its first block's add uncounted: stage 1 reads 0, 0, 1, 2 and not 0, 1, 2, 3.
RESNET18_K = [[0, 0, 1, 2], [3, 0, 1, 2], [3, 0, 1, 2], [3, 0, 1, 2]]
RESNET34_K = [[0, 0, 1, 2, 3, 4],
              [5, 0, 1, 2, 3, 4, 5, 6],
              [7, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
              [11, 0, 1, 2, 3, 4]]
# ReActNet-A, (beta1, beta2) per block: two residual adds per block, strided blocks 2, 4, 6, 12 reset.
REACTNET_A_K = [(0, 1), (2, 3), (0, 1), (2, 3), (0, 1), (2, 3), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
                (10, 11), (0, 1)]


def beta(k, alpha):
    return 1.0 / math.sqrt(1.0 + k * alpha ** 2)


@pytest.mark.parametrize("name, table", [("abbnn_reactnet18", RESNET18_K), ("abbnn_reactnet34", RESNET34_K)])
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_abbnn_resnet_layout_betas(name, table, stem):
    model = create_model(name, num_classes=10, stem=stem)
    for stage, ks in enumerate(table, start=1):
        blocks = getattr(model, f"layer{stage}")
        assert len(blocks) == len(ks)
        for block, k in zip(blocks, ks):
            assert block.alpha == 0.25
            assert block.beta == pytest.approx(beta(k, 0.25), rel=1e-12)


@pytest.mark.parametrize("name, alpha", [("abbnn_reactnet_a", 0.25), ("nf_reactnet_a", 0.2)])
def test_reactnet_a_betas(name, alpha):
    model = create_model(name, num_classes=10, stem="cifar")
    assert len(model.blocks) == len(REACTNET_A_K)
    for block, (k1, k2) in zip(model.blocks, REACTNET_A_K):
        assert block.alpha == alpha
        assert block.beta1 == pytest.approx(beta(k1, alpha), rel=1e-12)
        assert block.beta2 == pytest.approx(beta(k2, alpha), rel=1e-12)
    assert [i for i, b in enumerate(model.blocks, start=1) if b.downsample is not None] == [2, 4, 6, 12]


def test_first_betas_written_out():
    model = create_model("abbnn_reactnet18")
    assert [b.beta for b in model.layer1] == pytest.approx([1.0, 1.0, 1 / math.sqrt(1.0625), 1 / math.sqrt(1.125)])
    assert model.layer2[0].beta == pytest.approx(1 / math.sqrt(1.1875))


def _positive_shortcut_only(model_name, **kwargs):
    """A strided block with its binary convs zeroed, fed a positive input: what is left is the shortcut."""
    block = create_model(model_name, num_classes=10, stem="cifar", **kwargs).blocks[1]
    with torch.no_grad():
        for conv in [block.conv3x3, *block.pointwise]:
            conv.weight.zero_()
    x = torch.rand(1, block.conv3x3.in_channels, 8, 8) + 0.1
    with torch.no_grad():
        return block, x, block(x)


def test_abbnn_reactnet_a_shortcut_pools_the_unscaled_input():
    block, x, out = _positive_shortcut_only("abbnn_reactnet_a")
    pooled = F.avg_pool2d(x, 2)
    assert torch.allclose(out, torch.cat([pooled, pooled], dim=1))


def test_nf_reactnet_a_shortcut_pools_the_beta_scaled_input_as_the_official_code():
    block, x, out = _positive_shortcut_only("nf_reactnet_a")
    assert block.beta1 != 1.0
    pooled = F.avg_pool2d(block.beta1 * x, 2)
    assert torch.allclose(out, torch.cat([pooled, pooled], dim=1))


def test_abbnn_block_scales_the_sign_input_by_beta_and_the_branch_by_alpha():
    torch.manual_seed(0)
    block = create_model("abbnn_reactnet18", num_classes=10, stem="cifar").layer1[3]
    with torch.no_grad():
        block.threshold.bias.normal_()
    x = torch.randn(2, 64, 6, 6)
    branch = block.conv(block.beta * x + block.threshold.bias.view(1, -1, 1, 1))
    with torch.no_grad():
        assert torch.allclose(block(x), block.act(0.25 * branch + x), atol=1e-6)
