r"""Operation census of an inference graph: what a multiplication-free claim has to show.

Counts, for the given input: ``binary_macs`` (XNOR-popcount multiply-accumulates, the BOPs of
:func:`bnn.count_ops`), ``float_macs`` (real conv / linear), ``multiplications`` (every real
multiplication outside the stem and the classifier, real conv / linear MACs included), ``additions``,
``shifts`` (multiplications by ±2^k) and ``comparisons`` (thresholds, ReLU, max-pooling, signs of
RPReLU). The stem is the first conv / linear layer run and the classifier the last, when they are real.
"""
import math
import operator
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.fx
import torch.nn as nn

from ..layers.blocks import LearnableBias, PowerOfTwoRPReLU, RPReLU
from ..ops.base import Identity
from ..ops.scale import BasicScaleBinarizer
from .modules import PackedBinaryConv2d, PackedBinaryLinear, SignedRealLayer, is_power_of_two

__all__ = ["CENSUS_KEYS", "LayerCensus", "census"]

CENSUS_KEYS = ("binary_macs", "float_macs", "multiplications", "additions", "shifts", "comparisons")


@dataclass
class LayerCensus:
    name: str
    kind: str
    counts: Dict[str, int] = field(default_factory=dict)


def _numel(x: Any) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else 0


def _scale_counts(counts: Dict[str, int], values: Optional[torch.Tensor], n: int) -> None:
    """A per-channel (or scalar) multiply of ``n`` elements: shifts if every factor is ±2^k."""
    if values is None:
        return
    if bool((values == 1).all()):
        return
    counts["shifts" if is_power_of_two(values) else "multiplications"] += n


