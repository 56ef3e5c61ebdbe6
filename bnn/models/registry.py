r"""The model registry: ``@register_model`` fills it, :func:`create_model` builds from it by name."""
import difflib
from typing import Callable, Dict, List

import torch.nn as nn

__all__ = ["register_model", "create_model", "list_models", "model_entrypoint", "STEMS"]

#: The input stems every registered model offers: ImageNet (224x224) or CIFAR (32x32, the A&B layout).
STEMS = ("imagenet", "cifar")

ModelFn = Callable[..., nn.Module]
_MODELS: Dict[str, ModelFn] = {}


def register_model(*, paper: str, default_recipe: str) -> Callable[[ModelFn], ModelFn]:
    r"""Register a model function under its own name, recording where it comes from and how to train it.

    The function must take ``num_classes`` and ``stem`` keywords. It gets two attributes that the docs and
    the CLI read: ``paper`` (the citation) and ``default_recipe`` (the recipe that trains it, relative to the
    repository root).

    Args:
        paper: the paper the architecture reproduces.
        default_recipe: path of the recipe that trains it, e.g. ``"recipes/abbnn.yaml"``.

    Example::

        >>> import bnn
        >>> fn = bnn.models.model_entrypoint("abbnn_reactnet18")
        >>> fn.default_recipe
        'recipes/abbnn.yaml'
    """
    def decorate(fn: ModelFn) -> ModelFn:
        name = fn.__name__
        if name in _MODELS and _MODELS[name] is not fn:
            raise ValueError(f"a model named {name!r} is already registered (by {_MODELS[name].__module__})")
        fn.paper = paper
        fn.default_recipe = default_recipe
        _MODELS[name] = fn
        return fn
    return decorate


def list_models() -> List[str]:
    r"""The names :func:`create_model` accepts, sorted."""
    return sorted(_MODELS)


def model_entrypoint(name: str) -> ModelFn:
    r"""The registered function for ``name`` (with its ``paper`` and ``default_recipe`` attributes)."""
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_MODELS), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (bnn.models.list_models() names all "
                         f"{len(_MODELS)})") from None


def create_model(name: str, num_classes: int = 1000, stem: str = "imagenet", **kwargs) -> nn.Module:
    r"""Build a registered model, float and ready to binarize with its recipe.

    The binary convolutions are plain ``nn.Conv2d``; the parts the architecture adds around them (learnable
    biases, RPReLU, BatchNorm or normalizer-free scaling) are model layers. The stem is the first swappable
    layer and the classifier the last, and the real shortcut convolutions sit in modules named
    ``downsample``, so the recipes' ``_first_`` / ``_last_`` / ``$downsample$`` selectors keep them real.

    Args:
        name: one of :func:`list_models`.
        num_classes: outputs of the classifier.
        stem: ``"imagenet"`` (224x224 inputs) or ``"cifar"`` (32x32: 3x3 stride-1 stem, no max-pool).
        **kwargs: passed to the model function (e.g. ``alpha`` of the normalizer-free models).

    Example::

        >>> import torch, bnn
        >>> model = bnn.models.create_model("reactnet18", num_classes=10, stem="cifar")
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    fn = model_entrypoint(name)
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return fn(num_classes=num_classes, stem=stem, **kwargs)
