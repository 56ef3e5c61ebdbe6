r"""Fuse the elementwise operations after a packed binary convolution into its epilogue.

In a ReActNet / A&B block the binary convolution is followed by a chain of elementwise operations: a scale
(``0.25 * out``), the residual addition, an RPReLU (shift, PReLU, shift). Each costs a pass over the
feature map in PyTorch; fused, the kernel applies them to each output row while it is in cache, and writes
the block's output once.

A step is fused only when the layer's output feeds that operation alone, and only for operations whose
float rounding the kernel reproduces exactly (:data:`bnn.inference.modules.EPILOGUE_STEPS`): a multiply or
add by a scalar or per-channel constant, the addition of a tensor of the output's shape, PReLU with
per-channel slopes, an eval-mode BatchNorm2d whose PyTorch results a multiply-add reproduces on every
value the layer can output (:mod:`bnn.inference.batchnorm`). A concatenation of one tensor (a copy) is
dropped, and a per-channel activation after the concatenation of packed convolutions fuses into each of
them with its slice of the channels (the blocks of ReActNet-A). The fused graph computes the same values
as the unfused one.

:func:`hand_over_bits` then fuses the next binary layer's input compare into the epilogue: a packed
convolution whose output goes straight into another one also writes that layer's packed input bits, which
the other layer takes instead of packing its input itself; when the network concatenates several packed
convolutions' outputs into the input of another, each writes its channels of that layer's packed input.
:func:`write_over_residuals` lets a layer write
its output over the tensor its ``add_residual`` step adds, when nothing else uses that tensor.
"""
import collections
import operator
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx
import torch.nn as nn

from ..layers.blocks import LearnableBias, PowerOfTwoRPReLU, RPReLU
from .batchnorm import batchnorm_steps
from .modules import PackedBinaryConv2d, SignedRealLayer
from .pooling import FastAvgPool2d, FastMaxPool2d

__all__ = ["fuse_epilogues", "hand_over_bits", "write_into_concatenations", "write_over_residuals"]

_MULTIPLY = {operator.mul, torch.mul}
_ADD = {operator.add, torch.add}
Step = Tuple[str, Optional[torch.Tensor]]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar(value) -> torch.Tensor:
    """A Python scalar as float32, rounded once as torch rounds it against a float32 tensor (an int goes
    int64 -> float32, not through a double)."""
    return torch.tensor(value).to(torch.float32)


def _same_tensor(node: torch.fx.Node, like: torch.fx.Node) -> bool:
    meta, ref = node.meta.get("tensor_meta"), like.meta.get("tensor_meta")
    return (meta is not None and ref is not None and hasattr(meta, "shape") and hasattr(ref, "shape")
            and tuple(meta.shape) == tuple(ref.shape) and meta.dtype == ref.dtype == torch.float32)


def _single_value(module: nn.Module) -> bool:
    """A module whose parameter is one value for all channels (the same on any axis)."""
    return isinstance(module, nn.PReLU) and module.weight.numel() == 1


def _module_steps(module: nn.Module, channels: int) -> Optional[List[Step]]:
    """The epilogue steps of a per-channel elementwise module on (N, C, ...) tensors, or None."""
    if isinstance(module, (RPReLU, PowerOfTwoRPReLU)) and module.dim == 1:
        if isinstance(module, PowerOfTwoRPReLU):
            slope = torch.exp2(torch.round(module.log2_slope.detach()))  # as its forward computes it
        else:
            slope = module.slope.detach()
        return [("add", module.shift_in.detach()), ("prelu", slope), ("add", module.shift_out.detach())]
    if isinstance(module, nn.PReLU) and module.weight.numel() in (1, channels):
        return [("prelu", module.weight.detach())]
    if isinstance(module, LearnableBias) and module.dim == 1:
        return [("add", module.bias.detach())]
    return None


