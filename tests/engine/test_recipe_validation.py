"""Bad recipes are refused when the chef is built, with a bnn.RecipeError (a ValueError) that names the
file, the step and the field and suggests the close match; as a dict and as a YAML file alike. Nothing in
a recipe is ever executed: YAML is read with the safe loader and names resolve through the registry."""
import copy

import pytest
import torch
import torch.nn as nn
import yaml

from bnn import BinaryChef, RecipeError

WARMUP = {"pre_activation": {"name": "RSign"}, "weight": {"name": "Identity"},
          "ignore_layer_names": ["_first_", "_last_"]}
GOOD = {"pre_activation": {"name": "BasicInputBinarizer"},
        "weight": {"name": "XNORWeightBinarizer", "args": {"center_weights": True}},
        "ignore_layer_names": ["_first_", "_last_"],
        "training": {"epochs": 2, "optimizer": {"name": "SGD", "args": {"lr": 0.1, "momentum": 0.9}},
                     "scheduler": {"name": "cosine"}, "loss": {"name": "cross_entropy"}}}


def _set(path, value):
    def edit(step):
        *parents, last = path.split(".")
        node = step
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return edit


def _drop(path):
    def edit(step):
        *parents, last = path.split(".")
        node = step
        for key in parents:
            node = node[key]
        del node[last]
    return edit


def _rename(old, new):
    def edit(step):
        step[new] = step.pop(old)
    return edit


# (id, edit of the second step "finetune", field named, what the message must also say)
CASES = [
    ("unknown step key", _rename("pre_activation", "pre_activaton"), "pre_activaton",
     "did you mean 'pre_activation'"),
    ("unknown training key", _rename("training", "trainig"), "trainig", "did you mean 'training'"),
    ("unknown binarizer", _set("weight.name", "XNORWeightBinariser"), "weight.name",
     "did you mean 'XNORWeightBinarizer'"),
    ("unknown argument", _set("weight.args", {"center_weight": True}), "weight.args.center_weight",
     "did you mean 'center_weights'"),
    ("string for a bool", _set("weight.args", {"compute_alpha": "yes"}), "weight.args.compute_alpha",
     "true or false"),
    ("list for a number", _set("pre_activation", {"name": "SwishSignBinarizer", "args": {"beta": [5]}}),
     "pre_activation.args.beta", "number"),
    ("no weight", _drop("weight"), "weight", "missing"),
    ("no name", _drop("weight.name"), "weight.name", "missing"),
    ("ignore list is a string", _set("ignore_layer_names", "_first_"), "ignore_layer_names", "list"),
    ("unknown optimizer", _set("training.optimizer", {"name": "Adamm"}), "training.optimizer.name",
     "did you mean 'Adam'"),
    ("unknown optimizer argument", _set("training.optimizer.args", {"lr": 0.1, "momentun": 0.9}),
     "training.optimizer.args.momentun", "did you mean 'momentum'"),
    ("weight decay inside the optimizer", _set("training.optimizer.args", {"lr": 0.1, "weight_decay": 1e-4}),
     "training.optimizer.args.weight_decay", "training.weight_decay"),
    ("zero epochs", _set("training.epochs", 0), "training.epochs", "at least 1"),
    ("negative epochs", _set("training.epochs", -5), "training.epochs", "at least 1"),
    ("fractional epochs", _set("training.epochs", 2.5), "training.epochs", "whole number"),
    ("unknown scheduler", _set("training.scheduler", {"name": "cosin"}), "training.scheduler.name",
     "did you mean 'cosine'"),
    ("unknown scheduler argument", _set("training.scheduler", {"name": "step", "args": {"milestone": [1]}}),
     "training.scheduler.args.milestone", "did you mean 'milestones'"),
    ("unknown loss", _set("training.loss", {"name": "crossentropy"}), "training.loss.name",
     "did you mean 'cross_entropy'"),
    ("string label smoothing", _set("training.loss", {"name": "cross_entropy", "label_smoothing": "lots"}),
     "training.loss.label_smoothing", "number"),
    ("non-positive clipping", _set("training.agc", {"clipping": 0}), "training.agc.clipping", "positive"),
    ("weight decay on what", _set("training.weight_decay", {"value": 1e-5, "params": "weight"}),
     "training.weight_decay.params", "'weights' or 'all'"),
    ("start from a later step", _set("training.start_from", "cooldown"), "training.start_from",
     "earlier step"),
    ("upstream NAME typo", _set("post_activation", {"NAME": "Identity"}), "post_activation.NAME",
     "did you mean 'name'"),
]


def _recipe(edit):
    bad = copy.deepcopy(GOOD)
    edit(bad)
    return {"warmup": copy.deepcopy(WARMUP), "finetune": bad, "cooldown": copy.deepcopy(GOOD)}


