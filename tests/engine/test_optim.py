"""Training settings the chef builds for the user's loop, against ALGORITHMS.md computed here by hand:
weight-decay parameter groups, per-iteration learning-rate schedules, adaptive gradient clipping (NF-Nets),
ReActNet's distribution loss, and the step's criterion."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnn import BinaryChef
from bnn.optim import DistributionLoss, adaptive_gradient_clip_, distribution_loss, weight_decay_groups


class Net(nn.Module):
    """Stem, a residual block with a 1x1 shortcut named `downsample`, classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.downsample = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = self.conv2(F.relu(self.bn1(self.conv1(x)))) + self.downsample(x)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def _chef(training, weight="ScaledWSWeightBinarizer"):
    return BinaryChef({"step1": {"pre_activation": "RSign", "weight": weight,
                                 "ignore_layer_names": ["_first_", "_last_"], "layers": {"$downsample$": None},
                                 "training": training}})


def _net(chef):
    torch.manual_seed(0)
    return chef.next(Net())


# -- weight decay -----------------------------------------------------------------------------------
def _decay_of(optimizer, model):
    by_id = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(by_id) == len(list(model.parameters()))
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


WEIGHTS = {"stem.weight", "conv1.weight", "conv2.weight", "downsample.weight", "fc.weight"}


def test_weight_decay_only_on_weights():
    chef = _chef({"optimizer": {"name": "SGD", "args": {"lr": 1.0}}, "weight_decay": {"value": 0.1}})
    model = _net(chef)
    optimizer = chef.optimizer(model)
    decay = _decay_of(optimizer, model)
    assert {n for n, wd in decay.items() if wd == 0.1} == WEIGHTS
    zero = {n for n, wd in decay.items() if wd == 0.0}
    assert {"conv1.activation_pre_process.bias", "conv2.activation_pre_process.bias",
            "conv1.weight_pre_process.gain", "conv2.weight_pre_process.gain",
            "bn.weight", "bn.bias", "bn1.weight", "bn1.bias", "conv2.bias", "fc.bias"} == zero

    # and the optimizer applies it: with zero gradients, SGD(lr=1) shrinks exactly the decayed ones by 1 - 0.1
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        expected = before[name] * 0.9 if name in WEIGHTS else before[name]
        assert torch.allclose(p, expected, rtol=1e-6, atol=0), name


def test_weight_decay_exclude_by_name_and_regex():
    chef = _chef({"weight_decay": {"value": 1e-4, "exclude": ["$downsample|stem$", "fc.weight"]}})
    model = _net(chef)
    decay = _decay_of(chef.optimizer(model), model)
    assert {n for n, wd in decay.items() if wd > 0} == {"conv1.weight", "conv2.weight"}


def test_weight_decay_on_all_parameters():
    chef = _chef({"weight_decay": {"value": 1e-4, "params": "all", "exclude": ["$_process\\.$"]}})
    model = _net(chef)
    decay = _decay_of(chef.optimizer(model), model)
    assert {n for n, wd in decay.items() if wd == 0} == {n for n in decay if "_process." in n}
    assert decay["bn.weight"] == decay["conv2.bias"] == 1e-4


def test_weight_decay_groups_directly():
    model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    groups = weight_decay_groups(model, 0.5)
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert groups[0]["params"] == [model[0].weight]
    assert weight_decay_groups(nn.LayerNorm(2), 0.5)[0]["weight_decay"] == 0.0  # empty group left out
    with pytest.raises(ValueError, match="'weights' or 'all'"):
        weight_decay_groups(model, 0.5, decay="biases")


def test_optimizer_arguments_reach_the_optimizer():
    chef = _chef({"optimizer": {"name": "SGD", "args": {"lr": 0.05, "momentum": 0.9, "nesterov": True}}})
    optimizer = chef.optimizer(_net(chef))
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.05, 0.9, True)


# -- schedules ----------------------------------------------------------------------------------------
def _lrs(scheduler_spec, steps_per_epoch, epochs=None, recipe_epochs=None, lr=0.4):
    training = {"optimizer": {"name": "SGD", "args": {"lr": lr}}, "scheduler": scheduler_spec,
                "weight_decay": {"value": 1e-4}}
    if recipe_epochs is not None:
        training["epochs"] = recipe_epochs
    chef = _chef(training)
    model = _net(chef)
    optimizer = chef.optimizer(model)
    assert len(optimizer.param_groups) == 2
    scheduler = chef.scheduler(optimizer, steps_per_epoch, epochs)
    total = steps_per_epoch * (epochs if epochs is not None else recipe_epochs)
    lrs = []
    for _ in range(total + 1):
        assert optimizer.param_groups[0]["lr"] == optimizer.param_groups[1]["lr"]
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_linear_goes_to_zero_over_all_iterations():
    lrs = _lrs({"name": "linear"}, steps_per_epoch=5, epochs=4)
    assert lrs[0] == pytest.approx(0.4)
    assert lrs[10] == pytest.approx(0.2)
    assert lrs[15] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_linear_takes_the_epochs_of_the_recipe():
    lrs = _lrs({"name": "linear"}, steps_per_epoch=3, recipe_epochs=2)
    assert len(lrs) == 7 and lrs[3] == pytest.approx(0.2) and lrs[6] == pytest.approx(0.0, abs=1e-12)