def _reachable_outputs(layer: PackedBinaryConv2d) -> Optional[torch.Tensor]:
    """Every value the layer can output so far, per channel: ``(1, C, 1, 2K + 1)``, its epilogue on all
    integer sums from -K to K (K = inputs per output), or None when a fused step adds a residual tensor."""
    if layer.fused_residual:
        return None
    k = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
    sums = torch.arange(-k, k + 1, dtype=torch.float32).view(1, 1, 1, -1).expand(1, layer.out_channels, 1, -1)
    return layer._finish(sums, sums)


def _user_steps(gm: torch.fx.GraphModule, user: torch.fx.Node, node: torch.fx.Node, layer: PackedBinaryConv2d,
                order: Dict[torch.fx.Node, int]) -> Optional[Tuple[List[Step], Optional[torch.fx.Node]]]:
    """The steps that replace ``user`` (which consumes ``node``), and the residual tensor it adds, or None."""
    channels, has_residual = layer.out_channels, layer.fused_residual
    if user.op == "call_module":
        if len(user.args) != 1 or user.kwargs:
            return None
        module = gm.get_submodule(user.target)
        if isinstance(module, nn.BatchNorm2d):  # exact only where checked on all the layer's outputs
            reachable = _reachable_outputs(layer)
            steps = None if reachable is None else batchnorm_steps(module, reachable)
        else:
            steps = _module_steps(module, channels)
        return None if steps is None else (steps, None)
    if user.op != "call_function" or len(user.args) != 2 or user.kwargs:
        return None
    a, b = user.args
    other = b if a is node else a
    if (a is node) == (b is node):
        return None
    if user.target in _MULTIPLY and _number(other):
        return [("multiply", _scalar(other))], None
    if user.target in _ADD or (user.target is operator.iadd and a is node):
        if _number(other):
            return [("add", _scalar(other))], None
        if (isinstance(other, torch.fx.Node) and not has_residual and _same_tensor(other, node)
                and order[other] < order[node]):
            return [("add_residual", None)], other
    return None


def _fusable_layer(gm: torch.fx.GraphModule, node: torch.fx.Node, calls) -> Optional[PackedBinaryConv2d]:
    """The packed convolution ``node`` calls, if steps can be fused after it: called once, no output scaler,
    not handing over its sums, a batched output."""
    if node.op != "call_module" or calls[node.target] != 1:
        return None
    layer = gm.get_submodule(node.target)
    if type(layer) is not PackedBinaryConv2d or layer.post is not None or layer.emit_dot:
        return None
    meta = node.meta.get("tensor_meta")
    if meta is None or len(getattr(meta, "shape", ())) != (3 if layer.conv1d else 4):
        return None  # unbatched: the per-channel modules after it act on another axis than the layer's channels
    return layer


def _drop_single_cats(gm: torch.fx.GraphModule) -> None:
    """``torch.cat([x])`` is a copy of ``x``: where ``x`` has no other user, use ``x`` itself (ReActNet-A's
    blocks concatenate one or two branches), so that what follows can fuse into the layer that made ``x``."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.cat or not node.args:
            continue
        tensors = node.args[0]
        if (isinstance(tensors, (list, tuple)) and len(tensors) == 1 and isinstance(tensors[0], torch.fx.Node)
                and len(tensors[0].users) == 1):
            node.replace_all_uses_with(tensors[0])
            gm.graph.erase_node(node)


def _fuse_through_cats(gm: torch.fx.GraphModule, calls) -> int:
    """``act(torch.cat([conv_a(x), conv_b(y)], dim=1))`` with a per-channel ``act``: each convolution takes
    its slice of ``act``'s channels (the concatenation stays, the pass of ``act`` goes)."""
    fused = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.cat or len(node.users) != 1:
            continue
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        meta = node.meta.get("tensor_meta")
        if not isinstance(tensors, (list, tuple)) or meta is None or len(getattr(meta, "shape", ())) != 4 \
                or dim not in (1, -3):
            continue
        user = next(iter(node.users))
        if user.op != "call_module" or len(user.args) != 1 or user.kwargs:
            continue
        module = gm.get_submodule(user.target)
        steps = _module_steps(module, meta.shape[1])
        layers = [_fusable_layer(gm, t, calls) if isinstance(t, torch.fx.Node) and len(t.users) == 1 else None
                  for t in tensors]
        if steps is None or any(layer is None or layer.conv1d for layer in layers):
            continue
        offset = 0
        for layer in layers:
            for step, values in steps:
                if values is not None and values.numel() > 1:
                    values = values[offset:offset + layer.out_channels]
                layer.fuse(step, values)
            layer.batched_only = layer.batched_only or not _single_value(module)
            offset += layer.out_channels
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
        fused += 1
    return fused


