r"""Training helpers the papers' recipes name: adaptive gradient clipping, the distribution (distillation)
loss, and parameter groups for weight decay."""
import re
from typing import Dict, Iterable, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["adaptive_gradient_clip_", "distribution_loss", "DistributionLoss", "weight_decay_groups"]


def _unitwise_norm(t: torch.Tensor) -> torch.Tensor:
    if t.dim() <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True)


@torch.no_grad()
def adaptive_gradient_clip_(parameters: Iterable[torch.Tensor], clipping: float, eps: float = 1e-3) -> None:
    r"""Adaptive gradient clipping (Brock et al., NF-Nets, ICML 2021), in place, unit-wise: per output row
    of each weight (the whole tensor for biases and other vectors)

    .. math::
        \mathrm{max} = \lambda \max(\|W_i\|, \epsilon), \qquad
        G_i \leftarrow G_i \cdot \frac{\mathrm{max}}{\max(\|G_i\|, 10^{-6})} \text{ if } \|G_i\| \ge \mathrm{max}.

    The recipes apply it to every parameter but the final classifier's (``BinaryChef.clip_gradients``).

    Args:
        parameters: the parameters whose ``.grad`` to clip.
        clipping: :math:`\lambda` (A&B / CIFAR 0.001, ImageNet 0.02).
        eps: :math:`\epsilon`, the floor of the parameter norm.
    """
    if clipping <= 0:
        raise ValueError(f"adaptive gradient clipping needs clipping > 0, got {clipping}")
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = _unitwise_norm(p).clamp_min_(eps).mul_(clipping)
        grad_norm = _unitwise_norm(p.grad)
        factor = max_norm / grad_norm.clamp_min(1e-6)
        p.grad.mul_(torch.where(grad_norm >= max_norm, factor, torch.ones_like(factor)))


def distribution_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    r"""ReActNet's distributional loss: :math:`-\frac{1}{N}\sum_n \sum_c \mathrm{softmax}(t_n)_c
    \log \mathrm{softmax}(s_n)_c`; the teacher gets no gradient. Liu et al., ReActNet, ECCV 2020."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    # at least float32 (half-precision logits lose too much in the softmax), never less than given
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    target = F.softmax(teacher_logits.detach().to(dtype), dim=1)
    return -(target * F.log_softmax(student_logits.to(dtype), dim=1)).sum(dim=1).mean()


class DistributionLoss(nn.Module):
    r"""Module form of :func:`distribution_loss`: ``loss(student_logits, teacher_logits)``."""

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return distribution_loss(student_logits, teacher_logits)


def weight_decay_groups(model: nn.Module, weight_decay: float, decay: str = "weights",
                        exclude: Sequence[str] = ()) -> List[Dict]:
    r"""Two optimizer parameter groups: with and without weight decay.

    Args:
        model: the model.
        weight_decay: the decay of the first group.
        decay: ``"weights"`` decays only parameters of 2 or more dimensions (conv and linear weights), as
            the ReActNet / A&B code does, leaving biases, norms, thresholds, slopes and gains alone;
            ``"all"`` decays every parameter.
        exclude: parameter names, or ``$regex$`` patterns, never decayed (e.g. ``"$log2_slope$"``).

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``
        (a group is left out when empty).
    """
    if decay not in ("weights", "all"):
        raise ValueError(f"decay must be 'weights' or 'all', got {decay!r}")
    patterns = [re.compile(e[1:-1]) if len(e) >= 2 and e[0] == e[-1] == "$" else None for e in exclude]

    def excluded(name: str) -> bool:
        return any(name == e if p is None else p.search(name) is not None for e, p in zip(exclude, patterns))

    decayed, kept = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not excluded(name) and (decay == "all" or p.dim() >= 2):
            decayed.append(p)
        else:
            kept.append(p)
    groups = [{"params": decayed, "weight_decay": float(weight_decay)}, {"params": kept, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
