r"""Recipe schema: reading a YAML recipe safely and validating every field of every step.

A recipe is a mapping of steps, in file order (the upstream ``bnn`` 0.1.2 format). A step::

    step1:
      pre_activation: {name: RSign, args: {estimator: approx_sign}}   # or just: pre_activation: RSign
      post_activation: {name: Identity}        # optional, default Identity
      weight: {name: MagnitudeAwareWeightBinarizer}
      ignore_layer_names: [_first_, _last_]    # optional: names, $regex$, _first_, _last_
      layers:                                  # optional per-layer overrides, by name or $regex$
        "$downsample$": null                   #   null keeps the layer real
        fc: {weight: {name: XNORWeightBinarizer}}  # a partial config: the rest from the step
      training:                                # optional: the paper's training settings
        epochs: 256
        optimizer: {name: Adam, args: {lr: 1.0e-3}}
        weight_decay: {value: 5.0e-6, params: weights, exclude: []}
        scheduler: {name: linear}
        agc: {clipping: 0.001}
        loss: {name: cross_entropy, label_smoothing: 0.0}
        start_from: previous

docs/recipes.md documents every field.
"""
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import yaml

from ..bconfig import BConfig, BinarizerFactory
from .errors import RecipeError
from .registry import constructor_parameters, expected_type, settable_from_recipe, suggest

__all__ = ["BinarizerSpec", "TrainingSettings", "Step", "load_recipe", "parse_recipe", "OPTIMIZERS",
           "SCHEDULERS", "LOSSES"]

ROLES = {"pre_activation": "activation_pre_process", "post_activation": "activation_post_process",
         "weight": "weight_pre_process"}
STEP_KEYS = set(ROLES) | {"ignore_layer_names", "layers", "training"}
TRAINING_KEYS = {"epochs", "optimizer", "weight_decay", "scheduler", "agc", "loss", "start_from"}

