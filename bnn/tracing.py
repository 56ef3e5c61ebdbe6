r"""torch.fx tracing that keeps bnn's binary layers and blocks whole (as ``call_module`` nodes), shared by
the operation counter and the inference converter."""
import torch.fx
import torch.nn as nn

from .layers.binarized import BinarizedLayer
from .layers.blocks import LearnableBias, PowerOfTwoRPReLU, RPReLU, ScaledStdConv2d

__all__ = ["LeafTracer", "LEAF_TYPES"]

#: bnn modules traced as leaves, besides torch.nn's own.
LEAF_TYPES = (BinarizedLayer, LearnableBias, RPReLU, PowerOfTwoRPReLU, ScaledStdConv2d)


class LeafTracer(torch.fx.Tracer):
    """torch.fx's tracer, with bnn's binary layers and blocks (and any ``extra_leaves``) kept whole."""

    def __init__(self, extra_leaves: tuple = ()):
        super().__init__()
        self.extra_leaves = tuple(extra_leaves)

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return isinstance(m, LEAF_TYPES + self.extra_leaves) or super().is_leaf_module(m, qualified_name)
