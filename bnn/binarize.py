r"""Selecting the layers of a model and swapping them for fake-binarized ones.

Layer selectors (in ``ignore_layers_name`` and the keys of ``custom_config_layers_name``):

* a module name, as ``model.named_modules()`` spells it: that layer, or every swappable layer inside
  that container;
* ``$regex$``: every swappable layer whose name the regular expression matches (``re.search``);
* ``_first_`` / ``_last_``: the first / last swappable layer in registration order.

Overrides win in the order exact name > container name > regex > global config; ``None`` as a config
leaves the layer real; an ignored layer stays real whatever else matches it.
"""
import difflib
import re
import warnings
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch.nn as nn

from .bconfig import BConfig
from .layers import binarized as bl

__all__ = ["DEFAULT_MODULE_MAPPING", "prepare_binary_model", "convert", "swappable_layers"]

DEFAULT_MODULE_MAPPING: Dict[type, type] = {
    nn.Conv1d: bl.BinaryConv1d,
    nn.Conv2d: bl.BinaryConv2d,
    nn.Conv3d: bl.BinaryConv3d,
    nn.ConvTranspose1d: bl.BinaryConvTranspose1d,
    nn.ConvTranspose2d: bl.BinaryConvTranspose2d,
    nn.ConvTranspose3d: bl.BinaryConvTranspose3d,
    nn.Linear: bl.BinaryLinear,
}

# Containers that use their children's weights without calling the children's forward: swapping those
# children would change nothing, so they stay real (and the user is told).
_WEIGHT_USED_WITHOUT_FORWARD = (nn.MultiheadAttention,)


def _target_class(module: nn.Module, mapping: Mapping[type, type]) -> Optional[type]:
    if type(module) in mapping.values():
        return type(module)
    for klass in type(module).__mro__:
        if klass in mapping:
            return mapping[klass]
    return None


def swappable_layers(model: nn.Module, modules_mapping: Optional[Mapping[type, type]] = None
                     ) -> List[Tuple[str, nn.Module]]:
    r"""The (name, module) pairs that :func:`prepare_binary_model` can swap, in registration order."""
    mapping = DEFAULT_MODULE_MAPPING if modules_mapping is None else modules_mapping
    layers, skipped = [], []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if _target_class(module, mapping) is None:
            continue
        parent = modules.get(name.rpartition(".")[0]) if name else None
        if isinstance(parent, _WEIGHT_USED_WITHOUT_FORWARD):
            skipped.append(name)
            continue
        layers.append((name, module))
    if skipped:
        warnings.warn(
            f"bnn left {len(skipped)} layer(s) real because their parent uses their weights without calling "
            f"their forward (nn.MultiheadAttention): {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}",
            stacklevel=3,
        )
    return layers


