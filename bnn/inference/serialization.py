r"""The packed file format of an :class:`InferenceModel`: ``model.save(path)`` / ``bnn.load_inference(path)``.

The file is a ``torch.save`` archive holding only tensors and plain data (read back with
``torch.load(weights_only=True)``: loading never runs code from the file). It stores the graph node by
node, functions and classes by name from fixed allow-lists, and each module's plain attributes and
tensors; binary weights are the packed int64 words, 1 bit per weight.
"""
import keyword
import math
import operator
import os
from typing import TYPE_CHECKING, Any, Dict


import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from .. import layers as _layers
from ..io import atomic_save
from ..ops import base as _ops_base
from ..ops import scale as _ops_scale
from ..ops import weight as _ops_weight
from . import modules as _modules
from . import pooling as _pooling
from .packing import pack_bits, unpack_bits

__all__ = ["save_inference", "load_inference", "FORMAT", "VERSION"]

FORMAT = "bnn-inference"
# 2: fused epilogues, phase-split packing, pooling kernels; 3: bits handed to the next layer; 4: concatenations
# written by the layers concatenated, their outputs (out_channel_offset) and the next layer's packed input
# (next_channel_offset)
VERSION = 4
_READABLE = (2, 3, 4)  # a version-2 file is a version-3 graph without hand-overs, a version-3 one a version-4 graph
# without hand-overs through concatenations

_MODULE_CLASSES = [
    _modules.PackedBinaryConv2d, _modules.PackedBinaryLinear, _modules.SignedRealLayer,
    _pooling.FastMaxPool2d, _pooling.FastAvgPool2d,
    _layers.LearnableBias, _layers.RPReLU, _layers.PowerOfTwoRPReLU, _ops_base.Identity,
    _ops_scale.BasicScaleBinarizer, _ops_scale.XNORScaleBinarizer, _layers.ScaledStdConv2d,
    _ops_weight.ScaledStandardizedWeight,
    nn.Conv1d, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.PReLU, nn.Hardtanh,
    nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Hardswish, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Identity, nn.Module, nn.Sequential, nn.LayerNorm, nn.Softmax,
]
MODULE_CLASSES = {f"{c.__module__}.{c.__qualname__}": c for c in _MODULE_CLASSES}

_FUNCTIONS = [
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, operator.neg, operator.getitem, getattr, torch.add, torch.sub, torch.mul, torch.div,
    torch.cat, torch.stack, torch.flatten, torch.roll, torch.chunk, torch.split, torch.mean, torch.relu,
    torch.transpose, torch.permute, torch.reshape, F.relu, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d,
    F.interpolate, F.pad, F.linear, F.softmax,
]
FUNCTIONS = {f"{getattr(f, '__module__', None) or 'builtins'}.{f.__qualname__}": f for f in _FUNCTIONS}
METHODS = {"view", "reshape", "flatten", "size", "mean", "sum", "add", "mul", "sub", "div", "chunk", "split",
           "permute", "transpose", "contiguous", "relu", "roll", "expand", "unsqueeze", "squeeze", "clone",
           "add_", "mul_", "__getitem__"}
_PLAIN = (int, float, bool, str, type(None))
_OPS = {"placeholder", "get_attr", "call_function", "call_method", "call_module", "output"}

if TYPE_CHECKING:
    from .model import InferenceModel


def _identifier(name: Any) -> bool:
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def _path(target: Any) -> bool:
    """A module or attribute path: names joined by dots. torch.fx writes a name that is not an identifier
    (``nn.Sequential``'s ``0``, regnet's ``block1-0``) as ``getattr(self, "<name>")`` into its source, so a
    name must not be able to end that string."""
    return isinstance(target, str) and all(
        p and p.isprintable() and not any(ch in p for ch in "\"'\\") for p in target.split("."))


