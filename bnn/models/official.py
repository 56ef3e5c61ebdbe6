r"""Loading checkpoints of the papers' official code into the zoo's models, by renaming their keys.

The official repositories (liuzechun/ReActNet, liuzechun/Bi-Real-net, Ruichen0424/AB-BNN,
VITA-Group/BNN_NoBN, Sense-GVT/BCDNet) share one vocabulary: ``move*`` learnable biases, ``prelu*`` slopes,
``binary_*`` convolutions, ``feature.i`` blocks, ``gain`` of weight standardization. One table maps it onto
ours. Shapes differ only in layout (``(1, C, 1, 1)`` biases, ``(C_out, 1, 1, 1)`` gains, flat ``weights``
of the ReActNet-A / Bi-Real binary convs), so a value is reshaped to the parameter it lands in.

Load into a model that has the structure of the step the checkpoint comes from: a binary conv's ``gain``
(A&B, BNN - BN step 2) exists only once the recipe's ``ScaledWSWeightBinarizer`` is in place, so apply the
recipe's steps first (``chef.next(model)``), then load.
"""
import re
from typing import Any, Dict, List, Mapping, NamedTuple

import torch
import torch.nn as nn

__all__ = ["official_to_bnn_keys", "load_official_state_dict", "OfficialLoadResult"]


def _block_index(match: "re.Match") -> str:
    return f"blocks.{int(match.group(1)) - 1}."


# Applied in order, each to the result of the previous ones.
_RENAMES = [
    (r"^module\.", ""),                                              # (Distributed)DataParallel
    # ReActNet-A layout: feature.0 is the stem, feature.i the (i-1)-th block.
    (r"^feature\.0\.conv1\.", "stem.conv."),
    (r"^feature\.0\.bn1\.", "stem.bn."),
    (r"^feature\.(\d+)\.", _block_index),
    (r"\.move11\.bias$", ".threshold1.bias"),
    (r"\.binary_3x3\.", ".conv3x3."),
    (r"\.move12\.bias$", ".act1.shift_in"),
    (r"\.prelu1\.(weight|L_alpha)$", lambda m: ".act1." + ("slope" if m.group(1) == "weight" else "log2_slope")),
    (r"\.move13\.bias$", ".act1.shift_out"),
    (r"\.move21\.bias$", ".threshold2.bias"),
    (r"\.binary_pw\.", ".pointwise.0."),
    (r"\.binary_pw_down([12])\.", lambda m: f".pointwise.{int(m.group(1)) - 1}."),
    (r"\.bn2\.", ".bn2.0."),
    (r"\.bn2_([12])\.", lambda m: f".bn2.{int(m.group(1)) - 1}."),
    (r"\.move22\.bias$", ".act2.shift_in"),
    (r"\.prelu2\.(weight|L_alpha)$", lambda m: ".act2." + ("slope" if m.group(1) == "weight" else "log2_slope")),
    (r"\.move23\.bias$", ".act2.shift_out"),
    # BCDNet's binary MLP blocks.
    (r"^mlp_layer\.(\d+)\.mlp_layer\.(\d+)\.", r"mlp.\1.\2."),
    (r"^(mlp\.\d+\.\d+)\.binary_conv1\.", r"\1.conv_short."),
    (r"^(mlp\.\d+\.\d+)\.binary_conv2\.", r"\1.conv_long."),
    # Bi-Real layout blocks (and BCDNet's MLP blocks): one conv, one BN, one RPReLU.
    (r"^((?:layer\d|mlp\.\d+)\.\d+)\.(?:binary_conv|conv1)\.", r"\1.conv."),
    (r"^((?:layer\d|mlp\.\d+)\.\d+)\.bn1\.", r"\1.bn."),
    (r"\.move0\.bias$", ".threshold.bias"),
    (r"\.move1\.bias$", ".act.shift_in"),
    (r"\.prelu\.(weight|L_alpha)$", lambda m: ".act." + ("slope" if m.group(1) == "weight" else "log2_slope")),
    (r"\.move2\.bias$", ".act.shift_out"),
    # Weight standardization: the gain is the weight binarizer's (or ScaledStandardizedWeight's).
    (r"\.gain$", ".weight_pre_process.gain"),
    (r"\.weights$", ".weight"),
]
_COMPILED = [(re.compile(p), r) for p, r in _RENAMES]


def official_to_bnn_keys(key: str) -> str:
    r"""The name in the zoo's models of a key of an official checkpoint.

    Example::

        >>> from bnn.models.official import official_to_bnn_keys
        >>> official_to_bnn_keys("module.feature.3.prelu2.L_alpha")
        'blocks.2.act2.log2_slope'
        >>> official_to_bnn_keys("layer2.0.binary_conv.weights")
        'layer2.0.conv.weight'
    """
    for pattern, replacement in _COMPILED:
        key = pattern.sub(replacement, key)
    return key


class OfficialLoadResult(NamedTuple):
    """What :func:`load_official_state_dict` did: ``missing`` are the model's entries the checkpoint did
    not set (e.g. the recipe's RSign biases, which the official code does not have: they stay 0),
    ``unexpected`` the checkpoint's entries with no place in the model (original key names)."""
    missing: List[str]
    unexpected: List[str]


def load_official_state_dict(model: nn.Module, checkpoint: Mapping[str, Any]) -> OfficialLoadResult:
    r"""Load a checkpoint of a paper's official code into a zoo model with the same architecture.

    Args:
        model: a :func:`bnn.models.create_model` model, binarized by the recipe steps the checkpoint was
            trained through when the checkpoint holds binarizer state (the A&B / BNN - BN step-2 gains).
        checkpoint: the official ``state_dict``, or a dict holding it under ``"state_dict"``.

    Returns:
        :class:`OfficialLoadResult`. Raises ``ValueError`` when a value does not fit its parameter.
    """
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
    own = model.state_dict()
    renamed = {official_to_bnn_keys(key): (key, value) for key, value in state.items()}
    _merge_distillation_head(renamed, own)
    converted: Dict[str, torch.Tensor] = {}
    unexpected: List[str] = []
    for name, (key, value) in renamed.items():
        if name in own:
            converted[name] = _fit(value, own[name], key, name)
        else:
            unexpected.append(key)
    model.load_state_dict(converted, strict=False)
    return OfficialLoadResult(sorted(set(own) - set(converted)), unexpected)


def _fit(value: torch.Tensor, target: torch.Tensor, key: str, name: str) -> torch.Tensor:
    if value.shape == target.shape:
        return value
    if value.numel() != target.numel():
        raise ValueError(f"official {key!r} has shape {tuple(value.shape)}, {name!r} of the model has "
                         f"{tuple(target.shape)}: is the model the same architecture (depth, classes, stem)?")
    return value.reshape(target.shape)


def _merge_distillation_head(renamed: Dict[str, Any], own: Mapping[str, torch.Tensor]) -> None:
    """BCDNet's second head ``fc_dist`` goes under the model's ``fc`` when it has both heads
    (``distillation_head=True``); otherwise it stays unexpected."""
    for suffix in ("weight", "bias"):
        fc, dist = f"fc.{suffix}", f"fc_dist.{suffix}"
        if fc not in renamed or dist not in renamed or fc not in own:
            continue
        both = torch.cat([renamed[fc][1], renamed[dist][1]], dim=0)
        if both.shape == own[fc].shape:
            renamed[fc] = (renamed[fc][0], both)
            del renamed[dist]
