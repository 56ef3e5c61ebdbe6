r"""The modules of an inference graph: binary layers on packed bits, and the exact float form of layers
binarized on one side only.

A packed layer takes the real tensor that reached the binary layer (or the input of the per-channel
operations folded into its thresholds), turns it into bits with one compare per element, computes the
integer sum of ±1 products by XNOR-popcount over packed words, and applies the epilogue of the trained
layer: per-channel scale (a shift when it is a power of two), bias, output scaler. The float operations of
the epilogue are those of the fake-binarized layer in eval mode, in the same order, so the outputs agree
exactly.
"""
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import kernels
from .batchnorm import fused_multiply_add
from .packing import binary_conv2d_reference, binary_linear_reference, pack_bits
from .thresholds import ChannelThresholds

__all__ = ["EPILOGUE_STEPS", "STEP_ROWS", "PackedBinaryConv2d", "PackedBinaryLinear", "SignedRealLayer",
           "is_power_of_two"]


def is_power_of_two(values: torch.Tensor) -> bool:
    """True when every value is ±2^k (a shift, and a negation for negative values)."""
    mantissa, _ = torch.frexp(values.detach().float())
    return bool((mantissa.abs() == 0.5).all())


#: The steps an epilogue runs after the integer sums, in order; a step's code is its index here (the C++
#: kernels use the same codes). Each step rounds like the torch op it stands for; ``multiply_add`` is
#: ``v * a + b`` rounded once (a fused multiply-add, as PyTorch's CPU batch norm computes), with two rows of
#: parameters (a, then b); every other step has one.
EPILOGUE_STEPS = ("multiply", "add", "add_residual", "prelu", "multiply_add")
STEP_ROWS = {"multiply_add": 2}


