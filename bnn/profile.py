r"""Operation counts and a per-layer summary of (binary) models: :func:`count_ops` and :func:`summary`.

Conventions (those of the Bi-Real Net and ReActNet papers):

* **BOPs**: multiply-accumulates of binary layers, 1-bit weights *and* 1-bit activations;
* **FLOPs**: multiply-accumulates of every other conv / linear / matmul (real, or binary on one side only);
* **OPs** = FLOPs + BOPs / 64;
* elementwise work (normalization, activations, additions, pooling, binarization compares, scales) is
  counted apart, by kind, and not folded into FLOPs.

Counts are for the input given (batch included). The model is traced with ``torch.fx`` through
pthflops' profiling interpreter, with bnn's binary layers and blocks kept as leaves (traced through, a
conv becomes a function call that pthflops counts as 0); where FX cannot trace the model, forward hooks
on the leaf modules count instead (then functional additions are not seen: ``report.method == "hooks"``).
"""
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn as nn
from pthflops import ops_fx

from .layers.binarized import BinarizedLayer
from .layers.blocks import LearnableBias, PowerOfTwoRPReLU, RPReLU
from .ops.base import Identity
from .ops.weight import ScaledWeightBinarizer
from .tracing import LeafTracer

__all__ = ["LayerCount", "OpsReport", "count_ops", "LayerSummary", "ModelSummary", "summary"]

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]


@dataclass
class LayerCount:
    """One counted layer."""
    name: str
    kind: str
    weight_bits: Optional[int]
    activation_bits: Optional[int]
    macs: int
    params: int
    elementwise: int = 0

    @property
    def is_binary(self) -> bool:
        """1-bit weights and 1-bit activations: its MACs are BOPs."""
        return self.weight_bits == 1 and self.activation_bits == 1


@dataclass
class OpsReport:
    r"""What :func:`count_ops` returns. ``flops``, ``bops``, ``ops`` as the module doc defines them;
    ``elementwise`` by kind; ``rows`` per layer; ``method`` is ``"fx"`` or ``"hooks"``."""
    rows: List[LayerCount]
    elementwise: Dict[str, int]
    input_shapes: List[Tuple[int, ...]]
    method: str = "fx"
    uncounted: List[str] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return sum(r.macs for r in self.rows if not r.is_binary)

    @property
    def bops(self) -> int:
        return sum(r.macs for r in self.rows if r.is_binary)

    @property
    def ops(self) -> float:
        return self.flops + self.bops / 64

    @property
    def one_sided_macs(self) -> int:
        """MACs of layers binary on one side only (counted in FLOPs)."""
        return sum(r.macs for r in self.rows if not r.is_binary and 1 in (r.weight_bits, r.activation_bits))

    def __str__(self) -> str:
        lines = [f"{'layer':<36} {'kind':<22} {'W':>3} {'A':>3} {'MACs':>14}"]
        for r in self.rows:
            if r.macs:
                lines.append(f"{r.name[:36]:<36} {r.kind[:22]:<22} {_bits(r.weight_bits):>3} "
                             f"{_bits(r.activation_bits):>3} {r.macs:>14,}")
        lines.append("-" * 82)
        lines.append(f"input {', '.join(str(tuple(s)) for s in self.input_shapes)}  (counted with {self.method})")
        lines.append(f"BOPs  {self.bops:>16,}   (binary MACs: 1-bit weights x 1-bit activations)")
        lines.append(f"FLOPs {self.flops:>16,}   (real MACs{', incl. %s one-sided binary' % f'{self.one_sided_macs:,}' if self.one_sided_macs else ''})")
        lines.append(f"OPs   {self.ops:>16,.0f}   (FLOPs + BOPs / 64)")
        parts = ", ".join(f"{k} {v:,}" for k, v in sorted(self.elementwise.items()) if v)
        lines.append(f"elementwise: {parts or 'none'}")
        if self.uncounted:
            lines.append(f"not counted (unknown to bnn): {', '.join(sorted(set(self.uncounted)))}")
        return "\n".join(lines)


def _bits(b: Optional[int]) -> str:
    return "-" if b is None else str(b)


