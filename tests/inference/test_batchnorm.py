"""fused_multiply_add (one rounding, in torch ops) against hand-computed cases, and batchnorm_steps against
PyTorch's own batch norm."""
import pytest
import torch
import torch.nn as nn

from bnn.inference.batchnorm import batchnorm_steps, fused_multiply_add


def f32(values):
    return torch.tensor(values, dtype=torch.float32)


def test_one_rounding_where_two_would_differ():
    # (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: exactly halfway between two floats. Adding 2^-60 puts the exact result
    # just above: one rounding goes up; rounding to float64 first lands on the halfway point, and ties to even
    # then go down.
    x = f32([1 + 2 ** -12] * 3)
    out = fused_multiply_add(x, x, f32([2.0 ** -60, -(2.0 ** -60), 0.0]))
    assert out.tolist() == [1 + 2 ** -11 + 2 ** -23, 1 + 2 ** -11, 1 + 2 ** -11]
    assert (x[0].double() * x[0].double() + 2.0 ** -60).float().item() == 1 + 2 ** -11  # the double rounding


def test_exact_products_and_sums_are_unchanged():
    g = torch.Generator().manual_seed(0)
    x, a = torch.randint(-2048, 2048, (1000,), generator=g).float(), torch.randint(-2048, 2048, (1000,), generator=g).float()
    b = torch.randint(-2 ** 20, 2 ** 20, (1000,), generator=g).float()
    assert torch.equal(fused_multiply_add(x, a, b), x * a + b)  # all exact below 2^24


def test_special_values():
    out = fused_multiply_add(f32([float("inf"), 1.0, float("nan"), 3e38]), f32([2.0, float("-inf"), 1.0, 10.0]),
                             f32([1.0, 5.0, 0.0, 0.0]))
    assert out[0] == float("inf") and out[1] == float("-inf") and out[2].isnan() and out[3] == float("inf")


@pytest.mark.parametrize("channels, values", [(7, 101), (64, 577)])
def test_batchnorm_steps_reproduce_pytorch(channels, values):
    torch.manual_seed(channels)
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 3)
        bn.running_var.uniform_(1e-3, 5)
        bn.weight.normal_(0, 2)
        bn.bias.normal_(0, 1)
    reachable = (torch.arange(values, dtype=torch.float32) - values // 2).view(1, 1, 1, -1).expand(1, channels, 1, -1)
    steps = batchnorm_steps(bn, reachable * 0.37)
    assert steps is not None
    # the steps, applied to other inputs of the same kind, give PyTorch's results
    x = torch.randint(-values // 2, values // 2 + 1, (2, channels, 5, 6)).float() * 0.37
    shape = (1, -1, 1, 1)
    if steps[0][0] == "multiply_add":
        rows = steps[0][1]
        ours = fused_multiply_add(x, rows[0].view(shape).expand_as(x), rows[1].view(shape).expand_as(x))
    else:
        ours = x * steps[0][1].view(shape) + steps[1][1].view(shape)
    with torch.no_grad():
        assert torch.equal(ours, bn(x))


def test_batchnorm_steps_refuse_what_they_cannot_check():
    bn = nn.BatchNorm2d(4)
    reachable = torch.zeros(1, 4, 1, 3)
    assert batchnorm_steps(bn, reachable) is None  # training mode: batch statistics
    bn.eval()
    assert batchnorm_steps(bn, torch.zeros(1, 5, 1, 3)) is None  # another channel count
    assert batchnorm_steps(nn.BatchNorm2d(4, track_running_stats=False).eval(), reachable) is None
