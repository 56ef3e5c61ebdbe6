r"""Names a recipe may use, resolved through explicit tables: nothing in a recipe is ever executed.

Binarizers (for ``pre_activation``, ``post_activation``, ``weight``) are bnn's classes by their class
name, plus short aliases in the style of larq; users add theirs with ``BinaryChef(..., user_modules=...)``.
"""
import collections.abc
import difflib
import inspect
import typing
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Union

import torch.nn as nn

from .. import ops

__all__ = ["BINARIZERS", "build_registry", "suggest"]

_CLASSES = [
    ops.Identity, ops.BasicInputBinarizer, ops.StochasticInputBinarizer, ops.AdvancedInputBinarizer,
    ops.ApproxSignBinarizer, ops.SwishSignBinarizer, ops.MaskSignBinarizer, ops.IdentitySTEBinarizer, ops.RSign,
    ops.XNORWeightBinarizer, ops.MagnitudeAwareWeightBinarizer, ops.ScaledWSWeightBinarizer,
    ops.ScaledStandardizedWeight, ops.BasicScaleBinarizer, ops.XNORScaleBinarizer,
]

#: Every name a recipe can give a binarizer: class names, upstream spellings and short aliases.
BINARIZERS: Dict[str, type] = {cls.__name__: cls for cls in _CLASSES}
BINARIZERS.update({
    "nn.Identity": ops.Identity,          # upstream bnn 0.1.2 recipes
    "identity": ops.Identity,
    "ste_sign": ops.BasicInputBinarizer,
    "approx_sign": ops.ApproxSignBinarizer,
    "swish_sign": ops.SwishSignBinarizer,
    "mask_sign": ops.MaskSignBinarizer,
    "rsign": ops.RSign,
    "xnor_weight": ops.XNORWeightBinarizer,
    "magnitude_aware_sign": ops.MagnitudeAwareWeightBinarizer,
    "scaled_ws_sign": ops.ScaledWSWeightBinarizer,
    "scaled_ws": ops.ScaledStandardizedWeight,
})


def suggest(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or an empty string. Case is compared last, so
    that ``NAME`` (upstream 0.1.2's own recipe has it) still finds ``name``."""
    choices = list(choices)
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if not close:
        lowered = {str(c).lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.6)]
    return f"; did you mean {close[0]!r}?" if close else ""


def build_registry(user_modules: Optional[Union[Iterable[type], Mapping[str, type]]] = None) -> Dict[str, type]:
    r"""bnn's binarizers plus ``user_modules`` (a list of ``nn.Module`` classes, registered by class name,
    or a dict ``{name: class}``)."""
    registry = dict(BINARIZERS)
    if user_modules is None:
        return registry
    items = user_modules.items() if isinstance(user_modules, Mapping) else \
        ((getattr(m, "__name__", None), m) for m in user_modules)
    for name, cls in items:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"user_modules must hold nn.Module classes, got {cls!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"user_modules: {cls!r} needs a name")
        registry[name] = cls
    return registry


def constructor_parameters(cls: Callable) -> Optional[Dict[str, inspect.Parameter]]:
    """The keyword parameters of ``cls``'s constructor, or None when it takes ``**kwargs``."""
    if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__init__ is nn.Module.__init__:
        return {}  # no constructor of its own: it takes no arguments (nn.Module's *args would hide that)
    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def settable_from_recipe(param: inspect.Parameter) -> bool:
    """False for an argument that takes a function, a class or a module: a recipe is data and cannot give
    one (a string there would only be called, or worse, later)."""
    ann = param.annotation
    if callable(param.default) or typing.get_origin(ann) is collections.abc.Callable:
        return False
    return not (isinstance(ann, type) and (issubclass(ann, nn.Module) or ann is type))


def expected_type(param: inspect.Parameter) -> Any:
    """The scalar type a recipe value must have for ``param``: from its annotation (``Optional[X]`` is
    ``X``), else its default."""
    ann = param.annotation
    if typing.get_origin(ann) is Union:
        types = [a for a in typing.get_args(ann) if a is not type(None)]
        ann = types[0] if len(types) == 1 else ann
    if ann in (bool, int, float, str):
        return ann
    default = param.default
    if isinstance(default, (bool, int, float, str)):
        return type(default)
    return None
