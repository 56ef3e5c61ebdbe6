"""BinaryChef under DistributedDataParallel: two CPU processes (gloo), the same small CNN on each, the A&B
recipe applied step by step with the model wrapped again after every chef.next, three iterations per step
on different data per rank. Gradients are averaged across ranks, so the parameters -- the binarizers'
learned thresholds and gains included -- must come out identical on both, and changed."""
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "abbnn.yaml"
WORLD = 2
ITERATIONS = 3

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


class SmallNet(nn.Module):
    """Stem, one residual block with a 1x1 `downsample` shortcut, classifier: what the recipe selects."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.block_conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.block_bn1 = nn.BatchNorm2d(16)
        self.block_conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.block_bn2 = nn.BatchNorm2d(16)
        self.downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        y = self.block_bn1(self.block_conv1(x))
        y = self.block_bn2(self.block_conv2(y)) + self.downsample(x)
        return self.fc(F.adaptive_avg_pool2d(F.relu(y), 1).flatten(1))


def _rank(rank, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from bnn import BinaryChef

        torch.manual_seed(0)
        model = SmallNet()
        initial = {n: p.detach().clone() for n, p in model.named_parameters()}
        chef = BinaryChef(RECIPE)
        data = torch.Generator().manual_seed(1000 + rank)
        losses, wrapped_error = [], None
        for _ in range(len(chef)):
            model = chef.next(model)
            ddp = DistributedDataParallel(model)
            optimizer = chef.optimizer(model)
            scheduler = chef.scheduler(optimizer, steps_per_epoch=ITERATIONS, epochs=2)
            criterion = chef.criterion()
            for _ in range(ITERATIONS):
                x = torch.randn(4, 3, 16, 16, generator=data)
                y = torch.randint(0, 10, (4,), generator=data)
                loss = criterion(ddp(x), y, x)
                optimizer.zero_grad()
                loss.backward()
                chef.clip_gradients(model)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
            model = ddp.module
        try:
            BinaryChef(RECIPE).next(ddp)
        except TypeError as e:
            wrapped_error = str(e)
        result = {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
                  "initial": initial, "losses": losses, "wrapped_error": wrapped_error}
        gathered = [None] * WORLD
        dist.all_gather_object(gathered, result)
        if rank == 0:
            torch.save(gathered, out_file)
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_the_recipe_in_step(tmp_path):
    out_file = tmp_path / "gathered.pt"
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(out_file)), nprocs=WORLD, join=True)
    ranks = torch.load(out_file, weights_only=False)
    first, second = ranks

    assert first["losses"] != second["losses"], "the ranks should have seen different data"
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in ranks)
    params = first["params"]
    assert set(params) == set(second["params"])
    learned = [n for n in params if n.endswith("activation_pre_process.bias") or n.endswith(".gain")]
    assert {n.split(".")[0] for n in learned} >= {"block_conv1", "block_conv2"}
    for name, value in params.items():
        assert torch.equal(value, second["params"][name]), f"{name} differs between the ranks"
    for name, value in first["initial"].items():
        assert not torch.equal(params[name], value), f"{name} did not train"
    for name in learned:
        start = torch.zeros_like(params[name]) if name.endswith("bias") else torch.ones_like(params[name])
        assert not torch.equal(params[name], start), f"{name} did not train"

    # a chef given the DDP wrapper itself refuses: its new parameters would never be synchronized
    assert first["wrapped_error"] is not None and "ddp.module" in first["wrapped_error"]
