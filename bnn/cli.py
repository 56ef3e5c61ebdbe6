r"""The ``bnn`` command.

    bnn ops --model resnet18 [--recipe recipes/abbnn.yaml] [--input 1,3,224,224]
    bnn convert checkpoints/last.pt -o model.bnn [--model NAME] [--recipe PATH] [--input 1,3,32,32]
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


def _cmd_convert(args: argparse.Namespace) -> int:
    import os

    from .engine import BinaryChef
    from .inference import to_inference
    from .profile import summary
    try:
        checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ValueError(f"no such checkpoint: {args.checkpoint}") from None
    except Exception as e:
        raise ValueError(f"cannot read {args.checkpoint} as a torch checkpoint: {e}") from None
    state = checkpoint.get("model") if isinstance(checkpoint, dict) and "model" in checkpoint else checkpoint
    if not isinstance(state, dict):
        raise ValueError(f"{args.checkpoint} holds no state_dict (a dict of tensors, or a dict with a 'model' entry)")
    name = args.model or (checkpoint.get("model_name") if isinstance(checkpoint, dict) else None)
    recipe = args.recipe or (checkpoint.get("recipe") if isinstance(checkpoint, dict) else None)
    if not name:
        raise ValueError("the checkpoint does not say which model it is: pass --model")
    if not recipe:
        raise ValueError("the checkpoint does not say which recipe binarized it: pass --recipe")
    num_classes = args.num_classes
    for key, value in state.items():
        if key.endswith("weight") and value.dim() == 2:
            num_classes = value.shape[0]  # the last 2-D weight is the classifier's
    model = _build_model(name, num_classes)
    chef = BinaryChef(recipe)
    if isinstance(checkpoint, dict) and "chef" in checkpoint:
        chef.load_state_dict(checkpoint["chef"])
        model = chef.restore(model)
    else:
        for _ in range(len(chef)):
            model = chef.next(model)
    model.load_state_dict(state)
    example = torch.randn(*args.input)
    inference = to_inference(model.eval(), example)
    inference.save(args.output)
    with torch.no_grad():
        reference = model(example)
    worst = float(((inference(example) - reference).abs().max() / reference.abs().max().clamp_min(1e-12)))
    float_bytes = 4 * sum(p.numel() for p in model.parameters())
    size = os.path.getsize(args.output)
    census = inference.op_census(example)
    print(f"wrote {args.output}: {size:,} bytes; float32 model {float_bytes:,} bytes "
          f"(compression {float_bytes / size:.1f}x)")
    print(f"largest relative difference to the trained model on a random input: {worst:.1e}")
    print("op census: " + ", ".join(f"{k} {census[k]:,}" for k in census))
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

    conv = sub.add_parser("convert", help="convert a trained checkpoint into a packed inference model",
                          description="Convert a checkpoint of a fake-binarized model (examples/train.py writes "
                                      "them) into a multiplication-free inference model file.")
    conv.add_argument("checkpoint", help="a checkpoint: {'model': state_dict, 'model_name', 'recipe', 'chef'} "
                                         "or a bare state_dict with --model and --recipe")
    conv.add_argument("-o", "--output", required=True, help="the .bnn file to write")
    conv.add_argument("--model", help="model name (default: the checkpoint's)")
    conv.add_argument("--recipe", help="recipe that binarized it (default: the checkpoint's)")
    conv.add_argument("--input", type=_shape, default=[1, 3, 32, 32], help="input shape (default 1,3,32,32)")
    conv.add_argument("--num-classes", type=int, default=1000)
    conv.set_defaults(run=_cmd_convert)

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