def test_linear_end_factor():
    lrs = _lrs({"name": "linear", "args": {"end_factor": 0.1}}, steps_per_epoch=2, epochs=5)
    assert lrs[0] == pytest.approx(0.4) and lrs[10] == pytest.approx(0.04) and lrs[5] == pytest.approx(0.22)


def test_cosine():
    lrs = _lrs({"name": "cosine"}, steps_per_epoch=4, epochs=4)
    for it in (0, 4, 8, 13, 16):
        assert lrs[it] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * it / 16)), abs=1e-12), it
    assert lrs[8] == pytest.approx(0.2)


def test_step_milestones_in_epochs():
    lrs = _lrs({"name": "step", "args": {"milestones": [1, 3], "gamma": 0.5}}, steps_per_epoch=4, epochs=4)
    assert lrs[:4] == pytest.approx([0.4] * 4)
    assert lrs[4:12] == pytest.approx([0.2] * 8)
    assert lrs[12:] == pytest.approx([0.1] * 5)


def test_linear_with_warmup():
    lrs = _lrs({"name": "linear", "args": {"warmup_epochs": 1}}, steps_per_epoch=4, epochs=3)
    assert lrs[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert lrs[4] == pytest.approx(0.4) and lrs[8] == pytest.approx(0.2)
    assert lrs[12] == pytest.approx(0.0, abs=1e-12)


def test_constant_is_the_default():
    assert _lrs({"name": "constant"}, steps_per_epoch=2, epochs=2) == pytest.approx([0.4] * 5)


def test_schedule_needs_epochs_and_iterations():
    chef = _chef({"scheduler": "linear"})
    optimizer = chef.optimizer(_net(chef))
    with pytest.raises(ValueError, match="training.epochs"):
        chef.scheduler(optimizer, steps_per_epoch=10)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        chef.scheduler(optimizer, steps_per_epoch=0, epochs=1)


# -- adaptive gradient clipping -------------------------------------------------------------------------
def _norm(values):
    return math.sqrt(sum(v * v for v in values))


def _agc_by_hand(rows_w, rows_g, lam, eps):
    """ALGORITHMS.md: max = lam * max(||w||, eps); if ||g|| >= max: g *= max / max(||g||, 1e-6)."""
    out = []
    for w, g in zip(rows_w, rows_g):
        top = lam * max(_norm(w), eps)
        gn = _norm(g)
        out.append([v * top / max(gn, 1e-6) for v in g] if gn >= top else list(g))
    return out


def test_agc_against_the_formula():
    lam, eps = 0.01, 1e-3
    w2 = [[0.6, 0.8, 0.0],    # ||w|| = 1, gradient over lam * 1: clipped
          [0.6, 0.8, 0.0],    # same weight, small gradient: kept
          [0.0, 0.0, 0.0],    # zero weight: the floor eps applies, gradient clipped to lam * eps
          [0.0, 0.0, 0.0],    # zero weight, gradient under lam * eps: kept
          [2.0, -1.0, 2.0]]   # ||w|| = 3, gradient just over 0.03: clipped
    g2 = [[3.0, 4.0, 0.0], [0.003, 0.004, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1e-6], [0.0, 0.031, 0.0]]
    w4 = torch.tensor([[[[1.0, -1.0], [1.0, 1.0]]] * 2, [[[0.5, 0.5], [0.5, 0.5]]] * 2])   # (2, 2, 2, 2)
    g4 = torch.tensor([[[[0.1, 0.0], [0.0, 0.0]]] * 2, [[[1e-4, 0.0], [0.0, 0.0]]] * 2])
    bias_w, bias_g = [3.0, 4.0], [1.0, 1.0]          # ||b|| = 5: max 0.05, ||g|| = 1.41: clipped
    small_w, small_g = [3.0, 4.0], [0.01, 0.02]      # ||g|| = 0.022 < 0.05: kept

    params = [nn.Parameter(torch.tensor(w2, dtype=torch.float64)), nn.Parameter(w4.double()),
              nn.Parameter(torch.tensor(bias_w, dtype=torch.float64)),
              nn.Parameter(torch.tensor(small_w, dtype=torch.float64)), nn.Parameter(torch.ones(3))]
    params[0].grad = torch.tensor(g2, dtype=torch.float64)
    params[1].grad = g4.double()
    params[2].grad = torch.tensor(bias_g, dtype=torch.float64)
    params[3].grad = torch.tensor(small_g, dtype=torch.float64)
    adaptive_gradient_clip_(params, lam, eps)   # the last one has no gradient: skipped

    expected2 = _agc_by_hand(w2, g2, lam, eps)
    for got, want in zip(params[0].grad.tolist(), expected2):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert params[0].grad[1].tolist() == g2[1] and params[0].grad[3].tolist() == g2[3]
    assert _norm(params[0].grad[0].tolist()) == pytest.approx(0.01)
    assert _norm(params[0].grad[2].tolist()) == pytest.approx(1e-5)

    rows_w4 = [row.flatten().tolist() for row in w4.double()]
    rows_g4 = [row.flatten().tolist() for row in g4.double()]
    for got, want in zip(params[1].grad.flatten(1).tolist(), _agc_by_hand(rows_w4, rows_g4, lam, eps)):
        assert got == pytest.approx(want, rel=1e-12)
    assert params[1].grad[1].flatten().tolist() == rows_g4[1]

    assert params[2].grad.tolist() == pytest.approx(_agc_by_hand([bias_w], [bias_g], lam, eps)[0], rel=1e-12)
    assert params[3].grad.tolist() == small_g
    assert params[4].grad is None


def test_agc_refuses_non_positive_clipping():
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="clipping > 0"):
        adaptive_gradient_clip_([p], 0.0)


