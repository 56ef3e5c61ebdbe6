"""The packed file format: save / load_inference round trips, file size against the bound of 1 bit per binary
weight and 4 bytes per real parameter, clear errors for files that are not ours, refusal of crafted files that
would run code, and atomic writes."""
import os
import pickle

import pytest
import torch
import torch.nn as nn

import bnn
from bnn.inference import InferenceModel, load_inference
from bnn.layers import BinarizedLayer, BinaryConv2d, BinaryLinear, LearnableBias, PowerOfTwoRPReLU, RPReLU
from bnn.ops import (BasicInputBinarizer, BasicScaleBinarizer, RSign, ScaledWSWeightBinarizer, XNORScaleBinarizer,
                     XNORWeightBinarizer)

from inference_helpers import randomize_learned

SIGN_XNOR_SCALE = bnn.BConfig(activation_pre_process=BasicInputBinarizer, weight_pre_process=XNORWeightBinarizer,
                              activation_post_process=XNORScaleBinarizer)
RSIGN_POW2 = bnn.BConfig(activation_pre_process=RSign.with_args(estimator="mask"),
                         weight_pre_process=ScaledWSWeightBinarizer.with_args(power_of_two=True))
RSIGN_SCALE = bnn.BConfig(activation_pre_process=RSign, weight_pre_process=XNORWeightBinarizer,
                          activation_post_process=BasicScaleBinarizer)
ACTIVATIONS_ONLY = bnn.BConfig(activation_pre_process=RSign)
WEIGHTS_ONLY = bnn.BConfig(weight_pre_process=ScaledWSWeightBinarizer.with_args(power_of_two=True))


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 13, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(13)
        self.lb = LearnableBias(13)
        self.conv1 = BinaryConv2d(13, 21, 3, stride=2, padding=1, bconfig=SIGN_XNOR_SCALE)
        self.short = BinaryConv2d(13, 21, 1, stride=2, bconfig=WEIGHTS_ONLY)
        self.act1 = RPReLU(21)
        self.conv2 = BinaryConv2d(21, 21, (3, 1), padding=(1, 0), groups=3, bias=True, bconfig=RSIGN_POW2)
        self.act2 = PowerOfTwoRPReLU(21)
        self.conv3 = BinaryConv2d(21, 21, 1, bconfig=ACTIVATIONS_ONLY)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn_lin = nn.BatchNorm1d(21)
        self.lin = BinaryLinear(21, 70, bconfig=RSIGN_SCALE)
        self.fc = nn.Linear(70, 10)

    def forward(self, x):
        s = self.stem(x)
        y = self.act1(self.conv1(self.lb(self.bn0(s))) + self.short(s))
        y = self.act2(self.conv2(y) + y)
        y = self.conv3(y * 0.5) + y
        return self.fc(torch.relu(self.lin(self.bn_lin(torch.flatten(self.pool(y), 1)))))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = randomize_learned(SmallNet(), seed=3).eval()
    x = torch.randn(2, 3, 12, 12)
    return model, x, bnn.to_inference(model, x)


def test_small_net_round_trip(small, tmp_path):
    model, x, fast = small
    path = tmp_path / "small.bnn"
    fast.save(path)
    loaded = load_inference(path)
    assert isinstance(loaded, InferenceModel) and not loaded.training
    for inp in (x, torch.randn(2, 3, 12, 12), torch.randn(5, 3, 12, 12) * 10):
        ref = fast(inp)
        assert torch.equal(loaded(inp), ref)
        assert torch.equal(ref, model(inp).detach())
    assert loaded.op_census(x) == fast.op_census(x)
    with pytest.raises(RuntimeError):
        loaded.train()
    # loading is repeatable, and a str path works as well as a Path
    assert torch.equal(load_inference(str(path))(x), fast(x))


def test_resnet18_round_trip_and_size(resnet18_recipe, tmp_path):
    model = resnet18_recipe("abbnn-pow2")
    x = torch.randn(2, 3, 32, 32)
    fast = bnn.to_inference(model, x)
    path = tmp_path / "resnet18.bnn"
    fast.save(path)
    loaded = load_inference(path)
    x2 = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), fast(x)) and torch.equal(loaded(x2), fast(x2))
    assert torch.equal(loaded(x2), model(x2).detach())

    # size: 1 bit per binary weight (of every layer with 1-bit weights, whatever its activations), 4 bytes per
    # other parameter of the fake-binarized model
    binary = [m for m in model.modules() if isinstance(m, BinarizedLayer) and m.weight_precision == 1]
    assert len(binary) >= 16  # at least every 3x3 conv of the blocks
    binary_ids = {id(m.weight) for m in binary}
    binary_weights = sum(m.weight.numel() for m in binary)
    real_params = sum(p.numel() for p in model.parameters() if id(p) not in binary_ids)
    bound = binary_weights / 8 + real_params * 4
    size = os.path.getsize(path)
    assert abs(size - bound) <= 0.10 * bound, (size, bound, size / bound)
    # and far below the float32 checkpoint
    assert size < 0.2 * sum(p.numel() for p in model.parameters()) * 4


