r"""``to_inference``: rewrite a trained fake-binarized model into an inference graph.

1. Trace the model (eval mode) with torch.fx, binary layers kept whole; record shapes on the example input.
2. For each binary layer, walk back over the per-channel monotone operations that feed only its sign
   (BatchNorm in eval mode, learnable biases, scalar scales and shifts) and fold them, with the sign
   itself, into one exact per-channel compare (see :mod:`bnn.inference.thresholds`).
3. A layer with 1-bit weights and 1-bit activations becomes a packed XNOR-popcount layer; a layer binary
   on one side only becomes its exact float form; everything else stays as it was (stem, classifier,
   residual additions, pooling, RPReLU, ...).
4. The elementwise operations right after a packed convolution (scales, the residual addition, RPReLU)
   fuse into its epilogue (see :mod:`bnn.inference.fusion`).
Any binary layer the converter cannot handle raises an error naming the layer and the reason.
"""
import collections
import copy
import operator
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple, Union


import torch
import torch.fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from ..layers.binarized import BinarizedLayer
from ..layers.blocks import LearnableBias, PowerOfTwoRPReLU, RPReLU, ScaledStdConv2d
from ..ops.base import Identity
from ..ops.scale import BasicScaleBinarizer
from ..ops.weight import ScaledWeightBinarizer
from ..tracing import LeafTracer
from .fusion import fuse_epilogues, hand_over_bits, write_into_concatenations, write_over_residuals
from .modules import PackedBinaryConv2d, PackedBinaryLinear, SignedRealLayer
from .pooling import FastAvgPool2d, FastMaxPool2d
from .thresholds import derive_thresholds

__all__ = ["to_inference", "ConversionError"]

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]

_PER_CHANNEL_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, LearnableBias, nn.Identity, nn.Dropout, Identity)
_SCALAR_FUNCTIONS = {operator.mul, operator.add, operator.sub, operator.truediv, torch.mul, torch.add,
                     torch.sub, torch.div, operator.imul, operator.iadd, operator.isub, operator.itruediv}
_POST_WITHOUT_INPUT = (Identity, nn.Identity, BasicScaleBinarizer)

if TYPE_CHECKING:
    from .model import InferenceModel


class ConversionError(ValueError):
    """A layer the converter cannot turn into inference form; the message names it and says why."""


_IN_PLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.setitem}