def _big_gradients(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = 100 * torch.randn(p.shape, generator=g)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_clip_gradients_spares_the_classifier():
    lam = 0.01
    chef = _chef({"agc": {"clipping": lam}})
    model = _net(chef)
    before = _big_gradients(model)
    chef.clip_gradients(model)
    for name, p in model.named_parameters():
        if name.startswith("fc."):
            assert torch.equal(p.grad, before[name]), name
            continue
        assert not torch.equal(p.grad, before[name]), f"{name} was not clipped"
        w = p.detach().reshape(p.shape[0], -1) if p.dim() > 1 else p.detach().reshape(1, -1)
        g = p.grad.reshape(w.shape)
        for w_row, g_row in zip(w.tolist(), g.tolist()):
            assert _norm(g_row) == pytest.approx(lam * max(_norm(w_row), 1e-3), rel=1e-5), name


def test_clip_gradients_with_its_own_exclusions_and_without_agc():
    chef = _chef({"agc": {"clipping": 0.01, "exclude": ["_last_", "stem", "$^conv2$"]}})
    model = _net(chef)
    before = _big_gradients(model)
    chef.clip_gradients(model)
    untouched = {n for n, p in model.named_parameters() if torch.equal(p.grad, before[n])}
    assert untouched == {"fc.weight", "fc.bias", "stem.weight", "conv2.weight", "conv2.bias",
                         "conv2.activation_pre_process.bias", "conv2.weight_pre_process.gain"}

    chef = _chef({})
    model = _net(chef)
    before = _big_gradients(model)
    chef.clip_gradients(model)
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())


# -- losses ---------------------------------------------------------------------------------------------
def test_distribution_loss_by_hand():
    torch.manual_seed(0)
    s = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    loss = distribution_loss(s, t)
    p_t = torch.exp(t.detach()) / torch.exp(t.detach()).sum(1, keepdim=True)
    log_q = s.detach() - torch.log(torch.exp(s.detach()).sum(1, keepdim=True))
    expected = -(p_t * log_q).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert DistributionLoss()(s, t).item() == pytest.approx(expected.item(), rel=1e-12)

    loss.backward()
    assert t.grad is None
    q = torch.exp(log_q)
    assert torch.allclose(s.grad, (q - p_t) / 5, rtol=1e-10, atol=1e-14)

    same = torch.randn(3, 4)
    assert distribution_loss(same, same).item() == pytest.approx(-(F.softmax(same, 1) * F.log_softmax(same, 1))
                                                                  .sum(1).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        distribution_loss(torch.randn(2, 3), torch.randn(2, 4))


def test_distribution_loss_gives_no_gradient_to_a_teacher_model():
    teacher = nn.Linear(4, 3)
    student = nn.Linear(4, 3)
    x = torch.randn(6, 4)
    distribution_loss(student(x), teacher(x)).backward()
    assert teacher.weight.grad is None and teacher.bias.grad is None
    assert student.weight.grad is not None


def _loss_chef(loss):
    chef = BinaryChef({"step1": {"pre_activation": "RSign", "weight": "Identity", "training": {"loss": loss}}})
    chef.next(nn.Sequential(nn.Conv2d(3, 4, 3)))
    return chef


def test_cross_entropy_with_label_smoothing_by_hand():
    criterion = _loss_chef({"name": "cross_entropy", "label_smoothing": 0.1}).criterion()
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 3, 4, 1])
    log_q = logits - torch.log(torch.exp(logits).sum(1, keepdim=True))
    nll = -log_q[torch.arange(4), targets]
    expected = (0.9 * nll + 0.1 * (-log_q).mean(1)).mean()
    assert criterion(logits, targets).item() == pytest.approx(expected.item(), rel=1e-12)


def test_distillation_criterion():
    chef = _loss_chef({"name": "distillation", "teacher": "resnet34", "ce_weight": 0.5})
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    teacher.train()
    with pytest.raises(ValueError, match="teacher"):
        chef.criterion()
    criterion = chef.criterion(teacher=teacher)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    logits = student(x)
    with pytest.raises(ValueError, match="inputs"):
        criterion(logits, y)
    loss = criterion(logits, y, x)
    expected = distribution_loss(logits, teacher(x)) + 0.5 * F.cross_entropy(logits, y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