class _Epilogue(nn.Module):
    """Scale, bias and output scaler of a binary layer, as its eval-mode forward applies them, then the
    elementwise operations the converter fused after it (:meth:`fuse`)."""

    def _init_epilogue(self, scale: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                       post: Optional[nn.Module], channel_dim: int, channels: int) -> None:
        self.register_buffer("scale", None if scale is None else scale.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.register_buffer("fused_codes", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("fused_params", torch.zeros(0, channels))
        self.post = post
        self.channel_dim = channel_dim

    #: Set by the converter when the next layer's thresholds absorbed this layer's scale and bias: the
    #: layer then outputs its integer sums (as floats), and the compare downstream works on them.
    emit_dot: bool = False

    def scale_and_bias(self, out: torch.Tensor) -> torch.Tensor:
        """The per-channel scale and bias of the trained layer, applied as its eval-mode forward does."""
        shape = [1] * out.dim()
        shape[self.channel_dim] = -1
        if self.scale is not None:
            out = out * self.scale.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        return out

    @property
    def fused_residual(self) -> bool:
        """True when a fused step adds a tensor: the layer is then called as ``layer(x, residual)``."""
        return bool((self.fused_codes == EPILOGUE_STEPS.index("add_residual")).any())

    def fuse(self, step: str, values: Optional[torch.Tensor] = None) -> None:
        """Append an elementwise step to the epilogue: ``multiply`` / ``add`` by per-channel ``values``,
        ``add_residual`` (the tensor passed as the layer's second argument), ``prelu`` with per-channel
        slopes ``values``, ``multiply_add`` with ``values`` of shape ``(2, C)`` (factors, addends). Only the
        converter calls this, on a layer with neither output scaler nor emit_dot."""
        if self.post is not None or self.emit_dot:
            raise ValueError("a layer with an output scaler or emitting its sums takes no fused steps")
        channels, rows = self.fused_params.shape[1], STEP_ROWS.get(step, 1)
        if values is None:
            block = torch.zeros(rows, channels)
        else:
            block = values.detach().float().reshape(rows, -1).expand(rows, channels).clone()
        self.fused_codes = torch.cat([self.fused_codes, torch.tensor([EPILOGUE_STEPS.index(step)])])
        self.fused_params = torch.cat([self.fused_params, block])

    def fused_steps(self):
        """The fused steps in order: ``(name, parameter rows)`` pairs."""
        row = 0
        for code in self.fused_codes.tolist():
            step = EPILOGUE_STEPS[code]
            rows = STEP_ROWS.get(step, 1)
            yield step, self.fused_params[row:row + rows]
            row += rows

    def epilogue_program(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The whole epilogue as step codes ``[S]`` and per-channel parameter rows ``[R, C]`` (one per step,
        two for ``multiply_add``): scale, bias, the fused steps (nothing when the layer emits its sums)."""
        if self.emit_dot:
            return self.fused_codes[:0], self.fused_params[:0]
        codes, rows = [], []
        for step, values in (("multiply", self.scale), ("add", self.bias)):
            if values is not None:
                codes.append(EPILOGUE_STEPS.index(step))
                rows.append(values.reshape(1, -1))
        if not codes:
            return self.fused_codes, self.fused_params
        return (torch.cat([torch.tensor(codes), self.fused_codes]),
                torch.cat(rows + [self.fused_params]).contiguous())

    def _finish(self, dot: torch.Tensor, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The reference epilogue, in torch ops: float sums, scale, bias, output scaler, fused steps."""
        out = dot.to(x.dtype)
        if self.emit_dot:
            return out
        out = self.scale_and_bias(out)
        if self.post is not None:
            out = self.post(out, x)
        shape = [1] * out.dim()
        shape[self.channel_dim] = -1
        for step, rows in self.fused_steps():
            values = rows[0]
            if step == "multiply":
                out = out * values.view(shape)
            elif step == "add":
                out = out + values.view(shape)
            elif step == "add_residual":
                out = out + residual
            elif step == "prelu":
                out = torch.where(out > 0, out, values.view(shape) * out)
            else:
                out = fused_multiply_add(out, values.view(shape).expand_as(out), rows[1].view(shape).expand_as(out))
        return out

    def _conv_geometry(self) -> Tuple[int, int, Tuple[int, int], int]:
        """``(out channels, in channels, kernel size, groups)`` of the layer as the kernels run it."""
        raise NotImplementedError

    def _kernel_args(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The weights in the kernels' layout and the epilogue program, made when the layer prepares its kernel
        call (:meth:`_run_kernels`, which keeps them until the layer changes)."""
        out_channels, in_channels, kernel_size, groups = self._conv_geometry()
        layout = kernels.conv_weight_layout(self._buffers["weight_bits"], out_channels, in_channels, kernel_size,
                                            groups)
        return (layout,) + self.epilogue_program()

    def _call_settings(self) -> Tuple[List[int], bool, List[int]]:
        """The layer's fixed arguments of ``binary_conv2d`` besides its weights and epilogue program, as the
        extension's ``ConvCall`` takes them: ``(geometry, output over the residual, outputs)``."""
        raise NotImplementedError

    def _run_kernels(self, ext: Any, packed: torch.Tensor, width: int, residual: Optional[torch.Tensor],
                     packed_out: Optional[torch.Tensor], into: Optional[torch.Tensor], isa: int):
        """``binary_conv2d`` on the packed input, through the layer's prepared call (its fixed arguments kept:
        the extension's ``ConvCall``), made at the first call and again after any change to the layer. A call
        returns None, running nothing, once a tensor it was made from changed in place (``load_state_dict``
        copies into the buffers); setting an attribute or a buffer, or moving the layer (``_apply``), drops it."""
        call = self.__dict__.get("_conv_call")
        result = None if call is None else call(packed, width, residual, packed_out, into, isa)
        if result is None:  # (not prepared yet, or a tensor it was made from changed in place)
            weight, codes, params = self._kernel_args()
            b = self._buffers
            geometry, over_residual, outputs = self._call_settings()
            sources = [b[name] for name in ("weight_bits", "scale", "bias", "fused_codes", "fused_params",
                                            "next_threshold", "next_direction") if b.get(name) is not None]
            call = ext.ConvCall(weight, geometry, codes, params, over_residual, b.get("next_threshold"),
                                b.get("next_direction"), outputs, sources)
            self.__dict__["_conv_call"] = call  # (not through __setattr__, which drops it)
            result = call(packed, width, residual, packed_out, into, isa)
        return result

    def __setattr__(self, name: str, value: Any) -> None:
        self.__dict__.pop("_conv_call", None)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        self.__dict__.pop("_conv_call", None)
        super().__delattr__(name)

    def register_buffer(self, name: str, tensor: Optional[torch.Tensor], persistent: bool = True) -> None:
        self.__dict__.pop("_conv_call", None)
        super().register_buffer(name, tensor, persistent)

    def _apply(self, *args, **kwargs):
        self.__dict__.pop("_conv_call", None)
        return super()._apply(*args, **kwargs)

    def __getstate__(self):
        state = dict(super().__getstate__())  # (the prepared call, the extension's object, is made again after a copy)
        state.pop("_conv_call", None)
        return state

    def _epilogue_repr(self) -> str:
        scale = "shift" if self.scale_is_shift else ("multiply" if self.scale is not None else "none")
        fused = [step for step, _ in self.fused_steps()]
        return f"scale={scale}" + (f", fused={'+'.join(fused)}" if fused else "")

    @property
    def scale_is_shift(self) -> bool:
        return self.scale is not None and is_power_of_two(self.scale)


class PackedBinaryConv2d(_Epilogue):
    r"""A binary 2-D convolution on packed bits (Conv1d runs as a 2-D convolution of height 1).

    Buffers: ``weight_bits`` (int64, ``(C_out, words)``), ``threshold`` / ``direction`` of the input compare,
    the epilogue's ``scale`` and ``bias``, and the steps fused after it (``fused_codes``, ``fused_params``).
    """

    def __init__(self, thresholds: ChannelThresholds, weight_signs: torch.Tensor, stride: Tuple[int, ...],
                 padding: Tuple[int, ...], dilation: Tuple[int, ...], groups: int,
                 scale: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                 post: Optional[nn.Module] = None):
        super().__init__()
        self.conv1d = weight_signs.dim() == 3
        signs = weight_signs.unsqueeze(2) if self.conv1d else weight_signs
        self.out_channels, per_group, kh, kw = signs.shape
        self.in_channels = per_group * groups
        self.kernel_size = (kh, kw)
        lift = (lambda v, one: (one, v[0])) if self.conv1d else (lambda v, one: tuple(v))
        self.stride, self.padding = lift(stride, 1), lift(padding, 0)
        self.dilation, self.groups = lift(dilation, 1), groups
        self.register_buffer("weight_bits", pack_bits(signs.reshape(self.out_channels, -1) > 0))
        self.register_buffer("threshold", thresholds.threshold.clone())
        self.register_buffer("direction", thresholds.direction.clone())
        self._init_epilogue(scale, bias, post, channel_dim=1, channels=self.out_channels)

    def input_bits(self, x: torch.Tensor) -> torch.Tensor:
        return ChannelThresholds(self.threshold, self.direction).bits(x, 1)

    def _conv_geometry(self):
        return self.out_channels, self.in_channels, self.kernel_size, self.groups

    #: Set by :meth:`hand_bits_to`: the next layer's groups and horizontal stride (0: no hand-over), its input
    #: channels (0: this layer's output channels) and which of them this layer's output channels are.
    next_groups: int = 0
    next_stride: int = 0
    next_channels: int = 0
    next_channel_offset: int = 0

    def can_hand_bits_to(self, layer: nn.Module, channel_offset: int = 0) -> bool:
        """Whether :meth:`hand_bits_to` accepts ``layer``: both 2-d, this layer's outputs its input channels
        ``channel_offset ...``, and the channels in whole bytes (the epilogue writes one byte per block of 8
        channels; an input that several layers write takes each one's channels in whole bytes)."""
        def whole_bytes(groups: int, channels: int) -> bool:
            return groups == 1 or (channels // groups) % 8 == 0
        if type(layer) is not PackedBinaryConv2d or self.conv1d or layer.conv1d:
            return False
        shared = channel_offset != 0 or layer.in_channels != self.out_channels
        return (0 <= channel_offset and channel_offset + self.out_channels <= layer.in_channels
                and whole_bytes(self.groups, self.out_channels) and whole_bytes(layer.groups, layer.in_channels)
                and (not shared or (self.out_channels % 8 == 0 and channel_offset % 8 == 0)))

    def hand_bits_to(self, layer: "PackedBinaryConv2d", channel_offset: int = 0) -> None:
        """Make this layer's kernel epilogue also write ``layer``'s packed input (its compare with
        ``layer``'s thresholds, in its layout): ``forward`` then returns ``(output, bits)``, and ``layer`` is
        called with ``packed=bits``. Only the converter calls this (:func:`bnn.inference.fusion.hand_over_bits`),
        for 2-d layers whose channels fall in bytes: 8 output channels per block of this layer's groups, 8 input
        channels per group of ``layer``'s. With ``channel_offset``, or fewer output channels than ``layer`` has
        input channels, this layer's outputs are ``layer``'s input channels ``channel_offset ...`` (the network
        concatenates several layers' outputs): each of those layers writes its channels of one packed input,
        the first allocating it, the next ones called with ``packed_out=`` the bits the previous one returned."""
        if not self.can_hand_bits_to(layer, channel_offset):
            raise ValueError("bits are handed over between 2-d packed convolutions, output to input channels "
                             f"{channel_offset} .. {channel_offset + self.out_channels - 1} of the next layer's "
                             f"{getattr(layer, 'in_channels', '?')}, with 8 channels per group (or one group) on both "
                             "sides, and in whole bytes when several layers write one input")
        channels = slice(channel_offset, channel_offset + self.out_channels)
        self.register_buffer("next_threshold", layer.threshold[channels].clone())
        self.register_buffer("next_direction", layer.direction[channels].clone())
        self.next_groups, self.next_stride = layer.groups, layer.stride[1]
        self.next_channels, self.next_channel_offset = layer.in_channels, channel_offset

    #: Set by the converter (:func:`bnn.inference.fusion.write_into_concatenations`) where the network concatenates
    #: this layer's output with others': the concatenation's channels (0: none, the output is this layer's own)
    #: and the first of them this layer writes. Its call then returns the whole concatenation, its channels
    #: written, and takes ``out=`` the tensor the layer before it in the graph returned, unless it is the first.
    out_channels_total: int = 0
    out_channel_offset: int = 0

    #: Set by the converter (:func:`bnn.inference.fusion.write_over_residuals`) when nothing but this layer uses
    #: the tensor its ``add_residual`` step adds: the kernels then write the output over it (no new feature map).
    overwrites_residual: bool = False

    #: Set by the converter when a per-channel module (RPReLU, PReLU, LearnableBias) was fused: such a module
    #: works on axis 1, the channels of a batch but not of an unbatched input, so only batches are accepted.
    batched_only: bool = False

    def _call_settings(self) -> Tuple[List[int], bool, List[int]]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        geometry = [self.in_channels, self.out_channels, kh, kw, sh, sw, ph, pw, dh, dw, self.groups]
        outputs = [self.next_groups, self.next_stride, self.next_channels or self.out_channels,
                   self.next_channel_offset, self.out_channels_total or self.out_channels, self.out_channel_offset]
        return geometry, self.overwrites_residual, outputs

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                packed: Optional[torch.Tensor] = None, packed_out: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None):
        """``x``: the layer's real input; ``residual``: the tensor a fused ``add_residual`` step adds; ``packed``:
        ``x`` already compared and packed by the previous layer's epilogue (or None). Returns the output, and
        after :meth:`hand_bits_to` the pair ``(output, next layer's packed input or None)``, that input written
        into ``packed_out`` when given (another layer's channels of it already there). With
        :attr:`overwrites_residual`, the kernels write the output over ``residual`` and return that tensor; with
        :attr:`out_channels_total`, they write its channels of a concatenation (into ``out`` when given) and
        return the concatenation."""
        into = out
        unbatched = x.dim() == (2 if self.conv1d else 3)
        if unbatched and self.batched_only:
            raise ValueError(f"this packed layer fused per-channel operations that act on axis 1 of a batch; "
                             f"call the model with a batch (N, C, ...), not an unbatched input {tuple(x.shape)}")
        xb = x.unsqueeze(0) if unbatched else x
        rb = residual.unsqueeze(0) if unbatched and residual is not None else residual
        x4 = xb.unsqueeze(2) if self.conv1d else xb
        # (every attribute read here avoids nn.Module.__getattr__: this is the per-call cost of the layer)
        ext, isa = kernels.active() if x.is_cpu and x.dtype == torch.float32 else (None, None)
        buffers, post = self._buffers, self._modules.get("post")
        next_threshold = buffers.get("next_threshold")
        bits_out = None
        if isa is not None and (rb is None or rb.dtype == torch.float32):
            if packed is None:
                packed = ext.pack_input(x4, buffers["threshold"], buffers["direction"], self.groups, self.stride[1],
                                        isa)
            r4 = None if rb is None else (rb.unsqueeze(2) if self.conv1d else rb)
            out, bits_out = self._run_kernels(ext, packed, x4.shape[3], r4, packed_out, into, isa)
            if self.conv1d:
                out = out.squeeze(2)
            if post is not None and not self.emit_dot:
                out = post(out, xb)
        else:
            bits = self.input_bits(x4)
            dot = binary_conv2d_reference(bits, self.weight_bits, self.kernel_size, self.stride, self.padding,
                                          self.dilation, self.groups, self.in_channels)
            if self.conv1d:
                dot = dot.squeeze(2)
            out = self._finish(dot, xb, rb)
            if self.out_channels_total:  # (its channels of the concatenation)
                whole = into if into is not None else out.new_empty(
                    (out.shape[0], self.out_channels_total) + tuple(out.shape[2:]))
                whole[:, self.out_channel_offset:self.out_channel_offset + self.out_channels] = out
                out = whole
        out = out.squeeze(0) if unbatched else out
        return out if next_threshold is None else (out, bits_out)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, {self._epilogue_repr()}"
                + (", packs the next layer's input" if self.next_groups else "")
                + (f", writes channels {self.out_channel_offset}..{self.out_channel_offset + self.out_channels - 1} "
                   f"of a concatenation of {self.out_channels_total}" if self.out_channels_total else ""))


class PackedBinaryLinear(_Epilogue):
    r"""A binary linear layer on packed bits; channels on the last axis."""

    def __init__(self, thresholds: ChannelThresholds, weight_signs: torch.Tensor,
                 scale: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                 post: Optional[nn.Module] = None):
        super().__init__()
        self.out_features, self.in_features = weight_signs.shape
        self.register_buffer("weight_bits", pack_bits(weight_signs > 0))
        self.register_buffer("threshold", thresholds.threshold.clone())
        self.register_buffer("direction", thresholds.direction.clone())
        self._init_epilogue(scale, bias, post, channel_dim=-1, channels=self.out_features)

    def _conv_geometry(self):
        return self.out_features, self.in_features, (1, 1), 1

    def _call_settings(self) -> Tuple[List[int], bool, List[int]]:
        geometry = [self.in_features, self.out_features, 1, 1, 1, 1, 0, 0, 1, 1, 1]  # (a 1x1 convolution)
        return geometry, False, [0, 0, self.out_features, 0, self.out_features, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ext, isa = kernels.active() if x.device.type == "cpu" and x.dtype == torch.float32 else (None, None)
        if isa is None or x.numel() == 0:
            bits = ChannelThresholds(self.threshold, self.direction).bits(x, -1)
            dot = binary_linear_reference(pack_bits(bits), self.weight_bits, self.in_features)
            return self._finish(dot, x)
        # on the kernels, as a 1x1 convolution whose pixels are the input's rows: (M, in) -> (1, in, 1, M),
        # so that the SIMD lanes run over rows
        rows = x.reshape(-1, self.in_features)
        m = rows.shape[0]
        packed = ext.pack_input(rows.t().reshape(1, self.in_features, 1, m), self.threshold, self.direction, 1, 1, isa)
        out, _ = self._run_kernels(ext, packed, m, None, None, None, isa)
        # contiguous, as the reference's: what follows (a float linear layer, say) may round differently on
        # another memory layout
        out = out.view(self.out_features, m).t().contiguous().view(*x.shape[:-1], self.out_features)
        return self.post(out, x) if self.post is not None and not self.emit_dot else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self._epilogue_repr()}"


class SignedRealLayer(nn.Module):
    r"""A layer binarized on one side only, in its exact float form: the input turned to ±1 by thresholds
    (when its activations are binary) and the weight as the binarizer made it, frozen. Its multiply-
    accumulates stay real (they count as float MACs)."""

    def __init__(self, layer: nn.Module, thresholds: Optional[ChannelThresholds], weight: torch.Tensor,
                 scale: Optional[torch.Tensor], post: Optional[nn.Module]):
        super().__init__()
        self.kind = "linear" if isinstance(layer, nn.Linear) else "conv"
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("scale", None if scale is None else scale.detach().float().clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.register_buffer("threshold", None if thresholds is None else thresholds.threshold.clone())
        self.register_buffer("direction", None if thresholds is None else thresholds.direction.clone())
        self.conv_args: Dict = {} if self.kind == "linear" else dict(
            stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
        self.post = post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_dim = -1 if self.kind == "linear" else 1
        xb = x
        if self.threshold is not None:
            bits = ChannelThresholds(self.threshold, self.direction).bits(x, channel_dim)
            xb = torch.where(bits, 1.0, -1.0).to(x.dtype)
        if self.kind == "linear":
            op = lambda inp, w, b: F.linear(inp, w, b)  # noqa: E731
        else:
            conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[self.weight.dim()]
            op = lambda inp, w, b: conv(inp, w, b, **self.conv_args)  # noqa: E731
        if self.scale is None:
            out = op(xb, self.weight, self.bias)
        else:
            out = op(xb, self.weight, None)
            shape = [1] * out.dim()
            shape[channel_dim] = -1
            out = out * self.scale.view(shape)
            if self.bias is not None:
                out = out + self.bias.view(shape)
        return self.post(out, x) if self.post is not None else out