# -- multiply-accumulates --------------------------------------------------------------------------
def _conv_macs(m: nn.modules.conv._ConvNd, inp: torch.Tensor, out: torch.Tensor) -> int:
    k = math.prod(m.kernel_size)
    if m.transposed:
        # every input position scatters into k * out/groups outputs per input channel
        positions = inp.shape[0] * math.prod(inp.shape[2:]) if inp.dim() == len(m.kernel_size) + 2 \
            else math.prod(inp.shape[1:])
        return positions * k * m.in_channels * (m.out_channels // m.groups)
    positions = out.shape[0] * math.prod(out.shape[2:]) if out.dim() == len(m.kernel_size) + 2 \
        else math.prod(out.shape[1:])
    return positions * k * (m.in_channels // m.groups) * m.out_channels


def _linear_macs(m: nn.Linear, inp: torch.Tensor, out: torch.Tensor) -> int:
    return (inp.numel() // m.in_features) * m.in_features * m.out_features


def _mha_macs(m: nn.MultiheadAttention, args: Tuple, out: Any) -> int:
    q, k = args[0], args[1]
    seq_dim = 1 if (m.batch_first and q.dim() == 3) else 0
    lq, lk = q.shape[seq_dim], k.shape[seq_dim]
    batch = q.numel() // (lq * q.shape[-1])
    e = m.embed_dim
    projections = lq * e * e + lk * m.kdim * e + lk * m.vdim * e + lq * e * e  # q, k, v and output
    attention = 2 * lq * lk * e                                              # q k^T and attention x v
    return batch * (projections + attention)


def _numel(x: Any) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else 0


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.LeakyReLU, nn.Hardtanh, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
                nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.Mish, nn.Softmax)
_FREE = (nn.Dropout, nn.Identity, nn.Flatten, nn.Unflatten, Identity, nn.Sequential)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
          nn.LocalResponseNorm)


def _count_module(name: str, m: nn.Module, args: Tuple, out: Any, elementwise: Dict[str, int],
                  uncounted: List[str]) -> Optional[LayerCount]:
    params = sum(p.numel() for p in m.parameters())
    inp = args[0] if args and isinstance(args[0], torch.Tensor) else None
    kind = type(m).__name__
    if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
        macs = _conv_macs(m, inp, out) if isinstance(m, nn.modules.conv._ConvNd) else _linear_macs(m, inp, out)
        extra = _numel(out) if m.bias is not None else 0
        wbits = abits = 32
        if isinstance(m, BinarizedLayer):
            wbits, abits = m.weight_precision, m.activation_precision
            elementwise["binarize"] = elementwise.get("binarize", 0) + (_numel(inp) if abits == 1 else 0)
            scaled = isinstance(m.weight_pre_process, ScaledWeightBinarizer)
            post = not isinstance(m.activation_post_process, (Identity, nn.Identity))
            elementwise["scale"] = elementwise.get("scale", 0) + _numel(out) * (int(scaled) + int(post))
        elementwise["bias"] = elementwise.get("bias", 0) + extra
        return LayerCount(name, kind, wbits, abits, macs, params)
    if isinstance(m, nn.MultiheadAttention):
        return LayerCount(name, kind, 32, 32, _mha_macs(m, args, out), params)
    if isinstance(m, _NORMS):
        elementwise["norm"] = elementwise.get("norm", 0) + 2 * _numel(out)
    elif isinstance(m, (LearnableBias,)):
        elementwise["add"] = elementwise.get("add", 0) + _numel(out)
    elif isinstance(m, (RPReLU, PowerOfTwoRPReLU)):
        elementwise["activation"] = elementwise.get("activation", 0) + 3 * _numel(out)
    elif isinstance(m, _ACTIVATIONS):
        elementwise["activation"] = elementwise.get("activation", 0) + _numel(out)
    elif isinstance(m, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                        nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        counter = ops_fx.count_operations(m)
        n = counter(m, out, args, {}) if counter is not ops_fx._undefined_op else _numel(inp)
        elementwise["pool"] = elementwise.get("pool", 0) + int(n)
    elif not isinstance(m, _FREE):
        uncounted.append(kind)
    return LayerCount(name, kind, None, None, 0, params) if params else None


_ELEMENTWISE_FUNCTIONS = {"add", "iadd", "sub", "isub", "mul", "imul", "truediv", "itruediv", "div",
                          "add_", "mul_", "sub_", "div_"}
_MATMUL_FUNCTIONS = {"matmul", "bmm", "mm", "baddbmm", "einsum"}


def _count_function(fname: str, args: Tuple, out: Any, elementwise: Dict[str, int]) -> int:
    """Elementwise work of a function or method call; returns MACs for matmuls."""
    if fname in _ELEMENTWISE_FUNCTIONS:
        elementwise["add"] = elementwise.get("add", 0) + _numel(out)
    elif fname in ("relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "softmax", "leaky_relu"):
        elementwise["activation"] = elementwise.get("activation", 0) + _numel(out)
    elif fname in ("mean", "sum", "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d", "adaptive_avg_pool1d"):
        elementwise["pool"] = elementwise.get("pool", 0) + max(_numel(args[0]) if args else 0, _numel(out))
    elif fname in _MATMUL_FUNCTIONS and len(args) >= 2 and all(isinstance(a, torch.Tensor) for a in args[-2:]):
        a = args[-2]
        return _numel(out) * (a.shape[-1] if a.dim() else 1)
    elif fname == "linear" and len(args) >= 2 and isinstance(args[1], torch.Tensor):
        return _numel(out) * args[1].shape[-1]
    return 0


# -- tracing ---------------------------------------------------------------------------------------
class _Counted:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _BinaryAwareInterpreter(ops_fx.ProfilingInterpreter):
    """pthflops' profiling interpreter, tracing with :class:`bnn.tracing.LeafTracer` and counting bnn's layers by
    their precision (its ``run_node`` mistakes any tuple result, e.g. ``x.size()``, for a count)."""

    def __init__(self, model: nn.Module):
        graph = LeafTracer().trace(model)
        torch.fx.Interpreter.__init__(self, torch.fx.GraphModule(model, graph))
        self.custom_ops = {}
        self.rows: List[LayerCount] = []
        self.elementwise: Dict[str, int] = {}
        self.uncounted: List[str] = []

    def run_node(self, n: torch.fx.Node) -> Any:
        value = torch.fx.Interpreter.run_node(self, n)
        return value.value if isinstance(value, _Counted) else value

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        out = module(*args, **kwargs)
        row = _count_module(target, module, args, out, self.elementwise, self.uncounted)
        if row is not None:
            self.rows.append(row)
        return _Counted(out)

    def call_function(self, target, args, kwargs):
        out = target(*args, **kwargs)
        macs = _count_function(getattr(target, "__name__", ""), args, out, self.elementwise)
        if macs:
            self.rows.append(LayerCount(getattr(target, "__name__", str(target)), "matmul", 32, 32, macs, 0))
        return _Counted(out)

    def call_method(self, target, args, kwargs):
        out = torch.fx.Interpreter.call_method(self, target, args, kwargs)
        macs = _count_function(target, args, out, self.elementwise)
        if macs:
            self.rows.append(LayerCount(target, "matmul", 32, 32, macs, 0))
        return _Counted(out)


def _count_with_hooks(model: nn.Module, inputs: Tuple[torch.Tensor, ...]):
    tracer = LeafTracer()
    rows: List[LayerCount] = []
    elementwise: Dict[str, int] = {}
    uncounted: List[str] = []
    handles = []
    for name, m in model.named_modules():
        if name and tracer.is_leaf_module(m, name):
            def hook(mod, args, out, name=name):
                row = _count_module(name, mod, args, out, elementwise, uncounted)
                if row is not None:
                    rows.append(row)
            handles.append(m.register_forward_hook(hook))
    try:
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return rows, elementwise, uncounted


def _as_tuple(inputs: Inputs) -> Tuple[torch.Tensor, ...]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in inputs):
        return tuple(inputs)
    raise ValueError(f"inputs must be a tensor or a sequence of tensors, got {type(inputs).__name__}")


def count_ops(model: nn.Module, inputs: Inputs) -> OpsReport:
    r"""Count the BOPs, FLOPs and elementwise operations of ``model`` on ``inputs``.

    The model runs once in eval mode under ``torch.no_grad()``; its train/eval mode (module by module)
    and its parameters and buffers are left as they were.

    Args:
        model: any model; bnn's binary layers are counted by the precision of their binarizers.
        inputs: an example input (batch included), or a tuple of inputs.

    Returns:
        :class:`OpsReport` with ``.flops``, ``.bops``, ``.ops``, ``.elementwise`` and per-layer ``.rows``;
        ``print(report)`` shows a table.

    Example::

        >>> import torch, torchvision, bnn
        >>> from bnn.ops import BasicInputBinarizer, XNORWeightBinarizer
        >>> model = bnn.prepare_binary_model(torchvision.models.resnet18(), bnn.BConfig(
        ...     activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer),
        ...     ignore_layers_name=["_first_", "_last_"])
        >>> report = bnn.count_ops(model, torch.randn(1, 3, 224, 224))
        >>> report.bops > 0 and report.flops > 0
        True
    """
    inputs = _as_tuple(inputs)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            try:
                interpreter = _BinaryAwareInterpreter(model)
            except Exception as e:  # FX cannot trace data-dependent control flow and the like
                warnings.warn(f"count_ops: torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); counting with module hooks, "
                              "which do not see functional additions", stacklevel=2)
                interpreter = None
            try:
                if interpreter is not None:
                    interpreter.run(*inputs)
                    rows, elementwise, uncounted, method = (interpreter.rows, interpreter.elementwise,
                                                            interpreter.uncounted, "fx")
                else:
                    rows, elementwise, uncounted = _count_with_hooks(model, inputs)
                    method = "hooks"
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
                raise ValueError(f"count_ops: {type(model).__name__} failed on input of shape {shapes}: "
                                 f"{str(e).splitlines()[0]}") from e
    finally:
        for m, training in modes.items():
            m.training = training
    return OpsReport(rows, elementwise, [tuple(t.shape) for t in inputs], method, uncounted)


# -- summary ---------------------------------------------------------------------------------------
@dataclass
class LayerSummary:
    """One row of :func:`summary`."""
    name: str
    kind: str
    weight_bits: Optional[int]
    activation_bits: Optional[int]
    params: int
    packed_bytes: float
    binary_macs: int
    real_macs: int


@dataclass
class ModelSummary:
    r"""What :func:`summary` returns: ``rows`` and the totals; ``print(s)`` shows the table."""
    rows: List[LayerSummary]
    report: OpsReport

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def float_bytes(self) -> int:
        """Size of every parameter as float32."""
        return 4 * self.params

    @property
    def packed_bytes(self) -> float:
        """Size with binary weights packed to 1 bit and everything else float32."""
        return sum(r.packed_bytes for r in self.rows)

    @property
    def compression(self) -> float:
        return self.float_bytes / self.packed_bytes if self.packed_bytes else 1.0

    @property
    def binary_params(self) -> int:
        return sum(r.params for r in self.rows if r.weight_bits == 1)

    def __str__(self) -> str:
        head = (f"{'layer':<32} {'kind':<20} {'W':>3} {'A':>3} {'params':>11} {'packed':>10} "
                f"{'binary MACs':>14} {'real MACs':>14}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.name[:32]:<32} {r.kind[:20]:<20} {_bits(r.weight_bits):>3} {_bits(r.activation_bits):>3} "
                         f"{r.params:>11,} {_size(r.packed_bytes):>10} {r.binary_macs:>14,} {r.real_macs:>14,}")
        lines.append("-" * len(head))
        lines.append(f"{'total':<32} {'':<20} {'':>3} {'':>3} {self.params:>11,} {_size(self.packed_bytes):>10} "
                     f"{self.report.bops:>14,} {self.report.flops:>14,}")
        lines.append(f"binary parameters: {self.binary_params:,} of {self.params:,}")
        lines.append(f"float32 size: {_size(self.float_bytes)}   packed size: {_size(self.packed_bytes)}   "
                     f"compression: {self.compression:.1f}x")
        lines.append(f"BOPs {self.report.bops:,}   FLOPs {self.report.flops:,}   OPs {self.report.ops:,.0f}")
        return "\n".join(lines)


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes:.0f} B"
        nbytes /= 1024


def summary(model: nn.Module, inputs: Inputs) -> ModelSummary:
    r"""Per-layer table in the spirit of larq's summary: bits of weights and activations, parameters, memory
    with binary weights packed to 1 bit, MACs by precision; then totals, float32 size and compression.

    Args:
        model: any model.
        inputs: an example input (batch included).

    Returns:
        :class:`ModelSummary`; ``print()`` it for the table, or read ``.rows`` and the totals.
    """
    report = count_ops(model, inputs)
    counted = {r.name: r for r in report.rows}
    rows = []
    for name, m in model.named_modules():
        own = sum(p.numel() for p in m.parameters(recurse=False))
        row = counted.get(name)
        if isinstance(m, (BinarizedLayer, LearnableBias, RPReLU, PowerOfTwoRPReLU)):
            own = sum(p.numel() for p in m.parameters())
        elif any(isinstance(a, (BinarizedLayer, LearnableBias, RPReLU, PowerOfTwoRPReLU))
                 for a in _ancestors(model, name)):
            continue
        if not own and row is None:
            continue
        wbits = row.weight_bits if row is not None else None
        abits = row.activation_bits if row is not None else None
        weight = getattr(m, "weight", None)
        binary_weights = weight.numel() if wbits == 1 and isinstance(weight, torch.Tensor) else 0
        packed = binary_weights / 8 + (own - binary_weights) * 4
        macs = row.macs if row is not None else 0
        binary = macs if (wbits == 1 and abits == 1) else 0
        rows.append(LayerSummary(name, type(m).__name__, wbits, abits, own, packed, binary, macs - binary))
    return ModelSummary(rows, report)


def _ancestors(model: nn.Module, name: str) -> List[nn.Module]:
    parts = name.split(".") if name else []
    out, current = [], model
    for part in parts[:-1]:
        current = getattr(current, part)
        out.append(current)
    return out