def _conv_macs(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(m, nn.Linear):
        return (inp.numel() // m.in_features) * m.in_features * m.out_features
    k = math.prod(m.kernel_size)
    positions = out.shape[0] * math.prod(out.shape[2:])
    return positions * k * (m.in_channels // m.groups) * m.out_channels


def _module_counts(m: nn.Module, args, out) -> Dict[str, int]:
    c: Dict[str, int] = defaultdict(int)
    if isinstance(m, PackedBinaryConv2d) and m.next_groups:
        out = out[0]  # (output, the next layer's packed input): its compares are counted by that layer
    inp = args[0] if args else None
    n_out, n_in = _numel(out), _numel(inp)
    if isinstance(m, PackedBinaryConv2d) and m.out_channels_total:  # (its channels of a concatenation)
        n_out = n_out // m.out_channels_total * m.out_channels
    if isinstance(m, (PackedBinaryConv2d, PackedBinaryLinear)):
        if isinstance(m, PackedBinaryLinear):
            c["binary_macs"] = (n_in // m.in_features) * m.in_features * m.out_features
        else:
            positions = out.shape[0] * math.prod(out.shape[2:]) if out.dim() == (3 if m.conv1d else 4) \
                else math.prod(out.shape[1:])
            c["binary_macs"] = positions * math.prod(m.kernel_size) * (m.in_channels // m.groups) * m.out_channels
        c["comparisons"] += n_in
        if m.emit_dot:  # scale and bias folded into the next layer's thresholds
            return c
        _scale_counts(c, m.scale, n_out)
        if m.bias is not None:
            c["additions"] += n_out
        if isinstance(m.post, BasicScaleBinarizer):
            _scale_counts(c, m.post.alpha.detach(), n_out)
        elif m.post is not None:
            c["multiplications"] += 2 * n_out
        for step, rows in m.fused_steps():
            if step == "multiply":
                _scale_counts(c, rows[0], n_out)
            elif step in ("add", "add_residual"):
                c["additions"] += n_out
            elif step == "multiply_add":  # a batch norm: scale and shift, one rounding
                _scale_counts(c, rows[0], n_out)
                c["additions"] += n_out
            else:  # prelu: a sign test, and a multiply (or shift) of the negative values
                c["comparisons"] += n_out
                _scale_counts(c, rows[0], n_out)
    elif isinstance(m, SignedRealLayer):
        macs = _conv_macs_signed(m, inp, out)
        c["float_macs"] += macs
        # ±1 inputs (add or subtract the weights) or ±1 weights (add or subtract the inputs): no multiplication
        signed = m.threshold is not None or bool(((m.weight == 1) | (m.weight == -1)).all())
        c["multiplications"] += 0 if signed else macs
        c["additions"] += macs if signed else 0
        if m.threshold is not None:
            c["comparisons"] += n_in
        _scale_counts(c, m.scale, n_out)
        if m.bias is not None:
            c["additions"] += n_out
    elif isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
        macs = _conv_macs(m, inp, out)
        c["float_macs"] += macs
        c["multiplications"] += macs
        c["additions"] += n_out if m.bias is not None else 0
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)):
        c["multiplications"] += n_out
        c["additions"] += n_out
    elif isinstance(m, LearnableBias):
        c["additions"] += n_out
    elif isinstance(m, PowerOfTwoRPReLU):
        c["additions"] += 2 * n_out
        c["comparisons"] += n_out
        c["shifts"] += n_out
    elif isinstance(m, RPReLU):
        c["additions"] += 2 * n_out
        c["comparisons"] += n_out
        _scale_counts(c, m.slope.detach(), n_out)
    elif isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardtanh)):
        c["comparisons"] += n_out * (2 if isinstance(m, (nn.ReLU6, nn.Hardtanh)) else 1)
    elif isinstance(m, nn.PReLU):
        c["comparisons"] += n_out
        _scale_counts(c, m.weight.detach(), n_out)
    elif isinstance(m, nn.modules.pooling._MaxPoolNd) or isinstance(m, nn.modules.pooling._AdaptiveMaxPoolNd):
        area = max(n_in // max(n_out, 1), 1)
        c["comparisons"] += n_out * (area - 1)
    elif isinstance(m, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd)):
        area = max(n_in // max(n_out, 1), 1)
        c["additions"] += n_out * (area - 1)
        _scale_counts(c, torch.tensor([1.0 / area]), n_out)
    elif not isinstance(m, (nn.Identity, Identity, nn.Dropout, nn.Flatten, nn.Sequential)):
        c["multiplications"] += n_out  # unknown module: assume the worst, one multiplication per output
    return c


def _conv_macs_signed(m: SignedRealLayer, inp, out) -> int:
    if m.kind == "linear":
        return (inp.numel() // m.weight.shape[1]) * m.weight.shape[1] * m.weight.shape[0]
    k = math.prod(m.weight.shape[2:])
    positions = out.shape[0] * math.prod(out.shape[2:])
    return positions * k * m.weight.shape[1] * m.weight.shape[0]


_ADDITIONS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_MULTIPLICATIONS = {operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div}


def _function_counts(target, args, out) -> Dict[str, int]:
    c: Dict[str, int] = defaultdict(int)
    name = getattr(target, "__name__", str(target))
    if target in _ADDITIONS or name in ("add", "sub", "add_", "sub_"):
        c["additions"] += _numel(out)
    elif target in _MULTIPLICATIONS or name in ("mul", "div", "mul_", "div_"):
        scalars = [a for a in args if isinstance(a, (int, float))]
        if scalars:
            factor = scalars[0] if target not in (operator.truediv, operator.itruediv, torch.div) else 1 / scalars[0]
            _scale_counts(c, torch.tensor([float(factor)]), _numel(out))
        else:
            c["multiplications"] += _numel(out)
    elif name in ("relu", "relu_"):
        c["comparisons"] += _numel(out)
    elif name in ("adaptive_avg_pool2d", "mean", "avg_pool2d"):
        n_in = _numel(args[0]) if args else 0
        area = max(n_in // max(_numel(out), 1), 1)
        c["additions"] += _numel(out) * (area - 1)
        _scale_counts(c, torch.tensor([1.0 / area]), _numel(out))
    return c


class _CensusInterpreter(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__(gm)
        self.rows: List[LayerCensus] = []

    def call_module(self, target, args, kwargs):
        out = super().call_module(target, args, kwargs)
        m = self.fetch_attr(target)
        self.rows.append(LayerCensus(target, type(m).__name__, dict(_module_counts(m, args, out))))
        return out

    def call_function(self, target, args, kwargs):
        out = super().call_function(target, args, kwargs)
        counts = _function_counts(target, args, out)
        if counts:
            self.rows.append(LayerCensus(getattr(target, "__name__", str(target)), "function", dict(counts)))
        return out

    def call_method(self, target, args, kwargs):
        out = super().call_method(target, args, kwargs)
        # counted by the method's name (a class named after it: the __name__ of a class is its own name, whatever
        # its dict holds), with the tensor it is called on, args[0], included: x.mean((2, 3)) needs it
        counts = _function_counts(type(target, (), {}), args, out)
        if counts:
            self.rows.append(LayerCensus(target, "method", dict(counts)))
        return out


def census(gm: torch.fx.GraphModule, inputs) -> Dict[str, Any]:
    """Run ``gm`` once on ``inputs`` and count its operations (see the module doc)."""
    interpreter = _CensusInterpreter(gm)
    with torch.no_grad():
        interpreter.run(*inputs)
    rows = interpreter.rows
    layers = [r for r in rows if r.counts.get("float_macs") or r.counts.get("binary_macs")]
    real_ends = set()
    if layers:
        for end in (layers[0], layers[-1]):
            if end.counts.get("float_macs") and not end.counts.get("binary_macs"):
                real_ends.add(id(end))
    totals = {k: 0 for k in CENSUS_KEYS}
    for r in rows:
        for k, v in r.counts.items():
            if k == "multiplications" and id(r) in real_ends:
                continue
            totals[k] += v
    totals["rows"] = rows
    totals["stem_and_classifier"] = [r.name for r in rows if id(r) in real_ends]
    return totals