def _check_node(spec: Dict[str, Any], args: Any, kwargs: Any) -> None:
    r"""Refuse what torch.fx would paste into the Python source it generates and ``exec``\ s: placeholder
    names (a default value there runs as soon as the graph is compiled), attribute and module paths,
    keyword names; and ``getattr`` of private attributes (a way to reach arbitrary objects)."""
    op, target, name = spec["op"], spec["target"], spec["name"]
    if op not in _OPS:
        raise ValueError(f"node op {op!r} is not allowed")
    if not _identifier(name):
        raise ValueError(f"node name {name!r} is not an identifier")
    if op == "placeholder" and not (isinstance(target, str) and _identifier(target.lstrip("*"))):
        raise ValueError(f"input name {target!r} is not an identifier")
    if op in ("get_attr", "call_module") and not _path(target):
        raise ValueError(f"{op} target {target!r} is not a module or attribute path")
    if not isinstance(kwargs, dict) or not all(_identifier(k) for k in kwargs):
        raise ValueError(f"node {name!r}: keyword argument names must be identifiers")
    if op == "call_function" and target == _qualname(getattr):
        attr = args[1] if isinstance(args, (tuple, list)) and len(args) > 1 else None
        if not isinstance(attr, str) or attr.startswith("_"):
            raise ValueError(f"node {name!r}: getattr of {attr!r} is not allowed")


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', None) or 'builtins'}.{obj.__qualname__}"


def _encode(value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return {"node": value.name}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, slice):
        return {"slice": [_encode(value.start), _encode(value.stop), _encode(value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).replace("torch.", "")}
    if isinstance(value, _PLAIN):
        return value
    raise ValueError(f"cannot store a graph argument of type {type(value).__name__}: {value!r}")


def _decode(value: Any, nodes: Dict[str, torch.fx.Node]) -> Any:
    if isinstance(value, list):
        return [_decode(v, nodes) for v in value]
    if isinstance(value, dict):
        if "node" in value:
            return nodes[value["node"]]
        if "tuple" in value:
            return tuple(_decode(v, nodes) for v in value["tuple"])
        if "dict" in value:
            return {k: _decode(v, nodes) for k, v in value["dict"].items()}
        if "slice" in value:
            return slice(*(_decode(v, nodes) for v in value["slice"]))
        if "ellipsis" in value:
            return Ellipsis
        if "dtype" in value:
            dtype = getattr(torch, value["dtype"], None) if isinstance(value["dtype"], str) else None
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"{value['dtype']!r} is not a torch dtype")
            return dtype
    return value


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _encode_module(module: nn.Module, where: str) -> Dict[str, Any]:
    name = _qualname(type(module))
    if name not in MODULE_CLASSES:
        raise ValueError(f"cannot save module {where!r} of type {name}: the inference format stores only "
                         f"{', '.join(sorted(c.__name__ for c in _MODULE_CLASSES))}")
    attrs = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and _plain(v)}
    buffers = {k: v for k, v in module._buffers.items() if v is not None}
    signs = {}
    w = buffers.get("weight")
    if isinstance(module, _modules.SignedRealLayer) and w.is_floating_point() and bool(((w == 1) | (w == -1)).all()):
        # a layer binarized on its weights only keeps ±1 weights: 1 bit each in the file, as the packed layers
        del buffers["weight"]
        signs["weight"] = {"bits": pack_bits(w.reshape(-1) > 0), "shape": list(w.shape),
                           "dtype": str(w.dtype).replace("torch.", "")}
    return {
        "type": name,
        "attrs": attrs,
        "training": module.training,
        "parameters": {k: v.detach() for k, v in module._parameters.items() if v is not None},
        "buffers": buffers,
        "signs": signs,
        "none_tensors": [k for k, v in {**module._parameters, **module._buffers}.items() if v is None],
        "children": {k: _encode_module(v, f"{where}.{k}" if where else k)
                     for k, v in module._modules.items() if v is not None},
    }


def _decode_module(data: Dict[str, Any]) -> nn.Module:
    cls = MODULE_CLASSES.get(data["type"])
    if cls is None:
        raise ValueError(f"unknown module type {data['type']!r} in the file")
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for k, v in data["attrs"].items():
        if not _identifier(k) or k.startswith("_"):
            raise ValueError(f"module attribute name {k!r} is not allowed")
        setattr(module, k, v)
    module.training = data["training"]
    for k, v in data["parameters"].items():
        module._parameters[k] = nn.Parameter(v, requires_grad=False)
    for k, v in data["buffers"].items():
        module._buffers[k] = v
    for k, v in data.get("signs", {}).items():
        shape, dtype = [int(d) for d in v["shape"]], _decode({"dtype": v["dtype"]}, {})
        bits = unpack_bits(v["bits"], math.prod(shape)).view(shape)
        module._buffers[k] = torch.where(bits, 1.0, -1.0).to(dtype)
    for k in data["none_tensors"]:
        setattr(module, k, None) if k in module._parameters else module.register_buffer(k, None)
    for k, child in data["children"].items():
        if not _path(k) or "." in k:
            raise ValueError(f"submodule name {k!r} is not allowed")
        module._modules[k] = _decode_module(child)
    if isinstance(module, (nn.modules.conv._ConvNd,)):
        module._reversed_padding_repeated_twice = [p for p in reversed(module.padding) for _ in range(2)] \
            if not isinstance(module.padding, str) else module._reversed_padding_repeated_twice
    return module