@pytest.mark.parametrize("bconfig", [WEIGHTS_ONLY, SIGN_XNOR_SCALE], ids=["weights-only", "both"])
def test_binary_weights_take_one_bit(bconfig, tmp_path):
    """A 64 -> 64 3x3 layer with 1-bit weights: 36864 weights, 4608 bytes as bits (147456 as float32)."""
    model = nn.Sequential(nn.Conv2d(3, 64, 1), BinaryConv2d(64, 64, 3, bias=False, bconfig=bconfig)).eval()
    randomize_learned(model)
    x = torch.randn(2, 3, 6, 6)
    fast = bnn.to_inference(model, x)
    path = tmp_path / "m.bnn"
    fast.save(path)
    assert os.path.getsize(path) < 20_000  # ~9 kB: bits, stem, scales, archive overhead; float32 would be 147 kB
    assert torch.equal(load_inference(path)(x), model(x).detach())


def test_module_names_that_are_not_identifiers(tmp_path):
    """nn.Sequential's "0" and names such as regnet's "block1-0" save and load."""
    body = nn.Sequential()
    body.add_module("block1-0", BinaryConv2d(4, 6, 3, padding=1, bconfig=RSIGN_POW2))
    body.add_module("1", nn.BatchNorm2d(6))
    model = randomize_learned(nn.Sequential(nn.Conv2d(3, 4, 1), body, nn.Flatten(), nn.Linear(6 * 25, 3))).eval()
    x = torch.randn(2, 3, 5, 5)
    fast = bnn.to_inference(model, x)
    fast.save(tmp_path / "m.bnn")
    assert torch.equal(load_inference(tmp_path / "m.bnn")(x), model(x).detach())


# -- files that are not bnn inference files ---------------------------------------------------------------
@pytest.fixture(scope="module")
def good_file(small, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "small.bnn"
    small[2].save(path)
    return path


def _load_dict(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_truncated_file(good_file, tmp_path):
    data = good_file.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.bnn"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a readable bnn inference file"):
            load_inference(bad)


def test_random_bytes_file(tmp_path):
    bad = tmp_path / "noise.bnn"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="not a readable bnn inference file"):
        load_inference(bad)


@pytest.mark.parametrize("content", [{"weights": torch.ones(3)}, {"format": "something-else", "version": 1},
                                     [1, 2, 3], torch.zeros(2)], ids=["dict", "other-format", "list", "tensor"])
def test_foreign_torch_file(content, tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match="no 'bnn-inference' header"):
        load_inference(path)