def _write(tmp_path, recipe, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def test_the_good_recipe_is_good(tmp_path):
    recipe = _recipe(lambda step: None)
    assert len(BinaryChef(recipe)) == 3
    assert len(BinaryChef(_write(tmp_path, recipe))) == 3


@pytest.mark.parametrize("form", ["dict", "yaml"])
@pytest.mark.parametrize("edit, field, hint", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_field_is_named(form, edit, field, hint, tmp_path):
    recipe = _recipe(edit)
    source = "<dict>" if form == "dict" else str(_write(tmp_path, recipe))
    with pytest.raises(RecipeError) as info:
        BinaryChef(recipe if form == "dict" else source)
    error = info.value
    assert isinstance(error, ValueError)
    message = str(error)
    assert message.startswith(source)
    assert "step 'finetune'" in message and error.step == "finetune"
    assert f"field '{field}'" in message and error.field == field
    assert hint in message


# -- whole files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text, hint", [
    ("", "empty"),
    ("# a recipe\n# with only comments\n\n", "empty"),
    ("- step1\n- step2\n", "mapping of steps"),
], ids=["empty file", "only comments", "a list"])
def test_file_without_steps(tmp_path, text, hint):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError, match=hint) as info:
        BinaryChef(path)
    assert str(info.value).startswith(str(path))


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("step1:\n  pre_activation: {name: RSign\n  weight: {name: Identity}\n", encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        BinaryChef(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "YAML" in message
    assert "line 3, column" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "recipe.yaml"
    with pytest.raises(RecipeError, match="no such recipe file") as info:
        BinaryChef(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text, key, line", [
    ("step1:\n  pre_activation: RSign\n  weight: Identity\nstep1:\n  pre_activation: RSign\n"
     "  weight: XNORWeightBinarizer\n", "step1", 4),
    ("step1:\n  pre_activation: RSign\n  weight: Identity\n  weight: XNORWeightBinarizer\n", "weight", 4),
], ids=["step", "field"])
def test_duplicate_keys(tmp_path, text, key, line):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError, match=f"duplicate key '{key}'") as info:
        BinaryChef(path)
    assert f"line {line}" in str(info.value) and str(path) in str(info.value)


UPSTREAM_XNOR = """\
# Define a list of steps that should be followed
step0:
  pre_activation:
    name: "BasicInputBinarizer"
  post_activation:
    NAME: "Identity"
  weight:
    name: "XNORWeightBinarizer"
    args:
      compute_alpha: True
      center_weights: True
  # Either provide the layers name, or use one of the reserved keyword as shown bellow
  ignore_layer_names:
    - "_last_"
    - "_first_"
"""


def test_upstream_recipe_with_its_NAME_typo(tmp_path):
    path = tmp_path / "xnor-net.yaml"
    path.write_text(UPSTREAM_XNOR, encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        BinaryChef(path)
    message = str(info.value)
    assert str(path) in message and "step 'step0'" in message
    assert "unknown key 'NAME'" in message and "did you mean 'name'" in message


def test_unknown_name_far_from_any_gets_no_wild_guess():
    recipe = {"step1": {**WARMUP, "weight": {"name": "Quux"}}}
    with pytest.raises(RecipeError, match="unknown binarizer 'Quux'") as info:
        BinaryChef(recipe)
    assert "did you mean" not in str(info.value)


def test_recipe_of_the_wrong_type():
    with pytest.raises(RecipeError, match="path or a dict"):
        BinaryChef(42)


def test_a_step_with_nothing_in_it():
    with pytest.raises(RecipeError, match="step 'step1'"):
        BinaryChef({"step1": None})


# -- nothing is executed -------------------------------------------------------------------------
EVIL = "__import__('os').system('touch PWNED')"


def _tiny():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))


def _load_and_apply(recipe):
    """Build the chef and apply its first step: a recipe may be refused at either point, never run."""
    chef = BinaryChef(recipe)
    model = chef.next(_tiny())
    model(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("step", [
    {**WARMUP, "weight": {"name": EVIL}},
    {**WARMUP, "pre_activation": EVIL},
    {**WARMUP, "weight": {"name": "XNORWeightBinarizer", "args": {"compute_alpha": EVIL}}},
    {**WARMUP, "pre_activation": {"name": "SwishSignBinarizer", "args": {"beta": EVIL}}},
    {**WARMUP, "pre_activation": {"name": "AdvancedInputBinarizer", "args": {"derivative_funct": EVIL}}},
    {**WARMUP, "pre_activation": {"name": "RSign", "args": {"estimator": EVIL}}},
    {**WARMUP, "pre_activation": {"name": "RSign", "args": {"channels": EVIL}}},
    {**WARMUP, "post_activation": {"name": "BasicScaleBinarizer", "args": {"module": EVIL}}},
    {**WARMUP, "training": {"optimizer": {"name": EVIL}}},
    {**WARMUP, "training": {"optimizer": {"name": "Adam", "args": {"lr": EVIL}}}},
    {**WARMUP, "training": {"loss": {"name": "cross_entropy", "label_smoothing": EVIL}}},
], ids=["binarizer name", "binarizer shorthand", "bool argument", "float argument", "function argument",
        "choice argument", "channels argument", "module argument", "optimizer name", "learning rate",
        "loss argument"])
@pytest.mark.parametrize("form", ["dict", "yaml"])
def test_python_in_a_string_is_refused_not_run(step, form, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = {"step1": step}
    with pytest.raises(RecipeError):
        _load_and_apply(recipe if form == "dict" else _write(tmp_path, recipe))
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("tagged", [
    '!!python/object/apply:os.system ["touch PWNED"]',
    "!!python/name:os.system ''",
    '!!python/object/new:os.system ["touch PWNED"]',
])
@pytest.mark.parametrize("where", ["name", "argument", "step"])
def test_python_yaml_tags_are_refused(tagged, where, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if where == "name":
        text = f"step1:\n  pre_activation: {{name: {tagged}}}\n  weight: Identity\n"
    elif where == "argument":
        text = ("step1:\n  pre_activation: RSign\n"
                f"  weight: {{name: XNORWeightBinarizer, args: {{compute_alpha: {tagged}}}}}\n")
    else:
        text = f"step1: {tagged}\n"
    yaml.compose(text)  # well-formed YAML (composing builds nodes, runs nothing): the tag is what is refused
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        _load_and_apply(path)
    assert str(path) in str(info.value) and "tag:yaml.org,2002:python/" in str(info.value)
    assert not (tmp_path / "PWNED").exists()
