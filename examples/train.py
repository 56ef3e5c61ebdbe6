r"""Train a binary network with a multi-step recipe, in a plain PyTorch loop driven by BinaryChef.

    python examples/train.py --model resnet18 --recipe recipes/abbnn.yaml            # embedded digits data
    python examples/train.py --data /path/to/cifar-10-batches-py/.. --epochs 256      # CIFAR-10 you have
    torchrun --nproc_per_node 2 examples/train.py --recipe recipes/reactnet.yaml     # DistributedDataParallel
    python examples/train.py --resume checkpoints/last.pt                            # go on mid-recipe

Data: ``--data digits`` (default) is scikit-learn's handwritten digits (8x8, upsampled to 32x32, 3 channels),
which ships with scikit-learn; ``--data PATH`` reads CIFAR-10 from PATH with torchvision (no download).
Each epoch ends with an evaluation on the held-out split and an atomic checkpoint (temporary file +
rename) holding the model, the optimizer, the schedule and the chef's state, so ``--resume`` continues in
the middle of a step. GPU when present; ``--amp`` for mixed precision.
"""
import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torchvision
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import bnn
from bnn.io import atomic_save

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    def tqdm(iterable, **kwargs):
        return iterable


def digits_datasets(size: int = 32):
    """scikit-learn's digits as 3x32x32 images: (train, held-out), a fixed 80/20 split."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    train, test = order[:cut], order[cut:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def cifar10_datasets(root: str):
    """CIFAR-10 from ``root`` (the folder holding cifar-10-batches-py); never downloads."""
    t = torchvision.transforms
    norm = t.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    train_tf = t.Compose([t.RandomCrop(32, padding=4), t.RandomHorizontalFlip(), t.ToTensor(), norm])
    test_tf = t.Compose([t.ToTensor(), norm])
    try:
        return (torchvision.datasets.CIFAR10(root, train=True, transform=train_tf, download=False),
                torchvision.datasets.CIFAR10(root, train=False, transform=test_tf, download=False))
    except RuntimeError as e:
        sys.exit(f"error: no CIFAR-10 under {root!r} ({e}); pass the folder that holds cifar-10-batches-py")


def build_model(name: str, num_classes: int) -> nn.Module:
    """A model of bnn's zoo (its 32x32 CIFAR variant) or a torchvision classification model, no weights."""
    if name in bnn.models.list_models():
        return bnn.models.create_model(name, num_classes=num_classes, stem="cifar")
    if name in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    sys.exit(f"error: unknown model {name!r}; use a bnn.models name ({', '.join(bnn.models.list_models())}) "
             "or a torchvision classification model name")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        correct += (model(x).argmax(1) == y).sum()
        total += y.numel()
    model.train()
    return float(correct) / max(total, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="resnet18",
                   help="a bnn.models name (e.g. abbnn_reactnet18) or a torchvision model name (default resnet18)")
    p.add_argument("--recipe", default=os.path.join(os.path.dirname(__file__), "..", "recipes", "abbnn.yaml"))
    p.add_argument("--data", default="digits", help="'digits' (embedded) or a CIFAR-10 folder")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per step (default: the recipe's; 3 on the digits data)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--teacher", default=None,
                   help="checkpoint (a state_dict) of a real-valued teacher of the same architecture, for "
                        "recipes with a distillation loss; default: the float model's own weights at start")
    p.add_argument("--checkpoint-dir", default="checkpoints")
    p.add_argument("--resume", default=None, help="checkpoint to continue from")
    p.add_argument("--amp", action="store_true", help="mixed precision (autocast + GradScaler on CUDA)")
    p.add_argument("--smoke", action="store_true", help="1 epoch per step on a few batches: seconds")
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank = dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        rank = 0
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    main_process = rank == 0
    torch.manual_seed(0)

    if args.data == "digits":
        train_set, test_set = digits_datasets()
        num_classes = 10
    else:
        train_set, test_set = cifar10_datasets(args.data)
        num_classes = 10
    if args.smoke:
        train_set = torch.utils.data.Subset(train_set, range(min(256, len(train_set))))
        test_set = torch.utils.data.Subset(test_set, range(min(128, len(test_set))))
    sampler = DistributedSampler(train_set) if distributed else None
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                              num_workers=args.workers, pin_memory=device.type == "cuda", drop_last=True)
    test_loader = DataLoader(test_set, batch_size=256, num_workers=args.workers)

    chef = bnn.BinaryChef(args.recipe)
    model = build_model(args.model, num_classes).to(device)
    teacher = build_model(args.model, num_classes).to(device)
    if args.teacher:
        teacher.load_state_dict(torch.load(args.teacher, map_location=device))
    else:
        teacher.load_state_dict(model.state_dict())

    state = torch.load(args.resume, map_location=device, weights_only=False) if args.resume else None
    if state is not None:
        chef.load_state_dict(state["chef"])
        model = chef.restore(model)
        model.load_state_dict(state["model"])

    use_amp = args.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    while chef.current_step < len(chef) or state is not None:
        if state is None:
            model = chef.next(model).to(device)
        step = chef.step
        epochs = 1 if args.smoke else (args.epochs or step.training.epochs or (3 if args.data == "digits" else None))
        if epochs is None:
            sys.exit(f"error: {args.recipe} step {step.name!r} sets no epochs; pass --epochs")
        net = DistributedDataParallel(model) if distributed else model
        optimizer = chef.optimizer(model)
        if args.lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = args.lr
        scheduler = chef.scheduler(optimizer, steps_per_epoch=len(train_loader), epochs=epochs)
        criterion = chef.criterion(teacher=teacher if step.training.loss == "distillation" else None)
        first_epoch = 0
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            first_epoch = state["epoch"] + 1
            state = None

        for epoch in range(first_epoch, epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            net.train()
            bar = tqdm(train_loader, desc=f"{step.name} epoch {epoch + 1}/{epochs}", disable=not main_process,
                       leave=False)
            for x, y in bar:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with torch.autocast(device.type, enabled=use_amp):
                    loss = criterion(net(x), y, x)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                chef.clip_gradients(model)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            if main_process:
                accuracy = evaluate(model, test_loader, device)
                print(f"{step.name} epoch {epoch + 1}/{epochs}: accuracy: {accuracy:.2f}", flush=True)
                checkpoint = {"chef": chef.state_dict(), "model": model.state_dict(),
                              "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                              "epoch": epoch, "recipe": args.recipe, "model_name": args.model}
                atomic_save(checkpoint, os.path.join(args.checkpoint_dir, "last.pt"))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
