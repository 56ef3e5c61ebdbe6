r"""The binarization config (:class:`BConfig`) and the ``with_args`` factory.

A :class:`BConfig` says, for one layer, what happens to its input activations, to its weight and to its
output. Like :class:`torch.ao.quantization.QConfig` it holds *factories* (classes or ``with_args``
partials), never instances, so every layer builds binarizers of its own.
"""
import functools
import inspect
from typing import Any, Callable, NamedTuple, Optional

import torch.nn as nn

__all__ = ["BConfig", "with_args", "BinarizerFactory", "instantiate"]


class BinarizerFactory:
    r"""A class with some constructor arguments bound; calling it builds a fresh instance.

    Returned by ``SomeBinarizer.with_args(**kwargs)``; chainable (``.with_args(...)`` again adds
    arguments). Picklable, so a model holding a :class:`BConfig` can be saved whole.
    """

    def __init__(self, cls: Callable, **kwargs: Any) -> None:
        if isinstance(cls, BinarizerFactory):
            kwargs = {**cls.kwargs, **kwargs}
            cls = cls.cls
        self.cls = cls
        self.kwargs = kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.cls(*args, **{**self.kwargs, **kwargs})

    def with_args(self, **kwargs: Any) -> "BinarizerFactory":
        return BinarizerFactory(self, **kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BinarizerFactory) and (self.cls, self.kwargs) == (other.cls, other.kwargs)

    def __hash__(self) -> int:
        return hash((self.cls, tuple(sorted(self.kwargs.items(), key=lambda kv: kv[0]))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{getattr(self.cls, '__name__', self.cls)}.with_args({args})"


def with_args(cls_or_factory: Callable, **kwargs: Any) -> BinarizerFactory:
    r"""Bind constructor arguments: ``XNORWeightBinarizer.with_args(center_weights=True)``.

    Example::

        >>> from bnn.ops import XNORWeightBinarizer
        >>> make = XNORWeightBinarizer.with_args(center_weights=True)
        >>> make() is not make()
        True
    """
    return BinarizerFactory(cls_or_factory, **kwargs)


_FIELDS = ("activation_pre_process", "activation_post_process", "weight_pre_process")


class BConfig(NamedTuple("_BConfigBase", [(f, Optional[Callable]) for f in _FIELDS])):
    r"""How one layer is binarized: factories for its input, its output and its weight.

    Args:
        activation_pre_process: applied to the layer's input (e.g. :class:`bnn.ops.BasicInputBinarizer`).
        activation_post_process: called as ``f(output, input)`` on the layer's output (e.g.
            :class:`bnn.ops.BasicScaleBinarizer`); :class:`bnn.Identity` keeps the output as it is.
        weight_pre_process: applied to the weight (e.g. :class:`bnn.ops.XNORWeightBinarizer`).

    Each is a class or a ``with_args`` factory; ``None`` (the default) keeps that side real.
    An instance is refused: it would be shared by every layer.

    Example::

        >>> from bnn import BConfig, Identity
        >>> from bnn.ops import BasicInputBinarizer, XNORWeightBinarizer
        >>> bconfig = BConfig(activation_pre_process=BasicInputBinarizer,
        ...                   activation_post_process=Identity,
        ...                   weight_pre_process=XNORWeightBinarizer.with_args(center_weights=True))
    """

    __slots__ = ()

    def __new__(cls, activation_pre_process=None, activation_post_process=None, weight_pre_process=None):
        values = (activation_pre_process, activation_post_process, weight_pre_process)
        for field, value in zip(_FIELDS, values):
            _check_factory(field, value)
        return super().__new__(cls, *values)


def _check_factory(field: str, value: Any) -> None:
    if value is None or isinstance(value, (type, BinarizerFactory, functools.partial)):
        return
    if isinstance(value, nn.Module):
        name = type(value).__name__
        raise ValueError(
            f"BConfig.{field} got an instance of {name}; pass the class ({name}) or "
            f"{name}.with_args(...) so that every layer builds its own"
        )
    if not callable(value):
        raise ValueError(
            f"BConfig.{field} must be a class or a with_args(...) factory, got {type(value).__name__}: {value!r}"
        )


def _takes_layer_argument(factory: Callable) -> bool:
    """True for upstream-style classes whose constructor requires the layer (``Cls(module)``)."""
    target = factory.cls if isinstance(factory, BinarizerFactory) else factory
    bound = factory.kwargs if isinstance(factory, BinarizerFactory) else {}
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [
        p for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.default is p.empty and p.name not in bound
    ]
    return len(required) >= 1


def instantiate(factory: Optional[Callable], layer: nn.Module, default: Callable) -> nn.Module:
    r"""Build one binarizer for ``layer`` from a BConfig field.

    ``None`` builds ``default``. A module with a ``bind(layer)`` method is bound to the layer, which is how
    binarizers with per-channel parameters learn their channel count. Classes written for upstream
    ``bnn`` 0.1.2, whose constructor takes the layer, are called with it.
    """
    factory = default if factory is None else factory
    module = factory(layer) if _takes_layer_argument(factory) else factory()
    if not isinstance(module, nn.Module):
        raise ValueError(f"a BConfig factory must build an nn.Module, {factory!r} built {type(module).__name__}")
    bind = getattr(module, "bind", None)
    if callable(bind):
        bind(layer)
    weight = getattr(layer, "weight", None)
    if weight is not None:
        module.to(device=weight.device, dtype=weight.dtype)
    return module