def fuse_epilogues(gm: torch.fx.GraphModule) -> int:
    """Fuse elementwise chains into the packed convolutions of ``gm`` (shapes recorded by ShapeProp);
    returns the number of operations fused. The graph is modified in place; call ``gm.recompile()``."""
    calls = collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    _drop_single_cats(gm)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    fused = 0
    for node in list(gm.graph.nodes):
        layer = _fusable_layer(gm, node, calls)
        if layer is None or len(node.args) != 1:
            continue
        while len(node.users) == 1:
            user = next(iter(node.users))
            found = _user_steps(gm, user, node, layer, order)
            if found is None:
                break
            steps, residual = found
            for step, values in steps:
                layer.fuse(step, values)
            if user.op == "call_module" and not _single_value(gm.get_submodule(user.target)):
                # its "axis 1" is the channel axis of a batch only: an unbatched (C, H, W) call would differ
                layer.batched_only = True
            if residual is not None:  # computed before the convolution (moving the convolution later could
                node.args = (node.args[0], residual)  # move it past an in-place change of its input)
            user.replace_all_uses_with(node)
            gm.graph.erase_node(user)
            fused += 1
    return fused + _fuse_through_cats(gm, calls)


def hand_over_bits(gm: torch.fx.GraphModule) -> int:
    """Where a packed 2-d convolution's output is the input of another packed convolution, make the first
    write the second's packed input in its epilogue (:meth:`PackedBinaryConv2d.hand_bits_to`): its node then
    returns ``(output, bits)``, its users take ``[0]``, the second layer ``packed=[1]``. The same bits also go
    to every other consumer that would pack its input the same way (:func:`_packs_alike`: ReActNet-A's two
    pointwise convolutions after one 3x3). Layers whose outputs are concatenated into another's input each
    write their channels of it (:func:`_hand_over_through_cats`). Returns the number of layers that hand over
    their bits; call
    ``gm.recompile()``. (The bits are the output's value when the layer ran: :func:`bnn.to_inference` refuses
    graphs that use a tensor after changing it in place.)"""
    calls = collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    linked = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        producer = gm.get_submodule(node.target)
        meta = node.meta.get("tensor_meta")
        if (type(producer) is not PackedBinaryConv2d or producer.post is not None or meta is None
                or len(getattr(meta, "shape", ())) != 4 or meta.dtype != torch.float32):
            continue
        consumers = [user for user in node.users
                     if user.op == "call_module" and user.args and user.args[0] is node and "packed" not in user.kwargs
                     and producer.can_hand_bits_to(gm.get_submodule(user.target))]
        if not consumers:
            continue
        first = gm.get_submodule(consumers[0].target)
        producer.hand_bits_to(first)
        _give_bits(gm, consumers, first, _split_output(gm, node))
        linked += 1
    return linked + _hand_over_through_cats(gm, calls)


def _split_output(gm: torch.fx.GraphModule, node: torch.fx.Node) -> torch.fx.Node:
    """``node`` now returns ``(output, bits)``: its users take ``[0]``; returns the node of ``[1]``."""
    with gm.graph.inserting_after(node):
        output = gm.graph.call_function(operator.getitem, (node, 0))
    node.replace_all_uses_with(output, delete_user_cb=lambda user: user is not output)
    with gm.graph.inserting_after(output):
        return gm.graph.call_function(operator.getitem, (node, 1))


