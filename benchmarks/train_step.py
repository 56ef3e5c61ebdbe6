r"""Cost of fake binarization in training: one full SGD step of torchvision resnet18 (batch 16, 112x112, CPU),
binarized / float, both measured in this process, interleaved, median of repeats.

    python benchmarks/train_step.py [--repeats 15] [--batch 16] [--size 112] [--threads N]

Prints one line per binarization config with the ratio to the float step. Target (issue 2): <= 1.15x for
the sign-STE + XNOR-Net weights config (upstream bnn 0.1.2 measured 2.5x here).
"""
import argparse

import torch
import torch.nn as nn
import torchvision

import bnn
from bnn.timing import median_times
from bnn.ops import (BasicInputBinarizer, BasicScaleBinarizer, MagnitudeAwareWeightBinarizer, MaskSignBinarizer,
                     RSign, ScaledWSWeightBinarizer, XNORWeightBinarizer)

CONFIGS = {
    "sign-STE + XNOR weights": bnn.BConfig(activation_pre_process=BasicInputBinarizer,
                                           weight_pre_process=XNORWeightBinarizer),
    "upstream README (+ centred weights, learnable scale)": bnn.BConfig(
        activation_pre_process=BasicInputBinarizer, activation_post_process=BasicScaleBinarizer,
        weight_pre_process=XNORWeightBinarizer.with_args(center_weights=True)),
    "ReActNet (RSign + magnitude-aware weights)": bnn.BConfig(activation_pre_process=RSign,
                                                              weight_pre_process=MagnitudeAwareWeightBinarizer),
    "A&B (mask sign + scaled-WS weights)": bnn.BConfig(activation_pre_process=MaskSignBinarizer,
                                                       weight_pre_process=ScaledWSWeightBinarizer),
}


def make_step(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))

    steps = {"float": make_step(torchvision.models.resnet18(), x, y)}
    for name, bconfig in CONFIGS.items():
        model = bnn.prepare_binary_model(torchvision.models.resnet18(), bconfig,
                                         ignore_layers_name=["_first_", "_last_"])
        steps[name] = make_step(model, x, y)

    times = median_times(steps, args.repeats, warmup=2)
    base = times["float"]
    print(f"resnet18 SGD step, batch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"{'config':<55} {'ms':>8} {'ratio':>7}")
    for name, seconds in times.items():
        print(f"{name:<55} {seconds * 1e3:8.1f} {seconds / base:7.2f}x")


if __name__ == "__main__":
    main()
