r"""BinaryChef: runs a multi-step binarization recipe inside the user's own training loop."""
import copy
from collections import OrderedDict
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..binarize import prepare_binary_model
from ..optim import adaptive_gradient_clip_
from .errors import RecipeError
from .registry import build_registry
from .schema import Step, TrainingSettings, load_recipe, parse_recipe
from .training import Criterion, build_optimizer, build_scheduler, clipped_parameters

__all__ = ["BinaryChef"]


class BinaryChef:
    r"""Applies the steps of a recipe to a model, one step per call to :meth:`next`.

    Each step swaps binarizers (keeping the weights and everything the previous step learned: scales,
    thresholds, gains, slopes) and carries the paper's training settings, from which the chef builds the
    optimizer, schedule, clipping and loss for the user's loop.

    Args:
        recipe: path to a YAML recipe, or the recipe as a dict of steps.
        user_modules: extra binarizer classes the recipe may name (a list, registered by class name, or a
            dict ``{name: class}``).

    Example::

        >>> import torchvision
        >>> from bnn import BinaryChef
        >>> chef = BinaryChef('recipes/abbnn.yaml')
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> for _ in range(len(chef)):
        ...     model = chef.next(model)
        ...     optimizer = chef.optimizer(model)
        ...     criterion = chef.criterion()
        ...     # for epoch in range(chef.settings.epochs): ... loss = criterion(model(x), y, x) ...
    """

    def __init__(self, recipe: Union[str, os.PathLike, Mapping[str, Any]],
                 user_modules: Optional[Union[List[type], Mapping[str, type]]] = None) -> None:
        self.registry = build_registry(user_modules)
        if isinstance(recipe, Mapping):
            self.source = "<dict>"
            self.steps: List[Step] = parse_recipe(recipe, self.registry, self.source)
        elif isinstance(recipe, (str, os.PathLike)):
            self.source = os.fspath(recipe)
            self.steps = load_recipe(self.source, self.registry)
        else:
            raise RecipeError(f"a recipe is a path or a dict of steps, got {type(recipe).__name__}")
        self.current_step = 0
        self._snapshots: Dict[str, Dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.steps)
        return f"BinaryChef({self.source!r}, steps=[{names}], current_step={self.current_step})"

    def get_num_steps(self) -> int:
        """Number of steps (upstream bnn 0.1.2 name for ``len(chef)``)."""
        return len(self)

    @property
    def step(self) -> Optional[Step]:
        """The step applied last (None before the first :meth:`next`)."""
        return self.steps[self.current_step - 1] if self.current_step else None

    @property
    def settings(self) -> TrainingSettings:
        """The training settings of the step applied last."""
        if self.step is None:
            raise RuntimeError("no step applied yet: call chef.next(model) first")
        return self.step.training

    # -- applying steps ------------------------------------------------------------------------
    def run_step(self, model: nn.Module, step: int) -> nn.Module:
        r"""Binarize ``model`` as step ``step`` (0-based) says and return it; does not advance the chef."""
        _refuse_wrapped(model)
        if not 0 <= step < len(self):
            raise IndexError(f"{self.source} has {len(self)} step(s) (0 to {len(self) - 1}), asked for step {step}")
        spec = self.steps[step]
        try:
            model = prepare_binary_model(model, spec.bconfig(), custom_config_layers_name=spec.layer_configs(),
                                         ignore_layers_name=list(spec.ignore_layer_names),
                                         unmatched_patterns="warn")
        except (ValueError, TypeError) as e:
            message = str(e).replace("ignore_layers_name:", "ignore_layer_names:").replace(
                "custom_config_layers_name:", "layers:")
            raise RecipeError(message, self.source, spec.name) from None
        start = spec.training.start_from
        if start != "previous" and start in self._snapshots:
            _load_matching(model, self._snapshots[start])
        return model

    def next(self, model: nn.Module) -> nn.Module:
        r"""Apply the next step to ``model`` and return it."""
        if self.current_step >= len(self):
            raise RuntimeError(f"{self.source}: all {len(self)} step(s) are done; there is no next step "
                               "(len(chef) tells how many there are)")
        _refuse_wrapped(model)
        self._snapshot_if_needed(model)
        model = self.run_step(model, self.current_step)
        self.current_step += 1
        return model

    def restore(self, model: nn.Module) -> nn.Module:
        r"""Give a fresh model the structure of the step the chef is at (after :meth:`load_state_dict`), so
        that a checkpoint taken during that step loads into it."""
        if self.current_step == 0:
            return model
        return self.run_step(model, self.current_step - 1)

    def _snapshot_if_needed(self, model: nn.Module) -> None:
        finished = "initial" if self.current_step == 0 else self.steps[self.current_step - 1].name
        later = self.steps[self.current_step:]
        if any(s.training.start_from == finished for s in later):
            self._snapshots[finished] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    # -- training settings for the user's loop -------------------------------------------------
    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The current step's optimizer, with the recipe's weight-decay parameter groups."""
        return build_optimizer(model, self.settings)

    def scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                  epochs: Optional[int] = None) -> torch.optim.lr_scheduler.LambdaLR:
        """The current step's learning-rate schedule, stepped once per iteration."""
        return build_scheduler(optimizer, self.settings, steps_per_epoch, epochs)

    def criterion(self, teacher: Optional[nn.Module] = None) -> Criterion:
        """The current step's loss: ``criterion(logits, targets, inputs)``."""
        return Criterion(self.settings, teacher)

    def clip_gradients(self, model: nn.Module) -> None:
        """Adaptive gradient clipping as the current step says (nothing when the step has none); call it
        between ``loss.backward()`` and ``optimizer.step()``."""
        settings = self.settings
        if settings.agc_clipping is None:
            return
        adaptive_gradient_clip_(clipped_parameters(model, settings), settings.agc_clipping, settings.agc_eps)

    # -- resuming ------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """What resuming needs: the step reached and the weight snapshots later steps start from."""
        return {"current_step": self.current_step, "num_steps": len(self),
                "step_names": [s.name for s in self.steps], "steps": [_binarization(s) for s in self.steps],
                "snapshots": copy.copy(self._snapshots)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the step ``state`` was saved at; the recipe must have the same steps."""
        names = [s.name for s in self.steps]
        if list(state.get("step_names", [])) != names:
            raise RecipeError(f"the saved chef state is for steps {state.get('step_names')}, this recipe has {names}",
                              self.source)
        saved = state.get("steps")
        if saved is not None:
            for step, before in zip(self.steps, saved):
                if before != _binarization(step):
                    raise RecipeError("the saved chef state was taken with a recipe that binarizes this step "
                                      f"differently: saved {before}, this recipe {_binarization(step)}",
                                      self.source, step.name)
        current = int(state["current_step"])
        if not 0 <= current <= len(self):
            raise RecipeError(f"saved current_step {current} is outside 0..{len(self)}", self.source)
        self.current_step = current
        self._snapshots = dict(state.get("snapshots", {}))


def _refuse_wrapped(model: nn.Module) -> None:
    # A step builds new binarizer parameters (RSign biases, gains) that a wrapper made before the step has
    # not registered: DistributedDataParallel would never all-reduce them and the ranks would drift apart.
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise TypeError("BinaryChef got a DistributedDataParallel: apply the step to the model inside and wrap "
                        "it again, model = DistributedDataParallel(chef.next(ddp.module)), since the step creates "
                        "parameters the existing wrapper would not synchronize")


def _binarization(step: Step) -> str:
    """What a step builds, as text (binarizers, arguments, selected layers, start): a resumed chef checks
    that its recipe still builds the same thing, whatever the steps are called."""
    def named(pairs):
        return [(role, spec.name, spec.args) for role, spec in pairs]
    layers = [(selector, None if partial is None else named(partial)) for selector, partial in step.layers]
    return repr((named(step.binarizers), step.ignore_layer_names, layers, step.training.start_from))


def _load_matching(model: nn.Module, snapshot: Mapping[str, torch.Tensor]) -> None:
    """Load the entries of ``snapshot`` whose name and shape the model still has."""
    own = model.state_dict()
    matching = OrderedDict((k, v) for k, v in snapshot.items() if k in own and own[k].shape == v.shape)
    # the model's own module versions: BatchNorm (e.g. torchvision's mnasnet) refuses a dict without them
    matching._metadata = getattr(own, "_metadata", None)
    skipped = len(snapshot) - len(matching)
    if skipped:
        warnings.warn(f"start_from: {skipped} saved tensor(s) no longer fit the model and were not restored",
                      stacklevel=3)
    model.load_state_dict(matching, strict=False)