def _give_bits(gm: torch.fx.GraphModule, consumers, first: PackedBinaryConv2d, bits: torch.fx.Node) -> None:
    """``first`` (the layer of ``consumers[0]``), and every other consumer that packs alike, take ``bits``."""
    for consumer in consumers:
        if consumer is consumers[0] or _packs_alike(first, gm.get_submodule(consumer.target)):
            consumer.kwargs = {**consumer.kwargs, "packed": bits}


def _hand_over_through_cats(gm: torch.fx.GraphModule, calls) -> int:
    """``conv(torch.cat([conv_a(x), conv_b(y)], dim=1))`` (ReActNet-A's blocks that double their channels):
    ``conv_a`` writes its channels of ``conv``'s packed input, ``conv_b`` the next ones into the same tensor
    (``packed_out=``), and ``conv`` takes them as ``packed=`` instead of packing the concatenation, which stays
    for the other users. The layers write in the graph's order, each after the one before. Returns the number
    of layers that hand over their bits so."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    linked = 0
    for node, tensors in _channel_cats(gm):
        producers = [_bits_producer(gm, t, calls) for t in tensors]
        consumers = [user for user in node.users
                     if user.op == "call_module" and user.args and user.args[0] is node and "packed" not in user.kwargs
                     and type(gm.get_submodule(user.target)) is PackedBinaryConv2d]
        if any(p is None for p in producers) or not consumers:
            continue
        first = gm.get_submodule(consumers[0].target)
        offsets = [sum(p.out_channels for p in producers[:k]) for k in range(len(producers))]
        if offsets[-1] + producers[-1].out_channels != first.in_channels or \
                not all(p.can_hand_bits_to(first, offset) for p, offset in zip(producers, offsets)):
            continue
        bits = None
        for k in sorted(range(len(tensors)), key=lambda k: order[tensors[k]]):
            producer_node = tensors[k]
            producers[k].hand_bits_to(first, offsets[k])
            if bits is not None:
                producer_node.kwargs = {**producer_node.kwargs, "packed_out": bits}
            bits = _split_output(gm, producer_node)
        _give_bits(gm, consumers, first, bits)
        linked += len(tensors)
    return linked


def _channel_cats(gm: torch.fx.GraphModule):
    """``(node, tensors)`` for each ``torch.cat`` of two or more tensors along the channels of a float 4-d
    tensor (the nodes listed first: the caller may change the graph)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.cat:
            continue
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        meta = node.meta.get("tensor_meta")
        if (isinstance(tensors, (list, tuple)) and len(tensors) >= 2 and dim in (1, -3) and meta is not None
                and len(getattr(meta, "shape", ())) == 4 and meta.dtype == torch.float32):
            yield node, list(tensors)


def _bits_producer(gm: torch.fx.GraphModule, node, calls) -> Optional[PackedBinaryConv2d]:
    """The packed 2-d convolution that ``node`` calls, when it could hand over its bits (called once, nothing
    after its epilogue, float 4-d output, not handing over already), else None."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_module" or calls[node.target] != 1:
        return None
    layer = gm.get_submodule(node.target)
    meta = node.meta.get("tensor_meta")
    if (type(layer) is not PackedBinaryConv2d or layer.post is not None or layer.next_groups or meta is None
            or len(getattr(meta, "shape", ())) != 4 or meta.dtype != torch.float32):
        return None
    return layer


def _packs_alike(a: PackedBinaryConv2d, b: PackedBinaryConv2d) -> bool:
    """Whether ``a`` and ``b`` pack a given input into the same words: the same thresholds and directions, and
    the same layout of the words (groups, and the horizontal stride their columns are split by)."""
    return (a.groups == b.groups and a.stride[1] == b.stride[1] and torch.equal(a.threshold, b.threshold)
            and torch.equal(a.direction, b.direction))


# Modules whose output is a new tensor, never a view of their input or of a parameter.
_NEW_TENSOR_MODULES = (PackedBinaryConv2d, SignedRealLayer, FastMaxPool2d, FastAvgPool2d, nn.Conv2d, nn.BatchNorm2d)


def _new_tensor(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Whether ``node`` computes a tensor of its own: a call of one of :data:`_NEW_TENSOR_MODULES`, or the
    output (``[0]``) of a packed convolution that hands over its bits."""
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)) in _NEW_TENSOR_MODULES
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        source = node.args[0]
        return (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and type(gm.get_submodule(source.target)) is PackedBinaryConv2d)
    return False


