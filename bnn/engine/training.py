r"""Builders for the training settings of a recipe step: optimizer with weight-decay groups, per-iteration
learning-rate schedule, gradient clipping and loss. They take the user's model and loop sizes; nothing
here runs a training loop."""
import math
from typing import Callable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..binarize import _resolve, swappable_layers
from ..optim import distribution_loss, weight_decay_groups
from .schema import OPTIMIZERS, TrainingSettings

__all__ = ["build_optimizer", "build_scheduler", "clipped_parameters", "Criterion"]


def build_optimizer(model: nn.Module, settings: TrainingSettings) -> torch.optim.Optimizer:
    """The step's optimizer over ``model``'s parameters, with and without weight decay."""
    groups = weight_decay_groups(model, settings.weight_decay, settings.weight_decay_params,
                                 settings.weight_decay_exclude)
    return OPTIMIZERS[settings.optimizer](groups, **dict(settings.optimizer_args))


def _schedule_factor(settings: TrainingSettings, total: int, per_epoch: int) -> Callable[[int], float]:
    args = dict(settings.scheduler_args)
    warmup = int(round(args.get("warmup_epochs", 0.0) * per_epoch))
    end = args.get("end_factor", 0.0)
    milestones = sorted(int(round(m * per_epoch)) for m in args.get("milestones", ()))
    gamma = args.get("gamma", 0.1)
    name = settings.scheduler

    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        span = max(total - warmup, 1)
        t = min(max(it - warmup, 0) / span, 1.0)
        if name == "linear":
            return 1.0 - (1.0 - end) * t
        if name == "cosine":
            return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))
        if name == "step":
            return gamma ** sum(it >= m for m in milestones)
        return 1.0
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, settings: TrainingSettings, steps_per_epoch: int,
                    epochs: Optional[int] = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration schedule (call ``scheduler.step()`` after every ``optimizer.step()``)."""
    epochs = epochs if epochs is not None else settings.epochs
    if epochs is None:
        raise ValueError("the schedule needs the number of epochs: set training.epochs in the recipe "
                         "or pass epochs=")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule_factor(settings, epochs * steps_per_epoch, steps_per_epoch))


def clipped_parameters(model: nn.Module, settings: TrainingSettings) -> List[torch.Tensor]:
    """The parameters adaptive gradient clipping applies to: all but those of the excluded layers
    (by default ``_last_``, the final classifier)."""
    layer_names = [n for n, _ in swappable_layers(model)]
    all_names = [n for n, _ in model.named_modules()]
    excluded = set()
    for selector in settings.agc_exclude:
        excluded.update(_resolve(selector, layer_names, all_names, "training.agc.exclude", "warn")[0])
    return [p for name, p in model.named_parameters()
            if p.requires_grad and name.rpartition(".")[0] not in excluded
            and not any(name.startswith(e + ".") for e in excluded)]


class Criterion:
    r"""The step's loss: ``criterion(logits, targets, inputs=None)``.

    ``cross_entropy`` (with label smoothing) ignores ``inputs``; ``distillation`` runs the teacher on
    ``inputs`` (no gradient) and returns ReActNet's distribution loss, plus ``ce_weight`` times the
    cross-entropy when set.
    """

    def __init__(self, settings: TrainingSettings, teacher: Optional[nn.Module] = None):
        self.name = settings.loss
        args = dict(settings.loss_args)
        self.label_smoothing = args.get("label_smoothing", 0.0)
        self.ce_weight = args.get("ce_weight", 0.0)
        self.teacher = teacher
        if self.name == "distillation":
            if teacher is None:
                described = f" (the recipe names {args['teacher']!r})" if args.get("teacher") else ""
                raise ValueError(f"this step distils from a teacher{described}: pass criterion(teacher=model)")
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
        if self.name == "cross_entropy":
            return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        if inputs is None:
            raise ValueError("the distillation loss needs the inputs: criterion(logits, targets, inputs)")
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        loss = distribution_loss(logits, teacher_logits)
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        return loss
