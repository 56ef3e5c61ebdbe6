"""Parameter counts of the float models as created, against the A&B BNN README table (seed 000) and against
torchvision's ResNets (the Bi-Real layout has exactly their parameters)."""
import pytest
import torchvision

from bnn.models import create_model


def count(model):
    return sum(p.numel() for p in model.parameters())


# (model, stem, classes): the A&B README's "# Params" for that dataset / structure.
AB_TABLE = [
    ("abbnn_reactnet18", "cifar", 10, 11.18e6),
    ("abbnn_reactnet18", "cifar", 100, 11.23e6),
    ("abbnn_reactnet18", "imagenet", 1000, 11.70e6),
    ("abbnn_reactnet34", "imagenet", 1000, 21.82e6),
    ("abbnn_reactnet_a", "cifar", 10, 28.32e6),
    ("abbnn_reactnet_a", "cifar", 100, 28.41e6),
    ("abbnn_reactnet_a", "imagenet", 1000, 29.33e6),
]


@pytest.mark.parametrize("name, stem, num_classes, paper", AB_TABLE)
def test_abbnn_matches_the_ab_readme_within_half_a_percent(name, stem, num_classes, paper):
    assert abs(count(create_model(name, num_classes=num_classes, stem=stem)) - paper) <= 0.005 * paper


# The same structures with BatchNorm (ReActNet) or alpha = 0.2 (BNN - BN = ?) differ only by a few
# per-channel vectors: the table holds for them too.
@pytest.mark.parametrize("name, paper", [("reactnet18", 11.70e6), ("reactnet34", 21.82e6), ("reactnet_a", 29.33e6),
                                         ("nf_reactnet_a", 29.33e6)])
def test_batchnorm_and_bn_free_variants_are_within_half_a_percent_too(name, paper):
    assert abs(count(create_model(name)) - paper) <= 0.005 * paper


@pytest.mark.parametrize("name, reference", [("birealnet18", torchvision.models.resnet18),
                                             ("birealnet34", torchvision.models.resnet34)])
@pytest.mark.parametrize("num_classes", [10, 1000])
def test_bireal_has_exactly_the_resnet_parameters(name, reference, num_classes):
    assert count(create_model(name, num_classes=num_classes)) == count(reference(num_classes=num_classes))


def test_exact_counts_of_the_zoo():
    # Pinned so that a change of structure is seen; see docs/models.md for the comparison with the papers.
    assert count(create_model("abbnn_reactnet18")) == 11_695_784
    assert count(create_model("abbnn_reactnet_a")) == 29_321_736
    assert count(create_model("reactnet_a")) == 29_343_592
    assert count(create_model("bcdnet_a")) == 45_121_384


def test_the_stem_changes_only_the_first_convolution():
    imagenet, cifar = create_model("reactnet18"), create_model("reactnet18", stem="cifar")
    assert count(imagenet) - count(cifar) == 64 * 3 * (7 * 7 - 3 * 3)
    assert count(create_model("reactnet_a")) == count(create_model("reactnet_a", stem="cifar"))