def write_into_concatenations(gm: torch.fx.GraphModule) -> int:
    """``torch.cat([conv_a(x), conv_b(y)], dim=1)`` of packed convolutions' outputs (ReActNet-A's
    channel-doubling blocks): each convolution writes its channels of the concatenation
    (:attr:`PackedBinaryConv2d.out_channels_total`), the first one in the graph allocating it, the next ones
    given it (``out=``), and the concatenation's copy goes. Each output must have no other user. Run after
    :func:`hand_over_bits` (its outputs then come as ``[0]``); returns the number of concatenations; call
    ``gm.recompile()``."""
    calls = collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    count = 0
    for node, tensors in _channel_cats(gm):
        calls_of = [_concatenated_call(gm, t, calls) for t in tensors]
        if any(call is None for call in calls_of) or any(len(t.users) != 1 for t in tensors):
            continue
        layers = [gm.get_submodule(call.target) for call in calls_of]
        total = sum(layer.out_channels for layer in layers)
        previous = None
        for k in sorted(range(len(tensors)), key=lambda k: order[calls_of[k]]):
            layers[k].out_channels_total = total
            layers[k].out_channel_offset = sum(layer.out_channels for layer in layers[:k])
            layers[k].batched_only = True  # (on an unbatched input, dim 1 would not be the channels)
            if previous is not None:
                calls_of[k].kwargs = {**calls_of[k].kwargs, "out": previous}
            previous = tensors[k]
        node.replace_all_uses_with(previous)
        gm.graph.erase_node(node)
        count += 1
    return count


def _concatenated_call(gm: torch.fx.GraphModule, tensor, calls) -> Optional[torch.fx.Node]:
    """The call of the packed 2-d convolution whose output ``tensor`` is (the call, or its ``[0]`` when it hands
    over bits), when that layer can write into a concatenation (called once, nothing after its epilogue, its
    output its own, not over its residual), else None."""
    if not isinstance(tensor, torch.fx.Node):
        return None
    call = tensor
    if tensor.op == "call_function" and tensor.target is operator.getitem and tensor.args[1] == 0:
        call = tensor.args[0]
    if not isinstance(call, torch.fx.Node) or call.op != "call_module" or calls[call.target] != 1:
        return None
    layer = gm.get_submodule(call.target)
    if (type(layer) is not PackedBinaryConv2d or layer.conv1d or layer.post is not None or layer.emit_dot
            or layer.out_channels_total or layer.overwrites_residual):
        return None
    # ([0] of the pair a layer that hands over its bits returns, or the output itself; not x[0] of a batch)
    return call if (call is not tensor) == bool(layer.next_groups) else None


def write_over_residuals(gm: torch.fx.GraphModule) -> int:
    """Where a packed convolution's fused ``add_residual`` step adds a tensor that it alone uses, and that a
    module computed for it (no graph input, no view of another tensor), let the kernels write the output over
    that tensor (:attr:`PackedBinaryConv2d.overwrites_residual`): each element is read, then written, by the
    same step of the epilogue. One feature map fewer per block, and no fresh memory to fault in. Dead nodes
    count as users: eliminate them first. Returns the number of layers; the graph itself is unchanged."""
    calls = collections.Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    count = 0
    for node in gm.graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1 or len(node.args) < 2:
            continue
        layer, residual = gm.get_submodule(node.target), node.args[1]
        if (type(layer) is PackedBinaryConv2d and layer.fused_residual and not layer.out_channels_total
                and isinstance(residual, torch.fx.Node) and set(residual.users) == {node}
                and _new_tensor(gm, residual)):
            layer.overwrites_residual = True
            count += 1
    return count
