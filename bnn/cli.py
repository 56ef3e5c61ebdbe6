r"""The ``bnn`` command.

    bnn demo [--model digits_net] [--recipe abbnn] [--epochs 6] [--out bnn-demo.bnn] [--smoke]
    bnn ops --model resnet18 [--recipe recipes/abbnn.yaml] [--input 1,3,224,224]
    bnn convert checkpoints/last.pt -o model.bnn [--model NAME] [--recipe PATH] [--input 1,3,32,32]
    bnn bench [-- --repeats 5 --skip-models]
"""
import argparse
import os
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
    from .engine.shipped import find_recipe
    from .profile import summary
    model = _build_model(args.model, args.num_classes)
    if args.recipe:
        chef = BinaryChef(find_recipe(args.recipe))
        for _ in range(len(chef)):
            model = chef.next(model)
    result = summary(model, torch.randn(*args.input))
    print(result.report)
    print()
    print(result)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .engine import BinaryChef
    from .engine.shipped import find_recipe
    from .inference import to_inference
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
    chef = BinaryChef(find_recipe(recipe))
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    results = run_demo(model=args.model, recipe=args.recipe, epochs=args.epochs, out=args.out,
                       figure=args.figure, seed=args.seed, threads=args.threads, smoke=args.smoke)
    if not results["identical"]:
        print("bnn demo: error: the converted model does not predict what the trained model predicts",
              file=sys.stderr)
        return 1
    return 0


def _benchmarks_folder() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _cmd_bench(args: argparse.Namespace) -> int:
    import runpy
    script = os.path.join(_benchmarks_folder(), "inference.py")
    if not os.path.isfile(script):
        raise FileNotFoundError(
            "the benchmarks ship with the source checkout, not with the installed package: no "
            f"{script}. Clone the repository and install it editable (pip install -e .), or run "
            "python benchmarks/inference.py from the checkout")
    forwarded = list(args.args)
    if forwarded[:1] == ["--"]:
        forwarded = forwarded[1:]
    saved = sys.argv[0]
    sys.argv[0] = "bnn bench --"  # the script's own --help then shows how to pass its options
    try:
        code = runpy.run_path(script, run_name="bnn_bench")["main"](forwarded)
    except SystemExit as e:  # the script's argparse: --help, or a bad option
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv[0] = saved
    return int(code or 0)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bnn", description="bnn: binary neural networks in PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="the whole life of a binary network on the digits data set, in a few minutes",
        description="Train a float CNN on scikit-learn's handwritten digits (embedded, nothing downloaded), "
                    "binarize it with the two steps of a recipe, print the held-out accuracy after each, "
                    "convert it to a packed multiplication-free model (and check that it predicts the "
                    "same), count its operations, save it, time it against the float model, and draw "
                    "a figure (bnn-demo.png). About a minute on 2 CPU cores.")
    demo.add_argument("--model", default="digits_net",
                      help="digits_net (the default: a small CNN for 8x8 images), or a bnn.models name, "
                           "built with the CIFAR stem and trained on 32x32 upsampled digits (much slower)")
    demo.add_argument("--recipe", default="abbnn",
                      help="a recipe file, or the name of a shipped recipe (default: abbnn, i.e. "
                           "recipes/abbnn.yaml; try abbnn-pow2)")
    demo.add_argument("--epochs", type=_positive_int, default=6,
                      help="epochs of the float training and of each recipe step (default: 6)")
    demo.add_argument("--out", default="bnn-demo.bnn", help="the packed model file to write (default: bnn-demo.bnn)")
    demo.add_argument("--figure", default="bnn-demo.png", help="the PNG figure to write (default: bnn-demo.png)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the split and the training (default: 0)")
    demo.add_argument("--threads", type=_positive_int, default=1,
                      help="torch CPU threads (default: 1, the fastest for the small default model)")
    demo.add_argument("--smoke", action="store_true",
                      help="1 epoch per stage on 256 training images: checks that everything runs, in seconds")
    demo.set_defaults(run=_cmd_demo)

    ops = sub.add_parser("ops", help="count BOPs / FLOPs and print a per-layer summary",
                         description="Count BOPs, FLOPs and OPs (= FLOPs + BOPs/64) of a model, binarized "
                                     "by all the steps of a recipe if one is given, and print a per-layer summary.")
    ops.add_argument("--model", required=True, help="a bnn.models name or a torchvision classification model")
    ops.add_argument("--recipe", help="apply every step of this recipe first (the final binarized model): a "
                                      "file, or the name of a shipped recipe such as abbnn")
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

    bench = sub.add_parser(
        "bench", help="measure packed binary inference against float PyTorch on this CPU",
        description="Run the inference benchmark of the source checkout (benchmarks/inference.py): packed "
                    "binary layers and converted models against float PyTorch, side by side in one process. "
                    "Arguments after -- go to the script: bnn bench -- --repeats 5 --skip-models "
                    "(bnn bench -- --help lists them).")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments of benchmarks/inference.py, after --")
    bench.set_defaults(run=_cmd_bench)

    args, unknown = parser.parse_known_args(argv)
    if args.command == "bench":
        args.args = unknown + list(args.args)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"bnn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        hint = "" if "pip install" in str(e) else " (pip install 'bnn[examples]' adds what the demo needs)"
        print(f"bnn {args.command}: error: {e}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