def _suggest(word: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(names), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _resolve(selector: str, layer_names: List[str], all_names: List[str], what: str,
             unmatched_patterns: str = "error") -> Tuple[List[str], int]:
    """Names of the swappable layers ``selector`` picks, and its priority (higher wins).

    ``unmatched_patterns="warn"`` turns a ``$regex$`` that matches nothing into a warning (recipes written
    for families of models use it); a plain name that matches nothing is always an error."""
    if not isinstance(selector, str):
        raise ValueError(f"{what}: a layer selector must be a string, got {selector!r}")
    if selector in ("_first_", "_last_"):
        if not layer_names:
            raise ValueError(f"{what}: {selector} selects nothing, the model has no layer bnn can binarize")
        return [layer_names[0] if selector == "_first_" else layer_names[-1]], 3
    if len(selector) >= 2 and selector.startswith("$") and selector.endswith("$"):
        try:
            pattern = re.compile(selector[1:-1])
        except re.error as e:
            raise ValueError(f"{what}: {selector!r} is not a valid regular expression ({e})") from None
        matched = [n for n in layer_names if pattern.search(n)]
        if not matched:
            message = f"{what}: the pattern {selector!r} matches no layer bnn can binarize"
            if unmatched_patterns != "warn":
                raise ValueError(message)
            warnings.warn(message, stacklevel=4)
        return matched, 1
    if selector in layer_names:
        return [selector], 3
    inside = [n for n in layer_names if n.startswith(selector + ".") or selector == ""]
    if inside:
        return inside, 2
    if selector in all_names:
        raise ValueError(f"{what}: {selector!r} is not a layer bnn can binarize, nor does it contain one")
    raise ValueError(f"{what}: no layer named {selector!r}{_suggest(selector, layer_names)}")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _disable_fused_fast_paths(model: nn.Module) -> None:
    """nn.TransformerEncoderLayer (and nn.TransformerEncoder, through nested tensors) has a fused path for
    eval mode without grad that reads linear1/linear2's weights and never calls their forward: with binary
    layers inside, it would compute the float layer. Turn it off where a binary layer sits inside."""
    for module in model.modules():
        if not isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
            continue
        if not any(isinstance(m, bl.BinarizedLayer) for m in module.modules()):
            continue
        if isinstance(module, nn.TransformerEncoderLayer):
            module.activation_relu_or_gelu = 0  # the fused path requires it; the plain path never reads it
        else:
            module.use_nested_tensor = False


def _swap(model: nn.Module, configs: Dict[str, BConfig], mapping: Mapping[type, type]) -> nn.Module:
    modules = dict(model.named_modules())
    for name, bconfig in configs.items():
        module = modules[name]
        new = _target_class(module, mapping).from_float(module, bconfig)
        new.bnn_name = name
        if name == "":
            return new
        _replace(model, name, new)
    _disable_fused_fast_paths(model)
    return model


def prepare_binary_model(model: nn.Module, bconfig: BConfig,
                         modules_mapping: Optional[Mapping[type, type]] = None,
                         custom_config_layers_name: Optional[Mapping[str, Optional[BConfig]]] = None,
                         ignore_layers_name: Optional[Iterable[str]] = None,
                         unmatched_patterns: str = "error") -> nn.Module:
    r"""Swap the Conv / ConvTranspose / Linear layers of ``model`` (subclasses included) for fake-binarized
    ones, in place, and return the model.

    The binary layers keep the float layers' Parameter objects and state_dict keys, so a float checkpoint
    loads into the binarized model, before or after this call. Already-binarized layers are re-binarized
    with the new config, keeping what their binarizers learned where a binarizer keeps its class; an
    already-binarized layer that this call leaves real (ignored, or configured None) goes back to its
    float class, with the same parameters.

    Args:
        model: any ``nn.Module``.
        bconfig: the :class:`BConfig` of every selected layer.
        modules_mapping: ``{float class: binary class}``; default :data:`DEFAULT_MODULE_MAPPING`.
        custom_config_layers_name: ``{selector: BConfig or None}``, per-layer overrides (see module doc).
        ignore_layers_name: selectors of layers to leave real, e.g. ``["_first_", "_last_"]``.
        unmatched_patterns: ``"error"`` (default) or ``"warn"``: what a ``$regex$`` selector that matches no
            layer does. A plain name that matches nothing is always an error.

    Returns:
        The model (a new module only if ``model`` itself is a single swappable layer).

    Example::

        >>> import torchvision, bnn
        >>> from bnn.ops import BasicInputBinarizer, XNORWeightBinarizer
        >>> bconfig = bnn.BConfig(activation_pre_process=BasicInputBinarizer,
        ...                       weight_pre_process=XNORWeightBinarizer)
        >>> model = bnn.prepare_binary_model(torchvision.models.resnet18(), bconfig,
        ...                                  ignore_layers_name=["_first_", "_last_"])
        >>> type(model.layer1[0].conv1).__name__
        'BinaryConv2d'
    """
    if not isinstance(bconfig, BConfig):
        raise ValueError(f"prepare_binary_model needs a bnn.BConfig, got {type(bconfig).__name__}")
    if unmatched_patterns not in ("error", "warn"):
        raise ValueError(f"unmatched_patterns must be 'error' or 'warn', got {unmatched_patterns!r}")
    custom = {} if custom_config_layers_name is None else custom_config_layers_name
    if not isinstance(custom, Mapping):
        raise ValueError(
            "custom_config_layers_name must be a dict {layer name or $regex$: BConfig}, "
            f"got {type(custom).__name__}"
        )
    ignore = [] if ignore_layers_name is None else ignore_layers_name
    if isinstance(ignore, str) or not isinstance(ignore, Iterable):
        raise ValueError(f"ignore_layers_name must be a list of layer names, got {ignore!r}; "
                         f"write [{ignore!r}] for a single name")
    mapping = DEFAULT_MODULE_MAPPING if modules_mapping is None else modules_mapping

    layers = swappable_layers(model, mapping)
    layer_names = [n for n, _ in layers]
    all_names = [n for n, _ in model.named_modules()]

    chosen: Dict[str, Tuple[int, Optional[BConfig]]] = {n: (0, bconfig) for n in layer_names}
    for selector, config in custom.items():
        if config is not None and not isinstance(config, BConfig):
            raise ValueError(f"custom_config_layers_name[{selector!r}] must be a BConfig or None, "
                             f"got {type(config).__name__}")
        names, priority = _resolve(selector, layer_names, all_names, "custom_config_layers_name",
                                   unmatched_patterns)
        for n in names:
            if priority >= chosen[n][0]:
                chosen[n] = (priority, config)
    for selector in ignore:
        for n in _resolve(selector, layer_names, all_names, "ignore_layers_name", unmatched_patterns)[0]:
            chosen[n] = (99, None)

    # A layer left real that is binary already (an earlier recipe step) goes back to its float class.
    for name, (_, config) in chosen.items():
        module = model.get_submodule(name) if name else model
        if config is None and isinstance(module, bl.BinarizedLayer):
            if name == "":
                return module.to_float()
            _replace(model, name, module.to_float())
    return _swap(model, {n: c for n, (_, c) in chosen.items() if c is not None}, mapping)


def convert(model: nn.Module, modules_mapping: Optional[Mapping[type, type]] = None) -> nn.Module:
    r"""Swap the layers that carry a ``.bconfig`` attribute (set at model creation) for binary ones.

    A container's ``.bconfig`` applies to the swappable layers inside it that set none of their own;
    ``layer.bconfig = None`` keeps a layer real. Returns the model (swapped in place).

    Example::

        >>> import torch.nn as nn, bnn
        >>> from bnn.ops import BasicInputBinarizer
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> net[1].bconfig = bnn.BConfig(activation_pre_process=BasicInputBinarizer)
        >>> type(bnn.convert(net)[1]).__name__
        'BinaryLinear'
    """
    mapping = DEFAULT_MODULE_MAPPING if modules_mapping is None else modules_mapping
    swappable = dict(swappable_layers(model, mapping))
    configs: Dict[str, BConfig] = {}

    def visit(module: nn.Module, prefix: str, inherited: Optional[BConfig]) -> None:
        own = module.bconfig if hasattr(module, "bconfig") else inherited
        if own is not None and not isinstance(own, BConfig):
            raise ValueError(f"{prefix or 'the model'}.bconfig must be a bnn.BConfig or None, "
                             f"got {type(own).__name__}")
        if prefix in swappable and own is not None:
            configs[prefix] = own
        for child_name, child in module.named_children():
            visit(child, f"{prefix}.{child_name}" if prefix else child_name, own)

    visit(model, "", None)
    return _swap(model, configs, mapping)