OPTIMIZERS = {name: getattr(torch.optim, name) for name in
              ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad")}
#: Learning-rate schedules (per iteration) and their arguments with defaults.
SCHEDULERS = {
    "constant": {"warmup_epochs": 0.0},
    "linear": {"end_factor": 0.0, "warmup_epochs": 0.0},
    "cosine": {"end_factor": 0.0, "warmup_epochs": 0.0},
    "step": {"milestones": [], "gamma": 0.1, "warmup_epochs": 0.0},
}
#: Losses and their arguments with defaults.
LOSSES = {
    "cross_entropy": {"label_smoothing": 0.0},
    "distillation": {"teacher": "", "ce_weight": 0.0, "label_smoothing": 0.0},
}
#: Optimizer arguments the chef sets itself, and where a recipe gives them instead.
_SET_BY_CHEF = {
    "params": "the chef passes the model's parameters",
    "weight_decay": "write it as training.weight_decay (value, params, exclude), which keeps it off biases, "
                    "norms, thresholds and gains",
}


@dataclass(frozen=True)
class BinarizerSpec:
    """A binarizer named by a recipe: its name, the class it resolved to, and its arguments."""
    name: str
    cls: type
    args: Tuple[Tuple[str, Any], ...] = ()

    def factory(self) -> BinarizerFactory:
        return BinarizerFactory(self.cls, **dict(self.args))


@dataclass(frozen=True)
class TrainingSettings:
    """The training settings of one step (every field optional in the recipe)."""
    epochs: Optional[int] = None
    optimizer: str = "Adam"
    optimizer_args: Tuple[Tuple[str, Any], ...] = ()
    weight_decay: float = 0.0
    weight_decay_params: str = "weights"
    weight_decay_exclude: Tuple[str, ...] = ()
    scheduler: str = "constant"
    scheduler_args: Tuple[Tuple[str, Any], ...] = ()
    agc_clipping: Optional[float] = None
    agc_eps: float = 1e-3
    agc_exclude: Tuple[str, ...] = ("_last_",)
    loss: str = "cross_entropy"
    loss_args: Tuple[Tuple[str, Any], ...] = ()
    start_from: str = "previous"


@dataclass(frozen=True)
class Step:
    """One validated recipe step."""
    name: str
    index: int
    binarizers: Tuple[Tuple[str, BinarizerSpec], ...]
    ignore_layer_names: Tuple[str, ...] = ()
    layers: Tuple[Tuple[str, Optional[Tuple[Tuple[str, BinarizerSpec], ...]]], ...] = ()
    training: TrainingSettings = field(default_factory=TrainingSettings)

    def bconfig(self) -> BConfig:
        """The step's BConfig."""
        return BConfig(**{ROLES[role]: spec.factory() for role, spec in self.binarizers})

    def layer_configs(self) -> Dict[str, Optional[BConfig]]:
        """Per-layer overrides as ``prepare_binary_model``'s ``custom_config_layers_name``."""
        configs = {}
        base = dict(self.binarizers)
        for selector, partial in self.layers:
            if partial is None:
                configs[selector] = None
                continue
            merged = {**base, **dict(partial)}
            configs[selector] = BConfig(**{ROLES[role]: spec.factory() for role, spec in merged.items()})
        return configs


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing duplicate keys (a duplicated step would silently vanish)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_recipe(path: str, registry: Mapping[str, type]) -> List[Step]:
    """Read and validate the recipe file at ``path``."""
    source = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise RecipeError("no such recipe file", source) from None
    except OSError as e:
        raise RecipeError(f"cannot read the recipe ({e.strerror})", source) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError(f"YAML syntax error{where}: {problem}", source) from None
    return parse_recipe(data, registry, source)


def parse_recipe(data: Any, registry: Mapping[str, type], source: str = "<dict>") -> List[Step]:
    """Validate a recipe already loaded as Python data (a dict of steps)."""
    if data is None or (isinstance(data, Mapping) and not data):
        raise RecipeError("the recipe is empty: it needs at least one step", source)
    if not isinstance(data, Mapping):
        raise RecipeError(f"a recipe is a mapping of steps (step name: settings), got {type(data).__name__}",
                          source)
    names = [str(n) for n in data]
    for reserved in ("previous", "initial"):
        if reserved in names:
            raise RecipeError(f"a step cannot be called {reserved!r}: start_from uses that word", source, reserved)
    steps = []
    for index, (name, body) in enumerate(data.items()):
        steps.append(_Parser(source, str(name), names[:index], registry).step(index, body))
    return steps


class _Parser:
    def __init__(self, source: str, step: str, earlier_steps: List[str], registry: Mapping[str, type]):
        self.source, self.step_name, self.earlier, self.registry = source, step, earlier_steps, registry

    def fail(self, field: Optional[str], message: str) -> RecipeError:
        return RecipeError(message, self.source, self.step_name, field)

    def mapping(self, value: Any, field: str, allowed: set, required: Tuple[str, ...] = ()) -> Mapping:
        if not isinstance(value, Mapping):
            raise self.fail(field or None, f"expected a mapping with keys among {sorted(allowed)}, "
                                           f"got {type(value).__name__}: {value!r}")
        for key in value:
            if key not in allowed:
                raise self.fail(f"{field}.{key}" if field else str(key),
                                f"unknown key {key!r}{suggest(key, allowed)} (allowed: {', '.join(sorted(allowed))})")
        for key in required:
            if key not in value:
                raise self.fail(f"{field}.{key}" if field else key, "missing required field")
        return value

    def step(self, index: int, body: Any) -> Step:
        if body is None:
            raise self.fail(None, "the step is empty: it needs at least pre_activation and weight")
        body = self.mapping(body, "", STEP_KEYS, required=("pre_activation", "weight"))
        binarizers = tuple((role, self.binarizer(body[role], role)) for role in ROLES if role in body)
        overrides = body.get("layers") or {}
        if not isinstance(overrides, Mapping):
            raise self.fail("layers", f"expected a mapping of layer name or $regex$: partial config or null, "
                                      f"got {overrides!r}")
        layers = tuple(self.layer_override(sel, spec) for sel, spec in overrides.items())
        return Step(
            name=self.step_name, index=index, binarizers=binarizers,
            ignore_layer_names=self.selectors(body.get("ignore_layer_names", []), "ignore_layer_names"),
            layers=layers,
            training=self.training(body.get("training", {}) or {}),
        )

    def binarizer(self, value: Any, field: str) -> BinarizerSpec:
        if isinstance(value, str):
            value = {"name": value}
        value = self.mapping(value, field, {"name", "args"}, required=("name",))
        name = value["name"]
        if not isinstance(name, str) or name not in self.registry:
            raise self.fail(f"{field}.name", f"unknown binarizer {name!r}{suggest(name, self.registry)}; "
                                             "known names: docs/recipes.md, or pass user_modules")
        cls = self.registry[name]
        spec = BinarizerSpec(name, cls, self.arguments(cls, value.get("args") or {}, f"{field}.args"))
        try:
            spec.factory()()  # a value the constructor refuses (e.g. an unknown estimator) fails here, on load
        except (ValueError, TypeError) as e:
            raise self.fail(f"{field}.args" if spec.args else field, f"{name} refuses these arguments: {e}") from None
        return spec

    def arguments(self, target: Any, args: Any, field: str, skip: Tuple[str, ...] = ()) -> Tuple[Tuple[str, Any], ...]:
        if not isinstance(args, Mapping):
            raise self.fail(field, f"args must be a mapping of argument: value, got {args!r}")
        params = constructor_parameters(target)
        out = []
        for key, value in args.items():
            if key in skip:
                raise self.fail(f"{field}.{key}",
                                f"{key!r} is not set here: {_SET_BY_CHEF.get(key, 'the chef sets it')}")
            if params is not None and key not in params:
                allowed = [p for p in params if p not in skip]
                raise self.fail(f"{field}.{key}", f"{getattr(target, '__name__', target)} has no argument {key!r}"
                                                  f"{suggest(key, allowed)} "
                                                  f"({'arguments: ' + ', '.join(allowed) if allowed else 'it takes none'})")
            if params is not None and not settable_from_recipe(params[key]):
                raise self.fail(f"{field}.{key}", f"{getattr(target, '__name__', target)}'s argument {key!r} takes a "
                                                  "function, class or module, which a recipe cannot give (nothing in "
                                                  "a recipe is executed): register a binarizer that sets it with "
                                                  "user_modules")
            expected = expected_type(params[key]) if params is not None else None
            default = params[key].default if params is not None else None
            out.append((key, self.value(value, expected, default, f"{field}.{key}")))
        return tuple(out)

    def value(self, value: Any, expected: Any, default: Any, field: str) -> Any:
        if isinstance(default, tuple) and default and all(isinstance(d, (int, float)) for d in default):
            if not (isinstance(value, list) and len(value) == len(default)):
                raise self.fail(field, f"expected a list of {len(default)} numbers, got {value!r}")
            return tuple(self.number(v, float, field) for v in value)
        if expected is None:
            if isinstance(value, (Mapping, list)):
                raise self.fail(field, f"expected a single value, got {value!r}")
            return value
        if expected is bool:
            if not isinstance(value, bool):
                raise self.fail(field, f"expected true or false, got {value!r}")
            return value
        if expected in (int, float):
            return self.number(value, expected, field)
        if expected is str and not isinstance(value, str):
            raise self.fail(field, f"expected a string, got {value!r}")
        return value

    def number(self, value: Any, expected: type, field: str) -> Any:
        if isinstance(value, bool):
            raise self.fail(field, f"expected a number, got {value!r}")
        if isinstance(value, str):
            # YAML 1.1 reads 1e-3 (no dot) as a string; accept it as the number it spells.
            try:
                value = float(value)
            except ValueError:
                raise self.fail(field, f"expected a number, got the string {value!r}") from None
        if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
            raise self.fail(field, f"expected a finite number, got {value!r}")
        if expected is int:
            if float(value) != int(value):
                raise self.fail(field, f"expected a whole number, got {value!r}")
            return int(value)
        return float(value)

    def selectors(self, value: Any, field: str, what: str = "layer names") -> Tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(field, f"expected a list of {what} or $regex$ patterns, got {value!r}")
        return tuple(value)

    def layer_override(self, selector: Any, spec: Any):
        field = f"layers.{selector}"
        if not isinstance(selector, str):
            raise self.fail(field, "a layer selector must be a string (a name or $regex$)")
        if spec is None:
            return selector, None
        spec = self.mapping(spec, field, set(ROLES))
        return selector, tuple((role, self.binarizer(spec[role], f"{field}.{role}")) for role in ROLES if role in spec)

    def training(self, value: Any) -> TrainingSettings:
        value = self.mapping(value, "training", TRAINING_KEYS)
        kw: Dict[str, Any] = {}
        if "epochs" in value:
            epochs = self.number(value["epochs"], int, "training.epochs")
            if epochs < 1:
                raise self.fail("training.epochs", f"expected at least 1 epoch, got {epochs}")
            kw["epochs"] = epochs
        if "optimizer" in value:
            opt = value["optimizer"]
            opt = self.mapping({"name": opt} if isinstance(opt, str) else opt, "training.optimizer",
                               {"name", "args"}, ("name",))
            if opt["name"] not in OPTIMIZERS:
                raise self.fail("training.optimizer.name", f"unknown optimizer {opt['name']!r}"
                                f"{suggest(opt['name'], OPTIMIZERS)} (known: {', '.join(OPTIMIZERS)})")
            kw["optimizer"] = opt["name"]
            kw["optimizer_args"] = self.arguments(OPTIMIZERS[opt["name"]], opt.get("args") or {},
                                                  "training.optimizer.args", skip=tuple(_SET_BY_CHEF))
        if "weight_decay" in value:
            wd = value["weight_decay"]
            if not isinstance(wd, Mapping):
                wd = {"value": wd}
            wd = self.mapping(wd, "training.weight_decay", {"value", "params", "exclude"}, ("value",))
            kw["weight_decay"] = self.number(wd["value"], float, "training.weight_decay.value")
            params = wd.get("params", "weights")
            if params not in ("weights", "all"):
                raise self.fail("training.weight_decay.params", f"expected 'weights' or 'all', got {params!r}")
            kw["weight_decay_params"] = params
            kw["weight_decay_exclude"] = self.selectors(wd.get("exclude", []), "training.weight_decay.exclude",
                                                        "parameter names (e.g. fc.weight)")
        if "scheduler" in value:
            kw["scheduler"], kw["scheduler_args"] = self.named_table(value["scheduler"], "training.scheduler",
                                                                     SCHEDULERS)
        if "agc" in value:
            agc = value["agc"]
            if not isinstance(agc, Mapping):
                agc = {"clipping": agc}
            agc = self.mapping(agc, "training.agc", {"clipping", "eps", "exclude"}, ("clipping",))
            clipping = self.number(agc["clipping"], float, "training.agc.clipping")
            if clipping <= 0:
                raise self.fail("training.agc.clipping", f"expected a positive number, got {clipping}")
            kw["agc_clipping"] = clipping
            if "eps" in agc:
                kw["agc_eps"] = self.number(agc["eps"], float, "training.agc.eps")
            if "exclude" in agc:
                kw["agc_exclude"] = self.selectors(agc["exclude"], "training.agc.exclude")
        if "loss" in value:
            kw["loss"], kw["loss_args"] = self.named_table(value["loss"], "training.loss", LOSSES, inline_args=True)
        if "start_from" in value:
            start = value["start_from"]
            allowed = ["previous", "initial"] + self.earlier
            if start not in allowed:
                raise self.fail("training.start_from", f"expected one of {allowed} (an earlier step), "
                                                       f"got {start!r}{suggest(start, allowed)}")
            kw["start_from"] = start
        return TrainingSettings(**kw)

    def named_table(self, value: Any, field: str, table: Mapping[str, Mapping[str, Any]], inline_args: bool = False):
        """``name`` + arguments checked against ``table[name]`` (inline, or under ``args``)."""
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping) or "name" not in value:
            raise self.fail(field, f"expected a mapping with a 'name' (one of {', '.join(table)}), got {value!r}")
        name = value["name"]
        if name not in table:
            raise self.fail(f"{field}.name", f"unknown {field.split('.')[-1]} {name!r}{suggest(name, table)} "
                                             f"(known: {', '.join(table)})")
        defaults = table[name]
        if inline_args:
            self.mapping(value, field, {"name"} | set(defaults))
            args = {k: v for k, v in value.items() if k != "name"}
        else:
            self.mapping(value, field, {"name", "args"})
            args = value.get("args") or {}
            self.mapping(args, f"{field}.args", set(defaults))
        out = []
        for key, raw in args.items():
            default = defaults[key]
            sub = f"{field}.{key}" if inline_args else f"{field}.args.{key}"
            if isinstance(default, list):
                if not isinstance(raw, list):
                    raise self.fail(sub, f"expected a list of numbers, got {raw!r}")
                out.append((key, tuple(self.number(v, float, sub) for v in raw)))
            elif isinstance(default, str):
                if not isinstance(raw, str):
                    raise self.fail(sub, f"expected a string, got {raw!r}")
                out.append((key, raw))
            else:
                out.append((key, self.number(raw, float, sub)))
        return name, tuple(out)
