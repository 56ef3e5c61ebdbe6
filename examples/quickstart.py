r"""Quickstart: train a small CNN on the handwritten digits that ship with scikit-learn, binarize it with
bnn, fine-tune it, and compare the held-out accuracy of the float and the binary model.

    python examples/quickstart.py              # about 10-20 s on 2 CPU cores
    python examples/quickstart.py --smoke      # a few seconds: 1 epoch on a subset, checks that it runs
    python examples/quickstart.py --epochs 10

The steps are those of any binarization job:

1. train the float model (or take a pretrained one);
2. build the same architecture and binarize it with ``bnn.prepare_binary_model``: every conv / linear layer
   but the first and the last becomes a fake-binarized layer (ReActNet-style RSign activations and
   Bi-Real / ReActNet magnitude-aware weights here);
3. load the float weights into it (the binary layers keep the float layers' parameter names);
4. fine-tune the binary model with the same training loop, and evaluate it.

Nothing is downloaded: the data set is ``sklearn.datasets.load_digits`` (1797 images, 8x8, 10 classes).
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import bnn
from bnn.data import load_digits_split
from bnn.ops import MagnitudeAwareWeightBinarizer, RSign


class Block(nn.Module):
    r"""conv 3x3 -> BatchNorm -> + shortcut -> PReLU, the Bi-Real / ReActNet block: once binarized, the
    real-valued shortcut carries the information that the 1-bit convolution loses. No ReLU sits in front
    of a conv: the sign of a ReLU output would be +1 everywhere."""

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.shortcut = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)) + self.shortcut(x))


class DigitsNet(nn.Module):
    r"""Real stem conv -> three blocks (8x8 -> 4x4 -> 2x2) -> global pool -> real classifier."""

    def __init__(self, channels: int = 32, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.blocks = nn.Sequential(Block(channels), Block(channels, stride=2), Block(channels, stride=2))
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int,
          name: str) -> None:
    """Adam with a linear decay to 0, the schedule of the Bi-Real / ReActNet / A&B recipes."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(x), device=x.device).split(batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        print(f"  {name} epoch {epoch + 1}/{epochs}  loss {total / len(x):.3f}")


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def describe_layers(model: nn.Module) -> None:
    """One line per conv / linear layer: the bits of its weights and of its input activations."""
    print("layers (weight bits / activation bits):")
    for name, layer in model.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            w, a = getattr(layer, "weight_precision", 32), getattr(layer, "activation_precision", 32)
            kind = "binary" if w == a == 1 else "real" if w == a == 32 else "mixed"
            print(f"  {name:<14} {type(layer).__name__:<13} {w:>2} / {a:<2} {kind}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6,
                        help="epochs of float training, and again of binary fine-tuning (default: 6)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: 3e-3)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of the training (default: 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default: 1; the model is too small to gain from more)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 epoch on 256 training images: checks that everything runs, in a few seconds")
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        # On 8x8 images one thread does a step in about 12 ms of CPU time. More threads save little of it,
        # and lose much when other processes share the cores: measured on a busy 2-core machine,
        # 33 ms per step with 1 thread, 1.1 s with 2.
        torch.set_num_threads(args.threads)
    # digits as (N, 1, 8, 8) tensors, a fixed stratified split, standardized with the training statistics
    x_train, y_train, x_test, y_test = load_digits_split(seed=args.seed, train_subset=256 if args.smoke else None,
                                                         device=device)
    print(f"digits: {len(x_train)} training / {len(x_test)} held-out images, device {device}")

    # 1. The float model.
    float_model = DigitsNet().to(device)
    train(float_model, x_train, y_train, epochs, args.lr, args.batch_size, "float")

    # 2. The same architecture, binarized: every conv / linear layer but the first and the last.
    bconfig = bnn.BConfig(
        activation_pre_process=RSign,                         # sign(x + b_c), learnable threshold per channel
        weight_pre_process=MagnitudeAwareWeightBinarizer,     # mean|W_o| * sign(W), per output channel
    )
    binary_model = bnn.prepare_binary_model(DigitsNet(), bconfig, ignore_layers_name=["_first_", "_last_"])
    # 3. The float weights load as they are: the binary layers keep the float layers' parameter names.
    binary_model.load_state_dict(float_model.state_dict())
    binary_model.to(device)
    print(f"binarized, before fine-tuning: accuracy {accuracy(binary_model, x_test, y_test):.2f}")
    # 4. Fine-tune.
    train(binary_model, x_train, y_train, epochs, args.lr, args.batch_size, "binary")

    describe_layers(binary_model)
    print(f"float accuracy: {accuracy(float_model, x_test, y_test):.2f}")
    print(f"binary accuracy: {accuracy(binary_model, x_test, y_test):.2f}")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
