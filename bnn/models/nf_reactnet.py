r"""BNN - BN = ?: Chen, Zhang, Ouyang, Liu, Shen, Wang, "BNN - BN = ?: Training Binary Neural Networks without
Batch Normalization", CVPR Workshops 2021 (arXiv:2104.08215); structure of the official code
(VITA-Group/BNN_NoBN, ``models/Qa(w)_reactnet_A_bf.py``).

ReActNet-A without BatchNorm: each binary branch is multiplied by ``alpha`` (0.2) before its residual add,
each sign's input by ``beta = 1 / sqrt(expected_var)`` (1 after the stem, + alpha^2 per residual add, 1
again after a strided block); RPReLU as in ReActNet; the real stem uses scaled weight standardization.
The binary convolutions are plain ``nn.Conv2d`` here: the recipe (``recipes/bnn-bn.yaml``) binarizes them
with scaled weight standardization in step 2, and clips gradients adaptively (AGC 0.02) in both steps.

One detail of the official code is kept: in a strided block the shortcut pools the *beta-scaled* input
(``AvgPool2d(beta1 * x)``), where A&B BNN pools ``x``.
"""
from ..layers import RPReLU
from ._common import NormFreeReActNetA, NormFreeReActNetABlock
from .registry import register_model

__all__ = ["NFReActNetABlock", "NFReActNetA", "nf_reactnet_a"]

_PAPER = ("Chen et al., BNN - BN = ?: Training Binary Neural Networks without Batch Normalization, "
          "CVPR Workshops 2021")

#: The residual branch scale of the official BN-free ReActNet-A.
ALPHA = 0.2


class NFReActNetABlock(NormFreeReActNetABlock):
    r"""The BN-free ReActNet-A block of BNN - BN = ?: :class:`NormFreeReActNetABlock` with RPReLU activations
    and, as the official code, the strided shortcut pooling ``beta1 * x``. Arguments as there; ``alpha`` 0.2."""

    activation = RPReLU
    pool_scaled_input = True

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, alpha: float = ALPHA,
                 beta1: float = 1.0, beta2: float = 1.0):
        super().__init__(in_channels, out_channels, stride, alpha, beta1, beta2)



class NFReActNetA(NormFreeReActNetA):
    r"""BN-free ReActNet-A: :class:`NormFreeReActNetA` with :class:`NFReActNetABlock` (alpha 0.2)."""

    def __init__(self, num_classes: int = 1000, stem: str = "imagenet", alpha: float = ALPHA):
        super().__init__(NFReActNetABlock, num_classes, stem, alpha)


@register_model(paper=_PAPER, default_recipe="recipes/bnn-bn.yaml")
def nf_reactnet_a(num_classes: int = 1000, stem: str = "imagenet", alpha: float = ALPHA) -> NFReActNetA:
    r"""BN-free ReActNet-A of "BNN - BN = ?" (trained with adaptive gradient clipping by its recipe)."""
    return NFReActNetA(num_classes, stem, alpha)