def save_inference(model, path) -> None:
    """Write ``model`` (an :class:`InferenceModel`) to ``path`` through a temporary file."""
    gm = model.graph_module
    nodes = []
    for node in gm.graph.nodes:
        if node.op == "call_function":
            target = _qualname(node.target)
            if target not in FUNCTIONS:
                raise ValueError(f"cannot save graph node {node.name!r}: function {target} is not in the "
                                 "inference format's list")
        elif node.op == "call_method":
            target = node.target
            if target not in METHODS:
                raise ValueError(f"cannot save graph node {node.name!r}: method .{target}() is not in the "
                                 "inference format's list")
        else:
            target = node.target
        nodes.append({"name": node.name, "op": node.op, "target": target, "args": _encode(node.args),
                      "kwargs": _encode(dict(node.kwargs))})
    attributes = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = gm
            for part in node.target.split("."):
                value = getattr(value, part)
            attributes[node.target] = value.detach() if isinstance(value, torch.Tensor) else value
    modules = {name: _encode_module(m, name) for name, m in gm.named_children()}
    atomic_save({"format": FORMAT, "version": VERSION, "graph": nodes, "modules": modules,
                 "attributes": attributes}, path)


def load_inference(path) -> "InferenceModel":
    r"""Load a model written by :meth:`InferenceModel.save`.

    Raises:
        ValueError: for a file that is not a bnn inference file, is truncated, or comes from a newer version.
    """
    from .model import InferenceModel

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable bnn inference file (truncated, corrupt, or another "
                         f"format): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bnn inference file (no '{FORMAT}' header); "
                         "write one with InferenceModel.save")
    if data.get("version") not in _READABLE:
        raise ValueError(f"{path} is bnn inference format version {data.get('version')}; this bnn reads "
                         f"versions {', '.join(map(str, _READABLE))}: convert the trained model again "
                         "(bnn.to_inference) and save it")
    try:
        root = nn.Module()
        for name, m in data["modules"].items():
            if not _path(name) or "." in name:
                raise ValueError(f"module name {name!r} is not allowed")
            root.add_module(name, _decode_module(m))
        for target, value in data["attributes"].items():
            if not _path(target):
                raise ValueError(f"attribute path {target!r} is not allowed")
            owner = root
            *parents, leaf = target.split(".")
            for p in parents:
                owner = getattr(owner, p)
            owner.register_buffer(leaf, value) if isinstance(value, torch.Tensor) else setattr(owner, leaf, value)
        graph = torch.fx.Graph()
        nodes: Dict[str, torch.fx.Node] = {}
        for spec in data["graph"]:
            op, target = spec["op"], spec["target"]
            if op == "call_function":
                if target not in FUNCTIONS:
                    raise ValueError(f"function {target!r} is not allowed")
                target = FUNCTIONS[target]
            elif op == "call_method" and target not in METHODS:
                raise ValueError(f"method {target!r} is not allowed")
            args = _decode(spec["args"], nodes)
            kwargs = _decode(spec["kwargs"], nodes)
            _check_node(spec, args, kwargs)
            if op == "output":
                nodes[spec["name"]] = graph.output(args[0])
                continue
            node = graph.create_node(op, target, tuple(args) if isinstance(args, list) else args, kwargs,
                                     name=spec["name"])
            nodes[spec["name"]] = node
        gm = torch.fx.GraphModule(root, graph)
    except (KeyError, TypeError, AttributeError, IndexError, RuntimeError, AssertionError, SyntaxError) as e:
        raise ValueError(f"{path}: malformed bnn inference file ({type(e).__name__}: {e})") from None
    return InferenceModel(gm)
