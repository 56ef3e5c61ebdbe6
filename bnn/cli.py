r"""The ``bnn`` command.

    bnn ops --model resnet18 [--recipe recipes/abbnn.yaml] [--input 1,3,224,224]
"""
import argparse
import sys
from typing import List, Optional

import torch
import torch.nn as nn


def _build_model(name: str, num_classes: int) -> nn.Module:
    """A model of bnn's zoo, else a torchvision classification model, by name (no weights downloaded)."""
    try:
        from . import models as zoo
    except ImportError:
        zoo = None
    if zoo is not None and name in zoo.list_models():
        return zoo.create_model(name, num_classes=num_classes)
    try:
        import torchvision
    except ImportError:
        torchvision = None
    if torchvision is not None and name in torchvision.models.list_models(module=torchvision.models):
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    known = (list(zoo.list_models()) if zoo is not None else []) + \
        (torchvision.models.list_models(module=torchvision.models) if torchvision is not None else [])
    import difflib
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown model {name!r}{hint} (bnn.models.list_models() or a torchvision classification model)")


def _shape(text: str) -> List[int]:
    try:
        shape = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input takes comma-separated integers like 1,3,224,224, got {text!r}")
    if any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"--input sizes must be positive, got {text!r}")
    return shape


def _cmd_ops(args: argparse.Namespace) -> int:
    from .engine import BinaryChef
    from .profile import summary
    model = _build_model(args.model, args.num_classes)
    if args.recipe:
        chef = BinaryChef(args.recipe)
        for _ in range(len(chef)):
            model = chef.next(model)
    result = summary(model, torch.randn(*args.input))
    print(result.report)
    print()
    print(result)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bnn", description="bnn: binary neural networks in PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ops = sub.add_parser("ops", help="count BOPs / FLOPs and print a per-layer summary",
                         description="Count BOPs, FLOPs and OPs (= FLOPs + BOPs/64) of a model, binarized "
                                     "by all the steps of a recipe if one is given, and print a per-layer summary.")
    ops.add_argument("--model", required=True, help="a bnn.models name or a torchvision classification model")
    ops.add_argument("--recipe", help="apply every step of this recipe first (the final binarized model)")
    ops.add_argument("--input", type=_shape, default=[1, 3, 224, 224], help="input shape (default 1,3,224,224)")
    ops.add_argument("--num-classes", type=int, default=1000)
    ops.set_defaults(run=_cmd_ops)

    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"bnn {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