def test_state_dict_is_not_an_inference_file(small, tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(small[0].state_dict(), path)
    with pytest.raises(ValueError, match="not a bnn inference file"):
        load_inference(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such.bnn"):
        load_inference(tmp_path / "no-such.bnn")


@pytest.mark.parametrize("version", [1, 5, 0, None, "2"])
def test_wrong_version(good_file, tmp_path, version):
    data = _load_dict(good_file)
    data["version"] = version
    path = tmp_path / "v.bnn"
    torch.save(data, path)
    with pytest.raises(ValueError, match="version.*convert the trained model again"):
        load_inference(path)


@pytest.mark.parametrize("damage", ["no-graph", "no-modules", "dangling-node", "unknown-module-type", "bad-op"])
def test_malformed_content(good_file, tmp_path, damage):
    data = _load_dict(good_file)
    if damage == "no-graph":
        del data["graph"]
    elif damage == "no-modules":
        data["modules"] = {}
    elif damage == "dangling-node":
        data["graph"][1]["args"] = {"tuple": [{"node": "nowhere"}]}
    elif damage == "unknown-module-type":
        data["modules"]["stem"]["type"] = "os.system"
    else:
        data["graph"][1]["op"] = "call_anything"
    path = tmp_path / "bad.bnn"
    torch.save(data, path)
    with pytest.raises(ValueError):
        load_inference(path)


# -- crafted files must not run code ----------------------------------------------------------------------
def _graph_node(data, op):
    return next(n for n in data["graph"] if n["op"] == op)


def _craft(data, how, marker):
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    if how == "os.system":
        node = next(n for n in data["graph"] if n["op"] == "call_function")
        node["target"] = "os.system"
        node["args"] = {"tuple": [f"touch {marker}"]}
    elif how == "builtins.eval":
        node = next(n for n in data["graph"] if n["op"] == "call_function")
        node["target"] = "builtins.eval"
        node["args"] = {"tuple": [touch]}
    elif how == "placeholder-default":
        _graph_node(data, "placeholder")["target"] = f"x={touch}"
    elif how == "placeholder-name":
        _graph_node(data, "placeholder")["target"] = f"x):\n    {touch}\n    def f(x"
    elif how == "kwarg-name":
        node = next(n for n in data["graph"] if n["op"] == "call_function")
        node["kwargs"] = {"dict": {f"x={touch}, y": 1}}
    elif how == "module-target":
        _graph_node(data, "call_module")["target"] = f'stem"), {touch}, getattr(self, "stem'
    elif how == "get-attr":
        data["graph"].insert(1, {"name": "evil", "op": "get_attr", "target": f'a"+str({touch})+"',
                                 "args": {"tuple": []}, "kwargs": {"dict": {}}})
        data["attributes"][f'a"+str({touch})+"'] = torch.zeros(1)
    elif how == "getattr-dunder":
        data["graph"].insert(1, {"name": "evil", "op": "call_function", "target": "builtins.getattr",
                                 "args": {"tuple": [{"node": _graph_node(data, "placeholder")["name"]},
                                                    "__class__"]},
                                 "kwargs": {"dict": {}}})
    elif how == "method":
        node = _graph_node(data, "call_module")
        node["op"], node["target"] = "call_method", "__reduce_ex__"
    elif how == "dtype":
        node = next(n for n in data["graph"] if n["op"] == "call_function")
        node["args"] = {"tuple": [{"dtype": "load"}]}
    elif how == "module-attribute":
        data["modules"]["stem"]["attrs"]["__class__"] = "x"
    return data


@pytest.mark.parametrize("how", ["os.system", "builtins.eval", "placeholder-default", "placeholder-name", "kwarg-name",
                                 "module-target", "get-attr", "getattr-dunder", "method", "dtype", "module-attribute"])
def test_crafted_graph_is_refused_without_running_anything(good_file, tmp_path, how, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    marker = tmp_path / "marker"
    path = tmp_path / "crafted.bnn"
    torch.save(_craft(_load_dict(good_file), how, marker), path)
    with pytest.raises(ValueError):
        load_inference(path)
    assert not marker.exists() and not calls


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_not_run(good_file, tmp_path):
    """A file whose pickle would call a function on load: torch.load(weights_only=True) refuses it."""
    marker = tmp_path / "marker"
    data = _load_dict(good_file)
    data["extra"] = _Payload(marker)
    path = tmp_path / "payload.bnn"
    torch.save(data, path)
    with pytest.raises(ValueError, match="not a readable bnn inference file"):
        load_inference(path)
    assert not marker.exists()
    # the same with a raw pickle (not a zip archive)
    raw = tmp_path / "raw.bnn"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError):
        load_inference(raw)
    assert not marker.exists()


# -- atomic writes ----------------------------------------------------------------------------------------
def test_save_leaves_no_temporary_files(small, tmp_path):
    fast = small[2]
    path = tmp_path / "m.bnn"
    fast.save(path)
    fast.save(path)  # over an existing file
    fast.save(tmp_path / "sub" / "dir" / "m.bnn")  # folders are created
    assert sorted(os.listdir(tmp_path)) == ["m.bnn", "sub"]
    assert os.listdir(tmp_path / "sub" / "dir") == ["m.bnn"]


@pytest.mark.parametrize("partial", [False, True])
def test_failed_save_keeps_the_old_file(small, tmp_path, monkeypatch, partial):
    fast = small[2]
    path = tmp_path / "m.bnn"
    fast.save(path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        if partial:
            f.write(b"PK\x03\x04 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        fast.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.bnn"]
    assert torch.equal(load_inference(path)(small[1]), fast(small[1]))
    # a first save that fails leaves nothing behind
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        fast.save(tmp_path / "new.bnn")
    assert os.listdir(tmp_path) == ["m.bnn"]


def test_unsavable_graph_gives_clear_error(tmp_path):
    """A function outside the format's list is refused at save time, naming the node."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = BinaryConv2d(3, 4, 3, bconfig=SIGN_XNOR_SCALE)

        def forward(self, x):
            return torch.tanh(self.conv(x))

    x = torch.randn(1, 3, 5, 5)
    fast = bnn.to_inference(Net().eval(), x)
    with pytest.raises(ValueError, match="tanh"):
        fast.save(tmp_path / "t.bnn")
    assert os.listdir(tmp_path) == []