def _changes_in_place(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """A node that may write into its first argument: ``x.relu_()``, ``x += y``, an ``inplace=True`` module."""
    if node.op == "call_method":
        return node.target.endswith("_")
    if node.op == "call_function":
        return node.target in _IN_PLACE_FUNCTIONS or getattr(node.target, "__name__", "").endswith("_")
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    return False


def _refuse_stale_uses(gm: torch.fx.GraphModule) -> None:
    """The converter works on values: a tensor used again after an in-place change (``y.relu_()``, then
    ``conv(y)``) would be converted as if unchanged. Such graphs are refused, naming the nodes."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in gm.graph.nodes:
        if not node.args or not isinstance(node.args[0], torch.fx.Node) or not _changes_in_place(gm, node):
            continue
        changed = node.args[0]
        later = [u for u in changed.users if u is not node and order[u] > order[node]]
        if later:
            raise ConversionError(
                f"{node.name!r} changes {changed.name!r} in place, and {later[0].name!r} uses {changed.name!r} "
                f"after that; the converter works on values: use the result of the in-place operation "
                f"(y = y.relu_()) or an out-of-place one")


def _tensor_input(node: torch.fx.Node) -> Optional[torch.fx.Node]:
    """The single tensor input of a per-channel operation node, or None if the node is not one."""
    if node.op == "call_module":
        return node.args[0] if len(node.args) == 1 and not node.kwargs else None
    if node.op == "call_function" and node.target in _SCALAR_FUNCTIONS and len(node.args) == 2 and not node.kwargs:
        a, b = node.args
        if isinstance(a, torch.fx.Node) and isinstance(b, (int, float)):
            return a
        if isinstance(b, torch.fx.Node) and isinstance(a, (int, float)) and node.target in (
                operator.mul, operator.add, torch.mul, torch.add):
            return b
    return None


def _foldable(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    # Other users of the node do not matter: folding replays the node into this layer's thresholds and
    # leaves it in the graph for them (it is removed only when no user is left).
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and not module.track_running_stats:
            return False
        return isinstance(module, _PER_CHANNEL_MODULES) and _tensor_input(node) is not None
    return node.op == "call_function" and _tensor_input(node) is not None


def _packed_producer(gm: torch.fx.GraphModule, node: torch.fx.Node):
    """The packed binary layer that produced ``node`` for this one user alone, with nothing after its scale
    and bias (no output scaler), or None."""
    if node.op != "call_module" or len(node.users) != 1:
        return None
    module = gm.get_submodule(node.target)
    if isinstance(module, (PackedBinaryConv2d, PackedBinaryLinear)) and module.post is None and not module.emit_dot:
        return module
    return None


def _replay(gm: torch.fx.GraphModule, chain: List[torch.fx.Node]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        for node in chain:
            if node.op == "call_module":
                x = gm.get_submodule(node.target)(x)
            else:
                a, b = node.args
                x = node.target(x, b) if isinstance(a, torch.fx.Node) else node.target(a, x)
        return x
    return run


def _shape(node: torch.fx.Node) -> Tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise ConversionError(f"no tensor shape recorded for {node.name}")
    return tuple(meta.shape)


def _convert_layer(gm: torch.fx.GraphModule, node: torch.fx.Node, layer: BinarizedLayer,
                   fold_chain: bool = True) -> None:
    name = node.target
    if getattr(layer, "padding_mode", "zeros") != "zeros":
        raise ConversionError(f"layer {name!r}: padding_mode={layer.padding_mode!r}; only zero padding converts")
    if getattr(layer, "transposed", False) or (hasattr(layer, "kernel_size") and len(layer.kernel_size) == 3):
        raise ConversionError(f"layer {name!r}: {type(layer).__name__} has no packed inference form yet "
                              "(supported: Conv1d, Conv2d, Linear)")
    if isinstance(getattr(layer, "padding", 0), str):
        raise ConversionError(f"layer {name!r}: padding={layer.padding!r}; convert needs numeric padding")
    if not isinstance(layer, nn.Linear) and len(_shape(node.args[0])) != len(layer.kernel_size) + 2:
        raise ConversionError(f"layer {name!r} saw an unbatched input {_shape(node.args[0])} in the example: "
                              "convert with a batched example (N, C, ...); the converted model then runs "
                              "unbatched inputs too")
    wbits, abits = layer.weight_precision, layer.activation_precision
    post = layer.activation_post_process
    post = None if isinstance(post, (Identity, nn.Identity)) else post
    linear = isinstance(layer, nn.Linear)
    channel_dim = -1 if linear else 1

    # the sign's input, and the per-channel operations that can fold into its compare
    source = node.args[0]
    chain: List[torch.fx.Node] = []
    if fold_chain and abits == 1 and (post is None or isinstance(post, _POST_WITHOUT_INPUT)):
        while isinstance(source, torch.fx.Node) and _foldable(gm, source):
            chain.insert(0, source)
            source = _tensor_input(source)

    thresholds = None
    if abits == 1:
        binarizer = layer.activation_pre_process
        channels = layer.in_features if linear else layer.in_channels

        def derive(chain: List[torch.fx.Node], source: torch.fx.Node):
            fold = _replay(gm, chain)

            def positive(x: torch.Tensor) -> torch.Tensor:
                y = binarizer(fold(x))
                if not bool(((y == 1) | (y == -1)).all()):
                    raise ConversionError(f"layer {name!r}: its activation binarizer {type(binarizer).__name__} "
                                          "does not output exactly +-1 in eval mode")
                return y > 0
            return derive_thresholds(positive, channels, _shape(source), channel_dim)
        try:
            try:
                thresholds = derive(chain, source)
                previous = _packed_producer(gm, source)
                if previous is not None and all(len(n.users) == 1 for n in chain):
                    # the previous binary layer feeds only this sign (through operations used nowhere else):
                    # its scale and bias fold into these thresholds too (compares on its integer sums), and it
                    # hands over the sums as they are
                    thresholds = derive_thresholds(
                        lambda d: binarizer(_replay(gm, chain)(previous.scale_and_bias(d))) > 0,
                        channels, _shape(source), channel_dim)
                    previous.emit_dot = True
            except (ValueError, RuntimeError):
                if not chain:
                    raise
                # the operations before the layer do not fold into per-channel compares on its channel axis
                # (e.g. a BatchNorm1d over (N, C, L) before a linear layer on L): keep them, fold nothing
                chain, source = [], node.args[0]
                thresholds = derive(chain, source)
        except ConversionError:
            raise
        except (ValueError, RuntimeError) as e:
            raise ConversionError(f"layer {name!r}: its input binarization is not a per-channel threshold "
                                  f"({e})") from None
    elif abits != 32:
        raise ConversionError(f"layer {name!r}: {abits}-bit activations; only 1 and 32 bits convert")

    wpp = layer.weight_pre_process
    weight = layer._to_out_major(layer.weight.detach())
    scale = None
    with torch.no_grad():
        if isinstance(wpp, ScaledWeightBinarizer):
            signs, scale = wpp.split(weight)
        else:
            signs = wpp(weight)
    signs = layer._from_out_major(signs.detach())
    if wbits == 1 and not bool(((signs == 1) | (signs == -1)).all()):
        raise ConversionError(f"layer {name!r}: its weight binarizer {type(wpp).__name__} declares 1 bit but "
                              "does not produce +-1 (times a per-channel scale)")

    if wbits == 1 and abits == 1:
        if linear:
            new = PackedBinaryLinear(thresholds, signs, scale, layer.bias, post)
        else:
            new = PackedBinaryConv2d(thresholds, signs, layer.stride, layer.padding, layer.dilation, layer.groups,
                                     scale, layer.bias, post)
    else:
        new = SignedRealLayer(layer, thresholds, signs, scale, post)
    parent, _, child = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, child, new)
    node.args = (source,)


def _frozen(module: nn.Module) -> Optional[nn.Module]:
    """A module whose forward recomputes a function of its parameters each call, with that function computed
    once: the same operations on the same values, so the same outputs. None for any other module."""
    if type(module) is ScaledStdConv2d:
        frozen = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                           module.padding, module.dilation, module.groups, bias=module.bias is not None)
        frozen.weight = nn.Parameter(module.weight_pre_process(module.weight).detach(), requires_grad=False)
        if module.bias is not None:
            frozen.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
        return frozen
    if type(module) is PowerOfTwoRPReLU:
        frozen = RPReLU(module.log2_slope.numel(), dim=module.dim)
        with torch.no_grad():
            frozen.shift_in.copy_(module.shift_in)
            frozen.slope.copy_(torch.exp2(torch.round(module.log2_slope)))  # as its forward computes it
            frozen.shift_out.copy_(module.shift_out)
        return frozen.requires_grad_(False)
    return None


def to_inference(model: nn.Module, example_inputs: Inputs) -> "InferenceModel":
    r"""Convert a trained fake-binarized model into an :class:`InferenceModel`.

    The model is not modified (a copy is converted, in eval mode). Outputs of the inference model equal
    those of ``model.eval()``.

    Args:
        model: a model with bnn binary layers (from ``prepare_binary_model`` or ``BinaryChef``).
        example_inputs: an input (or tuple of inputs) of the shape the model will see; it fixes the shapes
            at which the thresholds are derived.

    Raises:
        ConversionError: for a layer that cannot be converted, naming it and saying why.

    Example::

        >>> import torch, torchvision, bnn
        >>> from bnn.ops import BasicInputBinarizer, XNORWeightBinarizer
        >>> model = bnn.prepare_binary_model(torchvision.models.resnet18(num_classes=10), bnn.BConfig(
        ...     activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer),
        ...     ignore_layers_name=["_first_", "_last_"]).eval()
        >>> x = torch.randn(2, 3, 32, 32)
        >>> fast = bnn.to_inference(model, x)
        >>> bool(torch.allclose(fast(x), model(x), rtol=1e-5, atol=1e-5))
        True
    """
    from .model import InferenceModel

    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    model = copy.deepcopy(model).eval()
    try:
        graph = LeafTracer().trace(model)
    except Exception as e:
        raise ConversionError(f"torch.fx cannot trace {type(model).__name__}: {e}") from None
    gm = torch.fx.GraphModule(model, graph)
    # a layer called at several places has one set of thresholds: fold nothing into it (its call sites may
    # have different operations before them)
    _refuse_stale_uses(gm)
    calls = collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    with torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
        for node in list(gm.graph.nodes):
            if node.op == "call_module" and isinstance(gm.get_submodule(node.target), BinarizedLayer):
                _convert_layer(gm, node, gm.get_submodule(node.target), fold_chain=calls[node.target] == 1)
        fuse_epilogues(gm)
        for node in gm.graph.nodes:
            if node.op != "call_module":
                continue
            module = gm.get_submodule(node.target)
            fast_pool = {nn.MaxPool2d: FastMaxPool2d, nn.AvgPool2d: FastAvgPool2d}.get(type(module))
            new = fast_pool.from_module(module) if fast_pool is not None else _frozen(module)
            if new is not None:
                parent, _, child = node.target.rpartition(".")
                setattr(gm.get_submodule(parent) if parent else gm, child, new)
        hand_over_bits(gm)
        write_into_concatenations(gm)
        gm.graph.eliminate_dead_code()  # (the fused operations' nodes: no user of a residual must be left)
        write_over_residuals(gm)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return InferenceModel(gm)
