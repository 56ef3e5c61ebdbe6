r"""Convert a binary network into its packed, multiplication-free form and measure it against the float model.

    python examples/convert_and_benchmark.py                                   # abbnn_reactnet18, 224x224
    python examples/convert_and_benchmark.py --model reactnet_a --recipe recipes/reactnet.yaml
    python examples/convert_and_benchmark.py --smoke                           # 32x32, seconds

The model is built from ``bnn.models`` (or torchvision) and binarized by every step of the recipe; its
weights are random, which is all that exactness, size and speed need (for a trained checkpoint of
examples/train.py, ``bnn convert CHECKPOINT -o model.bnn`` does the conversion). Steps:

1. ``bnn.to_inference(model, x)``: thresholds, packed XNOR-popcount layers, shifts;
2. check that it computes exactly what the fake-binarized model computes;
3. the op census: how many multiplications are left, and where;
4. save the packed file and compare its size with the float32 parameters;
5. time the float architecture and the packed model side by side (median of interleaved repeats).
"""
import argparse
import os
import tempfile
import warnings

import torch

import bnn
from bnn.timing import median_times


def build(name: str, recipe: str, size: int) -> torch.nn.Module:
    stem = "cifar" if size <= 64 else "imagenet"
    if name in bnn.models.list_models():
        float_model = bnn.models.create_model(name, num_classes=1000, stem=stem)
        model = bnn.models.create_model(name, num_classes=1000, stem=stem)
    else:
        import torchvision
        float_model = torchvision.models.get_model(name, weights=None)
        model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(float_model.state_dict())
    chef = bnn.BinaryChef(recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a "$downsample$" pattern may match nothing in this architecture
        for _ in range(len(chef)):
            model = chef.next(model)
    return float_model.eval(), model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="abbnn_reactnet18", help="a bnn.models or torchvision model name")
    p.add_argument("--recipe", default=os.path.join(os.path.dirname(__file__), "..", "recipes", "abbnn-pow2.yaml"))
    p.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="32x32 input, 2 repeats: checks that it all runs")
    args = p.parse_args(argv)
    size, repeats = (32, 2) if args.smoke else (args.size, args.repeats)

    torch.manual_seed(0)
    float_model, model = build(args.model, args.recipe, size)
    x = torch.randn(args.batch, 3, size, size)
    fast = bnn.to_inference(model, x)

    with torch.no_grad():
        same = torch.equal(fast(x), model(x))
    print(f"{args.model} under {os.path.basename(args.recipe)}: converted; identical outputs: {'yes' if same else 'NO'}")
    census = fast.op_census(x, per_layer=True)
    print("op census: " + ", ".join(f"{k.replace('_', ' ')} {census[k]:,}" for k in
                                    ("binary_macs", "float_macs", "multiplications", "additions", "shifts",
                                     "comparisons")))
    left = [r for r in census["layers"] if r.get("multiplications") and r["name"] not in census["stem_and_classifier"]]
    print("multiplications outside the stem and classifier: " +
          (", ".join(f"{r['name']} ({r['multiplications']:,})" for r in left[:6]) or "none"))

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.bnn")
        fast.save(path)
        packed = os.path.getsize(path)
        same_after_load = torch.equal(bnn.load_inference(path)(x), fast(x))
    float_bytes = 4 * sum(t.numel() for t in float_model.parameters())
    print(f"packed file {packed / 2**20:.2f} MiB vs float32 parameters {float_bytes / 2**20:.2f} MiB: "
          f"{float_bytes / packed:.1f}x smaller; reloaded file identical: {'yes' if same_after_load else 'NO'}")

    with torch.no_grad():
        t = {k: 1e3 * v for k, v in median_times({"float": lambda: float_model(x), "packed": lambda: fast(x)},
                                                  repeats).items()}
    print(f"latency, batch {args.batch}, {size}x{size}, {torch.get_num_threads()} thread(s): float {t['float']:.1f} ms, "
          f"packed {t['packed']:.1f} ms: {t['float'] / t['packed']:.2f}x")
    return 0 if same and same_after_load else 1


if __name__ == "__main__":
    raise SystemExit(main())
