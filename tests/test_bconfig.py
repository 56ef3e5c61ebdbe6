"""BConfig and the with_args factory: factories only, immutable, picklable; bnn.Identity."""
import functools
import io
import pickle

import pytest
import torch
import torch.nn as nn

import bnn
from bnn import BConfig
from bnn.bconfig import BinarizerFactory
from bnn.ops import (BasicInputBinarizer, BasicScaleBinarizer, RSign, ScaledWSWeightBinarizer,
                     XNORWeightBinarizer)

FIELDS = ("activation_pre_process", "activation_post_process", "weight_pre_process")


# -- what BConfig accepts and refuses ------------------------------------------------------------
@pytest.mark.parametrize("field", FIELDS)
def test_instance_is_refused_with_a_hint(field):
    with pytest.raises(ValueError) as info:
        BConfig(**{field: BasicInputBinarizer()})
    msg = str(info.value)
    assert field in msg
    assert "BasicInputBinarizer" in msg
    assert "class" in msg and "with_args" in msg


def test_non_callable_is_refused():
    with pytest.raises(ValueError, match="weight_pre_process"):
        BConfig(weight_pre_process=3)


@pytest.mark.parametrize("factory", [
    BasicInputBinarizer,
    XNORWeightBinarizer.with_args(center_weights=True),
    bnn.with_args(XNORWeightBinarizer, detach_alpha=True),
    functools.partial(XNORWeightBinarizer, center_weights=True),
    nn.Identity,
    None,
])
@pytest.mark.parametrize("field", FIELDS)
def test_classes_factories_and_none_are_accepted(field, factory):
    config = BConfig(**{field: factory})
    assert getattr(config, field) is factory
    for other in FIELDS:
        if other != field:
            assert getattr(config, other) is None


def test_defaults_are_none_and_a_default_config_keeps_the_layer_real():
    config = BConfig()
    assert tuple(config) == (None, None, None)
    assert config.activation_pre_process is None
    assert config.activation_post_process is None
    assert config.weight_pre_process is None

    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    expected = lin(x)
    blin = bnn.layers.BinaryLinear.from_float(lin, config)
    assert blin.weight_precision == 32 and blin.activation_precision == 32
    torch.testing.assert_close(blin(x), expected, rtol=0, atol=0)


def test_positional_order_is_pre_post_weight():
    config = BConfig(BasicInputBinarizer, bnn.Identity, XNORWeightBinarizer)
    assert config.activation_pre_process is BasicInputBinarizer
    assert config.activation_post_process is bnn.Identity
    assert config.weight_pre_process is XNORWeightBinarizer


def test_bconfig_is_immutable():
    config = BConfig(activation_pre_process=BasicInputBinarizer)
    with pytest.raises(AttributeError):
        config.activation_pre_process = XNORWeightBinarizer
    with pytest.raises(AttributeError):
        config.something_else = 1
    assert config.activation_pre_process is BasicInputBinarizer
    # _replace makes a new config, leaving the old one as it was
    other = config._replace(weight_pre_process=XNORWeightBinarizer)
    assert config.weight_pre_process is None and other.weight_pre_process is XNORWeightBinarizer


def test_bconfig_equality_and_hash_follow_the_factories():
    a = BConfig(weight_pre_process=XNORWeightBinarizer.with_args(center_weights=True))
    b = BConfig(weight_pre_process=XNORWeightBinarizer.with_args(center_weights=True))
    c = BConfig(weight_pre_process=XNORWeightBinarizer.with_args(center_weights=False))
    assert a == b and hash(a) == hash(b)
    assert a != c


# -- with_args ----------------------------------------------------------------------------------
def test_with_args_binds_arguments_and_builds_fresh_instances():
    make = XNORWeightBinarizer.with_args(center_weights=True)
    assert isinstance(make, BinarizerFactory)
    one, two = make(), make()
    assert isinstance(one, XNORWeightBinarizer)
    assert one is not two
    assert one.center_weights is True and one.detach_alpha is False


def test_with_args_chains_and_later_arguments_win():
    make = XNORWeightBinarizer.with_args(center_weights=True).with_args(detach_alpha=True)
    w = make()
    assert w.center_weights is True and w.detach_alpha is True
    overridden = make.with_args(center_weights=False)()
    assert overridden.center_weights is False and overridden.detach_alpha is True
    # chaining does not change the factory it started from
    assert make().center_weights is True


def test_with_args_parameters_are_not_shared_between_instances():
    make = RSign.with_args(channels=3)
    a, b = make(), make()
    assert a.bias is not b.bias
    with torch.no_grad():
        a.bias.fill_(1.0)
    assert torch.equal(b.bias, torch.zeros(3))


def test_every_layer_of_a_model_builds_its_own_binarizers():
    config = BConfig(activation_pre_process=RSign, weight_pre_process=ScaledWSWeightBinarizer)
    net = bnn.prepare_binary_model(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), config)
    assert net[0].activation_pre_process is not net[1].activation_pre_process
    assert net[0].activation_pre_process.bias is not net[1].activation_pre_process.bias
    assert net[0].weight_pre_process.gain is not net[1].weight_pre_process.gain


# -- bnn.Identity --------------------------------------------------------------------------------
def test_identity_takes_two_arguments_and_returns_the_first():
    ident = bnn.Identity()
    x, y = torch.randn(2, 3), torch.randn(5)
    assert ident(x, y) is x
    assert ident(x) is x
    assert bnn.Identity is bnn.ops.Identity


def test_identity_as_post_process_keeps_the_output():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    expected = lin(x)
    blin = bnn.layers.BinaryLinear.from_float(lin, BConfig(activation_post_process=bnn.Identity))
    torch.testing.assert_close(blin(x), expected, rtol=0, atol=0)


# -- pickling ------------------------------------------------------------------------------------
def test_bconfig_with_factories_pickles():
    config = BConfig(activation_pre_process=BasicInputBinarizer,
                     activation_post_process=BasicScaleBinarizer,
                     weight_pre_process=XNORWeightBinarizer.with_args(center_weights=True, detach_alpha=True))
    back = pickle.loads(pickle.dumps(config))
    assert isinstance(back, BConfig)
    assert back == config
    w = back.weight_pre_process()
    assert w.center_weights is True and w.detach_alpha is True


def test_torch_save_of_a_whole_binarized_model_round_trips():
    torch.manual_seed(0)
    config = BConfig(activation_pre_process=RSign.with_args(estimator="ste"),
                     activation_post_process=BasicScaleBinarizer,
                     weight_pre_process=XNORWeightBinarizer.with_args(center_weights=True))
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 2))
    net = bnn.prepare_binary_model(net, config)
    with torch.no_grad():
        net[0].activation_pre_process.bias.uniform_(-0.5, 0.5)
        net[0].activation_post_process.alpha.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(2, 3, 5, 5)
    expected = net(x)

    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert type(back[0]) is bnn.layers.BinaryConv2d and type(back[3]) is bnn.layers.BinaryLinear
    assert back[0].bconfig == config
    assert back[0].weight_pre_process.center_weights is True
    assert torch.equal(back(x), expected)
