r"""Binarizers: the math. Each is an autograd function (in :mod:`bnn.ops.functional`) and a small
``nn.Module`` with ``.with_args(**kw)`` and a declared ``precision``."""
from . import functional
from .activation import (SIGN_ESTIMATORS, AdvancedInputBinarizer, ApproxSignBinarizer, BasicInputBinarizer,
                         IdentitySTEBinarizer, MaskSignBinarizer, RSign, StochasticInputBinarizer,
                         SwishSignBinarizer)
from .base import BinarizerBase, Identity
from .scale import BasicScaleBinarizer, XNORScaleBinarizer
from .weight import (MagnitudeAwareWeightBinarizer, ScaledStandardizedWeight, ScaledWeightBinarizer,
                     ScaledWSWeightBinarizer, XNORWeightBinarizer)

__all__ = [
    "functional", "BinarizerBase", "Identity", "SIGN_ESTIMATORS",
    "BasicInputBinarizer", "StochasticInputBinarizer", "AdvancedInputBinarizer", "ApproxSignBinarizer",
    "SwishSignBinarizer", "MaskSignBinarizer", "IdentitySTEBinarizer", "RSign",
    "ScaledWeightBinarizer", "XNORWeightBinarizer", "MagnitudeAwareWeightBinarizer", "ScaledWSWeightBinarizer",
    "ScaledStandardizedWeight", "BasicScaleBinarizer", "XNORScaleBinarizer",
]
