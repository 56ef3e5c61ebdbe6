r"""Fake-binarized layers: Conv1d/2d/3d, ConvTranspose1d/2d/3d and Linear with binarizers on their input,
weight and output, as a :class:`bnn.BConfig` says.

Each subclasses the float layer it replaces (``_FLOAT_MODULE``), keeps its Parameter objects and
state_dict keys, and is built with :meth:`from_float`.

Forward: ``post(op(pre(x), w_b) , x)``. In eval mode a weight binarizer with a per-channel scale
(:class:`bnn.ops.ScaledWeightBinarizer`) is applied as ``op(pre(x), sign(W)) * K + bias``, so the sum of
±1 products is an exact integer and matches the packed inference path bit for bit.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..bconfig import BConfig, instantiate
from ..ops.base import Identity, broadcast_shape
from ..ops.weight import ScaledWeightBinarizer

__all__ = [
    "BinarizedLayer", "BinaryConv1d", "BinaryConv2d", "BinaryConv3d", "BinaryConvTranspose1d",
    "BinaryConvTranspose2d", "BinaryConvTranspose3d", "BinaryLinear",
]

_ROLES = ("activation_pre_process", "weight_pre_process", "activation_post_process")


class BinarizedLayer:
    r"""Mixin shared by the binary layers. Subclasses set ``_FLOAT_MODULE`` and implement ``_op``."""

    _FLOAT_MODULE: type = nn.Module
    # Written into the state_dict metadata of the layer: a checkpoint carrying it comes from a binary layer,
    # so a binarizer key missing from it is an error, not the sign of a float checkpoint.
    _version = 101
    #: Qualified name in the model, set by :func:`bnn.prepare_binary_model` for error messages.
    bnn_name: Optional[str] = None

    def _init_binarizers(self, bconfig: BConfig) -> None:
        if not isinstance(bconfig, BConfig):
            raise ValueError(f"{type(self).__name__} needs a bnn.BConfig, got {type(bconfig).__name__}")
        self.bconfig = bconfig
        for role in _ROLES:
            setattr(self, role, instantiate(getattr(bconfig, role), self, default=Identity))

    @property
    def weight_precision(self) -> int:
        """Bits of the weight as the layer computes with it (1 if binarized, 32 if real)."""
        return getattr(self.weight_pre_process, "precision", 32)

    @property
    def activation_precision(self) -> int:
        """Bits of the input as the layer computes with it (1 if binarized, 32 if real)."""
        return getattr(self.activation_pre_process, "precision", 32)

    # -- weight layout: binarizers see (C_out, C_in / groups, *kernel) ---------------------------
    def _to_out_major(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def _from_out_major(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def _out_channels(self) -> int:
        return self.weight.shape[0]

    def _channel_dim(self, ndim: int) -> int:
        # (N, C, *spatial) -> 1; an unbatched (C, *spatial) input -> 0
        return 1 if ndim == max(self._input_ranks) else 0

    def _op(self, x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        ranks = self._input_ranks
        if x.dim() not in ranks:
            where = f" {self.bnn_name!r}" if self.bnn_name else ""
            raise ValueError(
                f"{type(self).__name__}{where} expects a {' or '.join(map(str, ranks))}-D input, "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self._check_input(x)
        x_b = self.activation_pre_process(x)
        wpp = self.weight_pre_process
        if not self.training and isinstance(wpp, ScaledWeightBinarizer):
            signs, scale = wpp.split(self._to_out_major(self.weight))
            out = self._op(x_b, self._from_out_major(signs), None, **kwargs)
            shape = broadcast_shape(scale.numel(), out.dim(), self._channel_dim(out.dim()))
            out = out * scale.view(shape)
            if self.bias is not None:
                out = out + self.bias.view(shape)
        else:
            w = self._from_out_major(wpp(self._to_out_major(self.weight)))
            out = self._op(x_b, w, self.bias, **kwargs)
        return self.activation_post_process(out, x)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def _float_kwargs(cls, mod: nn.Module) -> dict:
        raise NotImplementedError

    @classmethod
    def from_float(cls, mod: nn.Module, bconfig: Optional[BConfig] = None):
        r"""Build the binary layer from ``mod`` (a float layer, or a binary one being re-binarized).

        The new layer holds ``mod``'s own Parameter objects. When ``mod`` is already binary, the state of
        each binarizer that keeps its class (learned scales, thresholds, gains) carries over.

        Args:
            mod: an instance of ``_FLOAT_MODULE`` (subclasses included).
            bconfig: the config; defaults to ``mod.bconfig``.
        """
        bconfig = bconfig if bconfig is not None else getattr(mod, "bconfig", None)
        if bconfig is None:
            raise ValueError(f"{cls.__name__}.from_float needs a bconfig, or a module with a .bconfig attribute")
        if not isinstance(mod, cls._FLOAT_MODULE):
            raise ValueError(f"{cls.__name__}.from_float takes a {cls._FLOAT_MODULE.__name__}, "
                             f"got {type(mod).__name__}")
        new = cls(**cls._float_kwargs(mod), bias=mod.bias is not None, bconfig=bconfig, device="meta")
        new.weight = mod.weight
        new.bias = mod.bias
        new._init_binarizers(bconfig)
        if isinstance(mod, BinarizedLayer):
            for role in _ROLES:
                old, fresh = getattr(mod, role), getattr(new, role)
                if type(old) is type(fresh):
                    fresh.load_state_dict(old.state_dict())
        new.bnn_name = getattr(mod, "bnn_name", None)
        new.train(mod.training)
        return new

    def to_float(self) -> nn.Module:
        r"""The float layer this one came from: a ``_FLOAT_MODULE`` holding the same Parameter objects
        (binarizers and what they learned are dropped)."""
        float_cls = self._FLOAT_MODULE
        new = float_cls(**self._float_kwargs(self), bias=self.bias is not None, device="meta")
        new.weight = self.weight
        new.bias = self.bias
        new.train(self.training)
        return new

    # -- loading float checkpoints ---------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A float checkpoint has this layer's weight but none of its binarizers' state: keep the
        # binarizers' current state, so that pretrained float weights load strictly into a binary model.
        own = {}
        for role in _ROLES:
            for key, value in getattr(self, role).state_dict().items():
                own[f"{prefix}{role}.{key}"] = value
        from_binary_layer = local_metadata.get("version") == BinarizedLayer._version
        if own and not from_binary_layer and prefix + "weight" in state_dict and not any(k in state_dict for k in own):
            state_dict.update(own)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class _BinaryConvNd(BinarizedLayer):
    @classmethod
    def _float_kwargs(cls, mod):
        return dict(in_channels=mod.in_channels, out_channels=mod.out_channels, kernel_size=mod.kernel_size,
                    stride=mod.stride, padding=mod.padding, dilation=mod.dilation, groups=mod.groups,
                    padding_mode=mod.padding_mode)

    def _op(self, x, w, bias):
        return self._conv_forward(x, w, bias)


def _conv_init(self, float_cls, bconfig, *args, **kwargs):
    float_cls.__init__(self, *args, **kwargs)
    self._init_binarizers(bconfig)


class BinaryConv1d(_BinaryConvNd, nn.Conv1d):
    r"""Fake-binarized :class:`torch.nn.Conv1d`; same arguments plus ``bconfig``."""
    _FLOAT_MODULE = nn.Conv1d
    _input_ranks = (2, 3)

    def __init__(self, *args, bconfig: BConfig, **kwargs):
        _conv_init(self, nn.Conv1d, bconfig, *args, **kwargs)


class BinaryConv2d(_BinaryConvNd, nn.Conv2d):
    r"""Fake-binarized :class:`torch.nn.Conv2d`; same arguments plus ``bconfig``.

    Example::

        >>> import torch, bnn
        >>> from bnn.ops import BasicInputBinarizer, XNORWeightBinarizer
        >>> conv = bnn.layers.BinaryConv2d(3, 8, 3, padding=1, bconfig=bnn.BConfig(
        ...     activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer))
        >>> conv(torch.randn(1, 3, 8, 8)).shape
        torch.Size([1, 8, 8, 8])
    """
    _FLOAT_MODULE = nn.Conv2d
    _input_ranks = (3, 4)

    def __init__(self, *args, bconfig: BConfig, **kwargs):
        _conv_init(self, nn.Conv2d, bconfig, *args, **kwargs)


class BinaryConv3d(_BinaryConvNd, nn.Conv3d):
    r"""Fake-binarized :class:`torch.nn.Conv3d`; same arguments plus ``bconfig``."""
    _FLOAT_MODULE = nn.Conv3d
    _input_ranks = (4, 5)

    def __init__(self, *args, bconfig: BConfig, **kwargs):
        _conv_init(self, nn.Conv3d, bconfig, *args, **kwargs)


class _BinaryConvTransposeNd(BinarizedLayer):
    _conv_transpose = None

    @classmethod
    def _float_kwargs(cls, mod):
        return dict(in_channels=mod.in_channels, out_channels=mod.out_channels, kernel_size=mod.kernel_size,
                    stride=mod.stride, padding=mod.padding, output_padding=mod.output_padding,
                    groups=mod.groups, dilation=mod.dilation, padding_mode=mod.padding_mode)

    def _to_out_major(self, w):
        # (C_in, C_out / g, *k) <-> (C_out, C_in / g, *k): swapping the two channel axes within each group
        # is its own inverse in form, so the same code maps both ways.
        g, k = self.groups, w.shape[2:]
        return w.reshape(g, w.shape[0] // g, w.shape[1], *k).transpose(1, 2).reshape(
            g * w.shape[1], w.shape[0] // g, *k)

    _from_out_major = _to_out_major

    def _op(self, x, w, bias, output_size=None):
        num_spatial = len(self.kernel_size)
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size,
                                              num_spatial, self.dilation)
        return type(self)._conv_transpose(x, w, bias, self.stride, self.padding, output_padding, self.groups,
                                          self.dilation)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        return BinarizedLayer.forward(self, x, output_size=output_size)


class BinaryConvTranspose1d(_BinaryConvTransposeNd, nn.ConvTranspose1d):
    r"""Fake-binarized :class:`torch.nn.ConvTranspose1d`; same arguments plus ``bconfig``."""
    _FLOAT_MODULE = nn.ConvTranspose1d
    _input_ranks = (2, 3)
    _conv_transpose = staticmethod(F.conv_transpose1d)

    def __init__(self, *args, bconfig: BConfig, **kwargs):
        _conv_init(self, nn.ConvTranspose1d, bconfig, *args, **kwargs)


class BinaryConvTranspose2d(_BinaryConvTransposeNd, nn.ConvTranspose2d):
    r"""Fake-binarized :class:`torch.nn.ConvTranspose2d`; same arguments plus ``bconfig``."""
    _FLOAT_MODULE = nn.ConvTranspose2d
    _input_ranks = (3, 4)
    _conv_transpose = staticmethod(F.conv_transpose2d)

    def __init__(self, *args, bconfig: BConfig, **kwargs):
        _conv_init(self, nn.ConvTranspose2d, bconfig, *args, **kwargs)


class BinaryConvTranspose3d(_BinaryConvTransposeNd, nn.ConvTranspose3d):
    r"""Fake-binarized :class:`torch.nn.ConvTranspose3d`; same arguments plus ``bconfig``."""
    _FLOAT_MODULE = nn.ConvTranspose3d
    _input_ranks = (4, 5)
    _conv_transpose = staticmethod(F.conv_transpose3d)

    def __init__(self, *args, bconfig: BConfig, **kwargs):
        _conv_init(self, nn.ConvTranspose3d, bconfig, *args, **kwargs)


class BinaryLinear(BinarizedLayer, nn.Linear):
    r"""Fake-binarized :class:`torch.nn.Linear`; same arguments plus ``bconfig``. Channels are the last axis."""
    _FLOAT_MODULE = nn.Linear
    _input_ranks = tuple(range(1, 9))

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bconfig: BConfig,
                 device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_binarizers(bconfig)

    @classmethod
    def _float_kwargs(cls, mod):
        return dict(in_features=mod.in_features, out_features=mod.out_features)

    def _channel_dim(self, ndim):
        return -1

    def _op(self, x, w, bias):
        return F.linear(x, w, bias)
